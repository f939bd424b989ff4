#!/usr/bin/env python3
"""What explanations cost interactive traffic: chat TTFT p50 alone, then beside 20 concurrent
`/v1/explain` requests kept in flight.

    make bench-explain          # or: target/venv/bin/python scripts/bench-explain.py
    SAMPLES=40 EXPLAINS=20 make bench-explain

One `lumen serve --enable-explain` is started. The interactive probe sends short streamed chat
requests one after another and times the first content chunk. Phase 1 measures it on an idle
server; phase 2 keeps EXPLAINS clients each posting explanations back to back (occlusion by
word over a ~40-word prompt with a 16-token completion, plus a logit lens) and measures again.
The issue's target: p50 TTFT rises by at most 1.5x. Prints both, the ratio, and how many
explanations finished in phase 2.
"""

import json
import os
import statistics
import subprocess
import sys
import threading
import time

import httpx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUMEN = os.path.join(ROOT, "target", "release", "lumen")
MODEL = os.environ.get("MODEL", "smollm2")
SAMPLES = int(os.environ.get("SAMPLES", "30"))
EXPLAINS = int(os.environ.get("EXPLAINS", "20"))
PORT = int(os.environ.get("PORT", "18193"))
BASE = f"http://127.0.0.1:{PORT}"

PROMPT = ("The old lighthouse keeper climbed the narrow stairs every evening to light the lamp, "
          "while the fishermen in the harbour below mended their nets and told stories about the "
          "storm that had sunk three ships the winter before. Tonight the sea was calm and the")


def ttft(client):
    t0 = time.perf_counter()
    with client.stream("POST", BASE + "/v1/chat/completions", json={
            "model": MODEL, "max_tokens": 8, "temperature": 0, "stream": True,
            "messages": [{"role": "user", "content": "Name a colour."}]}) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"' in line and '"content":""' not in line:
                return time.perf_counter() - t0
    return time.perf_counter() - t0


def probe():
    with httpx.Client(timeout=300) as c:
        ttft(c)  # warm-up
        return [ttft(c) for _ in range(SAMPLES)]


def main():
    log = open(os.path.join(ROOT, "target", "bench-explain-server.log"), "w")
    server = subprocess.Popen([LUMEN, "serve", "--port", str(PORT), "--enable-explain",
                               "--model", MODEL, "--preload", MODEL], stdout=log, stderr=log)
    try:
        for _ in range(600):
            try:
                if httpx.get(BASE + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        alone = probe()
        stop = threading.Event()
        done, refused = [0], [0]

        def explainer():
            with httpx.Client(timeout=600) as c:
                while not stop.is_set():
                    r = c.post(BASE + "/v1/explain", json={
                        "model": MODEL, "prompt": PROMPT, "max_tokens": 16,
                        "occlusion": {"spans": "word"}, "logit_lens": {"top_k": 3}})
                    if r.status_code == 200:
                        done[0] += 1
                    else:
                        refused[0] += 1
                        time.sleep(0.1)

        workers = [threading.Thread(target=explainer) for _ in range(EXPLAINS)]
        for w in workers:
            w.start()
        time.sleep(2.0)
        busy = probe()
        stop.set()
        for w in workers:
            w.join()
        a, b = statistics.median(alone), statistics.median(busy)
        print(json.dumps({"samples": SAMPLES, "explains_in_flight": EXPLAINS,
                          "ttft_p50_alone_ms": round(a * 1000, 1),
                          "ttft_p50_with_explains_ms": round(b * 1000, 1),
                          "ratio": round(b / a, 2), "explains_finished": done[0],
                          "explains_refused": refused[0]}, indent=1))
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
