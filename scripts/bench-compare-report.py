#!/usr/bin/env python3
"""Turns one bench-compare run's raw outputs into the comparison table and its JSON.

Reads, from the run folder: lumen-pptg.json / llama-pptg.json (lumen bench / llama-bench),
lumen-batched.json / llama-batched.jsonl (lumen bench -b / llama-batched-bench),
lumen-serve.json / llama-serve.json (lumen bench serve against each server) and
lumen-idle-vmhwm-kib / llama-idle-vmhwm-kib, lumen-ppl-{exact,packed}.json / llama-ppl.log
(lumen perplexity / llama-perplexity). A missing or broken file leaves its row empty.

Each row shows the medians over rounds, the median of the per-round ratios and the worst
round's ratio (rounds run back to back, so each pair shares its moment's noise). With
--bandwidth (`lumen bench bandwidth --json`) it adds each engine's share of the single-stream
decode bound: bandwidth / bytes of weights read per token, counted from the GGUF's tensor
table (every tensor but the token embedding, which decode reads one row of, unless the output
projection is tied to it). `--summary A.json B.json ...` prints one table of every model.
"""
import argparse
import json
import os
import struct
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


def gguf_tensor_bytes(path):
    """{tensor name: bytes} from a GGUF's tensor table (sizes from the data offsets, so no
    table of block sizes is needed). None if the file cannot be read."""
    try:
        with open(path, "rb") as f:
            rd = lambda fmt: struct.unpack("<" + fmt, f.read(struct.calcsize("<" + fmt)))
            magic, version = f.read(4), rd("I")[0]
            if magic != b"GGUF" or version < 2:
                return None
            n_tensors, n_kv = rd("QQ")
            fixed = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
            alignment = 32

            def skip(t):
                if t in fixed:
                    return f.read(fixed[t])
                if t == 8:
                    return f.read(rd("Q")[0])
                if t == 9:
                    et, n = rd("IQ")
                    if et in fixed:
                        f.seek(fixed[et] * n, 1)
                    else:
                        for _ in range(n):
                            skip(et)
                    return None
                raise ValueError(f"GGUF value type {t}")

            for _ in range(n_kv):
                key = f.read(rd("Q")[0]).decode()
                t = rd("I")[0]
                v = skip(t)
                if key == "general.alignment" and v is not None:
                    alignment = struct.unpack("<I", v)[0]
            infos = []
            for _ in range(n_tensors):
                name = f.read(rd("Q")[0]).decode()
                n_dims = rd("I")[0]
                f.seek(8 * n_dims + 4, 1)
                infos.append((rd("Q")[0], name))
            data_start = (f.tell() + alignment - 1) // alignment * alignment
            end = os.path.getsize(path) - data_start
            infos.sort()
            return {name: (infos[i + 1][0] if i + 1 < len(infos) else end) - off
                    for i, (off, name) in enumerate(infos)}
    except (OSError, ValueError, struct.error, UnicodeDecodeError):
        return None


def decode_bytes_per_token(path):
    """Bytes of weights one single-stream decode step reads."""
    sizes = gguf_tensor_bytes(path)
    if not sizes:
        return os.path.getsize(path)
    total = sum(sizes.values())
    if "output.weight" in sizes:
        total -= sizes.get("token_embd.weight", 0)
    return total


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


def llama_bench(rows, n_prompt, n_gen, depth=0):
    for r in rows or []:
        if r.get("n_prompt") == n_prompt and r.get("n_gen") == n_gen and r.get("n_depth", 0) == depth:
            return r.get("avg_ts")
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", nargs="?")
    ap.add_argument("--model")
    ap.add_argument("--threads", type=int)
    ap.add_argument("--kv-mb", type=int)
    ap.add_argument("--clients", type=int)
    ap.add_argument("--lumen-serve", default="done")
    ap.add_argument("--layout", default="ggml")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--depth", type=int, default=0, help="context depth of the extra pp row (0: none)")
    ap.add_argument("--ntg", type=int, default=128, help="decode steps of the batched test")
    ap.add_argument("--bandwidth", help="lumen bench bandwidth --json output")
    ap.add_argument("--summary", nargs="+", metavar="JSON", help="print one table of these reports")
    ap.add_argument("--json-out", required=True)
    a = ap.parse_args()
    if a.summary:
        summary(a.summary, a.json_out)
    else:
        print_and_save(a)
    return 0


