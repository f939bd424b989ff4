#!/usr/bin/env python3
"""Speculative decoding's gain: single-stream tokens/s with prompt lookup on and off.

    make bench-speculative                  # or: target/venv/bin/python scripts/bench-speculative.py
    ROUNDS=5 MAX_TOKENS=384 make bench-speculative

Two `lumen serve` processes on the same model, one with `--num-speculative-tokens 0`, are
started side by side; each round sends every workload to one and then the other (order
alternating between rounds), one request at a time, so a noisy neighbour slows both alike.
Workloads: edit-and-repeat tasks, where the answer repeats long runs of the prompt (the
issue's targets: at least 1.5x), and free writing, where it must cost nothing (at least
0.95x). Greedy or seeded decoding, so both servers must return the same text; the script
checks it.
Reported per workload: median tokens/s of each, median and worst per-round ratio, and the
share of draft tokens accepted. Tokens/s is the decode rate after the first token (streamed).
"""

import json
import os
import re
import statistics
import subprocess
import sys
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUMEN = os.path.join(ROOT, "target", "release", "lumen")
MODEL = os.environ.get("MODEL", "smollm2")
ROUNDS = int(os.environ.get("ROUNDS", "3"))
MAX_TOKENS = int(os.environ.get("MAX_TOKENS", "256"))
THREADS = os.environ.get("THREADS", "")
PORTS = {"off": 18191, "on": 18192}

CODE = '''def parse_config(path):
    """Reads a key=value file into a dict, skipping comments and blank lines."""
    result = {}
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if "=" not in line:
                raise ValueError(f"line {number}: expected key=value, got {line!r}")
            key, value = line.split("=", 1)
            key = key.strip()
            value = value.strip()
            if key in result:
                raise ValueError(f"line {number}: duplicate key {key!r}")
            result[key] = value
    return result


def merge_configs(base, override):
    """Returns base updated with override, without changing either."""
    merged = dict(base)
    for key, value in override.items():
        merged[key] = value
    return merged
'''

TEXT = (
    "The lighthouse at Port Ellen was built in 1832 to guide ships through the narrow channel "
    "between the islands. For more than a century it was kept by the same family, who lived in "
    "the small stone cottage at its foot and climbed the spiral stairs every evening to light "
    "the lamp. In 1958 the light was automated, and the last keeper, Margaret Ross, moved to the "
    "village, where she taught at the school until she retired. Today the cottage is a museum, "
    "and visitors can climb to the lantern room on summer afternoons."
)

# (endpoint, body) per workload. The edit-and-repeat ones are phrased so that the 135M default
# model really repeats (it ignores "output the whole code" but follows "copy ... exactly").
WORKLOADS = {
    "code edit": ("chat/completions", {"messages": [
        {"role": "user", "content": f"{CODE}\nCopy the code above exactly, renaming parse_config to load_config."},
    ]}),
    "quote+summary": ("completions", {
        "prompt": f"Article:\n{TEXT}\n\nThe article quoted word for word, then summarised in one sentence:\n",
    }),
    "free writing": ("chat/completions", {"messages": [
        {"role": "user", "content": "Write a short story about a fox who learns to play the violin."},
    ]}),
    # Sampled at temperature 1 (seeded, so both servers draw the same text): the lookup's
    # guesses mostly fail here, the case where speculation must cost nothing.
    "free writing, sampled": ("chat/completions", {"temperature": 1.0, "seed": 7, "messages": [
        {"role": "user", "content": "Write a short story about a fox who learns to play the violin."},
    ]}),
}
TARGETS = {"code edit": 1.5, "quote+summary": 1.5, "free writing": 0.95, "free writing, sampled": 0.95}


def start(mode):
    args = [LUMEN, "serve", "--host", "127.0.0.1", "--port", str(PORTS[mode]), "--model", MODEL, "--preload", MODEL]
    if THREADS:
        args += ["--threads", THREADS]
    if mode == "off":
        args += ["--num-speculative-tokens", "0"]
    log = open(os.path.join(ROOT, "target", f"bench-speculative-{mode}.log"), "w")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{PORTS[mode]}/ready", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            sys.exit(f"lumen serve ({mode}) exited; see target/bench-speculative-{mode}.log")
        time.sleep(0.1)
    sys.exit(f"lumen serve ({mode}) did not become ready")


