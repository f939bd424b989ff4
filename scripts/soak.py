#!/usr/bin/env python3
"""Soak benchmark: `lumen serve` under mixed load for SOAK_SECONDS (default 1800).

Workers (SOAK_WORKERS, default 6) loop over: streaming chats, non-streaming completions,
streams dropped part-way, embeddings and bad requests (a 400 is the expected answer). VmRSS
is sampled every SOAK_SAMPLE seconds (default 10). At the end it checks that

  * RSS at the end is within 10 % of RSS after the warm-up (SOAK_WARMUP, default 120 s),
  * no request got a 5xx (or a transport error other than the intended disconnects),
  * the gauges (running, waiting, KV usage, embeddings in flight) are back to zero,

prints a summary table, writes target/bench/soak-<time>.json, and exits 1 when a check fails.

Run with the venv of `make venv` (it needs httpx): `make soak` or
`SOAK_SECONDS=600 target/venv/bin/python scripts/soak.py`. LUMEN_BIN picks the binary
(default target/release/lumen), SOAK_MODEL / SOAK_EMBED_MODEL the models.
"""

import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.environ.get("LUMEN_BIN", os.path.join(ROOT, "target/release/lumen"))
SECONDS = float(os.environ.get("SOAK_SECONDS", "1800"))
WARMUP = float(os.environ.get("SOAK_WARMUP", "120"))
SAMPLE = float(os.environ.get("SOAK_SAMPLE", "10"))
WORKERS = int(os.environ.get("SOAK_WORKERS", "6"))
THREADS = os.environ.get("SOAK_THREADS", "2")
MODEL = os.environ.get("SOAK_MODEL", "smollm2")
EMBED_MODEL = os.environ.get("SOAK_EMBED_MODEL", "all-minilm-l6-v2")
KEY = "soak-key"
RSS_TOLERANCE = 0.10

KINDS = ["stream_chat", "completion", "dropped_stream", "embedding", "bad_request"]
WEIGHTS = [3, 2, 2, 2, 1]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def scrape(base):
    text = httpx.get(base + "/metrics", timeout=30).text
    out = {}
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
    return out


GAUGES = ["lumen:num_requests_running", "lumen:num_requests_waiting", "lumen:kv_cache_usage_perc", "lumen:embedding_requests_in_flight"]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.count = {k: 0 for k in KINDS}
        self.status = {}
        self.errors = []  # unexpected: 5xx, transport errors, wrong statuses
        self.latency = {k: [] for k in KINDS}

    def record(self, kind, status, took, ok, detail=""):
        with self.lock:
            self.count[kind] += 1
            self.status[str(status)] = self.status.get(str(status), 0) + 1
            self.latency[kind].append(took)
            if not ok:
                self.errors.append({"kind": kind, "status": status, "detail": detail[:300], "t": time.time()})


def worker(base, stats, stop, seed):
    rng = random.Random(seed)
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base, headers=headers, timeout=300) as c:
        while not stop.is_set():
            kind = rng.choices(KINDS, WEIGHTS)[0]
            started = time.monotonic()
            status, ok, detail = 0, True, ""
            try:
                if kind == "stream_chat":
                    body = {"model": MODEL, "messages": [{"role": "user", "content": f"Tell me about the number {rng.randint(0, 10**6)}."}], "max_tokens": rng.randint(8, 64), "stream": True, "temperature": 0.8, "seed": rng.randint(0, 1000)}
                    with c.stream("POST", "/v1/chat/completions", json=body) as r:
                        status = r.status_code
                        text = "".join(r.iter_text())
                        ok = status == 200 and "data: [DONE]" in text
                        detail = text[-300:]
                elif kind == "completion":
                    body = {"model": MODEL, "prompt": f"Item {rng.randint(0, 10**6)}: once upon a time", "max_tokens": rng.randint(4, 48), "temperature": 0, "n": rng.choice([1, 1, 2])}
                    r = c.post("/v1/completions", json=body)
                    status, ok, detail = r.status_code, r.status_code == 200, r.text
                elif kind == "dropped_stream":
                    body = {"model": MODEL, "prompt": f"A long story, part {rng.randint(0, 10**6)}:", "max_tokens": 512, "ignore_eos": True, "stream": True}
                    with c.stream("POST", "/v1/completions", json=body) as r:
                        status = r.status_code
                        ok = status == 200
                        want = rng.randint(1, 12)
                        for i, _ in enumerate(r.iter_lines()):
                            if i >= want:
                                break
                    # Leaving the block closes the connection mid-stream.
                elif kind == "embedding":
                    n = rng.randint(1, 16)
                    body = {"model": EMBED_MODEL, "input": [f"sentence {rng.randint(0, 10**6)} about soaking" for _ in range(n)]}
                    r = c.post("/v1/embeddings", json=body)
                    status = r.status_code
                    ok = status == 200 and len(r.json()["data"]) == n
                    detail = r.text
                else:
                    bad = rng.choice([
                        b"{not json",
                        json.dumps({"model": MODEL, "prompt": "x", "max_tokens": -5}).encode(),
                        json.dumps({"model": MODEL, "messages": [], "n": 1000}).encode(),
                        json.dumps({"model": MODEL, "prompt": [10**9]}).encode(),
                        b"[" * 5000 + b"]" * 5000,
                        json.dumps({"model": EMBED_MODEL, "input": []}).encode(),
                    ])
                    path = rng.choice(["/v1/completions", "/v1/chat/completions", "/v1/embeddings"])
                    r = c.post(path, content=bad, headers={"Content-Type": "application/json"})
                    status = r.status_code
                    ok = 400 <= status < 500 and "error" in r.json()
                    detail = r.text
            except Exception as e:  # transport errors count as failures
                ok, detail = False, f"{type(e).__name__}: {e}"
            stats.record(kind, status, time.monotonic() - started, ok, detail)


