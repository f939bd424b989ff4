//! `lumen bench MODEL` on a tiny committed model: the tests it runs, their names and the
//! context depth (llama-bench's `-d`) they run at.

use std::path::PathBuf;

use lumen_bench::{run_model_bench, BenchError, ModelBenchConfig};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/llama/tiny_llama_q4_k_m.gguf")
}

fn config(depth: usize) -> ModelBenchConfig {
    ModelBenchConfig {
        prompt_tokens: 8,
        gen_tokens: 4,
        batch_sizes: vec![2],
        batch_prompt: 4,
        batch_gen: 2,
        reps: 2,
        threads: 1,
        depth,
        ..ModelBenchConfig::default()
    }
}

#[test]
fn pp_and_tg_run_after_the_depth_and_are_named_for_it() {
    for depth in [0, 40] {
        let report = run_model_bench(&tiny(), &config(depth)).unwrap();
        let got: Vec<(String, usize)> = report
            .results
            .iter()
            .map(|t| (t.name.clone(), t.depth))
            .collect();
        let suffix = if depth > 0 { "@d40" } else { "" };
        assert_eq!(
            got,
            vec![
                (format!("pp8{suffix}"), depth),
                (format!("tg4{suffix}"), depth),
                ("tg2@b2".to_string(), 0),
            ]
        );
        for t in &report.results {
            assert!(t.tokens_per_s.median > 0.0, "{}", t.name);
            assert_eq!(t.tokens_per_s.n, 2, "{}", t.name);
        }
    }
}

#[test]
fn a_depth_past_the_context_is_refused() {
    let err = run_model_bench(&tiny(), &config(1 << 30)).unwrap_err();
    assert!(
        matches!(&err, BenchError::Config(m) if m.contains("positions")),
        "{err}"
    );
}
