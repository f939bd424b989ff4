#!/usr/bin/env bash
# Constrained decoding's cost: the same streaming load with and without a JSON schema, at 1
# and 16 concurrent streams, against one `lumen serve` in one run.
#
#   ./scripts/bench-structured.sh            # or: make bench-structured
#   ROUNDS=3 REQUESTS=32 ./scripts/bench-structured.sh
#
# Each round runs unconstrained then constrained at each concurrency, so a noisy neighbour
# slows both alike. Requests stream 128 tokens at temperature 1 with `ignore_eos`; the
# constrained ones carry a `response_format` JSON schema whose output must run longer than
# that. Reported per row: median over rounds of output tokens/s and of the per-request time
# per output token (TPOT p50), and the median and worst of the per-round constrained /
# unconstrained tokens/s ratios (the target: no more than 10 % slower, i.e. at least 0.90).
set -euo pipefail

cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
REQUESTS="${REQUESTS:-32}"
MODEL="${MODEL:-smollm2}"
PORT="${PORT:-18181}"

cargo build --release -q -p lumen-cli
LUMEN=target/release/lumen
"$LUMEN" serve --host 127.0.0.1 --port "$PORT" --model "$MODEL" >target/bench-structured-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
  sleep 0.2
done

# At least 100 array items: the grammar cannot complete within 128 tokens, so constrained
# requests run exactly as long as unconstrained ones and tokens/s compare like for like.
SCHEMA='"response_format": {"type": "json_schema", "json_schema": {"name": "notes", "strict": true, "schema": {"type": "object", "properties": {"notes": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 100}}, "required": ["notes"]}}}'
out=target/bench-structured
mkdir -p "$out"
for r in $(seq 1 "$ROUNDS"); do
  for c in 1 16; do
    n=$(( c == 1 ? REQUESTS / 4 : REQUESTS ))
    for mode in free schema; do
      # A fresh cache salt per run: neither mode finds the other's prompts in the prefix cache.
      body="{\"cache_salt\": \"r$r-c$c-$mode\""
      [[ $mode == schema ]] && body="$body, $SCHEMA"
      extra=(--extra-body "$body}")
      "$LUMEN" bench serve --url "http://127.0.0.1:$PORT" --model "$MODEL" --chat \
        -c "$c" --requests "$n" --max-tokens 128 --temperature 1 --warmup 1 --json \
        "${extra[@]}" >"$out/r$r-c$c-$mode.json"
    done
  done
done

python3 - "$out" "$ROUNDS" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"{'streams':>7} {'mode':>7} {'tok/s':>8} {'TPOT p50 ms':>12} {'errors':>6}")
worst = []
for c in (1, 16):
    rows = {}
    for mode in ("free", "schema"):
        reps = [json.load(open(f"{out}/r{r}-c{c}-{mode}.json")) for r in range(1, rounds + 1)]
        tps = statistics.median(x["output_tokens_per_s"] for x in reps)
        tpot = statistics.median(x["tpot_ms"]["p50"] for x in reps)
        errs = sum(x["errors"] for x in reps)
        rows[mode] = (tps, tpot, [x["output_tokens_per_s"] for x in reps])
        print(f"{c:>7} {mode:>7} {tps:>8.1f} {tpot:>12.2f} {errs:>6}")
    # Each round's pair shares that moment's noise: the median of per-round ratios is the figure.
    per_round = [s / f for s, f in zip(rows["schema"][2], rows["free"][2])]
    print(f"{c:>7} {'ratio':>7} {statistics.median(per_round):>8.3f} (median of per-round ratios "
          f"{', '.join(f'{x:.3f}' for x in per_round)}; worst {min(per_round):.3f})")
PY
