//! Speculative decoding's drafts for a step: which sequences may speculate now, and their
//! prompt-lookup proposals (the lookup itself and the draft length rules are in
//! [`crate::engine::spec`]).

use super::Worker;
use crate::engine::spec;

impl Worker {
    /// Appends prompt-lookup drafts to the decoding sequences that may speculate this step.
    ///
    /// Only the foreground class counts and speculates: beside interactive streams, batch
    /// sequences add at most a row or two to a step (they yield), so a batch job in the
    /// background must not take speculation away from the streams, nor get it itself.
    pub(super) fn propose_drafts(&mut self) {
        let k = self.spec.tokens;
        let fg = self.sched.foreground();
        let running = self
            .sched
            .running()
            .iter()
            .filter(|s| s.priority == fg)
            .count();
        let waiting = self.sched.waiting().any(|s| s.priority == fg);
        if k == 0 || running == 0 || running > self.spec.max_seqs || waiting {
            return;
        }
        let ctx = self.model.config().context_len;
        for seq in self.sched.running_mut() {
            let decoding =
                seq.priority == fg && seq.pending() == 1 && seq.tokens.len() > seq.prompt_len;
            if !decoding || seq.draft > 0 || seq.data.pending_forks > 0 || !seq.data.spec.ready() {
                continue;
            }
            // Never past the context, nor past what `max_tokens` leaves.
            let room = ctx
                .saturating_sub(seq.tokens.len() + 1)
                .min(seq.data.output.remaining().saturating_sub(1))
                .min(seq.data.spec.draft_len(k));
            let draft = spec::propose(&seq.tokens, room).to_vec();
            if !draft.is_empty() {
                seq.draft = draft.len();
                seq.tokens.extend_from_slice(&draft);
            }
        }
    }
}
