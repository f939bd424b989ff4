//! Repetition, presence and frequency penalties, with state kept up to date incrementally.
//!
//! The sampler sees the whole history (prompt + generated) at every step; re-scanning it
//! would cost O(length) per token, so this keeps token presence and output counts and
//! only looks at the tokens added since the last step.

/// Which tokens appeared, and how often each was generated.
#[derive(Debug, Clone)]
pub(crate) struct PenaltyState {
    /// History positions below this are prompt; `None` until the first step fixes it.
    prompt_len: Option<usize>,
    /// How much of the history has been folded in.
    seen: usize,
    /// Token appeared in the prompt or the output (for the repetition penalty).
    present: Vec<bool>,
    /// Times each token was generated (for presence and frequency penalties).
    out_counts: Vec<u32>,
    /// Distinct tokens with `present` set, so applying touches only those.
    touched: Vec<u32>,
}

impl PenaltyState {
    pub(crate) fn new(vocab_size: usize, prompt_len: Option<usize>) -> PenaltyState {
        PenaltyState {
            prompt_len,
            seen: 0,
            present: vec![false; vocab_size],
            out_counts: vec![0; vocab_size],
            touched: Vec::new(),
        }
    }

    /// Forgets everything and sets where the prompt ends.
    pub(crate) fn reset(&mut self, prompt_len: Option<usize>) {
        for &t in &self.touched {
            self.present[t as usize] = false;
            self.out_counts[t as usize] = 0;
        }
        self.touched.clear();
        self.seen = 0;
        self.prompt_len = prompt_len;
    }

    /// Folds in the tokens of `history` not seen yet. If the history got shorter it was
    /// rewritten, and the state is rebuilt from scratch.
    pub(crate) fn observe(&mut self, history: &[u32]) {
        if history.len() < self.seen {
            self.reset(self.prompt_len);
        }
        let prompt_len = *self.prompt_len.get_or_insert(history.len());
        for (pos, &tok) in history.iter().enumerate().skip(self.seen) {
            let i = tok as usize;
            let Some(p) = self.present.get_mut(i) else {
                continue;
            };
            if !*p {
                *p = true;
                self.touched.push(tok);
            }
            if pos >= prompt_len {
                self.out_counts[i] = self.out_counts[i].saturating_add(1);
            }
        }
        self.seen = history.len();
    }

    /// Applies the penalties to `logits` (vLLM order: repetition, then frequency and presence).
    pub(crate) fn apply(&self, logits: &mut [f32], repetition: f32, frequency: f32, presence: f32) {
        for &t in &self.touched {
            let i = t as usize;
            let Some(l) = logits.get_mut(i) else { continue };
            if repetition != 1.0 {
                *l = if *l > 0.0 {
                    *l / repetition
                } else {
                    *l * repetition
                };
            }
            let c = self.out_counts[i];
            if c > 0 {
                *l -= frequency * c as f32 + presence;
            }
        }
    }
}