def spec_counters(mode):
    text = httpx.get(f"http://127.0.0.1:{PORTS[mode]}/metrics", timeout=10).text
    out = {"draft": 0.0, "accepted": 0.0}
    for line in text.splitlines():
        for key, name in (("draft", "lumen:spec_decode_draft_tokens_total"), ("accepted", "lumen:spec_decode_accepted_tokens_total")):
            if line.startswith(name):
                out[key] += float(line.rsplit(" ", 1)[1])
    return out


def run(mode, workload):
    """Decode tokens/s of one streamed request (after its first token, so prompt processing,
    which speculation does not touch, does not dilute the figure) and its text."""
    endpoint, payload = workload
    body = {"model": MODEL, "max_tokens": MAX_TOKENS, "temperature": 0,
            "stream": True, "stream_options": {"include_usage": True}, **payload}
    first = last = None
    text, tokens = [], 0
    with httpx.stream("POST", f"http://127.0.0.1:{PORTS[mode]}/v1/{endpoint}", json=body, timeout=600) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            j = json.loads(line[6:])
            if j.get("usage"):
                tokens = j["usage"]["completion_tokens"]
            for c in j.get("choices", []):
                piece = c.get("delta", {}).get("content") if "delta" in c else c.get("text")
                if piece:
                    now = time.monotonic()
                    first = first or now
                    last = now
                    text.append(piece)
    if not first or last <= first or tokens < 2:
        sys.exit(f"{mode}: too short an answer to time")
    return (tokens - 1) / (last - first), "".join(text)


def main():
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "lumen-cli"], cwd=ROOT, check=True)
    procs = {mode: start(mode) for mode in ("off", "on")}
    try:
        for mode in procs:  # warm-up: first requests pay for page faults
            run(mode, WORKLOADS["free writing"])
        rates = {w: {"off": [], "on": []} for w in WORKLOADS}
        accept = {w: [0.0, 0.0] for w in WORKLOADS}
        for r in range(ROUNDS):
            for w, workload in WORKLOADS.items():
                texts = {}
                order = ("off", "on") if r % 2 == 0 else ("on", "off")
                for mode in order:
                    before = spec_counters(mode)
                    rate, texts[mode] = run(mode, workload)
                    after = spec_counters(mode)
                    rates[w][mode].append(rate)
                    if mode == "on":
                        accept[w][0] += after["draft"] - before["draft"]
                        accept[w][1] += after["accepted"] - before["accepted"]
                if texts["on"] != texts["off"]:
                    sys.exit(f"{w}: speculation changed the greedy output")
    finally:
        for p in procs.values():
            p.terminate()
            p.wait()
    log = open(os.path.join(ROOT, "target", "bench-speculative-on.log")).read()
    cpu = re.search(r"cpu_level\W+(\w[\w-]*)", re.sub(r"\x1b\[[0-9;]*m", "", log))
    cpu = cpu.group(1) if cpu else "unknown"

    print(f"model {MODEL}, {ROUNDS} rounds, max_tokens {MAX_TOKENS}, greedy or seeded, one stream; cpu path {cpu}")
    print(f"| workload | off tok/s | on tok/s | ratio (median) | worst round | drafts accepted | target | met |")
    print(f"|---|---|---|---|---|---|---|---|")
    report = {}
    for w in WORKLOADS:
        ratios = [on / off for on, off in zip(rates[w]["on"], rates[w]["off"])]
        med, worst = statistics.median(ratios), min(ratios)
        drafted, accepted = accept[w]
        share = accepted / drafted if drafted else 0.0
        met = "yes" if med >= TARGETS[w] and worst >= min(1.0, TARGETS[w]) * 0.95 else "no"
        print(f"| {w} | {statistics.median(rates[w]['off']):.1f} | {statistics.median(rates[w]['on']):.1f} | "
              f"{med:.2f}x | {worst:.2f}x | {share:.0%} of {int(drafted)} | >= {TARGETS[w]}x | {met} |")
        report[w] = {"off": rates[w]["off"], "on": rates[w]["on"], "ratios": ratios, "drafted": drafted, "accepted": accepted}
    os.makedirs(os.path.join(ROOT, "target", "bench"), exist_ok=True)
    with open(os.path.join(ROOT, "target", "bench", "speculative.json"), "w") as f:
        json.dump({"model": MODEL, "cpu_level": cpu, "rounds": ROUNDS, "max_tokens": MAX_TOKENS, "workloads": report}, f, indent=1)


if __name__ == "__main__":
    main()
