use super::*;

fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
    let mut p = SamplingParams::default();
    f(&mut p);
    p
}

/// A fixed, fairly flat distribution over 1000 tokens.
fn flat_logits() -> Vec<f32> {
    (0..1000)
        .map(|i| ((i * 7919) % 1000) as f32 / 500.0)
        .collect()
}

fn run(p: SamplingParams, logits: &[f32], steps: usize) -> Vec<u32> {
    let mut s = Sampler::new(p, logits.len()).unwrap();
    (0..steps)
        .map(|_| s.sample(&mut logits.to_vec(), &[]).token)
        .collect()
}

#[test]
fn greedy_picks_argmax_with_lowest_id_on_ties() {
    let mut s = Sampler::new(SamplingParams::greedy(), 5).unwrap();
    let out = s.sample(&mut [0.1, 3.0, -2.0, 3.0, f32::NAN], &[]);
    assert_eq!(out.token, 1);
    // No logprobs asked for: none computed.
    assert_eq!(out.logprob, None);
    assert!(out.top_logprobs.is_empty());
    let mut s = Sampler::new(
        SamplingParams {
            logprobs: Some(0),
            ..SamplingParams::greedy()
        },
        5,
    )
    .unwrap();
    let out = s.sample(&mut [0.1, 3.0, -2.0, 3.0, f32::NAN], &[]);
    assert_eq!(out.token, 1);
    assert!(out.logprob.is_some_and(|l| l < 0.0 && l > -1.0), "{out:?}");
    assert!(out.top_logprobs.is_empty());
}

#[test]
fn seeded_sampling_is_reproducible_and_seed_dependent() {
    let logits = flat_logits();
    let a = run(params(|p| p.seed = Some(7)), &logits, 50);
    let b = run(params(|p| p.seed = Some(7)), &logits, 50);
    let c = run(params(|p| p.seed = Some(8)), &logits, 50);
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Randomness really is used: a flat distribution gives many different tokens.
    let distinct: std::collections::HashSet<_> = a.iter().collect();
    assert!(distinct.len() > 20);
}

#[test]
fn top_k_one_and_tiny_top_p_equal_greedy() {
    let logits = flat_logits();
    let greedy = run(SamplingParams::greedy(), &logits, 1)[0];
    assert!(run(
        params(|p| {
            p.top_k = 1;
            p.seed = Some(1)
        }),
        &logits,
        20
    )
    .iter()
    .all(|&t| t == greedy));
    assert!(run(
        params(|p| {
            p.top_p = 1e-6;
            p.seed = Some(2)
        }),
        &logits,
        20
    )
    .iter()
    .all(|&t| t == greedy));
}

#[test]
fn top_k_restricts_to_the_k_best() {
    let logits = flat_logits();
    let mut order: Vec<u32> = (0..1000).collect();
    order.sort_by(|&a, &b| {
        logits[b as usize]
            .total_cmp(&logits[a as usize])
            .then(a.cmp(&b))
    });
    let best5: Vec<u32> = order[..5].to_vec();
    let out = run(
        params(|p| {
            p.top_k = 5;
            p.seed = Some(3)
        }),
        &logits,
        200,
    );
    assert!(out.iter().all(|t| best5.contains(t)));
    assert!(out.iter().collect::<std::collections::HashSet<_>>().len() > 1);
}

#[test]
fn top_p_keeps_the_smallest_set_reaching_p() {
    // Probabilities 0.5, 0.25, 0.125, 0.125: top_p = 0.6 keeps the first two.
    let logits = [0.5f32.ln(), 0.25f32.ln(), 0.125f32.ln(), 0.125f32.ln()];
    let out = run(
        params(|p| {
            p.top_p = 0.6;
            p.seed = Some(4)
        }),
        &logits,
        300,
    );
    assert!(out.iter().all(|&t| t < 2));
    assert!(out.contains(&0) && out.contains(&1));
    // Exactly reaching p does not pull in the next token.
    let out = run(
        params(|p| {
            p.top_p = 0.75;
            p.seed = Some(5)
        }),
        &logits,
        300,
    );
    assert!(out.iter().all(|&t| t < 2));
}

