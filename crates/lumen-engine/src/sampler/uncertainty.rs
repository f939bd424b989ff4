//! How sure the model was of each token it generated (`lumen_uncertainty`).
//!
//! Measured on the same distribution logprobs report (the log-softmax of the logits after
//! `logit_bias` and penalties, before temperature and truncation; see the module docs of
//! [`super`]): the model's own belief with the request's hard adjustments, independent of how
//! randomly it was then sampled. Only a sequence whose request asked for it pays for it: one
//! more pass over the vocabulary (the normaliser is shared with logprobs when both are asked).

/// One generated token's uncertainty.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenUncertainty {
    /// Entropy of the distribution the token was drawn from, in nats (0 when one token holds
    /// all the mass; at most `ln(vocab)`).
    pub entropy: f32,
    /// Probability of the most likely token minus that of the second most likely.
    pub margin: f32,
    /// Log-probability of the token actually chosen (feeds the choice's mean logprob, minimum
    /// probability and perplexity).
    pub logprob: f32,
}

/// The uncertainty of choosing `token` from `logits`, whose log-sum-exp is `lse`. Impossible
/// tokens (−∞, or NaN, which a model bug would produce) carry no mass.
pub fn measure(logits: &[f32], lse: f32, token: u32) -> TokenUncertainty {
    let lse64 = f64::from(lse);
    let mut entropy = 0.0f64;
    let (mut p1, mut p2) = (0.0f64, 0.0f64);
    for &l in logits {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        let lp = f64::from(l) - lse64;
        let p = lp.exp();
        entropy -= p * lp;
        if p > p1 {
            p2 = p1;
            p1 = p;
        } else if p > p2 {
            p2 = p;
        }
    }
    let logprob = logits
        .get(token as usize)
        .map_or(f32::NEG_INFINITY, |&l| super::logprobs::logprob(l, lse));
    TokenUncertainty {
        // Rounding can leave a certain distribution a hair below zero.
        entropy: entropy.max(0.0) as f32,
        margin: (p1 - p2) as f32,
        logprob,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sampler::logsumexp;

    #[test]
    fn uniform_has_log_n_entropy_and_no_margin() {
        let logits = [0.5f32; 8];
        let u = measure(&logits, logsumexp(&logits), 3);
        assert!((u.entropy - 8f32.ln()).abs() < 1e-6);
        assert!(u.margin.abs() < 1e-7);
        assert!((u.logprob + 8f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn certain_token_has_zero_entropy_and_full_margin() {
        let logits = [f32::NEG_INFINITY, 3.0, f32::NEG_INFINITY, f32::NAN];
        let u = measure(&logits, logsumexp(&logits), 1);
        assert_eq!(u.entropy, 0.0);
        assert!((u.margin - 1.0).abs() < 1e-7);
        assert_eq!(u.logprob, 0.0);
    }

    #[test]
    fn margin_is_top_two_probabilities_apart() {
        let logits = [2.0f32, 1.0, 0.0, 2.0f32.ln() + 1.0];
        let lse = logsumexp(&logits);
        let p: Vec<f64> = logits.iter().map(|&l| f64::from(l - lse).exp()).collect();
        let u = measure(&logits, lse, 2);
        let mut sorted = p.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        assert!((f64::from(u.margin) - (sorted[0] - sorted[1])).abs() < 1e-6);
        let h: f64 = -p.iter().map(|p| p * p.ln()).sum::<f64>();
        assert!((f64::from(u.entropy) - h).abs() < 1e-6);
    }
}
