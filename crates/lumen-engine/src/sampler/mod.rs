//! Per-sequence sampling: logits in, one token (with its logprob) out.
//!
//! Every sequence owns a [`Sampler`]: its parameters, its penalty state and its own
//! seeded random generator. Nothing is shared between sequences, so a seeded request
//! samples the same tokens whether it runs alone or in a batch of 64 (batch invariance),
//! and the engine can sample rows in any order or in parallel.
//!
//! # Order of operations
//!
//! As vLLM does: `logit_bias`, then penalties (repetition over prompt + output;
//! frequency and presence over the output), then temperature, top-k, top-p, min-p, and
//! the draw. Greedy (temperature 0 or top-k 1) takes the argmax, ties to the lowest id.
//!
//! # Logprobs
//!
//! Reported logprobs are the log-softmax of the logits after `logit_bias` and penalties
//! and before temperature and truncation: the model's distribution with the request's
//! hard adjustments, independent of how randomly it was sampled. With default parameters
//! this equals vLLM's default (`raw_logprobs`); vLLM takes raw logprobs before bias and
//! penalties too, so the two differ only for requests that set those.
//!
//! # Cost
//!
//! Scratch buffers live in the sampler, so the steady state does not allocate (apart from
//! the `top_logprobs` vector when asked for). Penalty state is updated incrementally.
//! Top-p sorts only as many candidates as it needs.

mod logprobs;
mod params;
mod penalties;
mod rng;
mod softmax;
mod uncertainty;

pub use logprobs::{log_softmax_top_n, logsumexp};
pub use params::SamplingParams;
pub use uncertainty::TokenUncertainty;

use crate::error::EngineError;
use penalties::PenaltyState;
use rng::Rng;

/// The token chosen for one sequence at one step.
#[derive(Debug, Clone, PartialEq)]
pub struct Sampled {
    /// The chosen token.
    pub token: u32,
    /// Its logprob (see the module docs for which distribution), when `params.logprobs` asks
    /// for logprobs: the normaliser is a pass of `exp` over the whole vocabulary, which a
    /// 16-stream decode step cannot afford for every sequence that does not want it.
    pub logprob: Option<f32>,
    /// The `params.logprobs` most likely tokens with their logprobs, most likely first.
    pub top_logprobs: Vec<(u32, f32)>,
    /// The token's entropy, margin and logprob, when `params.uncertainty` asks for them.
    pub uncertainty: Option<TokenUncertainty>,
}

/// One sequence's sampling state.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    vocab_size: usize,
    seed: u64,
    rng: Rng,
    penalties: Option<PenaltyState>,
    /// Scratch: candidate (id, scaled logit) pairs.
    cand: Vec<(u32, f32)>,
    /// Scratch: the unnormalized probabilities the draw picks from.
    weights: Vec<f32>,
}

impl Sampler {
    /// A sampler for one sequence; fails if a parameter is out of range.
    pub fn new(params: SamplingParams, vocab_size: usize) -> Result<Sampler, EngineError> {
        params.validate_for_vocab(vocab_size)?;
        let seed = params.seed.unwrap_or_else(rng::random_seed);
        let penalties = params
            .has_penalties()
            .then(|| PenaltyState::new(vocab_size, None));
        Ok(Sampler {
            rng: Rng::from_seed(seed),
            seed,
            penalties,
            vocab_size,
            cand: Vec::new(),
            weights: Vec::new(),
            params,
        })
    }

    /// The parameters this sampler was built with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// The seed in use (drawn at random when the request gave none).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Says how many leading history tokens are prompt. Without it, the history passed to
    /// the first [`sample`](Self::sample) call is taken as the prompt.
    pub fn set_prompt_len(&mut self, prompt_len: usize) {
        if let Some(p) = &mut self.penalties {
            p.reset(Some(prompt_len));
        }
    }

