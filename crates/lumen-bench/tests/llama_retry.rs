//! `make bench-compare` must survive llama.cpp dying by a signal (its AMX repacking path
//! segfaults on some Intel Xeons): the tool runs again with repacking off, the model keeps that
//! flag, and the table can say so. No llama.cpp tool crashes on the machines that run CI, so
//! these tests run `scripts/lib/llama-retry.sh` — the function bench-compare.sh sources — with
//! stand-in tools that really die by SIGSEGV unless given the no-repack flag.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A fresh folder for one test, with `bin/` for the stand-in tools and `out/` for the run.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("lumen-llama-retry-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::create_dir_all(dir.join("out")).unwrap();
        Scratch(dir)
    }

    fn out(&self) -> PathBuf {
        self.0.join("out")
    }

    /// A tool that records its arguments, then succeeds only when `ok_flag` is among them;
    /// otherwise it ends as `failure` says (`segv`: killed by SIGSEGV, or an exit status).
    fn tool(&self, name: &str, ok_flag: &str, failure: &str) {
        let die = if failure == "segv" {
            "kill -SEGV $$".to_string()
        } else {
            format!("exit {failure}")
        };
        let script = format!(
            "#!/usr/bin/env bash\n\
             echo \"$*\" >>\"{calls}\"\n\
             case \" $* \" in *\" {ok_flag} \"*) echo '{{\"ran\":\"{name}\"}}'; exit 0;; esac\n\
             echo 'ggml_backend_amx_mul_mat: fault' >&2\n\
             {die}\n",
            calls = self.calls_path().display(),
        );
        let path = self.0.join("bin").join(name);
        fs::write(&path, script).unwrap();
        let status = Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        assert!(status.success());
    }

    fn calls_path(&self) -> PathBuf {
        self.0.join("calls.log")
    }

    /// Every recorded invocation, one argument line each.
    fn calls(&self) -> Vec<String> {
        fs::read_to_string(self.calls_path())
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Sources the library and runs `run_llama OUT NAME OUT/NAME.json TOOL ARGS...`; returns
    /// what it logged.
    fn run_llama(&self, name: &str, tool: &str, args: &str) -> String {
        let lib = repo_root().join("scripts/lib/llama-retry.sh");
        let out = self.out();
        let script = format!(
            "set -euo pipefail\n\
             log() {{ echo \"log: $*\" >&2; }}\n\
             llama_bin='{bin}'\n\
             source '{lib}'\n\
             run_llama '{out}' '{name}' '{out}/{name}.json' {tool} {args}\n\
             echo finished >&2\n",
            bin = self.0.join("bin").display(),
            lib = lib.display(),
            out = out.display(),
        );
        let output = Command::new("bash").arg("-c").arg(script).output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success() && stderr.contains("finished"),
            "run_llama must never stop bench-compare: {stderr}"
        );
        stderr
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn a_tool_killed_by_sigsegv_runs_again_without_repacking_and_the_model_keeps_the_flag() {
    let s = Scratch::new("segv");
    s.tool("llama-bench", "--repack 0", "segv");
    s.tool("llama-batched-bench", "-nr", "segv");

    let log = s.run_llama("pptg", "llama-bench", "-m model.gguf -p 8 -n 4");
    assert!(
        log.contains("llama-bench crashed (exit 139); again with --repack 0"),
        "{log}"
    );
    assert!(!log.contains("failed"), "{log}");
    assert_eq!(
        s.calls(),
        [
            "-m model.gguf -p 8 -n 4",
            "-m model.gguf -p 8 -n 4 --repack 0"
        ]
    );
    let out = s.out();
    // The output is the second run's, the crash is kept for the record, the flag is noted.
    assert_eq!(
        fs::read_to_string(out.join("pptg.json")).unwrap(),
        "{\"ran\":\"llama-bench\"}\n"
    );
    assert!(fs::read_to_string(out.join("pptg.crash.err"))
        .unwrap()
        .contains("ggml_backend_amx_mul_mat"));
    assert_eq!(
        fs::read_to_string(out.join("llama-no-repack")).unwrap(),
        "llama-bench exit 139\n"
    );

    // Later tools on this model get their own no-repack flag at once: no second crash.
    let log = s.run_llama("batched", "llama-batched-bench", "-m model.gguf");
    assert!(!log.contains("crashed") && !log.contains("failed"), "{log}");
    assert_eq!(s.calls().last().unwrap(), "-m model.gguf -nr");
    assert_eq!(s.calls().len(), 3);
    assert_eq!(
        fs::read_to_string(out.join("batched.json")).unwrap(),
        "{\"ran\":\"llama-batched-bench\"}\n"
    );
}

#[test]
fn an_ordinary_failure_is_logged_and_not_retried() {
    let s = Scratch::new("exit");
    s.tool("llama-bench", "--never", "1");
    let log = s.run_llama("pptg", "llama-bench", "-m model.gguf");
    assert!(log.contains("llama-bench failed (exit 1"), "{log}");
    assert!(!log.contains("crashed"), "{log}");
    assert_eq!(s.calls().len(), 1);
    assert!(!s.out().join("llama-no-repack").exists());
}

#[test]
fn a_tool_that_crashes_without_repacking_too_is_reported_as_failed() {
    let s = Scratch::new("twice");
    s.tool("llama-server", "--never", "segv");
    let log = s.run_llama("server", "llama-server", "-m model.gguf");
    assert!(
        log.contains("llama-server crashed (exit 139); again with -nr"),
        "{log}"
    );
    assert!(log.contains("llama-server failed (exit 139"), "{log}");
    assert_eq!(s.calls(), ["-m model.gguf", "-m model.gguf -nr"]);
}