def fmt_value(v, p=2):
    return "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))


def print_table(header, table):
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for t in table:
        print(line(t))


def ratio_cells(r):
    worst = r.get("worst_ratio")
    return ("-" if r["ratio"] is None else f"{r['ratio']:.2f}x",
            "-" if worst is None else f"{worst:.2f}x")


def summary(paths, json_out):
    """One table: every model's rows (server and perplexity rows only where they ran)."""
    reports = [load_json(p) for p in paths]
    reports = [r for r in reports if r]
    if not reports:
        return
    bw = reports[0].get("bandwidth_gb_per_s")
    print(f"all models, {reports[0]['threads']} threads, lumen weight layout {reports[0]['layout']}, "
          f"lumen CPU path {reports[0].get('lumen_cpu_path') or '-'}, "
          f"stream-read bandwidth {fmt_value(bw, 1)} GB/s")
    header = ["model", "figure", "lumen", "llama.cpp", "median ratio", "worst round", "rounds", "llama.cpp flags"]
    table = []
    for rep in reports:
        name = os.path.basename(rep["model"])
        for r in rep["rows"]:
            if r["lumen"] is None and r["llama_cpp"] is None:
                continue
            med, worst = ratio_cells(r)
            table.append([name, r["figure"], fmt_value(r["lumen"]), fmt_value(r["llama_cpp"]), med, worst,
                          str(sum(1 for p in r["rounds"] if len(p) == 2 and p[0] is not None and p[1])),
                          rep.get("llama_flags") or "-"])
    print_table(header, table)
    print()
    with open(json_out, "w") as f:
        json.dump({"reports": reports}, f, indent=2)


