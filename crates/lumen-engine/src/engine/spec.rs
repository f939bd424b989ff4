//! Speculative decoding by prompt lookup: guess the next tokens by finding the sequence's
//! latest few tokens earlier in its own text (prompt and output), then score the guesses in
//! the same forward pass as the token being decoded.
//!
//! # Why it is safe
//!
//! The engine samples the pass's rows one after another with the sequence's own sampler,
//! exactly as it would have sampled them in separate steps, and stops at the first sampled
//! token that differs from the draft. So every emitted token is drawn from the model's
//! distribution given the tokens actually emitted before it, with the same penalties, grammar
//! masks, stop rules and random stream: speculation changes when tokens arrive, never which.
//! That needs the rows of a multi-token chunk to have the same bits a one-token decode would
//! give, which holds only with attention arithmetic that has one path for both (the model's
//! `kv_is_path_independent`); with llama.cpp's arithmetic (the exact layout) it stays off.
//!
//! # Why it pays, and when it must not run
//!
//! On a CPU, decoding one sequence reads every weight for one token; scoring nine tokens reads
//! them once too and costs little more, so each accepted draft token is almost free. Code
//! edits, quoting, summaries and structured output repeat long runs of their input, where the
//! lookup guesses right. Two guards keep it from costing anything elsewhere:
//! - **Only while the batch is small** ([`SpecConfig::max_seqs`]) and nothing waits: a full
//!   batch already uses the weights it reads, and its budget belongs to the queue. Only the
//!   foreground class is counted: beside interactive streams a batch job yields (a row or two
//!   a step), so its sequences neither turn the streams' speculation off nor speculate.
//! - **Draft as far as guesses hold**: each scored draft token costs a fraction of a decode
//!   step (about an eighth for the 135M model on two cores), so a long draft that fails early
//!   is waste. A sequence starts at [`START_LEN`] tokens, doubles its length after a draft
//!   accepted whole (up to [`SpecConfig::tokens`]) and drops to one more than it got accepted
//!   otherwise.
//! - **Back off when guesses fail**: after a draft of which nothing was accepted, the
//!   sequence drafts nothing for 1, 2, 4… steps (up to [`MAX_COOLDOWN`]), and a single
//!   accepted token resets the wait. Free text, where the lookup rarely finds anything
//!   anyway, then runs at plain decoding speed.

/// Longest n-gram looked up.
const MAX_NGRAM: usize = 4;
/// Shortest n-gram looked up: a single token repeats far too often to predict anything.
const MIN_NGRAM: usize = 2;
/// How far back the lookup scans (tokens): bounds its cost per step on long contexts.
const LOOKBACK: usize = 8192;
/// Longest wait, in steps, after failed drafts.
pub const MAX_COOLDOWN: u32 = 16;
/// A sequence's first draft length.
pub const START_LEN: usize = 4;
/// The shortest draft length a partly accepted draft leads to.
const MIN_LEN: usize = 2;

/// How the engine speculates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecConfig {
    /// Most draft tokens per step and sequence; 0 turns speculation off.
    pub tokens: usize,
    /// Speculate only while at most this many sequences run.
    pub max_seqs: usize,
}

impl Default for SpecConfig {
    /// Eight tokens while at most four sequences run: on two cores a 9-token step of the
    /// 135M model costs about 1.2 one-token steps, and past four sequences a decode step is
    /// no longer dominated by reading the weights.
    fn default() -> Self {
        SpecConfig {
            tokens: 8,
            max_seqs: 4,
        }
    }
}

/// A sequence's speculation state.
#[derive(Clone, Debug, Default)]
pub struct SpecState {
    /// Steps to wait before the next draft.
    wait: u32,
    /// The wait after the next failure.
    cooldown: u32,
    /// The next draft's length (0: not drafted yet, [`START_LEN`]).
    len: usize,
}

impl SpecState {
    /// Whether this step may draft (counts a waiting step down).
    pub fn ready(&mut self) -> bool {
        if self.wait > 0 {
            self.wait -= 1;
            return false;
        }
        true
    }

