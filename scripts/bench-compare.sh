#!/usr/bin/env bash
# `make bench-compare`: Lumen and llama.cpp side by side on one model, in one run.
#
# Builds llama.cpp's llama-bench, llama-batched-bench and llama-server (cached, see
# build-llama-cpp.sh) and Lumen, then measures each figure on Lumen and on llama.cpp right
# after each other, with the same thread count:
#
#   pp512, tg128            lumen bench        vs llama-bench
#   batched decode (S_TG)   lumen bench -b     vs llama-batched-bench
#   16 streaming clients    lumen bench serve  against lumen serve and llama-server
#   idle peak RSS           /proc/PID/status VmHWM of each server, model loaded, no requests
#   perplexity              lumen perplexity   vs llama-perplexity (both Lumen layouts)
#
# and prints figure | lumen | llama.cpp | ratio | target, saving it as JSON under target/bench/.
# Noise on a shared 2-core machine is real: compare the ratios of one run, never a number
# with an old one. Every server listens on 127.0.0.1 only and is stopped on exit.
#
# Environment: LUMEN_HOME, MODEL (a .gguf path), THREADS (2), REPS (5), BATCHED_REPS (3),
# ROUNDS (1: how many times the pp/tg and batched pairs run; the report takes the median of
# the per-round ratios), BATCHES (1,32), CLIENTS (16), REQUESTS (64), MAX_TOKENS (128),
# LOAD_SECONDS (600: no load-test request starts later), KV_MB (256), ENGINE (1: also
# time batched generation end to end through Lumen's engine; an extra row, Lumen only),
# PROFILE (release; `bench` builds with thin LTO and one codegen unit, slower to build, and
# its binary also lands in target/release), SKIP_BUILD=1 (use the binaries as they are),
# SKIP_SERVER=1 (leave the server rows out), SKIP_PERPLEXITY=1, LAYOUT (packed: Lumen's weight
# layout, `packed` for the row-interleaved kernels and fast attention, the default and
# fastest, or `exact` for llama.cpp's arithmetic bit for bit; see `lumen serve --help`).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
home="${LUMEN_HOME:-$HOME/.lumen}"
model="${MODEL:-$home/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
threads="${THREADS:-2}"
reps="${REPS:-5}"
batched_reps="${BATCHED_REPS:-3}"
batches="${BATCHES:-1,32}"
clients="${CLIENTS:-16}"
requests="${REQUESTS:-64}"
max_tokens="${MAX_TOKENS:-128}"
kv_mb="${KV_MB:-256}"
rounds="${ROUNDS:-1}"
# Every lumen command below reads its --weight-layout from here.
export LUMEN_WEIGHT_LAYOUT="${LAYOUT:-packed}"
load_seconds="${LOAD_SECONDS:-600}"
python="${PYTHON:-python3}"
lumen="$root/target/release/lumen"
llama_bin="$root/target/llama.cpp-build/bin"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/run-$stamp"
mkdir -p "$out"

log() { echo "bench-compare: $*" >&2; }

if [[ ! -f "$model" ]]; then
  log "no model at $model (run \`make models\`, or set MODEL)"
  exit 1
fi