def print_and_save(a):
    d = a.run_dir
    j = lambda name: load_json(os.path.join(d, name))

    rounds = sorted({int(n.split(".r")[1].split(".")[0]) for n in os.listdir(d)
                     if n.startswith(("lumen-", "llama-")) and ".r" in n and n.split(".r")[1].split(".")[0].isdigit()})
    per_round = [{
        "lumen_pptg": j(f"lumen-pptg.r{i}.json"),
        "llama_pptg": j(f"llama-pptg.r{i}.json"),
        "lumen_depth": j(f"lumen-depth.r{i}.json"),
        "llama_depth": j(f"llama-depth.r{i}.json"),
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
        ratios = [p[0] / p[1] for p in pairs if p[0] is not None and p[1]]
        ratio = median(ratios)
        # The worst round: the lowest ratio where higher is better, the highest where lower is.
        worst = (max(ratios) if kind == "lower" else min(ratios)) if ratios else None
        if kind == "budget":
            met = None if lumen is None else lumen <= target
        elif ratio is None or target is None:
            met = None
        else:
            met = ratio >= target if kind == "higher" else ratio <= target
        rows.append({"figure": figure, "lumen": lumen, "llama_cpp": llama, "ratio": ratio,
                     "worst_ratio": worst, "target": target, "kind": kind, "met": met, "note": note,
                     "rounds": [list(p) for p in pairs]})

    pp, tg = a.pp, a.tg
    tg_pairs = [(lumen_test(r["lumen_pptg"], f"tg{tg}"), llama_bench(r["llama_pptg"], 0, tg)) for r in per_round]
    if pp:
        row(f"pp{pp} t/s", [(lumen_test(r["lumen_pptg"], f"pp{pp}"), llama_bench(r["llama_pptg"], pp, 0)) for r in per_round], 2.0)
    if tg:
        row(f"tg{tg} t/s", tg_pairs, 1.3)
    if pp and a.depth:
        # Not `d`: that is the run folder, read again below.
        dp = a.depth
        row(f"pp{pp} at depth {dp} t/s", [(lumen_test(r["lumen_depth"], f"pp{pp}@d{dp}"),
                                           llama_bench(r["llama_depth"], pp, 0, dp)) for r in per_round], 1.5)
    # Each engine's share of the single-stream decode bound, from the median tg figures.
    bw = _dig(load_json(a.bandwidth), ["best_gb_per_s"]) if a.bandwidth else None
    per_token = decode_bytes_per_token(a.model)
    bound = bw * 1e9 / per_token if bw else None
    if tg and bound:
        share = lambda v: None if v is None else 100 * v / bound
        rows.append({"figure": f"tg{tg} share of bound % ({per_token / 1e9:.2f} GB/token, "
                               f"{bw:.1f} GB/s -> {bound:.1f} t/s)",
                     "lumen": share(median([p[0] for p in tg_pairs])),
                     "llama_cpp": share(median([p[1] for p in tg_pairs])), "ratio": None,
                     "worst_ratio": None, "target": 85.0, "kind": "info",
                     "met": None, "note": "", "rounds": []})
    cpu_path = next((r["lumen_pptg"].get("simd") for r in per_round if r["lumen_pptg"]), None) or \
        next((r["lumen_b"].get("simd") for r in per_round if r["lumen_b"]), None)
    try:
        with open(os.path.join(d, "llama-no-repack")) as f:
            llama_flags = "repack off (" + f.read().strip() + " with repacking)"
    except OSError:
        llama_flags = ""
    batched, engine = set(), set()
    for r in per_round:
        for t in (r["lumen_b"] or {}).get("results", []):
            (engine if t.get("kind") == "engine" else batched).add(t["batch"])
        batched |= {k for k in r["llama_b"] if k}
    for b in sorted(batched):
        target = {16: 3.0, 32: 5.0}.get(b)
        row(f"batched decode B={b} S_TG t/s",
            [(lumen_test(r["lumen_b"], f"tg{a.ntg}@b{b}"), (r["llama_b"].get(b) or {}).get("speed_tg")) for r in per_round], target)
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

    if a.lumen_serve == "skipped":
        rows[:] = [r for r in rows if not r["figure"].startswith(("server", "idle server"))]
    # Perplexity on the committed text (lower is better; the ratio should stay near 1).
    llama_ppl = read_llama_ppl(os.path.join(d, "llama-ppl.log"))
    for layout in ("exact", "packed"):
        ppl = get(j(f"lumen-ppl-{layout}.json"), "perplexity")
        row(f"perplexity ({layout} layout)", [(ppl, llama_ppl)], 1.005, kind="lower",
            note="fixtures/perplexity/gpl-3.0.txt, 512-token chunks, as llama-perplexity")

    fmt = fmt_value
    header = ["figure", "lumen", "llama.cpp", "median ratio", "worst round", "target", "met", "per-round ratios"]
    table = []
    for r in rows:
        if r["lumen"] is None and r["llama_cpp"] is None:
            continue  # not measured in this run (server, perplexity skipped)
        if r["kind"] == "budget":
            target = f"<= {r['target']} MiB"
        elif r["target"] is None:
            target = ""
        elif r["kind"] == "info":
            target = f">= {r['target']:.0f} %"
        else:
            target = (">= " if r["kind"] == "higher" else "<= ") + f"{r['target']}x"
        met = {True: "yes", False: "NO", None: "-"}[r["met"]]
        med, worst = ratio_cells(r)
        table.append([r["figure"], fmt(r["lumen"]), fmt(r["llama_cpp"]), med, worst, target, met,
                      ", ".join(f"{p[0] / p[1]:.2f}" for p in r["rounds"] if len(p) == 2 and p[0] is not None and p[1])])
    print()
    print(f"model {os.path.basename(a.model)}, {a.threads} threads, lumen weight layout {a.layout}, "
          f"lumen CPU path {cpu_path or '-'}, stream-read bandwidth {fmt(bw, 1)} GB/s"
          + (f", llama.cpp {llama_flags}" if llama_flags else ""))
    print_table(header, table)
    notes = {}
    for r in rows:
        if r["lumen"] is None and r["llama_cpp"] is None:
            continue
        for n in filter(None, r["note"].split("; ")):
            notes.setdefault(n, []).append(r["figure"])
    for n, figures in notes.items():
        print(f"note: {n} ({', '.join(figures)})")
    print()

    out = {"model": a.model, "threads": a.threads, "clients": a.clients, "kv_mb": a.kv_mb, "layout": a.layout,
           "run_dir": d, "rows": rows, "lumen_cpu_path": cpu_path, "bandwidth_gb_per_s": bw,
           "decode_bytes_per_token": per_token, "llama_flags": llama_flags,
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
