#!/usr/bin/env python3
"""Mixed-load benchmark: 16 chat streams and embedding requests on one `lumen serve`.

Starts the server with a chat model and an embedding model preloaded (they share one compute
pool), then runs three phases of DURATION seconds each (default 20):

  chat alone        16 streaming chat clients, tokens per second
  embeddings alone  EMBED_CLIENTS clients (default 4) sending 16 sentences each, inputs/s
  mixed             both at once

and prints each rate, plus the mixed phase's normalized total: chat share + embedding share,
each the mixed rate over the rate alone. A total of 1.0 or more means running both together
gets at least as much work done as running either alone (no oversubscription loss).

Only the standard library; run it with any python3:

    python3 scripts/bench-mixed.py                      # uses target/release/lumen
    THREADS=2 DURATION=30 python3 scripts/bench-mixed.py
    LUMEN_BIN=/path/to/older/lumen python3 scripts/bench-mixed.py   # compare another build

Results go to stdout and to target/bench/mixed-<time>.json.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = os.environ.get("LUMEN_BIN") or str(
    Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "lumen"
)
THREADS = os.environ.get("THREADS", "2")
DURATION = float(os.environ.get("DURATION", "20"))
CHAT_STREAMS = int(os.environ.get("CHAT_STREAMS", "16"))
EMBED_CLIENTS = int(os.environ.get("EMBED_CLIENTS", "4"))
CHAT_MODEL = os.environ.get("MODEL", "smollm2")
EMBED_MODEL = os.environ.get("EMBED_MODEL", "all-minilm-l6-v2")

SENTENCES = [
    f"Sentence {i}: models are loaded on demand and share one pool of compute threads."
    for i in range(16)
]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(port, path, body, stream=False):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    c.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    return c, c.getresponse()


def chat_client(port, stop, counts, i):
    n = 0
    while not stop.is_set():
        body = {
            "model": CHAT_MODEL,
            "messages": [{"role": "user", "content": f"Tell me a story about the number {i}."}],
            "max_tokens": 64,
            "stream": True,
            "ignore_eos": True,
        }
        c, r = post(port, "/v1/chat/completions", body)
        if r.status != 200:
            raise SystemExit(f"chat: HTTP {r.status}: {r.read()[:200]}")
        for line in r:
            if stop.is_set():
                break
            if line.startswith(b"data: {") and b'"content"' in line:
                n += 1
        c.close()
    counts[i] = n


def embed_client(port, stop, counts, i):
    n = 0
    while not stop.is_set():
        c, r = post(port, "/v1/embeddings", {"model": EMBED_MODEL, "input": SENTENCES})
        data = r.read()
        if r.status != 200:
            raise SystemExit(f"embeddings: HTTP {r.status}: {data[:200]}")
        n += len(SENTENCES)
        c.close()
    counts[i] = n


def phase(port, chats, embeds):
    stop = threading.Event()
    chat_counts, embed_counts = [0] * chats, [0] * embeds
    threads = [threading.Thread(target=chat_client, args=(port, stop, chat_counts, i)) for i in range(chats)]
    threads += [threading.Thread(target=embed_client, args=(port, stop, embed_counts, i)) for i in range(embeds)]
    for t in threads:
        t.start()
    time.sleep(DURATION)
    stop.set()
    for t in threads:
        t.join()
    return sum(chat_counts) / DURATION, sum(embed_counts) / DURATION


def main():
    port = free_port()
    cmd = [BIN, "serve", "--port", str(port), "--threads", THREADS,
           "--model", CHAT_MODEL, "--model", EMBED_MODEL]
    # Builds from before models loaded on demand load every --model at start and have no
    # --preload; accepting them lets the same script measure the old per-engine pools.
    help_text = subprocess.run([BIN, "serve", "--help"], capture_output=True, text=True).stdout
    if "--preload" in help_text:
        cmd += ["--preload", CHAT_MODEL, "--preload", EMBED_MODEL]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit("server not ready")
        phase(port, 2, 1)  # warm-up, not reported
        chat_alone, _ = phase(port, CHAT_STREAMS, 0)
        _, embed_alone = phase(port, 0, EMBED_CLIENTS)
        chat_mixed, embed_mixed = phase(port, CHAT_STREAMS, EMBED_CLIENTS)
    finally:
        server.terminate()
        server.wait(timeout=60)
    total = chat_mixed / chat_alone + embed_mixed / embed_alone
    result = {
        "threads": int(THREADS), "duration_s": DURATION, "chat_streams": CHAT_STREAMS,
        "embed_clients": EMBED_CLIENTS,
        "chat_alone_tok_s": round(chat_alone, 1), "embed_alone_inputs_s": round(embed_alone, 1),
        "chat_mixed_tok_s": round(chat_mixed, 1), "embed_mixed_inputs_s": round(embed_mixed, 1),
        "normalized_total": round(total, 3),
    }
    print(f"chat alone:        {chat_alone:8.1f} tokens/s ({CHAT_STREAMS} streams)")
    print(f"embeddings alone:  {embed_alone:8.1f} inputs/s ({EMBED_CLIENTS} clients x {len(SENTENCES)} inputs)")
    print(f"mixed:             {chat_mixed:8.1f} tokens/s + {embed_mixed:.1f} inputs/s")
    print(f"normalized total:  {total:8.3f} (chat {chat_mixed / chat_alone:.3f} + embeddings {embed_mixed / embed_alone:.3f}; >= 1 means no loss)")
    out = ROOT / "target" / "bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"mixed-{int(time.time())}.json").write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
