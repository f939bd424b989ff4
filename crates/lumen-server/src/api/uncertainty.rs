//! `lumen_uncertainty`: each generated token's entropy and margin, and per choice the mean
//! logprob, the least likely token's probability and the perplexity.
//!
//! The engine measures every token (on the distribution logprobs come from; see
//! `lumen_engine::sampler`); this module shapes what it measured. A stream's token chunks
//! carry their tokens' entries and the choice's last chunk the summary, so folding the chunks
//! (what a non-streaming answer is) gives every entry and the summary once. The summary
//! covers the tokens that carried an entry, the same tokens logprobs would list.

use lumen_engine::TokenUncertainty;
use serde::Serialize;

/// One token's entry.
#[derive(Serialize, Clone, Copy, Debug, PartialEq)]
pub struct TokenEntry {
    /// Entropy of the distribution the token came from, in nats.
    pub entropy: f32,
    /// Top-1 minus top-2 probability.
    pub margin: f32,
}

/// A choice's `lumen_uncertainty` (a chunk's share of it while streaming).
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct UncertaintyOut {
    /// One entry per generated token, in order.
    pub tokens: Vec<TokenEntry>,
    /// Mean logprob of the generated tokens (in the choice's last chunk; absent when the
    /// choice generated no visible token).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_logprob: Option<f64>,
    /// Probability of the least likely generated token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_prob: Option<f64>,
    /// `exp(-mean_logprob)`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub perplexity: Option<f64>,
}

impl UncertaintyOut {
    /// Adds a later chunk's part (entries appended, a summary taken).
    pub fn extend(&mut self, later: UncertaintyOut) {
        self.tokens.extend(later.tokens);
        if later.mean_logprob.is_some() {
            self.mean_logprob = later.mean_logprob;
            self.min_prob = later.min_prob;
            self.perplexity = later.perplexity;
        }
    }
}

/// Running sums per choice.
#[derive(Clone, Copy, Debug)]
struct Sums {
    count: usize,
    logprob: f64,
    min_logprob: f64,
}

/// Per-choice accumulation over a request's stream.
#[derive(Debug, Default)]
pub struct UncertaintyTally {
    choices: Vec<Sums>,
}

impl UncertaintyTally {
    fn sums(&mut self, index: usize) -> &mut Sums {
        if self.choices.len() <= index {
            self.choices.resize(
                index + 1,
                Sums {
                    count: 0,
                    logprob: 0.0,
                    min_logprob: f64::INFINITY,
                },
            );
        }
        &mut self.choices[index]
    }

    /// Records choice `index`'s token and returns its chunk part.
    pub fn token(&mut self, index: usize, u: &TokenUncertainty) -> UncertaintyOut {
        let s = self.sums(index);
        let lp = f64::from(u.logprob);
        s.count += 1;
        s.logprob += lp;
        s.min_logprob = s.min_logprob.min(lp);
        UncertaintyOut {
            tokens: vec![TokenEntry {
                entropy: u.entropy,
                margin: u.margin,
            }],
            ..UncertaintyOut::default()
        }
    }

    /// Choice `index`'s summary, for its last chunk.
    pub fn finish(&mut self, index: usize) -> UncertaintyOut {
        let s = *self.sums(index);
        if s.count == 0 {
            return UncertaintyOut::default();
        }
        let mean = s.logprob / s.count as f64;
        UncertaintyOut {
            tokens: Vec::new(),
            mean_logprob: Some(mean),
            min_prob: Some(s.min_logprob.exp()),
            perplexity: Some((-mean).exp()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(logprob: f32) -> TokenUncertainty {
        TokenUncertainty {
            entropy: 0.5,
            margin: 0.25,
            logprob,
        }
    }

    #[test]
    fn summary_is_mean_min_and_perplexity_per_choice() {
        let mut t = UncertaintyTally::default();
        let mut whole = UncertaintyOut::default();
        for lp in [-0.5f32, -1.5, -1.0] {
            whole.extend(t.token(1, &tok(lp)));
        }
        t.token(0, &tok(-9.0));
        whole.extend(t.finish(1));
        assert_eq!(whole.tokens.len(), 3);
        let mean = whole.mean_logprob.unwrap();
        assert!((mean + 1.0).abs() < 1e-12);
        assert!((whole.min_prob.unwrap() - (-1.5f64).exp()).abs() < 1e-12);
        assert!((whole.perplexity.unwrap() - 1f64.exp()).abs() < 1e-12);
        let none = t.finish(5);
        assert!(none.mean_logprob.is_none() && none.tokens.is_empty());
        let json = serde_json::to_value(&none).unwrap();
        assert_eq!(json, serde_json::json!({"tokens": []}));
    }
}
