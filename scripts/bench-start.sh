#!/usr/bin/env bash
# How fast a big model is ready to serve, and what memory it holds (issue 23's "big files
# start fast and stay small"): with a fresh LUMEN_HOME, starts `lumen serve` on MODEL (a
# .gguf path; default the 8B shape from `make bench-models`) with the defaults (packed
# layout, LUMEN_WEIGHTS_MEMORY=auto, LUMEN_PACKED_CACHE=auto), then a second server beside
# it, then, both stopped, a restart alone. For each: seconds until /ready, the packed cache's
# outcome from the load log, VmRSS split into own (RssAnon) and file pages (RssFile), and
# Pss (pages shared by two count half). Every server listens on 127.0.0.1 and is stopped on
# exit; the temporary LUMEN_HOME (and its packed copy, as big as the model) is removed.
#
# Environment: MODEL, LUMEN (the binary, default target/release/lumen), PORT (first port of
# three, default 18181), THREADS (2).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
model="${MODEL:-${LUMEN_HOME:-$HOME/.lumen}/bench-models/llama3-8b-Q4_K_M.gguf}"
lumen="${LUMEN:-$root/target/release/lumen}"
port="${PORT:-18181}"
threads="${THREADS:-2}"
[[ -f "$model" ]] || { echo "no model at $model (make bench-models, or MODEL=path)" >&2; exit 2; }
[[ -x "$lumen" ]] || { echo "no binary at $lumen (cargo build --release -p lumen-cli)" >&2; exit 2; }

home="$(mktemp -d)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$home"
}
trap cleanup EXIT

# start PORT: starts a server, waits for /ready, prints the time and the cache outcome.
start() {
  local p=$1 t0 t1
  t0=$(date +%s.%N)
  LUMEN_HOME="$home" "$lumen" serve --host 127.0.0.1 --port "$p" --threads "$threads" \
    --model "$model" --preload "$model" --database-url "$home/db-$p.sqlite" >"$home/log-$p" 2>&1 &
  pids+=($!)
  until curl -sf "127.0.0.1:$p/ready" >/dev/null; do
    kill -0 "${pids[-1]}" 2>/dev/null || { cat "$home/log-$p" >&2; exit 1; }
    sleep 0.1
  done
  t1=$(date +%s.%N)
  printf '%-28s ready in %6.2f s  %s\n' "server on port $p" "$(echo "$t1 - $t0" | bc)" \
    "packed_cache=$(sed 's/\x1b\[[0-9;]*m//g' "$home/log-$p" |
      sed -n 's/.*packed_cache=\(.*\) speculative_tokens=.*/\1/p' | head -1)"
}

# memory PID...: VmRSS, own and file pages, Pss, in MiB.
memory() {
  local p
  for p in "$@"; do
    awk -v pid="$p" '/^VmRSS:/ {r=$2} /^RssAnon:/ {a=$2} /^RssFile:/ {f=$2}
      END {printf "  pid %-8s RSS %6.0f MiB (own %5.0f, file %5.0f)", pid, r/1024, a/1024, f/1024}' \
      "/proc/$p/status"
    awk '/^Pss:/ {s=$2} END {printf "  Pss %6.0f MiB\n", s/1024}' "/proc/$p/smaps_rollup"
  done
}

echo "model: $model ($(du -m "$model" | cut -f1) MiB), LUMEN_HOME $home"
start "$port"
memory "${pids[0]}"
start $((port + 1))
memory "${pids[0]}" "${pids[1]}"
kill "${pids[0]}" "${pids[1]}"
wait "${pids[0]}" "${pids[1]}" 2>/dev/null || true
pids=()
start $((port + 2))
memory "${pids[0]}"
echo "packed cache: $(du -sm "$home/cache" 2>/dev/null | cut -f1) MiB"
