//! A finished explain pass's cache, kept so later passes over variants of the same text
//! start where they first differ.
//!
//! Occlusion runs one teacher-forced variant per span, and every variant agrees with the
//! unmasked text up to the span's first token: same tokens, same RoPE positions, same prompt
//! arithmetic. The keys and values of those rows are therefore the baseline pass's, bit for
//! bit (the forward pass's arithmetic depends on a row's position, never on the batch), so a
//! variant copies them instead of recomputing them. Sharing is by whole blocks, and the cache
//! itself decides how much of a sequence it covers ([`PassCache::reusable`]) by comparing
//! tokens and positions, so a caller cannot reuse rows that do not match.

use std::fmt;

use super::explain::TeacherForced;
use crate::kv::KvStorage;

/// Sequence 0 of an explain pass with its keys and values (blocks `0..` in order).
#[derive(Clone)]
pub struct PassCache {
    pub(super) kv: KvStorage,
    pub(super) tokens: Vec<u32>,
    pub(super) positions: Vec<usize>,
    pub(super) prompt_len: usize,
    pub(super) block: usize,
}

impl fmt::Debug for PassCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PassCache")
            .field("tokens", &self.tokens.len())
            .field("prompt_len", &self.prompt_len)
            .finish_non_exhaustive()
    }
}

impl PassCache {
    /// Leading tokens of `s` whose keys and values this cache holds: the longest run that
    /// matches in token, RoPE position and prompt arithmetic, cut to whole blocks and to
    /// `s.logits_from` (the rows that return logits are always computed).
    pub fn reusable(&self, s: &TeacherForced<'_>) -> usize {
        // Rows below a prompt of one token use the decode arithmetic; keep it simple and
        // share only prompt rows of multi-token prompts, which both sides compute alike.
        if s.prompt_len < 2 || self.prompt_len < 2 {
            return 0;
        }
        let limit = s
            .logits_from
            .min(s.prompt_len)
            .min(self.prompt_len)
            .min(self.tokens.len());
        let position = |i: usize| s.rope_positions.map_or(Some(i), |p| p.get(i).copied());
        let same = (0..limit.min(s.tokens.len()))
            .take_while(|&i| {
                s.tokens[i] == self.tokens[i] && position(i) == Some(self.positions[i])
            })
            .count();
        same / self.block * self.block
    }
}
