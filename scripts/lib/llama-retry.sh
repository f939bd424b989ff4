# Sourced by bench-compare.sh (and by the test that crashes a tool on purpose,
# crates/lumen-bench/tests/llama_retry.rs): runs one llama.cpp tool, and runs it again with
# weight repacking off when it dies by a signal.
#
# Why: llama.cpp's AMX repacking path segfaults in ggml_backend_amx_mul_mat on some Intel
# Xeons (SmolLM2 Q4_1). A comparison that stops there has no llama.cpp column at all, so a
# tool killed by a signal runs again with `--repack 0` (llama-bench) or `-nr` (the others),
# and the model keeps that flag for the rest of the run: DIR/llama-no-repack names the tool
# and its exit status, for the table's note, and the crashed run's stderr is kept as
# NAME.crash.err. An ordinary failure (an exit status of 128 or less) or a timeout is not a
# crash and is not retried: repacking has nothing to do with it.
#
# Needs: llama_bin (the folder with the tools) and a `log` function.

# run_llama DIR NAME OUTFILE TOOL ARGS...
run_llama() {
  local dir="$1" name="$2" outfile="$3" tool="$4" rc=0
  shift 4
  local off=(-nr)
  [[ "$tool" == llama-bench ]] && off=(--repack 0)
  local extra=()
  [[ -f "$dir/llama-no-repack" ]] && extra=("${off[@]}")
  timeout "${LLAMA_TIMEOUT_S:-2400}" "$llama_bin/$tool" "$@" "${extra[@]}" >"$outfile" 2>"$dir/$name.err" || rc=$?
  # 124 is timeout's "ran out of time"; 128+9 is SIGKILL, which is the OOM killer or a person,
  # not a crash in a kernel.
  if ((rc > 128 && rc != 128 + 9)) && [[ ! -f "$dir/llama-no-repack" ]]; then
    log "$tool crashed (exit $rc); again with ${off[*]}"
    cp "$dir/$name.err" "$dir/$name.crash.err"
    echo "$tool exit $rc" >"$dir/llama-no-repack"
    rc=0
    timeout "${LLAMA_TIMEOUT_S:-2400}" "$llama_bin/$tool" "$@" "${off[@]}" >"$outfile" 2>"$dir/$name.err" || rc=$?
  fi
  # A failure is logged, not fatal: the table shows the figure as missing.
  ((rc == 0)) || log "$tool failed (exit $rc, see $dir/$name.err)"
}
