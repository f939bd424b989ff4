//! One sequence's grammar state inside the engine loop: mask the logits, then commit the
//! sampled token.

use llguidance::Matcher;

use super::compiler::CompiledConstraint;

/// A sequence's position in its grammar.
pub(crate) struct SeqConstraint {
    matcher: Matcher,
}

impl SeqConstraint {
    /// A sequence at the start of `c`'s grammar.
    pub fn new(c: &CompiledConstraint) -> Self {
        SeqConstraint { matcher: c.start() }
    }

    /// Whether the grammar is complete and allows nothing more (the choice ends here).
    pub fn is_complete(&self) -> bool {
        self.matcher.is_stopped() && !self.matcher.is_error()
    }

    /// Sets every token the grammar does not allow next to minus infinity. Runs on the raw
    /// logits, before bias, penalties and temperature, so those only ever choose among
    /// tokens that keep the output valid.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.matcher.compute_mask().map_err(|e| e.to_string())?;
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
    pub fn commit(&mut self, token: u32) -> Result<(), String> {
        self.matcher
            .consume_token(token)
            .map_err(|e| format!("the output left its grammar: {e}"))
    }
}