    /// How many tokens the next draft may have, at most `max`.
    pub fn draft_len(&self, max: usize) -> usize {
        let len = if self.len == 0 { START_LEN } else { self.len };
        len.min(max)
    }

    /// Records how a draft of `drafted` tokens went; `max` is the configured longest draft.
    pub fn record(&mut self, drafted: usize, accepted: usize, max: usize) {
        self.len = if accepted >= drafted {
            (drafted * 2).clamp(MIN_LEN, max.max(MIN_LEN))
        } else {
            (accepted + 1).max(MIN_LEN)
        };
        if accepted > 0 {
            self.cooldown = 0;
        } else {
            self.cooldown = (self.cooldown * 2).clamp(1, MAX_COOLDOWN);
            self.wait = self.cooldown;
        }
    }
}

/// Up to `k` tokens that followed the latest earlier occurrence of the longest suffix of
/// `tokens` (between 2 and 4 tokens) found within the last 8,192 tokens.
pub fn propose(tokens: &[u32], k: usize) -> &[u32] {
    let n = tokens.len();
    let from = n.saturating_sub(LOOKBACK);
    for g in (MIN_NGRAM..=MAX_NGRAM.min(n.saturating_sub(1))).rev() {
        let suffix = &tokens[n - g..];
        // The latest match first: recent text predicts best. A match must leave at least one
        // token after it, so it ends before the suffix itself does.
        let mut start = n - g;
        while start > from {
            start -= 1;
            if tokens[start..start + g] == *suffix {
                let after = start + g;
                return &tokens[after..(after + k).min(n)];
            }
        }
    }
    &[]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_the_latest_match_of_the_longest_suffix() {
        // "1 2 3 4 5 6 ... 1 2 3" -> "4 5 6"
        let t = [1, 2, 3, 4, 5, 6, 9, 9, 1, 2, 3];
        assert_eq!(propose(&t, 3), &[4, 5, 6]);
        assert_eq!(propose(&t, 100), &[4, 5, 6, 9, 9, 1, 2, 3]);
        // The latest occurrence wins.
        let t = [7, 8, 1, 7, 8, 2, 7, 8];
        assert_eq!(propose(&t, 1), &[2]);
        // Longer suffixes are preferred over shorter ones.
        let t = [5, 6, 7, 1, 0, 6, 7, 2, 5, 6, 7];
        assert_eq!(propose(&t, 1), &[1]);
    }

    #[test]
    fn proposes_nothing_without_a_match_of_two_tokens() {
        assert!(propose(&[], 4).is_empty());
        assert!(propose(&[1], 4).is_empty());
        assert!(propose(&[1, 2, 3, 4], 4).is_empty());
        // A single repeated token is not enough.
        assert!(propose(&[1, 5, 2, 5], 4).is_empty());
        // The suffix overlapping itself: "3 3 3" -> one more 3 after the first "3 3".
        assert_eq!(propose(&[3, 3, 3], 4), &[3]);
    }

    #[test]
    fn waits_longer_after_each_failure_and_resets_on_success() {
        let mut s = SpecState::default();
        assert!(s.ready());
        let mut waits = Vec::new();
        for _ in 0..7 {
            s.record(4, 0, 8);
            let mut w = 0;
            while !s.ready() {
                w += 1;
            }
            waits.push(w);
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 16, 16]);
        s.record(4, 3, 8);
        assert!(s.ready());
        s.record(4, 0, 8);
        assert!(!s.ready());
    }

    #[test]
    fn drafts_grow_while_accepted_whole_and_shrink_to_what_held() {
        let mut s = SpecState::default();
        assert_eq!(s.draft_len(8), START_LEN);
        assert_eq!(s.draft_len(2), 2);
        s.record(4, 4, 8);
        assert_eq!(s.draft_len(8), 8);
        s.record(8, 8, 8);
        assert_eq!(s.draft_len(8), 8, "capped at the configured length");
        s.record(8, 5, 8);
        assert_eq!(s.draft_len(8), 6);
        s.record(6, 0, 8);
        assert_eq!(s.draft_len(8), MIN_LEN);
        // A short draft (the lookup found little) accepted whole still grows.
        s.record(1, 1, 8);
        assert_eq!(s.draft_len(8), 2);
    }
}
