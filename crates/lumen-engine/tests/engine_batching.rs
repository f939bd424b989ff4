//! The engine on the real model: continuous batching, prefix reuse, preemption, cancellation,
//! stop strings and `n` choices, each checked against the same request run alone.

mod common;

use std::sync::atomic::Ordering::SeqCst;

use common::{
    blocks_in_use, collect, engine, greedy, prompt, run_all, smollm2, submit, wait_idle, Req,
};
use lumen_engine::{FinishReason, GenerationParams};

/// 64 requests with prompts from 10 to 1,500 tokens and mixed `max_tokens`, all at once, give
/// the same greedy tokens as each run alone.
#[test]
fn sixty_four_mixed_requests_match_their_solo_runs() {
    let Some(chat) = smollm2() else { return };
    // Mostly short prompts with a few long ones, so the suite stays quick on 2 cores.
    let lens: Vec<usize> = (0..64)
        .map(|i| match i % 16 {
            0 => 1500 - i * 7,
            5 => 600 + i,
            _ => 10 + (i * 37) % 120,
        })
        .collect();
    let reqs: Vec<Req> = lens
        .iter()
        .enumerate()
        .map(|(i, &l)| greedy(prompt(i as u64, l), 4 + (i * 7) % 20))
        .collect();
    let batched_engine = engine(&chat, 4096, 64);
    let batched = run_all(&batched_engine, reqs.clone());
    wait_idle(&batched_engine);
    assert_eq!(blocks_in_use(&batched_engine), 0);
    let solo_engine = engine(&chat, 4096, 64);
    for (i, r) in reqs.into_iter().enumerate() {
        let max = r.params.max_tokens.unwrap() as usize;
        let solo = run_all(&solo_engine, vec![r]).remove(0);
        assert_eq!(solo.tokens[0].len(), max);
        assert_eq!(
            batched[i].tokens, solo.tokens,
            "request {i} (prompt {} tokens) differs in a batch",
            lens[i]
        );
        assert_eq!(batched[i].finish[0], Some(FinishReason::Length));
    }
    wait_idle(&solo_engine);
    assert_eq!(blocks_in_use(&solo_engine), 0);
}

/// A seeded request at temperature 0.8 gives bit-identical tokens and logprobs alone and
/// inside a batch of 63 others.
#[test]
fn seeded_sampling_is_batch_invariant() {
    let Some(chat) = smollm2() else { return };
    let mut target = greedy(prompt(999, 40), 24);
    target.params.temperature = Some(0.8);
    target.params.seed = Some(1234);
    target.params.logprobs = Some(true);
    let eng = engine(&chat, 2048, 64);
    let alone = run_all(&eng, vec![target.clone()]).remove(0);
    let mut reqs: Vec<Req> = (0..63)
        .map(|i| {
            let mut r = greedy(prompt(i, 20 + i as usize), 24);
            r.params.temperature = Some(1.0);
            r.params.seed = Some(i as i64);
            r
        })
        .collect();
    reqs.insert(31, target);
    let together = run_all(&eng, reqs);
    assert_eq!(together[31].tokens, alone.tokens);
    assert_eq!(
        together[31].logprobs, alone.logprobs,
        "logprobs must be bit-identical"
    );
    assert_eq!(alone.logprobs[0].len(), 24);
    // Seeded sampling really samples: a different seed gives different tokens.
    let mut other = greedy(prompt(999, 40), 24);
    other.params.temperature = Some(0.8);
    other.params.seed = Some(4321);
    assert_ne!(run_all(&eng, vec![other]).remove(0).tokens, alone.tokens);
}

