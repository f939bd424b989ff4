#!/usr/bin/env python3
"""Batch jobs versus interactive traffic (issue 16's benchmark).

Starts `lumen serve` on a throwaway database, then measures with `lumen bench serve`
(streaming chat, 4 concurrent clients):

1. interactive TTFT and ITL p50 on an idle server;
2. the same while a 2,000-line batch runs, and the batch's tokens/s meanwhile;
3. the batch's tokens/s alone, once the interactive load stops.

Batch lines use ignore_eos, so a line's tokens are exactly its max_tokens, and throughput is
counted from the batch's request_counts. Standard library only; prints a table and writes
target/bench/batch.json. Not a test: nothing here asserts a timing.

Environment: LUMEN (binary, default target/release/lumen), THREADS (default 2), MODEL
(default smollm2), LINES (2000), BATCH_TOKENS (64), REQUESTS (32), MAX_TOKENS (64),
ALONE_S (20), BATCH_CONCURRENCY (the server's --batch-concurrency, 32),
BATCH_CONCURRENCY_BUSY (its --batch-concurrency-busy, 1).
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUMEN = os.environ.get("LUMEN", os.path.join(ROOT, "target/release/lumen"))
THREADS = os.environ.get("THREADS", "2")
MODEL = os.environ.get("MODEL", "smollm2")
LINES = int(os.environ.get("LINES", "2000"))
BATCH_TOKENS = int(os.environ.get("BATCH_TOKENS", "64"))
REQUESTS = os.environ.get("REQUESTS", "32")
MAX_TOKENS = os.environ.get("MAX_TOKENS", "64")
ALONE_S = float(os.environ.get("ALONE_S", "20"))
BATCH_CONCURRENCY = os.environ.get("BATCH_CONCURRENCY", "32")
BATCH_CONCURRENCY_BUSY = os.environ.get("BATCH_CONCURRENCY_BUSY", "1")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(base, path):
    with urllib.request.urlopen(base + path, timeout=30) as r:
        return json.loads(r.read())


def post(base, path, body):
    req = urllib.request.Request(
        base + path, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def bench(base):
    out = subprocess.run(
        [LUMEN, "bench", "serve", "--url", base, "-c", "4", "--requests", REQUESTS,
         "--max-tokens", MAX_TOKENS, "--chat", "--model", MODEL, "--json"],
        check=True, capture_output=True, text=True,
    )
    r = json.loads(out.stdout)
    assert r["errors"] == 0, r["error_samples"]
    return {"ttft_p50_ms": r["ttft_ms"]["p50"], "itl_p50_ms": r["itl_ms"]["p50"],
            "tokens_per_s": r["output_tokens_per_s"], "duration_s": r["duration_s"]}


def done_lines(base, batch_id):
    c = get(base, f"/v1/batches/{batch_id}")["request_counts"]
    return c["completed"] + c["failed"], time.monotonic()


def main():
    tmp = tempfile.mkdtemp(prefix="lumen-bench-batch-")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log = open(os.path.join(tmp, "server.log"), "w")
    server = subprocess.Popen(
        [LUMEN, "serve", "--port", str(port), "--threads", THREADS, "--model", MODEL,
         "--preload", MODEL, "--database-url", os.path.join(tmp, "lumen.db"),
         "--files-dir", os.path.join(tmp, "files"), "--no-ui",
         "--batch-concurrency", BATCH_CONCURRENCY,
         "--batch-concurrency-busy", BATCH_CONCURRENCY_BUSY] + os.environ.get("SERVER_FLAGS", "").split(),
        stdout=log, stderr=log,
    )
    try:
        deadline = time.time() + 120
        while True:
            try:
                if get(base, "/ready")["status"] == "ready":
                    break
            except Exception:
                pass
            if time.time() > deadline or server.poll() is not None:
                sys.exit(f"server did not become ready; see {log.name}")
            time.sleep(0.2)

        bench(base)  # warms the prefix cache: both timed runs send the same prompts
        idle = bench(base)
        print(f"idle:       TTFT p50 {idle['ttft_p50_ms']:.1f} ms, ITL p50 {idle['itl_p50_ms']:.1f} ms")

        path = os.path.join(tmp, "input.jsonl")
        with open(path, "w") as f:
            for i in range(LINES):
                f.write(json.dumps({
                    "custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions",
                    "body": {"model": MODEL, "max_tokens": BATCH_TOKENS, "ignore_eos": True,
                             "temperature": 0.7, "seed": i,
                             "messages": [{"role": "user",
                                           "content": f"Write a short story about item {i}."}]},
                }) + "\n")
        out = subprocess.run([LUMEN, "batch", "submit", path, "--url", base],
                             check=True, capture_output=True, text=True)
        batch_id = out.stdout.strip()
        # Let the batch fill the engine before timing anything.
        while done_lines(base, batch_id)[0] < 8:
            time.sleep(0.2)

        d0, t0 = done_lines(base, batch_id)
        busy = bench(base)
        d1, t1 = done_lines(base, batch_id)
        during = (d1 - d0) * BATCH_TOKENS / (t1 - t0)
        print(f"with batch: TTFT p50 {busy['ttft_p50_ms']:.1f} ms, ITL p50 {busy['itl_p50_ms']:.1f} ms, "
              f"batch {during:.0f} tokens/s")

        time.sleep(2)
        d2, t2 = done_lines(base, batch_id)
        time.sleep(ALONE_S)
        d3, t3 = done_lines(base, batch_id)
        alone = (d3 - d2) * BATCH_TOKENS / (t3 - t2)
        print(f"batch alone: {alone:.0f} tokens/s")
        post(base, f"/v1/batches/{batch_id}/cancel", {})

        report = {
            "threads": THREADS, "model": MODEL, "batch_lines": LINES,
            "batch_concurrency": int(BATCH_CONCURRENCY),
            "batch_concurrency_busy": int(BATCH_CONCURRENCY_BUSY),
            "batch_max_tokens": BATCH_TOKENS, "interactive_requests": int(REQUESTS),
            "interactive_max_tokens": int(MAX_TOKENS), "concurrency": 4,
            "idle": idle, "with_batch": busy,
            "batch_tokens_per_s_during_interactive": during,
            "batch_tokens_per_s_alone": alone,
            "ttft_ratio": busy["ttft_p50_ms"] / idle["ttft_p50_ms"],
            "itl_ratio": busy["itl_p50_ms"] / idle["itl_p50_ms"],
            "batch_share": during / alone if alone else None,
        }
        print()
        print("| measure | idle | with a 2,000-line batch | ratio |")
        print("| --- | --- | --- | --- |")
        print(f"| interactive TTFT p50 (ms) | {idle['ttft_p50_ms']:.1f} | {busy['ttft_p50_ms']:.1f} | {report['ttft_ratio']:.2f}x |")
        print(f"| interactive ITL p50 (ms) | {idle['itl_p50_ms']:.1f} | {busy['itl_p50_ms']:.1f} | {report['itl_ratio']:.2f}x |")
        print(f"| batch tokens/s | {alone:.0f} (alone) | {during:.0f} | {report['batch_share']:.2f} |")
        os.makedirs(os.path.join(ROOT, "target/bench"), exist_ok=True)
        with open(os.path.join(ROOT, "target/bench/batch.json"), "w") as f:
            json.dump(report, f, indent=2)
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