    /// Picks the next token. `logits` (one row, modified in place) must be this
    /// sequence's; `history` is prompt + generated tokens, used for penalties.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> Sampled {
        let n = logits.len().min(self.vocab_size);
        let logits = &mut logits[..n];
        for &(id, bias) in &self.params.logit_bias {
            if let Some(l) = logits.get_mut(id as usize) {
                *l += bias;
            }
        }
        if let Some(p) = &mut self.penalties {
            p.observe(history);
            let sp = &self.params;
            p.apply(
                logits,
                sp.repetition_penalty,
                sp.frequency_penalty,
                sp.presence_penalty,
            );
        }
        let wants_lse = self.params.logprobs.is_some() || self.params.uncertainty;
        let lse = wants_lse.then(|| logsumexp(logits));
        let top_logprobs = match (self.params.logprobs, lse) {
            (Some(k), Some(lse)) => logprobs::top_n_with_lse(logits, k, lse),
            _ => Vec::new(),
        };
        let token = if self.params.is_greedy() {
            argmax(logits)
        } else {
            self.draw(logits)
        };
        let logprob = match (self.params.logprobs, lse) {
            (Some(_), Some(lse)) => Some(logprobs::logprob(
                logits.get(token as usize).copied().unwrap_or(f32::NAN),
                lse,
            )),
            _ => None,
        };
        let uncertainty = match (self.params.uncertainty, lse) {
            (true, Some(lse)) => Some(uncertainty::measure(logits, lse, token)),
            _ => None,
        };
        Sampled {
            token,
            logprob,
            top_logprobs,
            uncertainty,
        }
    }

    /// Temperature, top-k, top-p, min-p, then one random draw.
    fn draw(&mut self, logits: &[f32]) -> u32 {
        let p = &self.params;
        let inv_t = 1.0 / p.temperature;
        if p.top_k == 0 {
            // Weights straight from the row. (Scaling by a positive number keeps the
            // maximum where it was; the most likely token's weight is exactly 1.)
            let max = softmax::max(logits) * inv_t;
            if max == f32::NEG_INFINITY {
                return argmax(logits);
            }
            let total = softmax::exp_weights(logits, inv_t, max, &mut self.weights);
            if p.top_p >= 1.0 && p.min_p <= 0.0 {
                // The whole vocabulary: no candidate list at all.
                let target = self.rng.next_f64() * total;
                return softmax::pick(&self.weights, target)
                    .map_or_else(|| argmax(logits), |i| i as u32);
            }
            // Only tokens at or above a weight whose mass already reaches top_p can be
            // kept, so the candidates are those (usually a few hundred, not the vocabulary).
            // Min-p alone keeps every weighted token as a candidate.
            let limit = f64::from(p.top_p) * total;
            let cutoff = if p.top_p < 1.0 {
                softmax::cutoff_holding(&self.weights, limit)
            } else {
                0.0
            };
            self.cand.clear();
            self.cand.extend(
                self.weights
                    .iter()
                    .zip(logits)
                    .enumerate()
                    .filter(|(_, (&w, _))| w >= cutoff && w > 0.0)
                    .map(|(i, (_, &l))| (i as u32, l * inv_t)),
            );
            if p.top_p < 1.0 {
                top_p(&mut self.cand, limit, max);
            }
        } else {
            self.cand.clear();
            self.cand.extend(
                logits
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| **l > f32::NEG_INFINITY) // also drops NaN
                    .map(|(i, &l)| (i as u32, l * inv_t)),
            );
            if self.cand.is_empty() {
                return argmax(logits);
            }
            if p.top_k < self.cand.len() {
                self.cand.select_nth_unstable_by(p.top_k - 1, by_logit_desc);
                self.cand.truncate(p.top_k);
            }
            if p.top_p < 1.0 {
                // Top-p over the top-k tokens' own distribution.
                let max = max_logit(&self.cand);
                let total: f64 = self
                    .cand
                    .iter()
                    .map(|c| f64::from(softmax::weight(c.1 - max)))
                    .sum();
                top_p(&mut self.cand, f64::from(p.top_p) * total, max);
            }
        }
        let max = max_logit(&self.cand);
        if p.min_p > 0.0 {
            let floor = max + p.min_p.ln();
            self.cand.retain(|c| c.1 >= floor);
        }
        self.weights.clear();
        self.weights
            .extend(self.cand.iter().map(|c| softmax::weight(c.1 - max)));
        let target = self.rng.next_f64() * softmax::sum(&self.weights);
        let at = softmax::pick(&self.weights, target).unwrap_or(self.cand.len() - 1);
        self.cand[at].0
    }
}

/// The largest scaled logit among the candidates.
fn max_logit(cand: &[(u32, f32)]) -> f32 {
    cand.iter().map(|c| c.1).fold(f32::NEG_INFINITY, f32::max)
}

/// Descending by logit, ties to the lower id.
fn by_logit_desc(a: &(u32, f32), b: &(u32, f32)) -> std::cmp::Ordering {
    b.1.total_cmp(&a.1).then(a.0.cmp(&b.0))
}

/// Keeps the most likely candidates until their mass, in weights `exp(logit − max)`,
/// reaches `limit` (top_p times the distribution's total; vLLM's rule: a token stays if
/// the mass ranked above it is below top_p). Sorts only a growing prefix of the
/// candidates, since the kept set is usually small.
fn top_p(cand: &mut Vec<(u32, f32)>, limit: f64, max: f32) {
    let mut sorted = 0;
    let mut m = 64.min(cand.len());
    let mut acc = 0.0f64;
    loop {
        if m < cand.len() {
            cand[sorted..].select_nth_unstable_by(m - 1 - sorted, by_logit_desc);
        }
        cand[sorted..m].sort_unstable_by(by_logit_desc);
        for i in sorted..m {
            if acc >= limit {
                cand.truncate(i.max(1));
                return;
            }
            acc += f64::from(softmax::weight(cand[i].1 - max));
        }
        sorted = m;
        if m == cand.len() {
            return;
        }
        m = (m * 4).min(cand.len());
    }
}

/// Index of the largest logit, ties to the lowest id; NaN never wins.
fn argmax(logits: &[f32]) -> u32 {
    softmax::argmax(logits)
}

#[cfg(test)]
mod tests;
