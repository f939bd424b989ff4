#!/usr/bin/env bash
# Usage: build-llama-cpp.sh [TOOL...] | --bin-dir
#
# Builds llama.cpp's llama-bench, llama-batched-bench, llama-server, llama-perplexity and
# llama-quantize into target/llama.cpp-VERSION-build/bin, for `make bench-compare` to run side by
# side with Lumen and for `make bench-models` to quantize its realistic-shape models.
#
# The version is the newest llama-cpp-python we have checked (0.3.36): a comparison is only
# worth making against the llama.cpp users get today. The reference fixtures stay on 0.3.16
# (`make fixtures` pins its own venv), because Lumen's exact layout matches that one bit for bit.
# The build directory is named by version, so changing the pin rebuilds instead of reusing.
#
# The sources come from the llama-cpp-python source package on PyPI (it vendors llama.cpp),
# fetched with pip, pinned by version and checked by SHA-256. A second run does nothing when
# the binaries are already there. cmake comes from the system, or else from a venv
# under target/ (pip's `cmake` package), so no root access is needed.
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
version="0.3.36"
sdist_sha="832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
src_dir="$root/target/llama.cpp-src"
build_dir="$root/target/llama.cpp-$version-build"
jobs="${JOBS:-2}"
bins=(llama-bench llama-batched-bench llama-server llama-perplexity llama-quantize)
# Named tools build only those (`make bench-models` needs llama-quantize alone, minutes sooner).
if (($# > 0)) && [[ "$1" != --bin-dir ]]; then
  bins=("$@")
fi

# `--bin-dir` prints where the binaries are (or will be), for the scripts that run them.
if [[ "${1:-}" == --bin-dir ]]; then
  echo "$build_dir/bin"
  exit 0
fi

have_all() {
  for b in "${bins[@]}"; do
    [[ -x "$build_dir/bin/$b" ]] || return 1
  done
}

if have_all; then
  echo "llama.cpp: binaries present in $build_dir/bin (delete it to rebuild)"
  exit 0
fi

# 1. The source package, pinned and checksummed. Only llama-cpp-python itself is fetched as a
#    source package; pip may use wheels for its build backend while reading its metadata.
sdist="$src_dir/llama_cpp_python-$version.tar.gz"
if [[ ! -f "$sdist" ]]; then
  mkdir -p "$src_dir"
  echo "llama.cpp: downloading llama-cpp-python==$version (source package)"
  "$python" -m pip download --quiet --no-deps --disable-pip-version-check \
    --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$src_dir"
fi
got="$(sha256sum "$sdist" | cut -d' ' -f1)"
if [[ "$got" != "$sdist_sha" ]]; then
  echo "llama.cpp: checksum mismatch for $sdist: expected $sdist_sha, got $got" >&2
  exit 1
fi
llama_src="$src_dir/llama_cpp_python-$version/vendor/llama.cpp"
if [[ ! -f "$llama_src/CMakeLists.txt" ]]; then
  echo "llama.cpp: unpacking $sdist"
  tar xzf "$sdist" -C "$src_dir"
fi

# 2. cmake: the system's, else one pip-installed into a venv under target/.
cmake_bin="$(command -v cmake || true)"
if [[ -z "$cmake_bin" ]]; then
  venv="$root/target/bench-venv"
  if [[ ! -x "$venv/bin/cmake" ]]; then
    echo "llama.cpp: no cmake on PATH; installing pip's cmake into $venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "cmake>=3.21,<4"
  fi
  cmake_bin="$venv/bin/cmake"
fi

# 3. Configure and build only these tools, natively tuned (AVX2 here), CPU only.
echo "llama.cpp: building ${bins[*]} with $jobs jobs (several minutes on 2 cores)"
"$cmake_bin" -S "$llama_src" -B "$build_dir" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=ON \
  -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_CURL=OFF \
  -DGGML_NATIVE=ON \
  -DGGML_OPENMP=ON >"$build_dir.configure.log" 2>&1 || {
  tail -40 "$build_dir.configure.log" >&2
  exit 1
}
"$cmake_bin" --build "$build_dir" --config Release -j "$jobs" --target "${bins[@]}"
have_all || { echo "llama.cpp: build finished but binaries are missing" >&2; exit 1; }
echo "llama.cpp: ready in $build_dir/bin"
