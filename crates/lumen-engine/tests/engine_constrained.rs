//! Constrained requests in the real engine: the output follows its schema, batchmates are
//! unchanged, and (ignored by default) what a constraint costs per decoded token.

mod common;

use std::time::Instant;

use common::{engine, greedy, prompt, run_all, smollm2, Req};
use lumen_engine::{Constraint, ConstraintSpec, FinishReason};
use serde_json::json;

fn schema_notes(min_items: usize) -> ConstraintSpec {
    ConstraintSpec::new(
        "response_format",
        Constraint::JsonSchema {
            schema: json!({"type": "object", "properties": {"notes": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": min_items}}, "required": ["notes"]}),
            strict: true,
        },
    )
}

fn constrained(seed: u64, max_tokens: usize, spec: ConstraintSpec) -> Req {
    let mut r = greedy(prompt(seed, 40), max_tokens);
    r.params.temperature = Some(1.0);
    r.params.seed = Some(seed as i64);
    r.params.constraint = Some(spec);
    r
}

/// A constrained sample is valid JSON of its schema, and it and the free requests beside it
/// produce exactly what each produces alone.
#[test]
fn constrained_output_parses_and_batchmates_are_unchanged() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 1024, 16);
    let free: Vec<Req> = (0..6).map(|i| greedy(prompt(100 + i, 30), 12)).collect();
    let alone = run_all(&eng, free.clone());
    let mut mixed = free.clone();
    mixed.push(constrained(7, 300, schema_notes(1)));
    let together = run_all(&eng, mixed);
    for i in 0..free.len() {
        assert_eq!(together[i].tokens, alone[i].tokens, "request {i}");
    }
    let out = &together[free.len()];
    // The constrained request itself is batch invariant too.
    let solo = run_all(&eng, vec![constrained(7, 300, schema_notes(1))]);
    assert_eq!(solo[0].tokens, out.tokens);
    assert_eq!(out.finish[0], Some(FinishReason::Stop), "{}", out.text[0]);
    let v: serde_json::Value = serde_json::from_str(&out.text[0]).expect("JSON");
    assert!(v["notes"].as_array().is_some_and(|a| !a.is_empty()), "{v}");
}

/// Tokens per second of 128-token streams with and without a schema that cannot finish
/// earlier, at 1 and 16 sequences, alternating three times
/// (`cargo test --release -p lumen-engine --test engine_constrained -- --ignored --nocapture`).
#[test]
#[ignore]
fn constraint_cost_per_token() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 4096, 16);
    for streams in [1usize, 16] {
        let mut ratios = Vec::new();
        for round in 0..3u64 {
            let mut rate = [0.0f64; 2];
            for (k, with) in [false, true].into_iter().enumerate() {
                let reqs: Vec<Req> = (0..streams as u64)
                    .map(|i| {
                        let mut r = constrained(round * 100 + i, 128, schema_notes(100));
                        r.params.cache_salt = Some(format!("{round}-{with}-{i}"));
                        if !with {
                            r.params.constraint = None;
                        }
                        r
                    })
                    .collect();
                let t = Instant::now();
                let outs = run_all(&eng, reqs);
                let tokens: usize = outs.iter().map(|o| o.tokens[0].len()).sum();
                rate[k] = tokens as f64 / t.elapsed().as_secs_f64();
            }
            println!(
                "streams {streams:>2} round {round}: free {:.1} tok/s, constrained {:.1} tok/s",
                rate[0], rate[1]
            );
            ratios.push(rate[1] / rate[0]);
        }
        ratios.sort_by(f64::total_cmp);
        println!("streams {streams:>2}: median ratio {:.3}", ratios[1]);
    }
}