def main():
    os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = os.path.join(ROOT, "target/bench", f"soak-server-{int(time.time())}.log")
    log = open(log_path, "w")
    server = subprocess.Popen(
        [BIN, "serve", "--host", "127.0.0.1", "--port", str(port), "--threads", THREADS, "--api-key", KEY, "--model", MODEL, "--model", EMBED_MODEL, "--preload", MODEL, "--preload", EMBED_MODEL],
        stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=dict(os.environ, LUMEN_LOG="info"),
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(base + "/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"server did not become ready; see {log_path}")
        time.sleep(0.2)
    idle_rss = proc_kib(server.pid, "VmRSS")
    print(f"soak: {BIN} on {base}, {WORKERS} workers, {SECONDS:.0f}s (warm-up {WARMUP:.0f}s); idle VmRSS {idle_rss / 1024:.1f} MiB", flush=True)

    stats, stop = Stats(), threading.Event()
    threads = [threading.Thread(target=worker, args=(base, stats, stop, i), daemon=True) for i in range(WORKERS)]
    started = time.monotonic()
    for t in threads:
        t.start()
    samples = []
    died = None
    while time.monotonic() - started < SECONDS:
        time.sleep(min(SAMPLE, max(0.0, SECONDS - (time.monotonic() - started))))
        if server.poll() is not None:
            died = server.returncode
            break
        t = time.monotonic() - started
        samples.append({"t": round(t, 1), "rss_kib": proc_kib(server.pid, "VmRSS"), "vmsize_kib": proc_kib(server.pid, "VmSize"), "requests": sum(stats.count.values())})
        s = samples[-1]
        print(f"  t={t:6.0f}s  VmRSS {s['rss_kib'] / 1024:7.1f} MiB  VmSize {s['vmsize_kib'] / 1024:7.1f} MiB  requests {s['requests']}  unexpected {len(stats.errors)}", flush=True)
    stop.set()
    for t in threads:
        t.join(timeout=330)

    # Gauges back to zero (the dropped streams' cancels land within a step or two).
    gauges, settled = {}, None
    if died is None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 15:
            m = scrape(base)
            gauges = {g: m.get(g, 0.0) for g in GAUGES}
            if all(v == 0 for v in gauges.values()):
                settled = round(time.monotonic() - t0, 2)
                break
            time.sleep(0.2)
        health = httpx.get(base + "/health", timeout=10).status_code
        server.terminate()
        try:
            exit_status = server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            exit_status = "killed after 60s"
    else:
        health, exit_status = None, died
    log.close()

    warm = [s for s in samples if s["t"] >= WARMUP] or samples
    rss_warm = warm[0]["rss_kib"] if warm else 0
    rss_end = samples[-1]["rss_kib"] if samples else 0
    rss_max = max((s["rss_kib"] for s in samples), default=0)
    growth = (rss_end - rss_warm) / rss_warm if rss_warm else float("inf")
    fivexx = {k: v for k, v in stats.status.items() if k.startswith("5")}
    checks = {
        "server alive to the end": died is None,
        f"RSS end within {RSS_TOLERANCE:.0%} of RSS after warm-up": abs(growth) <= RSS_TOLERANCE,
        "no 5xx": not fivexx,
        "no unexpected answers or transport errors": not stats.errors,
        "gauges back to zero": settled is not None,
        "clean exit on SIGTERM": exit_status == 0,
    }
    total = sum(stats.count.values())
    elapsed = time.monotonic() - started
    print()
    print(f"{'kind':<16} {'requests':>9} {'p50 s':>8} {'p99 s':>8}")
    for k in KINDS:
        lat = sorted(stats.latency[k])
        p50 = statistics.median(lat) if lat else 0
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else 0
        print(f"{k:<16} {stats.count[k]:>9} {p50:>8.3f} {p99:>8.3f}")
    print(f"{'total':<16} {total:>9}   ({total / max(elapsed, 1e-9):.1f} req/s over {elapsed:.0f}s)")
    print(f"statuses: {dict(sorted(stats.status.items()))}")
    print(f"VmRSS: idle {idle_rss / 1024:.1f} MiB, after warm-up (t={warm[0]['t'] if warm else 0:.0f}s) {rss_warm / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB ({growth:+.1%}), max {rss_max / 1024:.1f} MiB")
    print(f"gauges at the end: {gauges} (zero after {settled}s); /health {health}; exit status {exit_status}")
    for e in stats.errors[:10]:
        print(f"  unexpected: {e}")
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")

    out = os.path.join(ROOT, "target/bench", f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(out, "w") as f:
        json.dump({
            "seconds": SECONDS, "warmup": WARMUP, "workers": WORKERS, "binary": BIN, "models": [MODEL, EMBED_MODEL],
            "requests": stats.count, "statuses": stats.status, "unexpected": stats.errors[:100],
            "rss_kib": {"idle": idle_rss, "after_warmup": rss_warm, "end": rss_end, "max": rss_max, "growth": growth},
            "gauges_end": gauges, "gauges_zero_after_s": settled, "exit_status": str(exit_status),
            "samples": samples, "checks": checks, "server_log": log_path,
        }, f, indent=1)
    print(f"wrote {out}")
    sys.exit(0 if all(checks.values()) else 1)


if __name__ == "__main__":
    main()
