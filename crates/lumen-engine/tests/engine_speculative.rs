//! Speculative decoding by prompt lookup changes when tokens arrive, never which: the same
//! requests on an engine with it and one without give the same tokens and logprobs, greedy
//! and seeded sampling alike, alone and batched; drafts really were accepted; and the exact
//! layout, whose decode arithmetic differs from its prefill's, never speculates.

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::{collect, engine, greedy, prompt, run_all, smollm2, submit, Req};
use lumen_engine::registry::{resolve, ChatModel};
use lumen_engine::{Engine, EngineConfig, PriorityInput, SpecConfig, WeightLayout};

/// A prompt that repeats itself, so the model's continuation repeats it too.
fn repetitive(seed: u64) -> Vec<u32> {
    let phrase = prompt(seed, 12);
    let mut p = prompt(seed + 100, 20);
    for _ in 0..6 {
        p.extend_from_slice(&phrase);
    }
    p
}

fn engine_with(chat: &ChatModel, spec: SpecConfig) -> Engine {
    let geo = chat.model.kv_geometry(lumen_engine::BLOCK_SIZE);
    let per_block = lumen_models::KvStorage::bytes_per_block(geo, chat.model.config().n_layers);
    let mut cfg = EngineConfig::new("smollm2");
    cfg.threads = 2;
    cfg.kv_cache_bytes = 512 * per_block;
    cfg.max_queued_requests = 64;
    cfg.speculative = spec;
    Engine::start(chat.model.clone(), chat.tokenizer.clone(), cfg).expect("engine")
}

/// An engine without speculation and one with the default, to compare their outputs.
fn plain_and_speculating(chat: &ChatModel) -> (Engine, Engine) {
    let off = SpecConfig {
        tokens: 0,
        ..SpecConfig::default()
    };
    (
        engine_with(chat, off),
        engine_with(chat, SpecConfig::default()),
    )
}

fn requests() -> Vec<Req> {
    let mut reqs = vec![greedy(repetitive(1), 64), greedy(prompt(5, 40), 48)];
    let mut sampled = greedy(repetitive(2), 64);
    sampled.params.temperature = Some(0.7);
    sampled.params.seed = Some(11);
    sampled.params.logprobs = Some(true);
    sampled.params.top_logprobs = Some(3);
    reqs.push(sampled);
    let mut penalized = greedy(repetitive(3), 48);
    penalized.params.frequency_penalty = Some(0.3);
    penalized.params.n = Some(2);
    penalized.params.temperature = Some(0.9);
    penalized.params.seed = Some(3);
    reqs.push(penalized);
    reqs
}

fn accepted(e: &Engine) -> u64 {
    e.handle().stats().spec_accepted_tokens.load(SeqCst)
}

#[test]
fn speculation_gives_the_same_tokens_alone_and_batched() {
    let Some(chat) = smollm2() else { return };
    let (plain, spec) = plain_and_speculating(&chat);
    // One at a time: every request may speculate.
    for r in requests() {
        let n = r.params.n.unwrap_or(1) as usize;
        let want = collect(submit(&plain, r.clone()).expect("submit"), n);
        let got = collect(submit(&spec, r).expect("submit"), n);
        assert_eq!(got.tokens, want.tokens);
        assert_eq!(got.logprobs, want.logprobs);
        assert_eq!(got.text, want.text);
        assert_eq!(got.finish, want.finish);
        assert_eq!(got.usage, want.usage);
    }
    let alone = accepted(&spec);
    let stats = spec.handle().stats().clone();
    let drafted = stats.spec_draft_tokens.load(SeqCst);
    eprintln!("alone: {alone} of {drafted} draft tokens accepted");
    assert!(alone >= 32, "drafts were accepted: {alone} of {drafted}");
    assert_eq!(plain.handle().stats().spec_draft_tokens.load(SeqCst), 0);
    // Together (five sequences, more than the four that speculate, until some finish).
    let want = run_all(&plain, requests());
    let got = run_all(&spec, requests());
    assert_eq!(got, want);
    assert!(accepted(&spec) > alone, "speculated while batched");
    // Both engines computed the same number of tokens' worth of answers in fewer steps.
    assert_eq!(
        stats.generation_tokens.load(SeqCst),
        plain.handle().stats().generation_tokens.load(SeqCst)
    );
    assert!(stats.steps.load(SeqCst) < plain.handle().stats().steps.load(SeqCst));
}

#[test]
fn blocks_of_accepted_drafts_serve_the_next_turn() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 512, 8);
    let first = repetitive(4);
    let turn1 = run_all(&eng, vec![greedy(first.clone(), 64)]).remove(0);
    assert!(accepted(&eng) > 0);
    let mut second = first.clone();
    second.extend_from_slice(&turn1.tokens[0]);
    second.extend(prompt(9, 5));
    let turn2 = run_all(&eng, vec![greedy(second.clone(), 8)]).remove(0);
    let computed = first.len() + turn1.tokens[0].len() - 1;
    let bs = lumen_engine::BLOCK_SIZE;
    assert_eq!(turn2.usage.cached_prompt_tokens, computed / bs * bs);
    // And the cached blocks hold the right KV: a cold engine agrees.
    let cold = engine(&chat, 512, 8);
    assert_eq!(
        run_all(&cold, vec![greedy(second, 8)]).remove(0).tokens,
        turn2.tokens
    );
}

#[test]
fn the_exact_layout_never_speculates() {
    if lumen_testkit::chat_gguf().is_none() {
        return;
    }
    let loc = resolve(lumen_testkit::CHAT_MODEL, &lumen_testkit::lumen_home()).expect("resolve");
    let chat = ChatModel::load_with(&loc, WeightLayout::Exact).expect("load");
    let eng = engine_with(&chat, SpecConfig::default());
    run_all(&eng, vec![greedy(repetitive(1), 32)]);
    assert_eq!(eng.handle().stats().spec_draft_tokens.load(SeqCst), 0);
}

#[test]
fn an_interactive_stream_keeps_speculating_beside_a_batch_job() {
    let Some(chat) = smollm2() else { return };
    let (plain, spec) = plain_and_speculating(&chat);
    // Eight batch sequences (more than the four that speculate), then one interactive stream
    // that repeats its prompt. The batch yields to it (a row or two a step), so it must not
    // count: the stream speculates as on an idle engine, and the batch never does.
    let reqs = || {
        let mut reqs: Vec<Req> = (0..8)
            .map(|i| {
                let mut r = greedy(prompt(20 + i, 24), 128);
                r.params.priority = Some(PriorityInput::Name("batch".into()));
                r
            })
            .collect();
        reqs.push(greedy(repetitive(1), 64));
        reqs
    };
    let want = run_all(&plain, reqs());
    let got = run_all(&spec, reqs());
    assert_eq!(got, want);
    assert!(
        accepted(&spec) >= 16,
        "the interactive stream speculated: {} accepted",
        accepted(&spec)
    );
}
