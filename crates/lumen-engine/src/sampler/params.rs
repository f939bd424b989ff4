//! Per-request sampling parameters and their validation.

use crate::error::EngineError;
use crate::request::limits::{self, MAX_LOGPROBS};

/// How one sequence picks its next token (OpenAI / vLLM semantics).
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// Softmax temperature; 0 means greedy.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 turns it off.
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches `top_p`; 1 turns it off.
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` times the most likely one; 0 turns it off.
    pub min_p: f32,
    /// Divides positive / multiplies negative logits of tokens in prompt or output; 1 is off.
    pub repetition_penalty: f32,
    /// Subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// Subtracted from a token's logit once per time it was generated.
    pub frequency_penalty: f32,
    /// Added to the logits of the given tokens.
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed for this sequence's random generator; `None` draws a random one.
    pub seed: Option<u64>,
    /// Return this many most likely alternatives with each token (0..=20).
    pub logprobs: Option<usize>,
    /// Measure each chosen token's uncertainty (`lumen_uncertainty`; see
    /// [`TokenUncertainty`](super::TokenUncertainty)).
    pub uncertainty: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: Vec::new(),
            seed: None,
            logprobs: None,
            uncertainty: false,
        }
    }
}

fn invalid(field: &'static str, reason: impl Into<String>) -> EngineError {
    EngineError::InvalidSampling {
        field,
        reason: reason.into(),
    }
}

impl SamplingParams {
    /// Greedy decoding.
    pub fn greedy() -> SamplingParams {
        SamplingParams {
            temperature: 0.0,
            ..SamplingParams::default()
        }
    }

    /// Checks every field against the rule book ([`crate::request::limits`]), naming the
    /// first one that is out of range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let ranges = [
            (limits::TEMPERATURE, self.temperature),
            (limits::TOP_P, self.top_p),
            (limits::MIN_P, self.min_p),
            (limits::REPETITION_PENALTY, self.repetition_penalty),
            (limits::PRESENCE_PENALTY, self.presence_penalty),
            (limits::FREQUENCY_PENALTY, self.frequency_penalty),
        ];
        for (range, v) in ranges {
            if !range.contains(f64::from(v)) {
                let open = if range.lo_open { "(" } else { "[" };
                return Err(invalid(
                    range.param,
                    format!("must be in {open}{}, {}], got {v}", range.lo, range.hi),
                ));
            }
        }
        if let Some(&(id, b)) = self
            .logit_bias
            .iter()
            .find(|(_, b)| !limits::LOGIT_BIAS.contains(f64::from(*b)))
        {
            return Err(invalid(
                "logit_bias",
                format!("bias for token {id} must be in [-100, 100], got {b}"),
            ));
        }
        if let Some(n) = self.logprobs.filter(|&n| n > MAX_LOGPROBS) {
            return Err(invalid(
                "logprobs",
                format!("at most {MAX_LOGPROBS} alternatives, got {n}"),
            ));
        }
        Ok(())
    }

    /// [`validate`](Self::validate), plus every `logit_bias` id below `vocab_size`.
    pub fn validate_for_vocab(&self, vocab_size: usize) -> Result<(), EngineError> {
        self.validate()?;
        if vocab_size == 0 {
            return Err(invalid("vocab_size", "the vocabulary is empty"));
        }
        if let Some(&(id, _)) = self
            .logit_bias
            .iter()
            .find(|(id, _)| *id as usize >= vocab_size)
        {
            return Err(invalid(
                "logit_bias",
                format!("token {id} is out of range for a vocabulary of {vocab_size}"),
            ));
        }
        Ok(())
    }

    /// Whether the next token is the argmax (no randomness involved).
    pub fn is_greedy(&self) -> bool {
        self.temperature < 1e-5 || self.top_k == 1
    }

    /// Whether any repetition, presence or frequency penalty is active.
    pub fn has_penalties(&self) -> bool {
        self.repetition_penalty != 1.0
            || self.presence_penalty != 0.0
            || self.frequency_penalty != 0.0
    }
}
