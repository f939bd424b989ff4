#!/usr/bin/env bash
# `make bench-models`: the realistic-shape benchmark set (issue 23), not run in CI.
#
# Random-weight llama models in the shapes people serve, quantized by llama.cpp's own
# llama-quantize so each file is laid out exactly like a downloaded one:
#
#   smollm2-1.7b  hidden 2048, 24 layers, 32/32 heads, FFN 8192, vocab 49152  Q4_K_M Q6_K Q8_0
#   llama3-8b     hidden 4096, 32 layers, 32/8 heads, FFN 14336, vocab 128256 Q4_K_M
#   smollm2-135m  the default model's real weights, re-quantized from its Q4_1     Q4_K_M
#
# The last is what a user gets from llama-quantize for a model whose rows (576) are not whole
# 256-value super-blocks: most of its matrices fall back to Q5_0 (and Q6_K's to Q8_0).
#
# make-bench-models.py writes each shape once in F16 (from the `gguf` package, with SmolLM2's
# tokenizer), llama-quantize makes each format, and the F16 file is deleted afterwards (the 8B
# one is 16 GB). A file already present is kept, so a second run does nothing. Output:
# $LUMEN_HOME/bench-models/SHAPE-FORMAT.gguf, outside git. Needs ~20 GB of free disk while the
# 8B shape is built; SHAPES (both) and FORMATS_<shape> narrow the set.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
home="${LUMEN_HOME:-$HOME/.lumen}"
dest="$home/bench-models"
tokenizer="$home/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
venv="$root/target/bench-venv"
threads="${THREADS:-2}"
shapes="${SHAPES:-smollm2-1.7b llama3-8b smollm2-135m}"
declare -A formats=(
  [smollm2-1.7b]="${FORMATS_smollm2_1_7b:-Q4_K_M Q6_K Q8_0}"
  [llama3-8b]="${FORMATS_llama3_8b:-Q4_K_M}"
  [smollm2-135m]="${FORMATS_smollm2_135m:-Q4_K_M}"
)

log() { echo "bench-models: $*" >&2; }

[[ -f "$tokenizer" ]] || { log "no $tokenizer (run \`make models\`)"; exit 1; }
"$root/scripts/build-llama-cpp.sh" llama-quantize
quantize="$("$root/scripts/build-llama-cpp.sh" --bin-dir)/llama-quantize"
# The `gguf` writer, pinned like the fixtures' (same venv as build-llama-cpp.sh's cmake).
[[ -x "$venv/bin/python" ]] || python3 -m venv "$venv"
"$venv/bin/python" -c 'import gguf' 2>/dev/null ||
  "$venv/bin/pip" install --quiet --disable-pip-version-check gguf==0.17.1 numpy
mkdir -p "$dest"

for shape in $shapes; do
  f16="$dest/$shape-F16.gguf"
  requantize=()
  if [[ "$shape" == smollm2-135m ]]; then
    # Real weights: the downloaded model is the source, quantized once more.
    f16="$tokenizer"
    requantize=(--allow-requantize)
  fi
  for fmt in ${formats[$shape]}; do
    out="$dest/$shape-$fmt.gguf"
    if [[ -f "$out" ]]; then
      log "$out present"
      continue
    fi
    if [[ ! -f "$f16" ]]; then
      log "writing $f16"
      "$venv/bin/python" "$root/scripts/make-bench-models.py" --shape "$shape" \
        --tokenizer "$tokenizer" --out "$f16.part"
      mv "$f16.part" "$f16"
    fi
    log "quantizing $shape to $fmt"
    "$quantize" "${requantize[@]}" "$f16" "$out.part" "$fmt" "$threads" \
      >"$dest/$shape-$fmt.quantize.log" 2>&1 || {
      tail -20 "$dest/$shape-$fmt.quantize.log" >&2
      exit 1
    }
    mv "$out.part" "$out"
  done
  [[ "$f16" == "$tokenizer" ]] || rm -f "$f16"
done
ls -l "$dest"/*.gguf
