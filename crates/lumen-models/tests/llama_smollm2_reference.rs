//! SmolLM2-135M-Instruct (Q4_1, tied Q8_0 embedding) against llama.cpp's greedy path.
//!
//! Lumen follows llama.cpp's path token by token (teacher forcing on llama.cpp's greedy
//! continuation of every fixture prompt) and compares the top-5 logprobs at every step.
//!
//! Lumen reproduces llama.cpp's CPU arithmetic for this model bit for bit (the Q4_1/Q8_0 lane
//! order and activation rounding, RMSNorm, RoPE, the exp polynomial in softmax and SiLU, and
//! both attention paths: batched for prompt tokens, single-token for generated ones), so the
//! logprobs agree to the fixture's rounding and every greedy continuation is identical. The
//! reference is llama.cpp as built natively on an AVX-512 machine by the fixture script;
//! Lumen computes the same bits with AVX2 or portable code on any x86-64.
//!
//! That holds for the default weight layout. The packed layout (opt-in, faster) sums each
//! block's integer dot before scaling it, which differs from llama.cpp by float rounding; on
//! this model, whose residual stream carries a few huge outlier values, such a difference can
//! flip an 8-bit activation quant, so its logprobs and greedy tokens are held to looser bounds.

mod common;

use common::{argmax, fixtures, log_softmax, smollm2, Runner};
use lumen_models::{LlamaModel, LogitsWanted, WeightLayout};
use serde_json::Value;

struct Comparison {
    worst: f64,
    mean: f64,
    steps: usize,
    argmax_agree: usize,
    identical_cases: usize,
    cases: usize,
}

fn compare(path: &std::path::Path, layout: WeightLayout) -> Comparison {
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("smollm2_reference.json")).unwrap(),
    )
    .unwrap();
    let mut runner = Runner::new(LlamaModel::open_with(path, layout).unwrap(), 2, 256);
    let (mut worst, mut sum, mut n, mut steps, mut agree, mut identical) =
        (0.0f64, 0.0f64, 0usize, 0usize, 0usize, 0usize);
    let cases = reference["cases"].as_array().unwrap().len();
    for case in reference["cases"].as_array().unwrap() {
        let ids: Vec<u32> = case["prompt_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        let want: Vec<u32> = case["greedy_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        runner.pos = 0;
        runner.prompt_len = ids.len();
        let mut logits = runner.step(&ids, LogitsWanted::Last);
        let mut all_agree = true;
        for (step, top) in case["top_logprobs"].as_array().unwrap().iter().enumerate() {
            let lp = log_softmax(&logits);
            for pair in top.as_array().unwrap() {
                let err =
                    (lp[pair[0].as_u64().unwrap() as usize] - pair[1].as_f64().unwrap()).abs();
                worst = worst.max(err);
                sum += err;
                n += 1;
            }
            steps += 1;
            if argmax(&logits) == want[step] {
                agree += 1;
            } else {
                all_agree = false;
            }
            if step + 1 < want.len() {
                logits = runner.step(&[want[step]], LogitsWanted::Last);
            }
        }
        identical += all_agree as usize;
    }
    Comparison {
        worst,
        mean: sum / n as f64,
        steps,
        argmax_agree: agree,
        identical_cases: identical,
        cases,
    }
}

#[test]
fn greedy_continuations_and_logprobs_match_llama_cpp() {
    let Some(path) = smollm2() else { return };
    let c = compare(&path, WeightLayout::Exact);
    eprintln!("top-5 logprob error: worst {:.6}, mean {:.6}; greedy token agrees at {}/{} steps; {} of {} continuations identical", c.worst, c.mean, c.argmax_agree, c.steps, c.identical_cases, c.cases);
    // The bound is 0.05 nats; the mean bound catches a loss of bit-exactness long
    // before it moves a logprob that far (the fixture rounds logprobs to 1e-6).
    assert!(
        c.worst < 0.05,
        "a logprob differs from llama.cpp by {:.4} nats",
        c.worst
    );
    assert!(
        c.mean < 1e-4,
        "mean logprob difference {:.6} nats: no longer bit-exact with llama.cpp",
        c.mean
    );
    assert_eq!(
        c.argmax_agree,
        c.steps,
        "greedy token differs at {} of {} steps",
        c.steps - c.argmax_agree,
        c.steps
    );
    assert_eq!(
        c.identical_cases, c.cases,
        "not every greedy continuation equals llama.cpp's"
    );
}

#[test]
fn packed_layout_stays_close_to_llama_cpp() {
    let Some(path) = smollm2() else { return };
    let c = compare(&path, WeightLayout::Packed);
    eprintln!("packed: top-5 logprob error worst {:.6}, mean {:.6}; greedy token agrees at {}/{} steps; {} of {} continuations identical", c.worst, c.mean, c.argmax_agree, c.steps, c.identical_cases, c.cases);
    // Measured: worst 0.79, mean 0.097 nats, 217 of 230 greedy tokens (rounding flips of
    // activation quants, see the module doc). A real fault (a mis-decoded scale, a wrong row)
    // drives the mean past a nat and the agreement towards chance.
    assert!(
        c.mean < 0.2,
        "packed layout: mean logprob difference {:.4} nats",
        c.mean
    );
    assert!(
        c.argmax_agree * 10 >= c.steps * 9,
        "packed layout: greedy token agrees at only {} of {} steps",
        c.argmax_agree,
        c.steps
    );
}