#[test]
fn top_p_on_a_large_vocabulary_sorts_incrementally() {
    // 50k tokens, most of the mass spread over a few hundred: exercises the growing prefix.
    let logits: Vec<f32> = (0..50_000)
        .map(|i| if i % 97 == 0 { 5.0 } else { -5.0 })
        .collect();
    let out = run(
        params(|p| {
            p.top_p = 0.9;
            p.seed = Some(6)
        }),
        &logits,
        100,
    );
    assert!(out.iter().all(|t| t % 97 == 0));
}

#[test]
fn min_p_drops_unlikely_tokens() {
    // p ∝ 1, 0.5, 0.05: min_p = 0.1 keeps the first two.
    let logits = [0.0f32, 0.5f32.ln(), 0.05f32.ln()];
    let out = run(
        params(|p| {
            p.min_p = 0.1;
            p.seed = Some(9)
        }),
        &logits,
        300,
    );
    assert!(out.iter().all(|&t| t < 2));
    assert!(out.contains(&1));
}

#[test]
fn penalties_change_the_right_logits() {
    let p = params(|p| {
        p.temperature = 0.0;
        p.repetition_penalty = 2.0;
        p.frequency_penalty = 0.5;
        p.presence_penalty = 0.25;
    });
    let mut s = Sampler::new(p, 6).unwrap();
    s.set_prompt_len(2);
    // Prompt [0, 1]; generated [2, 2, 3].
    let mut logits = [2.0f32, -2.0, 4.0, 1.0, 1.0, 9.0];
    s.sample(&mut logits, &[0, 1, 2, 2, 3]);
    assert_eq!(logits[0], 1.0, "prompt token, positive: divided");
    assert_eq!(logits[1], -4.0, "prompt token, negative: multiplied");
    assert_eq!(logits[2], 2.0 - 2.0 * 0.5 - 0.25, "generated twice");
    assert_eq!(logits[3], 0.5 - 0.5 - 0.25, "generated once");
    assert_eq!(logits[4], 1.0, "never seen");
    assert_eq!(logits[5], 9.0, "never seen");

    // Incremental: one more generated token only adds its own count.
    let mut logits = [2.0f32, -2.0, 4.0, 1.0, 1.0, 9.0];
    s.sample(&mut logits, &[0, 1, 2, 2, 3, 4]);
    assert_eq!(logits[4], 0.5 - 0.5 - 0.25);
    assert_eq!(logits[2], 2.0 - 2.0 * 0.5 - 0.25);
}

#[test]
fn first_history_is_the_prompt_by_default() {
    let p = params(|p| {
        p.temperature = 0.0;
        p.presence_penalty = 1.0
    });
    let mut s = Sampler::new(p, 3).unwrap();
    let mut logits = [1.0f32, 1.0, 1.0];
    s.sample(&mut logits, &[0, 1]);
    assert_eq!(
        logits,
        [1.0, 1.0, 1.0],
        "prompt tokens get no presence penalty"
    );
    let mut logits = [1.0f32, 1.0, 1.0];
    s.sample(&mut logits, &[0, 1, 1]);
    assert_eq!(logits, [1.0, 0.0, 1.0]);
}

#[test]
fn logit_bias_and_logprobs() {
    let p = params(|p| {
        p.temperature = 0.0;
        p.logit_bias = vec![(3, 100.0)];
        p.logprobs = Some(4);
    });
    let mut s = Sampler::new(p, 4).unwrap();
    let out = s.sample(&mut [1.0, 2.0, 0.5, 0.0], &[]);
    assert_eq!(out.token, 3);
    assert_eq!(out.top_logprobs.len(), 4);
    assert_eq!(out.top_logprobs[0].0, 3);
    assert_eq!(out.logprob, Some(out.top_logprobs[0].1));
    let lps: Vec<f32> = out.top_logprobs.iter().map(|x| x.1).collect();
    assert!(
        logsumexp(&lps).abs() < 1e-5,
        "full distribution sums to one"
    );
}

