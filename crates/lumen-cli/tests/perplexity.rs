//! `lumen perplexity` end to end: the default (packed) layout's perplexity on the committed
//! text stays within 0.5 % of the exact layout's, and both are a plausible perplexity.

use std::path::PathBuf;
use std::process::Command;

fn perplexity(layout: &str) -> f64 {
    let text =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/perplexity/gpl-3.0.txt");
    let out = Command::new(env!("CARGO_BIN_EXE_lumen"))
        .args(["perplexity", lumen_testkit::CHAT_MODEL])
        .arg(&text)
        .args([
            "--chunks",
            "4",
            "--threads",
            "2",
            "--json",
            "--weight-layout",
            layout,
        ])
        .env("LUMEN_HOME", lumen_testkit::lumen_home())
        .output()
        .expect("run lumen perplexity");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["weight_layout"], layout);
    assert_eq!(v["chunks"], 4);
    assert_eq!(v["scored_tokens"], 4 * 255);
    v["perplexity"].as_f64().expect("perplexity")
}

#[test]
fn packed_perplexity_is_within_half_a_percent_of_exact() {
    if lumen_testkit::chat_gguf().is_none() {
        return;
    }
    let exact = perplexity("exact");
    let packed = perplexity("packed");
    // SmolLM2-135M on license prose: about 18 (a broken forward pass gives hundreds or more).
    assert!((5.0..60.0).contains(&exact), "{exact}");
    let rel = (packed - exact).abs() / exact;
    assert!(
        rel < 0.005,
        "packed {packed} vs exact {exact}: {:.3} %",
        rel * 100.0
    );
}
