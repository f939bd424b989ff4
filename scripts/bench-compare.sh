#!/usr/bin/env bash
# `make bench-compare`: Lumen and llama.cpp side by side on one or more models, in one run.
#
# Builds llama.cpp's llama-bench, llama-batched-bench and llama-server from the newest
# llama-cpp-python we have checked (cached, see build-llama-cpp.sh) and Lumen, measures the
# machine's stream-read bandwidth (`lumen bench bandwidth`), then measures each figure on
# Lumen and on llama.cpp right after each other, with the same thread count:
#
#   pp512, tg128            lumen bench        vs llama-bench
#   pp512 at depth D        lumen bench -d D   vs llama-bench -d D (DEPTH, off by default)
#   batched decode (S_TG)   lumen bench -b     vs llama-batched-bench
#   16 streaming clients    lumen bench serve  against lumen serve and llama-server
#   idle peak RSS           /proc/PID/status VmHWM of each server, model loaded, no requests
#   perplexity              lumen perplexity   vs llama-perplexity (both Lumen layouts)
#
# and prints figure | lumen | llama.cpp | median ratio | worst round | target, with each
# engine's share of the single-stream decode bound (bandwidth / bytes read per token) and the
# CPU path Lumen's kernels took, saving it as JSON under target/bench/. MODELS=a.gguf,b.gguf
# runs the pp/tg and batched pairs for every model, alternating models and engines inside each
# round, and ends with one table of every model and figure.
#
# llama.cpp crashes on some CPUs (its AMX repacking path segfaults in
# ggml_backend_amx_mul_mat on some Intel Xeons): a llama.cpp tool killed by a signal is run
# again with weight repacking off (`--repack 0` for llama-bench, `-nr` for the others), and
# from then on for that model; the table says so.
#
# Noise on a shared 2-core machine is real: compare the ratios of one run, never a number
# with an old one. Every server listens on 127.0.0.1 only and is stopped on exit.
#
# Environment: LUMEN_HOME, MODEL (a .gguf path) or MODELS (comma-separated paths; then the
# server and perplexity rows are left out unless SKIP_SERVER=0 / SKIP_PERPLEXITY=0), THREADS
# (2), REPS (5), BATCHED_REPS (3), ROUNDS (3: how many times the pp/tg and batched pairs run;
# the report takes the median and the worst of the per-round ratios), PP (512), TG (128),
# DEPTH (0: with D > 0, also pp at a context of D tokens, as llama-bench -d), BATCHES
# (1,16,32), NPP (128), NTG (128), CLIENTS (16), REQUESTS (64), MAX_TOKENS (128),
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
# MODELS (comma-separated) overrides MODEL; the server and perplexity rows then default off.
if [[ -n "${MODELS:-}" ]]; then
  IFS=, read -r -a models <<<"$MODELS"
  : "${SKIP_SERVER:=1}" "${SKIP_PERPLEXITY:=1}"
  model="${models[0]}"
else
  models=("$model")
fi
pp="${PP:-512}"
tg="${TG:-128}"
depth="${DEPTH:-0}"
npp="${NPP:-128}"
ntg="${NTG:-128}"
threads="${THREADS:-2}"
reps="${REPS:-5}"
batched_reps="${BATCHED_REPS:-3}"
batches="${BATCHES:-1,16,32}"
clients="${CLIENTS:-16}"
requests="${REQUESTS:-64}"
max_tokens="${MAX_TOKENS:-128}"
kv_mb="${KV_MB:-256}"
rounds="${ROUNDS:-3}"
# Every lumen command below reads its --weight-layout from here.
export LUMEN_WEIGHT_LAYOUT="${LAYOUT:-packed}"
load_seconds="${LOAD_SECONDS:-600}"
python="${PYTHON:-python3}"
lumen="$root/target/release/lumen"
llama_bin="$("$root/scripts/build-llama-cpp.sh" --bin-dir)"
stamp="$(date -u +%Y%m%dT%H%M%SZ)"
out="$root/target/bench/run-$stamp"
mkdir -p "$out"

log() { echo "bench-compare: $*" >&2; }

for m in "${models[@]}"; do
  if [[ ! -f "$m" ]]; then
    log "no model at $m (run \`make models\` or \`make bench-models\`, or set MODEL / MODELS)"
    exit 1
  fi
done

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

# The bound on single-stream decode: every weight is read once per token.
log "stream-read bandwidth ($threads threads)"
"$lumen" bench bandwidth -t "$threads" --json >"$out/bandwidth.json" 2>"$out/bandwidth.err" ||
  log "bandwidth measurement failed (see $out/bandwidth.err)"

# model_dir I: where model I's raw outputs go (one folder per model, named after the file).
out_all="$out"
model_dir() { echo "$out_all/m$1-$(basename "${models[$1]}" .gguf)"; }