#[test]
fn logprobs_ignore_temperature() {
    let logits = [1.0f32, 2.0, 3.0];
    let mut hot = Sampler::new(
        params(|p| {
            p.temperature = 1.7;
            p.logprobs = Some(3);
            p.seed = Some(1)
        }),
        3,
    )
    .unwrap();
    let mut greedy = Sampler::new(
        params(|p| {
            p.temperature = 0.0;
            p.logprobs = Some(3)
        }),
        3,
    )
    .unwrap();
    let a = hot.sample(&mut logits.to_vec(), &[]);
    let b = greedy.sample(&mut logits.to_vec(), &[]);
    assert_eq!(a.top_logprobs, b.top_logprobs);
    assert!((log_softmax_top_n(&logits, 1)[0].1 - b.logprob.unwrap()).abs() < 1e-6);
}

#[test]
fn sequences_are_independent_of_each_other() {
    // Interleaving two sequences gives each the same tokens as running it alone.
    let logits = flat_logits();
    let alone = run(params(|p| p.seed = Some(11)), &logits, 30);
    let mut a = Sampler::new(params(|p| p.seed = Some(11)), 1000).unwrap();
    let mut b = Sampler::new(params(|p| p.seed = Some(12)), 1000).unwrap();
    let mut together = Vec::new();
    for _ in 0..30 {
        together.push(a.sample(&mut logits.clone(), &[]).token);
        b.sample(&mut logits.clone(), &[]);
    }
    assert_eq!(alone, together);
}

#[test]
fn validation_names_the_field() {
    let field = |p: SamplingParams| match Sampler::new(p, 10) {
        Err(EngineError::InvalidSampling { field, .. }) => field,
        other => panic!("expected a validation error, got {other:?}"),
    };
    assert_eq!(field(params(|p| p.temperature = -1.0)), "temperature");
    assert_eq!(field(params(|p| p.temperature = f32::NAN)), "temperature");
    assert_eq!(field(params(|p| p.top_p = 0.0)), "top_p");
    assert_eq!(field(params(|p| p.top_p = 1.5)), "top_p");
    assert_eq!(field(params(|p| p.min_p = -0.1)), "min_p");
    assert_eq!(
        field(params(|p| p.repetition_penalty = 0.0)),
        "repetition_penalty"
    );
    assert_eq!(
        field(params(|p| p.presence_penalty = 3.0)),
        "presence_penalty"
    );
    assert_eq!(
        field(params(|p| p.frequency_penalty = -2.5)),
        "frequency_penalty"
    );
    assert_eq!(
        field(params(|p| p.logit_bias = vec![(1, 101.0)])),
        "logit_bias"
    );
    assert_eq!(
        field(params(|p| p.logit_bias = vec![(10, 1.0)])),
        "logit_bias"
    );
    assert_eq!(field(params(|p| p.logprobs = Some(21))), "logprobs");
    assert!(SamplingParams::default().validate().is_ok());
    assert!(Sampler::new(SamplingParams::default(), 0).is_err());
}

#[test]
fn degenerate_logits_do_not_panic() {
    let mut s = Sampler::new(
        params(|p| {
            p.seed = Some(1);
            p.top_p = 0.5;
            p.min_p = 0.5;
            p.logprobs = Some(1)
        }),
        3,
    )
    .unwrap();
    let out = s.sample(&mut [f32::NEG_INFINITY, f32::NAN, f32::NEG_INFINITY], &[]);
    assert!(out.token < 3);
    assert_eq!(out.logprob, Some(f32::NEG_INFINITY));
    // Fewer logits than the vocabulary, history ids out of range: still fine.
    let mut s = Sampler::new(
        params(|p| {
            p.repetition_penalty = 1.5;
            p.temperature = 0.0
        }),
        100,
    )
    .unwrap();
    assert_eq!(s.sample(&mut [0.0, 1.0], &[500, 1]).token, 1);
}
