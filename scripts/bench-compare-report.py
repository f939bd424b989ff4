#!/usr/bin/env python3
"""Turns one bench-compare run's raw outputs into the comparison table and its JSON.

Reads, from the run folder: lumen-pptg.json / llama-pptg.json (lumen bench / llama-bench),
lumen-batched.json / llama-batched.jsonl (lumen bench -b / llama-batched-bench),
lumen-serve.json / llama-serve.json (lumen bench serve against each server) and
lumen-idle-vmhwm-kib / llama-idle-vmhwm-kib, lumen-ppl-{exact,packed}.json / llama-ppl.log
(lumen perplexity / llama-perplexity). A missing or broken file leaves its row empty.
"""
import argparse
import json
import os
import sys


def load_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def load_jsonl(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line.startswith("{"):
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def read_int(path):
    try:
        with open(path) as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return None


def read_llama_ppl(path):
    """llama-perplexity's final estimate ("Final estimate: PPL = 18.3541 +/- ...")."""
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "Final estimate: PPL =" in line:
                    return float(line.split("PPL =")[1].split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


def median(values):
    v = sorted(x for x in values if x is not None)
    if not v:
        return None
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def lumen_test(report, name):
    for t in (report or {}).get("results", []):
        if t.get("name") == name:
            return t["tokens_per_s"]["median"]
    return None


def llama_bench(rows, n_prompt, n_gen):
    for r in rows or []:
        if r.get("n_prompt") == n_prompt and r.get("n_gen") == n_gen:
            return r.get("avg_ts")
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--model", required=True)
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--kv-mb", type=int, required=True)
    ap.add_argument("--clients", type=int, required=True)
    ap.add_argument("--lumen-serve", default="done")
    ap.add_argument("--layout", default="ggml")
    ap.add_argument("--json-out", required=True)
    a = ap.parse_args()
    print_and_save(a)
    return 0


def print_and_save(a):
    d = a.run_dir
    j = lambda name: load_json(os.path.join(d, name))

    rounds = sorted({int(n.split(".r")[1].split(".")[0]) for n in os.listdir(d)
                     if n.startswith(("lumen-", "llama-")) and ".r" in n and n.split(".r")[1].split(".")[0].isdigit()})
    per_round = [{
        "lumen_pptg": j(f"lumen-pptg.r{i}.json"),
        "llama_pptg": j(f"llama-pptg.r{i}.json"),
        "lumen_b": j(f"lumen-batched.r{i}.json"),
        "llama_b": {r.get("pl"): r for r in load_jsonl(os.path.join(d, f"llama-batched.r{i}.jsonl"))},
    } for i in rounds]
    lumen_s, llama_s = j("lumen-serve.json"), j("llama-serve.json")
    lumen_rss = read_int(os.path.join(d, "lumen-idle-vmhwm-kib"))
    llama_rss = read_int(os.path.join(d, "llama-idle-vmhwm-kib"))
    model_mib = os.path.getsize(a.model) / 2**20
    rss_budget = model_mib + a.kv_mb + 64

    rows = []

    def row(figure, pairs, target, kind="higher", note=""):
        """pairs: (lumen, llama) per round, measured back to back. The values shown are medians
        over rounds; the ratio is the median of the per-round ratios (each pair shares its
        moment's noise). kind: 'higher' (ratio >= target), 'lower' (ratio <= target),
        'budget' (lumen <= target, absolute)."""
        lumen = median([p[0] for p in pairs])
        llama = median([p[1] for p in pairs])
        ratio = median([p[0] / p[1] for p in pairs if p[0] is not None and p[1]])
        if kind == "budget":
            met = None if lumen is None else lumen <= target
        elif ratio is None or target is None:
            met = None
        else:
            met = ratio >= target if kind == "higher" else ratio <= target
        rows.append({"figure": figure, "lumen": lumen, "llama_cpp": llama, "ratio": ratio,
                     "target": target, "kind": kind, "met": met, "note": note,
                     "rounds": [list(p) for p in pairs]})

    row("pp512 t/s", [(lumen_test(r["lumen_pptg"], "pp512"), llama_bench(r["llama_pptg"], 512, 0)) for r in per_round], 2.0)
    row("tg128 t/s", [(lumen_test(r["lumen_pptg"], "tg128"), llama_bench(r["llama_pptg"], 0, 128)) for r in per_round], 1.5)
    batched, engine = set(), set()
    for r in per_round:
        for t in (r["lumen_b"] or {}).get("results", []):
            (engine if t.get("kind") == "engine" else batched).add(t["batch"])
        batched |= {k for k in r["llama_b"] if k}
    for b in sorted(batched):
        target = 5.0 if b == 32 else None
        row(f"batched decode B={b} S_TG t/s",
            [(lumen_test(r["lumen_b"], f"tg128@b{b}"), (r["llama_b"].get(b) or {}).get("speed_tg")) for r in per_round], target)
    for b in sorted(engine):
        vals = [t["tokens_per_s"]["median"] for r in per_round for t in (r["lumen_b"] or {}).get("results", [])
                if t.get("kind") == "engine" and t["batch"] == b]
        row(f"engine end-to-end B={b} output t/s", [(v, None) for v in vals], None,
            note="Lumen only: scheduler + sampling included, prefill included in the time")
    pending = "" if a.lumen_serve == "done" else f"lumen serve: {a.lumen_serve}"
    get = lambda r, *ks: None if r is None else _dig(r, ks)
    row(f"server c={a.clients} output tok/s", [(get(lumen_s, "output_tokens_per_s"),
        get(llama_s, "output_tokens_per_s"))], 4.0, note=pending)
    row(f"server c={a.clients} TTFT p50 ms", [(get(lumen_s, "ttft_ms", "p50"),
        get(llama_s, "ttft_ms", "p50"))], 0.25, kind="lower", note=pending)
    as_int = lambda v: None if v is None else int(v)
    counts = lambda r: "-" if r is None else f"{int(get(r, 'completed') or 0)} / {int(get(r, 'errors') or 0)}"
    rows.append({"figure": f"server c={a.clients} requests ok / errors", "lumen": counts(lumen_s),
                 "llama_cpp": counts(llama_s), "ratio": None, "target": None, "kind": "info",
                 "met": None, "note": pending, "rounds": []})
    row("idle server peak RSS MiB", [(None if lumen_rss is None else lumen_rss / 1024,
        None if llama_rss is None else llama_rss / 1024)], round(rss_budget, 1), kind="budget",
        note=f"budget = model {model_mib:.1f} + KV {a.kv_mb} + 64 MiB" + (f"; {pending}" if pending else ""))

    # Perplexity on the committed text (lower is better; the ratio should stay near 1).
    llama_ppl = read_llama_ppl(os.path.join(d, "llama-ppl.log"))
    for layout in ("exact", "packed"):
        ppl = get(j(f"lumen-ppl-{layout}.json"), "perplexity")
        row(f"perplexity ({layout} layout)", [(ppl, llama_ppl)], 1.005, kind="lower",
            note="fixtures/perplexity/gpl-3.0.txt, 512-token chunks, as llama-perplexity")

    fmt = lambda v, p=2: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    header = ["figure", "lumen", "llama.cpp", "ratio", "target", "met", "per-round ratios"]
    table = []
    for r in rows:
        if r["kind"] == "budget":
            target = f"<= {r['target']} MiB"
        elif r["target"] is None:
            target = ""
        else:
            target = (">= " if r["kind"] == "higher" else "<= ") + f"{r['target']}x"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        table.append([r["figure"], fmt(r["lumen"]), fmt(r["llama_cpp"]),
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", target, met,
                      ", ".join(f"{p[0] / p[1]:.2f}" for p in r["rounds"] if len(p) == 2 and p[0] is not None and p[1])])
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print()
    print(f"model {os.path.basename(a.model)}, {a.threads} threads, lumen weight layout {a.layout}")
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(line(t))
    notes = {}
    for r in rows:
        for n in filter(None, r["note"].split("; ")):
            notes.setdefault(n, []).append(r["figure"])
    for n, figures in notes.items():
        print(f"note: {n} ({', '.join(figures)})")
    print()

    out = {"model": a.model, "threads": a.threads, "clients": a.clients, "kv_mb": a.kv_mb, "layout": a.layout,
           "run_dir": d, "rows": rows,
           "raw": {"rounds": [{**r, "llama_b": list(r["llama_b"].values())} for r in per_round],
                   "lumen_serve": lumen_s, "llama_serve": llama_s}}
    with open(a.json_out, "w") as f:
        json.dump(out, f, indent=2)


def _dig(obj, keys):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return float(obj) if isinstance(obj, (int, float)) else obj


if __name__ == "__main__":
    sys.exit(main())