/// Two requests sharing a 1,000-token prefix: the second computes only its suffix, and its
/// output equals a cold run's.
#[test]
fn shared_prefix_is_computed_once() {
    let Some(chat) = smollm2() else { return };
    let prefix = prompt(7, 1000);
    let mut a = prefix.clone();
    a.extend(prompt(8, 30));
    let mut b = prefix.clone();
    b.extend(prompt(9, 25));
    let warm = engine(&chat, 1024, 8);
    let first = run_all(&warm, vec![greedy(a, 8)]).remove(0);
    assert_eq!(first.usage.cached_prompt_tokens, 0);
    let stats = warm.handle().stats().clone();
    let hits_before = stats.prefix_hits.load(SeqCst);
    let second = run_all(&warm, vec![greedy(b.clone(), 8)]).remove(0);
    // 1000 tokens = 62 full blocks of 16 (992 tokens) are reused.
    assert_eq!(second.usage.cached_prompt_tokens, 992);
    assert_eq!(stats.prefix_hits.load(SeqCst) - hits_before, 992);
    let cold = run_all(&engine(&chat, 1024, 8), vec![greedy(b, 8)]).remove(0);
    assert_eq!(cold.usage.cached_prompt_tokens, 0);
    assert_eq!(second.tokens, cold.tokens);
    wait_idle(&warm);
    assert_eq!(blocks_in_use(&warm), 0);
}

/// With the exact layout, blocks holding generated tokens are not offered to later prompts:
/// those tokens were computed with the single-token arithmetic, a prompt computes them with
/// the batched one, and reusing them would make a warm answer differ from a cold one. (The
/// packed default reuses them: `engine_multiturn.rs`.)
#[test]
fn generated_blocks_are_not_reused_as_prompt() {
    if lumen_testkit::chat_gguf().is_none() {
        return;
    }
    let loc =
        lumen_engine::registry::resolve(lumen_testkit::CHAT_MODEL, &lumen_testkit::lumen_home())
            .expect("resolve");
    let chat =
        lumen_engine::registry::ChatModel::load_with(&loc, lumen_engine::WeightLayout::Exact)
            .expect("load");
    let first_prompt = prompt(21, 40);
    let warm = engine(&chat, 256, 8);
    let first = run_all(&warm, vec![greedy(first_prompt.clone(), 40)]).remove(0);
    // A follow-up turn: the first prompt, its whole answer, and a new message.
    let mut follow = first_prompt;
    follow.extend(&first.tokens[0]);
    follow.extend(prompt(22, 10));
    let second = run_all(&warm, vec![greedy(follow.clone(), 8)]).remove(0);
    // Only the 2 full blocks of the first prompt (32 of its 40 tokens) come from the cache.
    assert_eq!(second.usage.cached_prompt_tokens, 32);
    let cold = run_all(&engine(&chat, 256, 8), vec![greedy(follow, 8)]).remove(0);
    assert_eq!(second.tokens, cold.tokens);
    wait_idle(&warm);
    assert_eq!(blocks_in_use(&warm), 0);
}

/// A KV budget too small for all requests at once: sequences are preempted and recomputed,
/// every request completes, and outputs equal the unpreempted ones.
#[test]
fn preemption_recomputes_to_the_same_output() {
    let Some(chat) = smollm2() else { return };
    let reqs: Vec<Req> = (0..8).map(|i| greedy(prompt(100 + i, 60), 40)).collect();
    let roomy = run_all(&engine(&chat, 512, 16), reqs.clone());
    // 8 sequences need 8 × 7 = 56 blocks by the end; 24 forces preemption.
    let tight_engine = engine(&chat, 24, 16);
    let tight = run_all(&tight_engine, reqs);
    assert!(
        tight_engine.handle().stats().preemptions.load(SeqCst) > 0,
        "expected preemptions"
    );
    for (i, (a, b)) in roomy.iter().zip(&tight).enumerate() {
        assert_eq!(a.tokens, b.tokens, "request {i} changed after preemption");
    }
    wait_idle(&tight_engine);
    assert_eq!(blocks_in_use(&tight_engine), 0);
}

/// Dropping a stream mid-generation cancels it and frees its blocks.
#[test]
fn cancel_frees_blocks() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 256, 8);
    let mut stream = submit(&eng, greedy(prompt(5, 50), 500)).unwrap();
    for _ in 0..3 {
        stream.blocking_recv().unwrap();
    }
    assert!(blocks_in_use(&eng) > 0);
    drop(stream);
    wait_idle(&eng);
    assert_eq!(blocks_in_use(&eng), 0);
    assert_eq!(eng.handle().stats().finished_cancelled.load(SeqCst), 1);
}

