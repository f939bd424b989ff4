//! SmolLM2-135M-Instruct (Q4_1, tied Q8_0 embedding) against llama.cpp: the greedy
//! continuation of every fixture prompt must be the same 32 tokens, and the top-5 logprobs at
//! every step within 0.05 (prompt token ids are checked in lumen-engine's tokenizer tests).

mod common;

use common::{argmax, fixtures, log_softmax, smollm2, Runner};
use lumen_models::{LlamaModel, LogitsWanted};
use serde_json::Value;

#[test]
fn greedy_continuations_and_logprobs_match_llama_cpp() {
    let Some(path) = smollm2() else { return };
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixtures().join("smollm2_reference.json")).unwrap()).unwrap();
    let mut runner = Runner::new(LlamaModel::open(&path).unwrap(), 2, 256);
    let mut worst = 0.0f64;
    for (ci, case) in reference["cases"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = case["prompt_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let want: Vec<u32> = case["greedy_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        runner.pos = 0;
        let mut logits = runner.step(&ids, LogitsWanted::Last);
        let mut got = Vec::new();
        for (step, top) in case["top_logprobs"].as_array().unwrap().iter().enumerate() {
            let lp = log_softmax(&logits);
            for pair in top.as_array().unwrap() {
                let (tok, want_lp) = (pair[0].as_u64().unwrap() as usize, pair[1].as_f64().unwrap());
                let err = (lp[tok] - want_lp).abs();
                worst = worst.max(err);
                assert!(err < 0.05, "case {ci} step {step}: logprob of token {tok} is {} (llama.cpp {want_lp})", lp[tok]);
            }
            let next = argmax(&logits);
            got.push(next);
            if got.len() == want.len() {
                break;
            }
            logits = runner.step(&[next], LogitsWanted::Last);
        }
        assert_eq!(got, want, "case {ci} ({:?}): greedy continuation differs", case["text"].as_str().unwrap_or(""));
    }
    eprintln!("worst top-5 logprob difference: {worst:.4}");
}
