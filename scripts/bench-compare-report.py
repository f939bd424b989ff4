#!/usr/bin/env python3
"""Turns one bench-compare run's raw outputs into the comparison table and its JSON.

Reads, from the run folder: lumen-pptg.json / llama-pptg.json (lumen bench / llama-bench),
lumen-batched.json / llama-batched.jsonl (lumen bench -b / llama-batched-bench),
lumen-serve.json / llama-serve.json (lumen bench serve against each server) and
lumen-idle-vmhwm-kib / llama-idle-vmhwm-kib. A missing or broken file leaves its row empty.
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
    ap.add_argument("--json-out", required=True)
    a = ap.parse_args()
    d = a.run_dir
    j = lambda name: load_json(os.path.join(d, name))

    lumen_pptg, llama_pptg = j("lumen-pptg.json"), j("llama-pptg.json")
    lumen_b = j("lumen-batched.json")
    llama_b = {r.get("pl"): r for r in load_jsonl(os.path.join(d, "llama-batched.jsonl"))}
    lumen_s, llama_s = j("lumen-serve.json"), j("llama-serve.json")
    lumen_rss = read_int(os.path.join(d, "lumen-idle-vmhwm-kib"))
    llama_rss = read_int(os.path.join(d, "llama-idle-vmhwm-kib"))
    model_mib = os.path.getsize(a.model) / 2**20
    rss_budget = model_mib + a.kv_mb + 64

    rows = []

    def row(figure, lumen, llama, target, kind="higher", note=""):
        """kind: 'higher' (ratio = lumen/llama >= target), 'lower' (lumen/llama <= target),
        'budget' (lumen <= target, absolute)."""
        ratio = lumen / llama if lumen is not None and llama else None
        if kind == "budget":
            met = None if lumen is None else lumen <= target
        elif ratio is None or target is None:
            met = None
        else:
            met = ratio >= target if kind == "higher" else ratio <= target
        rows.append({"figure": figure, "lumen": lumen, "llama_cpp": llama, "ratio": ratio,
                     "target": target, "kind": kind, "met": met, "note": note})

    row("pp512 t/s", lumen_test(lumen_pptg, "pp512"), llama_bench(llama_pptg, 512, 0), 2.0)
    row("tg128 t/s", lumen_test(lumen_pptg, "tg128"), llama_bench(llama_pptg, 0, 128), 1.5)
    batched = {t["batch"] for t in (lumen_b or {}).get("results", []) if t.get("kind") == "batched"}
    for b in sorted(batched | set(k for k in llama_b if k)):
        target = 5.0 if b == 32 else None
        row(f"batched decode B={b} S_TG t/s", lumen_test(lumen_b, f"tg128@b{b}"),
            (llama_b.get(b) or {}).get("speed_tg"), target)
    for t in (lumen_b or {}).get("results", []):
        if t.get("kind") == "engine":
            row(f"engine end-to-end B={t['batch']} output t/s", t["tokens_per_s"]["median"], None, None,
                note="Lumen only: scheduler + sampling included, prefill included in the time")
    pending = "" if a.lumen_serve == "done" else f"lumen serve: {a.lumen_serve}"
    get = lambda r, *ks: None if r is None else _dig(r, ks)
    row(f"server c={a.clients} output tok/s", get(lumen_s, "output_tokens_per_s"),
        get(llama_s, "output_tokens_per_s"), 4.0, note=pending)
    row(f"server c={a.clients} TTFT p50 ms", get(lumen_s, "ttft_ms", "p50"),
        get(llama_s, "ttft_ms", "p50"), 0.25, kind="lower", note=pending)
    as_int = lambda v: None if v is None else int(v)
    row(f"server c={a.clients} errors", as_int(get(lumen_s, "errors")), as_int(get(llama_s, "errors")), None, note=pending)
    row("idle server peak RSS MiB", None if lumen_rss is None else lumen_rss / 1024,
        None if llama_rss is None else llama_rss / 1024, round(rss_budget, 1), kind="budget",
        note=f"budget = model {model_mib:.1f} + KV {a.kv_mb} + 64 MiB" + (f"; {pending}" if pending else ""))

    fmt = lambda v, p=2: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    header = ["figure", "lumen", "llama.cpp", "ratio", "target", "met"]
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
                      "-" if r["ratio"] is None else f"{r['ratio']:.2f}x", target, met])
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print()
    print(f"model {os.path.basename(a.model)}, {a.threads} threads")
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

    out = {"model": a.model, "threads": a.threads, "clients": a.clients, "kv_mb": a.kv_mb,
           "run_dir": d, "rows": rows,
           "raw": {"lumen_pptg": lumen_pptg, "llama_pptg": llama_pptg, "lumen_batched": lumen_b,
                   "llama_batched": list(llama_b.values()), "lumen_serve": lumen_s, "llama_serve": llama_s}}
    with open(a.json_out, "w") as f:
        json.dump(out, f, indent=2)
    return 0


def _dig(obj, keys):
    for k in keys:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return float(obj) if isinstance(obj, (int, float)) else obj


if __name__ == "__main__":
    sys.exit(main())
