//! Interpretability end to end: `lumen_uncertainty` on the generation endpoints, checked
//! with the official client against the logprobs the same server returns, and
//! `POST /v1/explain` checked against the numbers the generation endpoints serve.

mod common;

use std::time::Duration;

#[test]
fn interpretability_end_to_end() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let server = common::Server::start(&["--enable-explain"]);
    server.pytest(&python, "test_uncertainty.py", Duration::from_secs(300));
    server.pytest(&python, "test_explain.py", Duration::from_secs(600));
}

/// `lumen explain` in-process: `--json` is the API's answer, and the plain report (stdout is
/// not a terminal here) lists every span with its score.
#[test]
fn lumen_explain_cli() {
    if lumen_testkit::chat_gguf().is_none() {
        return;
    }
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_lumen"))
            .args([
                "explain",
                "smollm2",
                "The capital of France is",
                "--raw",
                "--max-tokens",
                "3",
                "--threads",
                "2",
            ])
            .args(extra)
            .output()
            .expect("run lumen explain");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8")
    };
    let json: serde_json::Value = serde_json::from_str(&run(&["--json"])).expect("json");
    assert_eq!(json["object"], "explanation");
    let spans = json["occlusion"]["spans"].as_array().expect("spans");
    let texts: String = spans.iter().map(|s| s["text"].as_str().unwrap()).collect();
    assert_eq!(texts, "The capital of France is");
    let n_completion = json["tokens"]["completion"].as_array().unwrap().len();
    assert_eq!(
        json["occlusion"]["delta"].as_array().unwrap().len(),
        n_completion
    );
    let completion = json["completion"].as_str().unwrap().trim_end().to_string();
    let plain = run(&["--lens"]);
    assert!(
        plain.starts_with(&format!("completion: {completion}\n")),
        "{plain}"
    );
    for s in spans {
        let line = plain
            .lines()
            .find(|l| l.ends_with(s["text"].as_str().unwrap()) && l.len() > 8)
            .unwrap_or_else(|| panic!("no line for span {s}: {plain}"));
        let score: f64 = line[..7].trim().parse().expect("score");
        let want: f64 = json["occlusion"]["delta"]
            .as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row[spans.iter().position(|x| x == s).unwrap()]
                    .as_f64()
                    .unwrap()
            })
            .sum();
        assert!((score - want).abs() < 2e-3, "{score} vs {want}");
    }
    // The lens grid: one row per layer, 0 to 30.
    assert!(plain.contains("logit lens") && plain.lines().any(|l| l.starts_with("   30 |")));
}