/// Stop strings split across tokens are caught and not emitted; `n = 4` gives four choices.
#[test]
fn stop_strings_and_n_choices() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 512, 16);
    let text = chat
        .template
        .render(
            &[lumen_engine::ChatMessage::new(
                "user",
                "Count from 1 to 20, separated by commas.",
            )],
            true,
            None,
        )
        .unwrap();
    let ids = chat.tokenizer.encode(&text, true, true).unwrap();
    let base = Req {
        prompt: ids,
        params: GenerationParams::greedy(60),
    };
    let full = run_all(&eng, vec![base.clone()]).remove(0).text.remove(0);
    // Pick a stop string that straddles token boundaries: a 5-character window in the middle.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 20, "reply too short: {full:?}");
    let stop: String = chars[10..15].iter().collect();
    let pieces: Vec<String> = chat
        .tokenizer
        .encode(&full, false, false)
        .unwrap()
        .iter()
        .map(|&t| chat.tokenizer.token_to_piece(t).unwrap())
        .collect();
    assert!(
        !pieces.iter().any(|p| p.contains(&stop)),
        "stop string {stop:?} should span tokens"
    );
    let mut with_stop = base.clone();
    with_stop.params.stop = vec![stop.clone()];
    let out = run_all(&eng, vec![with_stop]).remove(0);
    let cut = full.find(&stop).unwrap();
    assert_eq!(out.text[0], full[..cut]);
    assert_eq!(out.finish[0], Some(FinishReason::Stop));

    let mut four = base.clone();
    four.params.n = Some(4);
    four.params.max_tokens = Some(12);
    four.params.temperature = Some(1.0);
    four.params.seed = Some(3);
    let out = run_all(&eng, vec![four]).remove(0);
    assert_eq!(out.tokens.len(), 4);
    assert!(out.finish.iter().all(|f| f.is_some()));
    assert!(out.tokens.iter().all(|t| !t.is_empty()));
    let distinct: std::collections::HashSet<_> = out.tokens.iter().collect();
    assert!(
        distinct.len() > 1,
        "four seeded choices should not all be equal"
    );
    // Every streamed token is counted; a final end-of-sequence token per choice is counted
    // without being streamed.
    let streamed: usize = out.tokens.iter().map(|t| t.len()).sum();
    assert!(
        out.usage.completion_tokens >= streamed && out.usage.completion_tokens <= streamed + 4,
        "{:?} vs {streamed}",
        out.usage
    );
    wait_idle(&eng);
    assert_eq!(blocks_in_use(&eng), 0);
}

/// Requests that cannot fit the context are refused at submit, nothing is truncated.
#[test]
fn over_context_is_refused() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 64, 4);
    let ctx = eng.handle().info().context_len;
    let err = submit(&eng, greedy(prompt(1, 100), ctx))
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("context"), "{err}");
    let err = submit(&eng, greedy(prompt(1, 2000), 10))
        .err()
        .expect("must refuse: KV too small");
    assert!(err.to_string().contains("KV cache"), "{err}");
    let ok = collect(submit(&eng, greedy(prompt(1, 10), 3)).unwrap(), 1);
    assert_eq!(ok.tokens[0].len(), 3);
}

/// Every accepted request shows in the gauges from the moment `submit` returns, before the
/// engine thread has taken it, and the gauges return to zero when all are done.
#[test]
fn gauges_count_requests_from_acceptance() {
    let Some(chat) = smollm2() else { return };
    let eng = engine(&chat, 512, 2);
    let stats = eng.handle().stats().clone();
    let mut streams = Vec::new();
    for i in 0..8 {
        streams.push(submit(&eng, greedy(prompt(300 + i, 40), 24)).expect("submit"));
        // At most two run (max_num_seqs); the rest must read as waiting, at every instant.
        let seen = stats.requests_waiting() + stats.running.load(SeqCst);
        assert!(seen > i, "after {} submits the gauges show {seen}", i + 1);
    }
    for s in streams {
        collect(s, 1);
    }
    wait_idle(&eng);
    assert_eq!(
        (stats.requests_waiting(), stats.running.load(SeqCst)),
        (0, 0)
    );
}
