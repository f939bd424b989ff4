//! `make bench-compare`'s report (`scripts/bench-compare-report.py`) turns each round's raw
//! outputs into a row per figure: here the depth row (`DEPTH=4096`), from two rounds of
//! `lumen bench -d` and `llama-bench -d` outputs shaped as the tools write them. Its first
//! version reused the run folder's variable for the depth and crashed at the report, after an
//! hour of benchmarks.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn the_depth_row_pairs_each_rounds_two_engines() {
    let dir = std::env::temp_dir().join(format!("lumen-compare-report-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let run = dir.join("run");
    fs::create_dir_all(&run).unwrap();
    for (round, lumen) in [(1, 100.0), (2, 120.0)] {
        let lumen_json = format!(
            r#"{{"simd":"amx","results":[{{"name":"pp512@d4096","tokens_per_s":{{"median":{lumen}}}}}]}}"#
        );
        fs::write(run.join(format!("lumen-depth.r{round}.json")), lumen_json).unwrap();
        let llama_json = r#"[{"n_prompt":512,"n_gen":0,"n_depth":4096,"avg_ts":50.0},
                             {"n_prompt":512,"n_gen":0,"n_depth":0,"avg_ts":99.0}]"#;
        fs::write(run.join(format!("llama-depth.r{round}.json")), llama_json).unwrap();
    }
    fs::write(run.join("llama-no-repack"), "llama-bench exit 139").unwrap();
    let model = dir.join("m.gguf");
    fs::write(&model, [0u8; 4096]).unwrap();
    let json_out = dir.join("compare.json");
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/bench-compare-report.py"))
        .arg(&run)
        .args([
            "--model",
            model.to_str().unwrap(),
            "--threads",
            "2",
            "--kv-mb",
            "0",
        ])
        .args([
            "--clients",
            "1",
            "--lumen-serve",
            "skipped",
            "--layout",
            "packed",
        ])
        .args(["--pp", "512", "--tg", "0", "--depth", "4096"])
        .arg("--json-out")
        .arg(&json_out)
        .output()
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "report failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("pp512 at depth 4096 t/s"), "{stdout}");
    let report = fs::read_to_string(&json_out).unwrap();
    // Rounds 100/50 and 120/50: ratios 2.0 and 2.4, median 2.2, worst 2.0; the depth-0 row of
    // llama-bench's output is not this figure's.
    assert!(report.contains(r#""worst_ratio": 2.0"#), "{report}");
    assert!(report.contains(r#""llama_cpp": 50.0"#), "{report}");
    assert!(stdout.contains("repack off"), "{stdout}");
    let _ = fs::remove_dir_all(&dir);
}
