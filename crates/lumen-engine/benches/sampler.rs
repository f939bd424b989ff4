//! What sampling one token costs on the engine thread, per row of a step, for a 49,152-token
//! vocabulary (SmolLM2's) with logits shaped like a language model's (a few likely tokens, a
//! long tail). Every sampled row of a step pays this while the compute threads wait.
//!
//! `cargo bench -p lumen-engine --bench sampler [-- NAME]`; prints the median µs per row.

use std::time::Instant;

use lumen_engine::{Sampler, SamplingParams};

fn main() {
    const VOCAB: usize = 49_152;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let row: Vec<f32> = (0..VOCAB)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let noise = (x >> 40) as f32 / (1u64 << 24) as f32;
            if i % 997 == 0 {
                8.0 + 4.0 * noise
            } else {
                -6.0 + 10.0 * noise
            }
        })
        .collect();
    let cases: [(&str, SamplingParams); 5] = [
        (
            "greedy",
            SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
        ),
        ("temperature 1", SamplingParams::default()),
        (
            "temperature 0.7, top_p 0.9",
            SamplingParams {
                temperature: 0.7,
                top_p: 0.9,
                ..SamplingParams::default()
            },
        ),
        (
            "top_k 40",
            SamplingParams {
                top_k: 40,
                ..SamplingParams::default()
            },
        ),
        (
            "temperature 1, logprobs 5",
            SamplingParams {
                logprobs: Some(5),
                ..SamplingParams::default()
            },
        ),
    ];
    // `cargo bench … -- NAME` runs only the cases whose name contains NAME (for perf).
    let only = std::env::args().nth(1).filter(|a| !a.starts_with('-'));
    for (name, params) in cases {
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        let params = SamplingParams {
            seed: Some(7),
            ..params
        };
        let mut sampler = Sampler::new(params, VOCAB).expect("valid parameters");
        let mut logits = row.clone();
        let mut times = Vec::with_capacity(4000);
        for _ in 0..4000 {
            logits.copy_from_slice(&row);
            let t = Instant::now();
            std::hint::black_box(sampler.sample(&mut logits, &[]));
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        println!(
            "{name:<28} {:>8.1} µs per row (median of 4000)",
            times[2000]
        );
    }
}
