//! One sequence's grammar state inside the engine loop: mask the logits, then commit the
//! sampled token.

use llguidance::toktrie::SimpleVob;
use llguidance::Matcher;

use super::compiler::CompiledConstraint;

/// A grammar that failed in the middle of a sequence (too complex for its fuel, say).
#[derive(Debug)]
pub(crate) struct GrammarFailure {
    /// The request parameter the grammar came from.
    pub param: &'static str,
    /// What went wrong.
    pub message: String,
}

/// A sequence's position in its grammar.
pub(crate) struct SeqConstraint {
    param: &'static str,
    matcher: Matcher,
    /// The next step's allowed tokens, computed ahead by [`SeqConstraint::prepare`].
    ready: Option<Result<SimpleVob, String>>,
}

impl SeqConstraint {
    /// A sequence at the start of `c`'s grammar.
    pub fn new(c: &CompiledConstraint) -> Self {
        SeqConstraint {
            param: c.param(),
            matcher: c.start(),
            ready: None,
        }
    }

    /// Computes the next mask now, so that the engine can compute the masks of many
    /// sequences in parallel on its worker pool before it samples them one by one.
    pub fn prepare(&mut self) {
        if self.ready.is_none() && !self.is_complete() {
            self.ready = Some(self.matcher.compute_mask().map_err(|e| e.to_string()));
        }
    }

    /// Whether the grammar is complete and allows nothing more (the choice ends here).
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Sets every token the grammar does not allow next to minus infinity. Runs on the raw
    /// logits, before bias, penalties and temperature, so those only ever choose among
    /// tokens that keep the output valid.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), GrammarFailure> {
        let allowed = match self.ready.take() {
            Some(r) => r,
            None => self.matcher.compute_mask().map_err(|e| e.to_string()),
        }
        .map_err(|e| self.failure(format!("the grammar cannot go on: {e}")))?;
        let words = allowed.as_slice();
        for (w, chunk) in logits.chunks_mut(32).enumerate() {
            let bits = words.get(w).copied().unwrap_or(0);
            if bits == u32::MAX {
                continue;
            }
            for (i, l) in chunk.iter_mut().enumerate() {
                if bits & (1 << i) == 0 {
                    *l = f32::NEG_INFINITY;
                }
            }
        }
        Ok(())
    }

    /// Advances the grammar past `token`.
    pub fn commit(&mut self, token: u32) -> Result<(), GrammarFailure> {
        self.ready = None;
        self.matcher
            .consume_token(token)
            .map_err(|e| self.failure(format!("the grammar cannot go on: {e}")))
    }

    fn failure(&self, message: String) -> GrammarFailure {
        // llguidance appends a marker for the verbose details it leaves out.
        let message = message
            .replace("\n<non-verbose/>", "")
            .trim_end()
            .to_string();
        GrammarFailure {
            param: self.param,
            message,
        }
    }
}
