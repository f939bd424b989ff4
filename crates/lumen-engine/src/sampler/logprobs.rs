//! Log-softmax helpers for token and prompt logprobs.
//!
//! NaN logits (a model bug) are treated as impossible tokens (−∞) rather than poisoning
//! the whole distribution.

/// `log(sum(exp(logits)))`, shifted by the maximum (exponentials in f32, their sum in f64);
/// −∞ for an empty or all −∞ input.
pub fn logsumexp(logits: &[f32]) -> f32 {
    let max = super::softmax::max(logits);
    if !max.is_finite() {
        return max;
    }
    (f64::from(max) + super::softmax::exp_sum(logits, max).ln()) as f32
}

/// The `n` most likely tokens as `(id, logprob)`, most likely first (ties: lower id first).
pub fn log_softmax_top_n(logits: &[f32], n: usize) -> Vec<(u32, f32)> {
    top_n_with_lse(logits, n, logsumexp(logits))
}

/// [`log_softmax_top_n`] with the normaliser already computed. Impossible tokens (a logit
/// of −∞: masked by a grammar or by `min_tokens`) are never listed as alternatives, so a
/// constrained request may get fewer than `n`.
pub(crate) fn top_n_with_lse(logits: &[f32], n: usize, lse: f32) -> Vec<(u32, f32)> {
    let mut top: Vec<(u32, f32)> = Vec::with_capacity(n + 1);
    if n == 0 {
        return top;
    }
    for (i, &l) in logits.iter().enumerate() {
        if l.is_nan() || l == f32::NEG_INFINITY {
            continue;
        }
        if top.len() == n && top.last().is_some_and(|&(_, m)| l <= m) {
            continue;
        }
        // Insert after every entry with a logit >= l, so equal logits keep id order.
        let pos = top.partition_point(|&(_, m)| m >= l);
        top.insert(pos, (i as u32, l));
        top.truncate(n);
    }
    for entry in &mut top {
        entry.1 = logprob(entry.1, lse);
    }
    top
}

/// `logit - lse`, with −∞ where the token is impossible.
pub(crate) fn logprob(logit: f32, lse: f32) -> f32 {
    let lp = logit - lse;
    if lp.is_nan() {
        f32::NEG_INFINITY
    } else {
        lp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_distribution_normalises() {
        let logits = [1.0f32, 2.0, 3.0, -1.0, 0.5];
        let lse = logsumexp(&logits);
        let total: f64 = logits.iter().map(|&l| f64::from(l - lse).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6);
        let all = log_softmax_top_n(&logits, logits.len());
        assert!(logsumexp(&all.iter().map(|x| x.1).collect::<Vec<_>>()).abs() < 1e-6);
        assert_eq!(
            all.iter().map(|x| x.0).collect::<Vec<_>>(),
            vec![2, 1, 0, 4, 3]
        );
    }

    #[test]
    fn top_n_breaks_ties_by_id_and_skips_nan() {
        let logits = [0.0f32, 5.0, f32::NAN, 5.0, 1.0];
        let top = log_softmax_top_n(&logits, 3);
        assert_eq!(top.iter().map(|x| x.0).collect::<Vec<_>>(), vec![1, 3, 4]);
        assert!(top.iter().all(|x| x.1.is_finite() && x.1 <= 0.0));
        assert!(log_softmax_top_n(&logits, 0).is_empty());
        let masked = [f32::NEG_INFINITY, 1.0, f32::NEG_INFINITY];
        assert_eq!(log_softmax_top_n(&masked, 3), vec![(1, 0.0)]);
        assert_eq!(logsumexp(&[]), f32::NEG_INFINITY);
        assert_eq!(
            logprob(f32::NEG_INFINITY, f32::NEG_INFINITY),
            f32::NEG_INFINITY
        );
    }
}
