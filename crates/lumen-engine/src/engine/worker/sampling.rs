//! Turning a step's logits into tokens: sampling one row into a sequence, checking a
//! speculative draft row by row, and recording prompt logprobs. Free functions over the
//! worker's per-sequence state, kept apart from the loop that schedules and runs steps.

use lumen_models::LogitsWanted;

use super::{RequestState, SeqData};
use crate::constraint::GrammarFailure;
use crate::request::{Event, FinishReason, TokenLogprob};
use crate::sampler::{log_softmax_top_n, logsumexp};
use crate::scheduler::{Chunk, Sequence};

/// Whether the sequence of chunk `c` samples a token after this step: the chunk reaches the
/// end of its `n_tokens` tokens and brings logits back.
pub(super) fn samples_now(c: &Chunk, kind: LogitsWanted, n_tokens: usize) -> bool {
    kind != LogitsWanted::None && c.start + c.len == n_tokens
}

/// Records logprobs of the prompt tokens predicted by a chunk's rows.
pub(super) fn collect_prompt_logprobs(
    seq: &mut Sequence<SeqData>,
    c: &Chunk,
    rows: &[f32],
    vocab: usize,
    top_n: usize,
) {
    let top_n = top_n.min(vocab);
    let Some(lp) = seq.data.prompt_lp.as_mut() else {
        return;
    };
    for i in 0..c.len {
        let next = c.start + i + 1;
        if next >= seq.data.prompt_len {
            break;
        }
        let row = &rows[i * vocab..(i + 1) * vocab];
        // After a preemption the prompt is recomputed: keep what was already recorded.
        if lp.len() != next {
            continue;
        }
        let token = seq.tokens[next];
        let logprob = row[token as usize] - logsumexp(row);
        lp.push(Some(TokenLogprob {
            token,
            logprob,
            top: log_softmax_top_n(row, top_n),
        }));
    }
}

/// What checking a draft came to.
pub(super) struct Verified {
    pub drafted: usize,
    pub accepted: usize,
    pub sampled: usize,
    /// Tokens of the sequence whose KV is now valid.
    pub computed: usize,
    pub end: Result<Option<FinishReason>, GrammarFailure>,
}

/// Samples a drafted sequence's rows in order, as separate steps would have, until a sampled
/// token differs from the draft or the choice ends (see [`super::super::spec`] for why this is exact).
/// `rows` holds one row per chunk token: the last verified token's, then each draft token's.
pub(super) fn verify_draft(
    seq: &mut Sequence<SeqData>,
    rows: std::slice::ChunksExact<'_, f32>,
    scratch: &mut Vec<f32>,
    eog_ids: &[u32],
    ctx: usize,
    max_draft: usize,
    state: &mut RequestState,
) -> Verified {
    let draft = seq.tokens.split_off(seq.tokens.len() - seq.draft);
    seq.draft = 0;
    let mut v = Verified {
        drafted: draft.len(),
        accepted: 0,
        sampled: 0,
        computed: seq.tokens.len(),
        end: Ok(None),
    };
    for (i, row) in rows.enumerate() {
        v.end = sample_into(seq, row, scratch, eog_ids, ctx, state);
        v.sampled += 1;
        let token = seq.tokens.last().copied();
        let confirmed = i < draft.len() && token == Some(draft[i]);
        if !matches!(v.end, Ok(None)) || !confirmed {
            break;
        }
        // The token sampled is the one drafted at this position: its KV is already computed.
        v.accepted += 1;
        v.computed += 1;
    }
    seq.data.spec.record(v.drafted, v.accepted, max_draft);
    v
}

/// Samples the next token of `seq` from `logits`, streams it, and says if the choice ended;
/// an error means the choice's grammar failed (the request fails with it).
#[allow(clippy::result_large_err)]
pub(super) fn sample_into(
    seq: &mut Sequence<SeqData>,
    logits: &[f32],
    scratch: &mut Vec<f32>,
    eog_ids: &[u32],
    ctx: usize,
    state: &mut RequestState,
) -> Result<Option<FinishReason>, GrammarFailure> {
    scratch.clear();
    scratch.extend_from_slice(logits);
    if let Some(c) = &mut seq.data.constraint {
        if c.is_complete() {
            seq.data.output.grammar_complete();
            return Ok(Some(FinishReason::Stop));
        }
        c.mask(scratch)?;
    }
    seq.data.output.mask_stop_tokens(eog_ids, scratch);
    if seq.data.constraint.is_some() && scratch.iter().all(|l| *l == f32::NEG_INFINITY) {
        // The grammar allows only an end, which `min_tokens` forbids: the output is complete.
        seq.data.output.grammar_complete();
        return Ok(Some(FinishReason::Stop));
    }
    let sampled = seq.data.sampler.sample(scratch, &seq.tokens);
    if let Some(c) = &mut seq.data.constraint {
        c.commit(sampled.token)?;
    }
    seq.tokens.push(sampled.token);
    let at_end = seq.tokens.len() >= ctx;
    let outcome = seq.data.output.push(sampled.token, at_end);
    let logprob = state.request.sampling.logprobs.map(|_| TokenLogprob {
        token: sampled.token,
        logprob: sampled.logprob.unwrap_or(f32::NAN),
        top: sampled.top_logprobs,
    });
    if outcome.visible || !outcome.text.is_empty() {
        let _ = state.events.send(Event::Token {
            choice: seq.data.choice,
            token: sampled.token,
            text: outcome.text,
            logprob,
            uncertainty: sampled.uncertainty,
        });
    }
    Ok(outcome.finish)
}
