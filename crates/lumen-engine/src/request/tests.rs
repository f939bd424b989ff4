//! Every validation rule, for both API shapes, without a model.

use super::limits::MAX_STOP;
use super::*;
use crate::engine::ModelInfo;
use crate::error::EngineError;

fn model() -> ModelInfo {
    // 64 KV blocks of 16 tokens = 1024 tokens, less than the 2048-token context.
    ModelInfo {
        name: "m".into(),
        context_len: 2048,
        vocab_size: 100,
        kv_blocks: 64,
    }
}

fn params(edit: impl FnOnce(&mut GenerationParams)) -> GenerationParams {
    let mut p = GenerationParams::default();
    edit(&mut p);
    p
}

/// The parameter named by the error of validating `p` for a 10-token prompt.
fn rejected(p: GenerationParams) -> (&'static str, String) {
    let m = model();
    match p.validate(&m).and_then(|v| v.for_prompt(vec![1; 10], &m)) {
        Err(EngineError::InvalidRequest { param, message }) => (param, message),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn param_of(edit: impl FnOnce(&mut GenerationParams)) -> &'static str {
    rejected(params(edit)).0
}

fn valid(edit: impl FnOnce(&mut GenerationParams)) -> ValidRequest {
    let m = model();
    params(edit)
        .validate(&m)
        .and_then(|v| v.for_prompt(vec![1; 10], &m))
        .expect("valid")
}

#[test]
fn defaults_fill_the_room_left_in_the_kv_cache() {
    let r = valid(|_| {});
    assert_eq!(r.n(), 1);
    assert_eq!(
        r.max_tokens(),
        1024 - 10,
        "no max_tokens: fill min(context, KV) after the prompt"
    );
    assert_eq!(r.max_new_tokens(), 1014);
    assert_eq!(r.prompt_tokens(), 10);
    assert_eq!(r.priority(), Priority::Interactive);
    assert!(r.caller().is_none());
    let s = &r.request.sampling;
    assert_eq!(
        (s.temperature, s.top_p, s.top_k, s.min_p),
        (1.0, 1.0, 0, 0.0)
    );
    assert!(r.request.skip_special_tokens && !r.request.ignore_eos);
}

#[test]
fn n_is_one_to_sixteen() {
    assert_eq!(param_of(|p| p.n = Some(0)), "n");
    assert_eq!(param_of(|p| p.n = Some(17)), "n");
    assert_eq!(param_of(|p| p.n = Some(-3)), "n");
    let r = valid(|p| {
        p.n = Some(16);
        p.max_tokens = Some(5);
    });
    assert_eq!((r.n(), r.max_new_tokens()), (16, 80));
}

#[test]
fn best_of_must_equal_n() {
    assert_eq!(param_of(|p| p.best_of = Some(2)), "best_of");
    valid(|p| {
        p.n = Some(2);
        p.best_of = Some(2);
    });
}

#[test]
fn max_tokens_and_min_tokens() {
    assert_eq!(param_of(|p| p.max_tokens = Some(0)), "max_tokens");
    assert_eq!(param_of(|p| p.max_tokens = Some(-1)), "max_tokens");
    assert_eq!(param_of(|p| p.min_tokens = Some(-1)), "min_tokens");
    assert_eq!(
        param_of(|p| {
            p.max_tokens = Some(4);
            p.min_tokens = Some(5);
        }),
        "min_tokens"
    );
    let (param, message) = rejected(params(|p| p.max_tokens = Some(2039)));
    assert_eq!(param, "max_tokens");
    assert!(
        message.contains("maximum context length is 2048"),
        "{message}"
    );
    let (param, message) = rejected(params(|p| p.max_tokens = Some(1015)));
    assert_eq!(param, "max_tokens");
    assert!(message.contains("KV cache of 1024 tokens"), "{message}");
    assert_eq!(valid(|p| p.max_tokens = Some(1014)).max_tokens(), 1014);
    assert_eq!(param_of(|p| p.max_tokens = Some(i64::MAX)), "max_tokens");
}

#[test]
fn float_ranges_follow_the_rule_book() {
    type Setter = fn(&mut GenerationParams, f64);
    let cases: [(&str, Setter); 6] = [
        ("temperature", |p, v| p.temperature = Some(v)),
        ("top_p", |p, v| p.top_p = Some(v)),
        ("min_p", |p, v| p.min_p = Some(v)),
        ("presence_penalty", |p, v| p.presence_penalty = Some(v)),
        ("frequency_penalty", |p, v| p.frequency_penalty = Some(v)),
        ("repetition_penalty", |p, v| p.repetition_penalty = Some(v)),
    ];
    let ranges = [
        limits::TEMPERATURE,
        limits::TOP_P,
        limits::MIN_P,
        limits::PRESENCE_PENALTY,
        limits::FREQUENCY_PENALTY,
        limits::REPETITION_PENALTY,
    ];
    for ((name, set), range) in cases.into_iter().zip(ranges) {
        assert_eq!(name, range.param);
        for bad in [range.hi + 0.01, range.lo - 0.01, f64::NAN, f64::INFINITY] {
            let (param, _) = rejected(params(|p| set(p, bad)));
            assert_eq!(param, name, "{name} = {bad}");
        }
        if range.lo_open {
            assert_eq!(rejected(params(|p| set(p, range.lo))).0, name);
        } else {
            valid(|p| set(p, range.lo));
        }
        valid(|p| set(p, range.hi));
    }
    // temperature 2 is the top of OpenAI's range; above it is refused everywhere.
    assert!(SamplingParams {
        temperature: 2.5,
        ..SamplingParams::default()
    }
    .validate()
    .is_err());
}

#[test]
fn top_k_is_off_or_positive_and_capped_at_the_vocabulary() {
    assert_eq!(valid(|p| p.top_k = Some(-1)).request.sampling.top_k, 0);
    assert_eq!(valid(|p| p.top_k = Some(0)).request.sampling.top_k, 0);
    assert_eq!(valid(|p| p.top_k = Some(5000)).request.sampling.top_k, 100);
    assert_eq!(param_of(|p| p.top_k = Some(-2)), "top_k");
}

#[test]
fn logit_bias_keys_are_token_ids_and_values_bounded() {
    assert_eq!(
        param_of(|p| p.logit_bias = vec![("abc".into(), 1.0)]),
        "logit_bias"
    );
    assert_eq!(
        param_of(|p| p.logit_bias = vec![("100".into(), 1.0)]),
        "logit_bias"
    );
    assert_eq!(
        param_of(|p| p.logit_bias = vec![("-1".into(), 1.0)]),
        "logit_bias"
    );
    assert_eq!(
        param_of(|p| p.logit_bias = vec![("5".into(), 100.5)]),
        "logit_bias"
    );
    let r = valid(|p| p.logit_bias = vec![(" 9".into(), -100.0), ("3".into(), 2.0)]);
    assert_eq!(
        r.request.sampling.logit_bias,
        vec![(3, 2.0), (9, -100.0)],
        "sorted by id"
    );
    let r = valid(|p| p.logit_bias = vec![("4".into(), 1.0), (" 4".into(), -3.0)]);
    assert_eq!(
        r.request.sampling.logit_bias,
        vec![(4, -3.0)],
        "one entry per token, the last wins"
    );
}

#[test]
fn long_stops_and_huge_bias_maps_are_refused() {
    assert_eq!(
        param_of(|p| p.stop = vec!["s".repeat(limits::MAX_STOP_BYTES + 1)]),
        "stop"
    );
    valid(|p| p.stop = vec!["s".repeat(limits::MAX_STOP_BYTES)]);
    let many: Vec<(String, f64)> = (0..=limits::MAX_LOGIT_BIAS)
        .map(|i| ((i % 100).to_string(), 1.0))
        .collect();
    assert_eq!(param_of(|p| p.logit_bias = many), "logit_bias");
}

#[test]
fn stops_are_bounded_and_non_empty() {
    assert_eq!(
        param_of(|p| p.stop = vec!["a".into(); MAX_STOP + 1]),
        "stop"
    );
    assert_eq!(param_of(|p| p.stop = vec![String::new()]), "stop");
    assert_eq!(param_of(|p| p.stop_token_ids = vec![100]), "stop_token_ids");
    assert_eq!(param_of(|p| p.stop_token_ids = vec![-1]), "stop_token_ids");
    let r = valid(|p| {
        p.stop = vec!["x".into(); MAX_STOP];
        p.stop_token_ids = vec![99];
    });
    assert_eq!(r.request.stop_token_ids, vec![99]);
}

#[test]
fn logprobs_name_each_apis_parameter() {
    // Chat: `top_logprobs` needs `logprobs: true`.
    assert_eq!(param_of(|p| p.top_logprobs = Some(2)), "top_logprobs");
    assert_eq!(
        param_of(|p| {
            p.logprobs = Some(true);
            p.top_logprobs = Some(21);
        }),
        "top_logprobs"
    );
    let r = valid(|p| {
        p.logprobs = Some(true);
        p.top_logprobs = Some(20);
    });
    assert_eq!(r.request.sampling.logprobs, Some(20));
    assert_eq!(
        valid(|p| p.logprobs = Some(false))
            .request
            .sampling
            .logprobs,
        None
    );
    // Completions: the count itself is `logprobs`.
    assert_eq!(
        param_of(|p| {
            p.api = Api::Completions;
            p.logprobs = Some(true);
            p.top_logprobs = Some(-1);
        }),
        "logprobs"
    );
    assert_eq!(
        param_of(|p| p.prompt_logprobs = Some(21)),
        "prompt_logprobs"
    );
}

#[test]
fn echo_with_logprobs_implies_prompt_logprobs() {
    let m = model();
    let v = params(|p| {
        p.api = Api::Completions;
        p.echo = Some(true);
        p.logprobs = Some(true);
        p.top_logprobs = Some(3);
    })
    .validate(&m)
    .expect("valid");
    assert!(v.echo() && !v.show_prompt_logprobs());
    assert_eq!(
        v.for_prompt(vec![1, 2], &m)
            .expect("fits")
            .request
            .prompt_logprobs,
        Some(3)
    );
    let v = params(|p| p.prompt_logprobs = Some(0))
        .validate(&m)
        .expect("valid");
    assert!(v.show_prompt_logprobs());
}

#[test]
fn priority_names_and_integers() {
    assert_eq!(
        valid(|p| p.priority = Some(PriorityInput::Int(1))).priority(),
        Priority::Batch
    );
    assert_eq!(
        valid(|p| p.priority = Some(PriorityInput::Int(-5))).priority(),
        Priority::Interactive
    );
    assert_eq!(
        valid(|p| p.priority = Some(PriorityInput::Name("batch".into()))).priority(),
        Priority::Batch
    );
    assert_eq!(
        param_of(|p| p.priority = Some(PriorityInput::Name("urgent".into()))),
        "priority"
    );
}

#[test]
fn prompts_must_fit_and_name_their_field() {
    let m = model();
    let chat = GenerationParams::default().validate(&m).expect("valid");
    let completions = params(|p| p.api = Api::Completions)
        .validate(&m)
        .expect("valid");
    let param = |v: &ValidParams, prompt: Vec<u32>| match v.for_prompt(prompt, &m) {
        Err(EngineError::InvalidRequest { param, .. }) => param,
        other => panic!("{other:?}"),
    };
    assert_eq!(param(&chat, vec![]), "messages");
    assert_eq!(param(&completions, vec![]), "prompt");
    assert_eq!(
        param(&completions, vec![100]),
        "prompt",
        "token outside the vocabulary"
    );
    assert_eq!(
        param(&completions, vec![1; 1024]),
        "prompt",
        "no room left to generate"
    );
    assert_eq!(
        completions
            .for_prompt(vec![1; 1023], &m)
            .expect("fits")
            .max_tokens(),
        1
    );
    let other = ModelInfo {
        name: "other".into(),
        ..model()
    };
    assert!(matches!(
        chat.for_prompt(vec![1], &other),
        Err(EngineError::Config(_))
    ));
}

#[test]
fn caller_and_salt_are_carried() {
    let r = valid(|p| {
        p.caller = Some(CallerId::new("key:abc"));
        p.cache_salt = Some("tenant".into());
        p.seed = Some(-1);
    });
    assert_eq!(r.caller(), Some(&CallerId::new("key:abc")));
    assert_eq!(r.request.cache_salt.as_deref(), Some(&b"tenant"[..]));
    assert_eq!(
        r.request.sampling.seed,
        Some(u64::MAX),
        "negative seeds keep their bits"
    );
}

#[test]
fn greedy_helper_is_greedy() {
    let m = model();
    let r = GenerationParams::greedy(7)
        .validate(&m)
        .and_then(|v| v.for_prompt(vec![1], &m))
        .expect("valid");
    assert!(r.request.sampling.is_greedy());
    assert_eq!(r.max_tokens(), 7);
}
