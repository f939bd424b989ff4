//! Grammars over the default model's real vocabulary: masks that random logits cannot
//! escape, and compile errors that name their parameter.

use std::sync::Arc;

use serde_json::json;

use super::*;
use crate::error::EngineError;
use crate::registry::{resolve, ChatModel};
use crate::tokenizer::Tokenizer;

fn tokenizer() -> Option<Arc<Tokenizer>> {
    lumen_testkit::chat_gguf()?;
    let loc = resolve(lumen_testkit::CHAT_MODEL, &lumen_testkit::lumen_home()).ok()?;
    Some(ChatModel::load(&loc).expect("load").tokenizer)
}

/// Generates from `spec` with pseudo-random logits (a fixed xorshift stream), taking the
/// best allowed token each step, and returns the text.
fn walk(
    compiler: &ConstraintCompiler,
    tok: &Tokenizer,
    spec: &ConstraintSpec,
    seed: u64,
) -> String {
    let compiled = compiler.compile(spec).expect("compiles");
    let mut seq = SeqConstraint::new(&compiled);
    let mut state = seed | 1;
    let mut ids = Vec::new();
    let mut logits = vec![0f32; tok.vocab_size()];
    for _ in 0..400 {
        if seq.is_complete() {
            break;
        }
        for l in logits.iter_mut() {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *l = (state % 1000) as f32 / 100.0;
        }
        seq.mask(&mut logits).expect("mask");
        let best = (0..logits.len())
            .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
            .unwrap() as u32;
        assert!(logits[best as usize].is_finite(), "no token allowed");
        if tok.is_eog(best) {
            break;
        }
        seq.commit(best).expect("commit");
        ids.push(best);
    }
    tok.decode(&ids, true).expect("decode")
}

#[test]
fn random_logits_cannot_leave_the_grammar() {
    let Some(tok) = tokenizer() else { return };
    let compiler = ConstraintCompiler::new(tok.clone());
    let schema = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 12},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3}
        },
        "required": ["name", "age", "tags"]
    });
    let spec = ConstraintSpec::new(
        "response_format",
        Constraint::JsonSchema {
            schema,
            strict: true,
        },
    );
    for seed in 0..5 {
        let text = walk(&compiler, &tok, &spec, seed);
        let v: serde_json::Value =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
        let age = v["age"].as_i64().expect("age");
        assert!((0..=120).contains(&age), "{text}");
        assert!(
            v["name"].as_str().is_some_and(|n| n.chars().count() <= 12),
            "{text}"
        );
        assert_eq!(v.as_object().map(|o| o.len()), Some(3), "{text}");
    }
    let choice = ConstraintSpec::new(
        "guided_choice",
        Constraint::Choice(vec!["red pill".into(), "blue (pill)".into()]),
    );
    for seed in 0..5 {
        let text = walk(&compiler, &tok, &choice, seed);
        assert!(text == "red pill" || text == "blue (pill)", "{text}");
    }
    let rx = ConstraintSpec::new(
        "guided_regex",
        Constraint::Regex(r"[0-9]{3}-[a-z]{2}".into()),
    );
    let text = walk(&compiler, &tok, &rx, 9);
    assert!(text.len() == 6 && text.as_bytes()[3] == b'-', "{text}");
}

#[test]
fn tool_grammar_forces_a_valid_call() {
    let Some(tok) = tokenizer() else { return };
    let compiler = ConstraintCompiler::new(tok.clone());
    let tools = ToolCalling {
        tools: vec![ToolDef {
            name: "get_weather".into(),
            description: None,
            parameters: json!({"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}),
            strict: true,
        }],
        choice: ToolChoice::Required,
        parallel: false,
    };
    let spec = ConstraintSpec::new("tools", Constraint::Tools(tools));
    let text = walk(&compiler, &tok, &spec, 3);
    let mut p = ToolCallParser::new();
    let mut events = p.push(&text);
    events.extend(p.finish());
    let args: String = events
        .iter()
        .filter_map(|e| match e {
            ToolEvent::CallArgs { piece, .. } => Some(piece.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        matches!(&events[0], ToolEvent::CallStart { name, .. } if name == "get_weather"),
        "{text}"
    );
    let v: serde_json::Value =
        serde_json::from_str(&args).unwrap_or_else(|e| panic!("{text}: {e}"));
    assert!(v["city"].is_string(), "{text}");
}

#[test]
fn bad_grammars_are_invalid_requests_naming_the_parameter() {
    let Some(tok) = tokenizer() else { return };
    let compiler = ConstraintCompiler::new(tok);
    let cases = [
        ConstraintSpec::new("guided_regex", Constraint::Regex("(unclosed".into())),
        ConstraintSpec::new(
            "guided_grammar",
            Constraint::Lark("start: nope_rule".into()),
        ),
        ConstraintSpec::new(
            "response_format",
            Constraint::JsonSchema {
                schema: json!({"type": "object", "if": {"type": "string"}, "then": {}}),
                strict: false,
            },
        ),
        ConstraintSpec::new(
            "response_format",
            Constraint::JsonSchema {
                schema: json!({"type": "integer", "minimum": 5, "maximum": 1}),
                strict: false,
            },
        ),
    ];
    for spec in cases {
        match compiler.compile(&spec) {
            Err(EngineError::InvalidRequest { param, message }) => {
                assert_eq!(param, spec.param, "{message}");
                assert!(message.contains("cannot be used"), "{message}");
            }
            Err(other) => panic!("{spec:?}: {other}"),
            Ok(_) => panic!("{spec:?} compiled"),
        }
    }
}

/// Mean time of one mask + commit on the benchmark's schema (`cargo test --release -- --ignored
/// mask_cost --nocapture`): the figure to compare with a decode step.
#[test]
#[ignore]
fn mask_cost() {
    let Some(tok) = tokenizer() else { return };
    let compiler = ConstraintCompiler::new(tok.clone());
    let mut schema = json!({"type": "object", "properties": {"notes": {"type": "array", "items": {"type": "string", "maxLength": 40}, "minItems": 100}}, "required": ["notes"]});
    if let Ok(x) = std::env::var("XG") {
        schema["x-guidance"] = serde_json::from_str(&x).unwrap();
    }
    let spec = ConstraintSpec::new(
        "response_format",
        Constraint::JsonSchema {
            schema,
            strict: true,
        },
    );
    let t = std::time::Instant::now();
    let text = walk(&compiler, &tok, &spec, 5);
    let steps = tok.encode(&text, false, false).unwrap().len().max(1);
    println!(
        "{steps} steps, {:.1} us per step (incl. fake logits)",
        t.elapsed().as_secs_f64() * 1e6 / steps as f64
    );
    let ids = tok.encode(&text, false, false).unwrap();
    let compiled = compiler.compile(&spec).unwrap();
    let mut seq = SeqConstraint::new(&compiled);
    let mut logits = vec![0f32; tok.vocab_size()];
    let (mut mask_t, mut commit_t) = (0.0, 0.0);
    for &id in &ids {
        let t = std::time::Instant::now();
        seq.mask(&mut logits).unwrap();
        mask_t += t.elapsed().as_secs_f64();
        let t = std::time::Instant::now();
        seq.commit(id).unwrap();
        commit_t += t.elapsed().as_secs_f64();
    }
    println!(
        "mask {:.1} us, commit {:.1} us per step",
        mask_t * 1e6 / ids.len() as f64,
        commit_t * 1e6 / ids.len() as f64
    );
    println!("{text:.200}");
}