# run_llama DIR NAME OUTFILE TOOL ARGS...: a llama.cpp tool, run again with repacking off
# if it dies by a signal (see the library for why).
source "$root/scripts/lib/llama-retry.sh"

# 1 and 2, ROUNDS times; within a round every model, Lumen then llama.cpp each time (the
# report pairs each round's two, so both share that moment's noise).
for ((round = 1; round <= rounds; round++)); do
  for i in "${!models[@]}"; do
    m="${models[$i]}"
    d="$(model_dir "$i")"
    mkdir -p "$d"
    tag="round $round/$rounds, $(basename "$m")"
    if ((pp > 0 || tg > 0)); then
      log "$tag: lumen pp$pp tg$tg (-r $reps, -t $threads)"
      timeout 2400 "$lumen" bench "$m" -p "$pp" -n "$tg" -b 0 -r "$reps" -t "$threads" --json \
        >"$d/lumen-pptg.r$round.json" 2>"$d/lumen-pptg.r$round.err" || log "lumen bench failed (see $d/lumen-pptg.r$round.err)"
      log "$tag: llama-bench pp$pp tg$tg"
      run_llama "$d" "llama-pptg.r$round" "$d/llama-pptg.r$round.json" llama-bench \
        -m "$m" -p "$pp" -n "$tg" -t "$threads" -r "$reps" -o json
    fi
    if ((depth > 0 && pp > 0)); then
      log "$tag: lumen pp$pp at depth $depth"
      timeout 2400 "$lumen" bench "$m" -p "$pp" -n 0 -b 0 -d "$depth" -r "$reps" -t "$threads" --json \
        >"$d/lumen-depth.r$round.json" 2>"$d/lumen-depth.r$round.err" || log "lumen bench -d failed (see $d/lumen-depth.r$round.err)"
      log "$tag: llama-bench pp$pp -d $depth"
      run_llama "$d" "llama-depth.r$round" "$d/llama-depth.r$round.json" llama-bench \
        -m "$m" -p "$pp" -n 0 -d "$depth" -t "$threads" -r "$reps" -o json
    fi
    if [[ -n "$batches" && "$batches" != 0 ]]; then
      # Batched decode: B sequences of NPP prompt tokens, then NTG steps; S_TG.
      log "$tag: lumen batched decode at $batches ${engine_flag[*]}"
      timeout 2400 "$lumen" bench "$m" -p 0 -n 0 -b "$batches" --npp "$npp" --ntg "$ntg" -r "$batched_reps" -t "$threads" "${engine_flag[@]}" --json \
        >"$d/lumen-batched.r$round.json" 2>"$d/lumen-batched.r$round.err" || log "lumen batched bench failed (see $d/lumen-batched.r$round.err)"
      log "$tag: llama-batched-bench $batches"
      run_llama "$d" "llama-batched.r$round" "$d/llama-batched.r$round.jsonl" llama-batched-bench \
        -m "$m" -c $((max_b * (npp + ntg) + 64)) -b 2048 -ub 512 \
        -npp "$npp" -ntg "$ntg" -npl "$batches" -t "$threads" -tb "$threads" --output-format jsonl
    fi
  done
done

# The server and perplexity rows are for the first model; its raw outputs go with its rounds.
out="$(model_dir 0)"
no_repack=()
[[ -f "$out/llama-no-repack" ]] && no_repack=(-nr)

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
  "$llama_bin/llama-server" -m "$model" "${no_repack[@]}" --host 127.0.0.1 --port "$port" -t "$threads" -tb "$threads" \
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
  "$llama_bin/llama-perplexity" -m "$model" "${no_repack[@]}" -f "$text" -c 512 -b 512 -t "$threads" \
    >"$out/llama-ppl.log" 2>&1 || log "llama-perplexity failed (see $out/llama-ppl.log)"
fi

# 4. One table per model, then all of them in one.
jsons=()
for i in "${!models[@]}"; do
  d="$(model_dir "$i")"
  serve_state="$lumen_serve_state"
  ((i == 0)) || serve_state=skipped
  "$python" "$root/scripts/bench-compare-report.py" "$d" \
    --model "${models[$i]}" --threads "$threads" --kv-mb "$kv_mb" --clients "$clients" \
    --lumen-serve "$serve_state" --layout "$LUMEN_WEIGHT_LAYOUT" --pp "$pp" --tg "$tg" --ntg "$ntg" --depth "$depth" \
    --bandwidth "$out_all/bandwidth.json" --json-out "$d/compare.json"
  jsons+=("$d/compare.json")
done
"$python" "$root/scripts/bench-compare-report.py" --summary "${jsons[@]}" \
  --json-out "$root/target/bench/compare-$stamp.json"
cp "$root/target/bench/compare-$stamp.json" "$root/target/bench/compare-latest.json"
log "saved target/bench/compare-$stamp.json (raw outputs in $out_all)"