# Servers this script started; stopped by PID on exit.
pids=()
cleanup() {
  for p in "${pids[@]}"; do
    kill "$p" 2>/dev/null || true
  done
  for p in "${pids[@]}"; do
    wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  "$root/scripts/build-llama-cpp.sh"
  log "building lumen (profile ${PROFILE:-release})"
  "${CARGO:-cargo}" build --profile "${PROFILE:-release}" -p lumen-cli
fi

free_port() {
  "$python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# wait_ready URL PID SECONDS: polls URL until it answers 200, the process dies, or time is up.
wait_ready() {
  local url="$1" pid="$2" limit="$3" i
  for ((i = 0; i < limit * 4; i++)); do
    if ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    if curl -sf -o /dev/null --max-time 2 "$url"; then
      return 0
    fi
    sleep 0.25
  done
  return 1
}

vm_hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

stop_server() {
  local pid="$1"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# run_load NAME URL: the same load test for either server. The generator stops starting
# requests after LOAD_SECONDS and reports what finished, so a slow server still gets a row.
run_load() {
  timeout $((load_seconds + 900)) "$lumen" bench serve --url "$2" -c "$clients" --requests "$requests" \
    --max-tokens "$max_tokens" --max-duration-s "$load_seconds" --timeout-s 600 --json \
    >"$out/$1-serve.json" 2>"$out/$1-serve.err" || log "$1 load test failed (see $out/$1-serve.err)"
}

engine_flag=()
[[ "${ENGINE:-1}" == 1 ]] && engine_flag=(--engine)
max_b="$(tr ',' '\n' <<<"$batches" | sort -n | tail -1)"

# 1 and 2, ROUNDS times, Lumen then llama.cpp each time (the report pairs each round's two).
for ((round = 1; round <= rounds; round++)); do
  log "round $round/$rounds: lumen pp512 tg128 (-r $reps, -t $threads)"
  timeout 1200 "$lumen" bench "$model" -p 512 -n 128 -b 0 -r "$reps" -t "$threads" --json \
    >"$out/lumen-pptg.r$round.json" 2>"$out/lumen-pptg.r$round.err" || log "lumen bench failed (see $out/lumen-pptg.r$round.err)"
  log "round $round/$rounds: llama-bench pp512 tg128"
  timeout 1200 "$llama_bin/llama-bench" -m "$model" -p 512 -n 128 -t "$threads" -r "$reps" -o json \
    >"$out/llama-pptg.r$round.json" 2>"$out/llama-pptg.r$round.err" || log "llama-bench failed (see $out/llama-pptg.r$round.err)"

  # Batched decode: B sequences of 128 prompt tokens, then 128 steps; S_TG.
  log "round $round/$rounds: lumen batched decode at $batches ${engine_flag[*]}"
  timeout 2400 "$lumen" bench "$model" -p 0 -n 0 -b "$batches" --npp 128 --ntg 128 -r "$batched_reps" -t "$threads" "${engine_flag[@]}" --json \
    >"$out/lumen-batched.r$round.json" 2>"$out/lumen-batched.r$round.err" || log "lumen batched bench failed (see $out/lumen-batched.r$round.err)"
  log "round $round/$rounds: llama-batched-bench $batches"
  timeout 1800 "$llama_bin/llama-batched-bench" -m "$model" -c $((max_b * 256)) -b 2048 -ub 512 \
    -npp 128 -ntg 128 -npl "$batches" -t "$threads" -tb "$threads" --output-format jsonl \
    >"$out/llama-batched.r$round.jsonl" 2>"$out/llama-batched.r$round.err" || log "llama-batched-bench failed (see $out/llama-batched.r$round.err)"
done

# 3. Servers, one at a time (16 slots of 1024 tokens for llama-server), then the idle RSS.
lumen_serve_state=pending
if [[ "${SKIP_SERVER:-0}" == 1 ]]; then
  lumen_serve_state=skipped
elif "$lumen" serve --help >/dev/null 2>&1; then
  port="$(free_port)"
  log "lumen serve on 127.0.0.1:$port (--kv-cache-mb $kv_mb, --threads $threads)"
  "$lumen" serve --host 127.0.0.1 --port "$port" --model "$model" --preload "$model" --threads "$threads" \
    --kv-cache-mb "$kv_mb" >"$out/lumen-server.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  if wait_ready "http://127.0.0.1:$port/ready" "$pid" 120; then
    sleep 2
    echo "$(vm_hwm_kib "$pid")" >"$out/lumen-idle-vmhwm-kib"
    run_load lumen "http://127.0.0.1:$port"
    lumen_serve_state=done
  else
    log "lumen serve did not come up (see $out/lumen-server.log)"
    lumen_serve_state=failed
  fi
  stop_server "$pid"
fi
if [[ "${SKIP_SERVER:-0}" != 1 ]]; then
  port="$(free_port)"
  log "llama-server on 127.0.0.1:$port (-np $clients)"
  "$llama_bin/llama-server" -m "$model" --host 127.0.0.1 --port "$port" -t "$threads" -tb "$threads" \
    -np "$clients" -c $((clients * 1024)) --no-webui >"$out/llama-server.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  if wait_ready "http://127.0.0.1:$port/health" "$pid" 120; then
    sleep 2
    echo "$(vm_hwm_kib "$pid")" >"$out/llama-idle-vmhwm-kib"
    run_load llama "http://127.0.0.1:$port"
  else
    log "llama-server did not come up (see $out/llama-server.log)"
  fi
  stop_server "$pid"
fi

# 3b. Perplexity on the committed text: both Lumen layouts and llama-perplexity, the same
#     512-token chunks (SKIP_PERPLEXITY=1 leaves the rows out).
if [[ "${SKIP_PERPLEXITY:-0}" != 1 ]]; then
  text="$root/fixtures/perplexity/gpl-3.0.txt"
  for layout in exact packed; do
    log "lumen perplexity ($layout layout)"
    LUMEN_WEIGHT_LAYOUT=$layout "$lumen" perplexity "$model" "$text" -c 512 -t "$threads" --json \
      >"$out/lumen-ppl-$layout.json" || log "lumen perplexity failed"
  done
  log "llama-perplexity"
  "$llama_bin/llama-perplexity" -m "$model" -f "$text" -c 512 -b 512 -t "$threads" \
    >"$out/llama-ppl.log" 2>&1 || log "llama-perplexity failed (see $out/llama-ppl.log)"
fi

# 4. The table and its JSON.
"$python" "$root/scripts/bench-compare-report.py" "$out" \
  --model "$model" --threads "$threads" --kv-mb "$kv_mb" --clients "$clients" \
  --lumen-serve "$lumen_serve_state" --layout "$LUMEN_WEIGHT_LAYOUT" --json-out "$root/target/bench/compare-$stamp.json"
cp "$root/target/bench/compare-$stamp.json" "$root/target/bench/compare-latest.json"
log "saved target/bench/compare-$stamp.json (raw outputs in $out)"
