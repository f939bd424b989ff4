#!/usr/bin/env bash
# Embedding throughput, Lumen vs sentence-transformers, on this machine in one run.
#
#   ./scripts/bench-embeddings.sh            # or: make bench-embeddings
#   THREADS=2 ROUNDS=3 ./scripts/bench-embeddings.sh
#
# Both sides embed the same short English sentences (texts in, normalized vectors out, so both
# tokenize) in batches of 1, 32 and 256, with THREADS compute threads (torch.set_num_threads on
# the Python side). Each round runs Lumen then sentence-transformers for every batch size, so a
# busy neighbour slows both alike; the table reports each side's median over ROUNDS rounds and
# the ratio Lumen / sentence-transformers per round (median, worst, and every round). Lumen is measured through its embedding engine (tokenize +
# batched forward passes, no HTTP) by `crates/lumen-engine/examples/embed_throughput.rs`.
#
# sentence-transformers runs from the venv target/st-venv (the one
# scripts/make_embedding_fixtures.py uses); it is created here when missing. The model is read
# from $LUMEN_HOME/models/all-minilm-l6-v2 with the hub switched off.
set -euo pipefail

cd "$(dirname "$0")/.."
THREADS="${THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
VENV=target/st-venv
export LUMEN_HOME="${LUMEN_HOME:-$HOME/.lumen}"
MODEL_DIR="$LUMEN_HOME/models/all-minilm-l6-v2"

if [[ ! -f "$MODEL_DIR/model.safetensors" ]]; then
  echo "bench-embeddings: $MODEL_DIR is missing; run \`make models\`" >&2
  exit 1
fi
if [[ ! -f "$VENV/.installed" ]]; then
  echo "bench-embeddings: creating $VENV with torch and sentence-transformers"
  "${PYTHON:-python3}" -m venv "$VENV"
  "$VENV/bin/python" -m pip install torch sentence-transformers
  echo ok > "$VENV/.installed"
fi

cargo build --release -q -p lumen-engine --example embed_throughput
LUMEN_BIN=target/release/examples/embed_throughput

HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 OMP_NUM_THREADS="$THREADS" \
  "$VENV/bin/python" - "$LUMEN_BIN" "$MODEL_DIR" "$THREADS" "$ROUNDS" <<'PY'
import json
import os
import platform
import statistics
import subprocess
import sys
import time

lumen_bin, model_dir, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

import torch
from sentence_transformers import SentenceTransformer
import sentence_transformers

torch.set_num_threads(threads)
model = SentenceTransformer(model_dir, device="cpu")
model.eval()

# The short sentences scripts/make_embedding_fixtures.py benchmarks on (its BENCH_SENTENCES).
fixture = json.load(open("crates/lumen-models/tests/fixtures/minilm_reference.json"))
SENTENCES = [s["text"] for s in fixture["bench"]]
BATCHES = (1, 32, 256)


def reps_for(batch):
    return min(max(1024 // batch, 4), 256)  # as embed_bench.rs and the example


def lumen(batch):
    out = subprocess.run([lumen_bin, str(batch), str(threads), str(reps_for(batch))],
                         input="\n".join(SENTENCES) + "\n", capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    PATH_RAN.add(f"{result['precision']} linear layers, kernels at {result['cpu_level']}")
    return result["sentences_per_s"]


PATH_RAN = set()


def st(batch):
    sents = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    with torch.no_grad():
        model.encode(sents, batch_size=batch, normalize_embeddings=True)  # warm-up
        reps = reps_for(batch)
        t0 = time.perf_counter()
        for _ in range(reps):
            model.encode(sents, batch_size=batch, normalize_embeddings=True)
        dt = time.perf_counter() - t0
    return batch * reps / dt


print(f"all-MiniLM-L6-v2, {len(SENTENCES)} short sentences cycled, {threads} threads, {rounds} rounds, "
      f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
print(f"sentence-transformers {sentence_transformers.__version__}, torch {torch.__version__}")
results = {b: {"lumen": [], "st": []} for b in BATCHES}
for r in range(rounds):
    for b in BATCHES:
        lu, s = lumen(b), st(b)
        results[b]["lumen"].append(lu)
        results[b]["st"].append(s)
        print(f"  round {r + 1} batch {b:>3}: lumen {lu:8.1f}/s  sentence-transformers {s:8.1f}/s")
print()
print(f"Lumen ran: {', '.join(sorted(PATH_RAN))} (LUMEN_EMBED_PRECISION=f32 for the f32 path)")
# Each round ran both sides back to back, so a round's own ratio is the fair one on a noisy
# machine; the medians of each side are shown for scale.
print("| batch | Lumen sentences/s | sentence-transformers sentences/s | median ratio | worst round | per-round ratios |")
print("| ---: | ---: | ---: | ---: | ---: | --- |")
for b in BATCHES:
    lu, s = statistics.median(results[b]["lumen"]), statistics.median(results[b]["st"])
    ratios = [x / y for x, y in zip(results[b]["lumen"], results[b]["st"])]
    per_round = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"| {b} | {lu:.1f} | {s:.1f} | {statistics.median(ratios):.2f}x | {min(ratios):.2f}x | {per_round} |")
PY
