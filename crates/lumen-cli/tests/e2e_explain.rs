//! Interpretability end to end: `lumen_uncertainty` on the generation endpoints, checked
//! with the official client against the logprobs the same server returns, and
//! `POST /v1/explain` checked against the numbers the generation endpoints serve.

mod common;

use std::sync::{PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// The timeout test holds this for writing, the others for reading: its one-second bounds
/// are about its own server, and with the siblings' servers and explanations sharing the two
/// cores (each with its own compute threads) a short explanation once took longer than that
/// in CI. The siblings still run side by side.
static ALONE: RwLock<()> = RwLock::new(());

fn beside_others() -> RwLockReadGuard<'static, ()> {
    ALONE.read().unwrap_or_else(PoisonError::into_inner)
}

#[test]
fn interpretability_end_to_end() {
    let _turn = beside_others();
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
    let _turn = beside_others();
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

/// `--request-timeout` holds for explanations: a long one is answered 504, its job is dropped,
/// and the next explanation is served.
#[test]
fn explain_past_the_request_timeout_is_504() {
    let _alone = ALONE.write().unwrap_or_else(PoisonError::into_inner);
    if common::prerequisites().is_none() {
        return;
    }
    let server = common::Server::start(&["--enable-explain", "--request-timeout", "1"]);
    let words = "the quick brown fox jumps over the lazy dog and runs far away ".repeat(30);
    // 64 token spans over ~360 tokens: about 23,000 forward tokens, far more than a second.
    let spans: Vec<[i64; 2]> = (0..64).map(|i| [i * 5, i * 5 + 5]).collect();
    let long = serde_json::json!({
        "model": "smollm2", "prompt": words,
        "completion": " home again", "occlusion": {"spans": spans}
    });
    let (status, body) =
        common::http_post_json(server.port, "/v1/explain", &long.to_string()).expect("post");
    assert_eq!(status, 504, "{body}");
    let short = serde_json::json!({
        "model": "smollm2", "prompt": "The capital of France is", "completion": " Paris",
        "occlusion": {"spans": "word"}
    });
    let sent = Instant::now();
    let (status, body) =
        common::http_post_json(server.port, "/v1/explain", &short.to_string()).expect("post");
    assert_eq!(status, 200, "after {:?}: {body}", sent.elapsed());
}
