//! What a caller submits to the engine and what it gets back.
//!
//! The road in is one-way: [`GenerationParams`] (the client's values, wire types) is checked
//! against the rule book in [`limits`] by [`GenerationParams::validate`] into
//! [`ValidParams`], which [`ValidParams::for_prompt`] pairs with a tokenized prompt into a
//! [`ValidRequest`], the only thing the engine accepts. Every error names the OpenAI
//! parameter at fault ([`crate::EngineError::InvalidRequest`]). The engine's internal form,
//! `GenerateRequest`, is never built by callers.

pub mod limits;
mod params;
#[cfg(test)]
mod tests;
mod valid;

pub use params::{Api, CallerId, GenerationParams, PriorityInput};
pub use valid::{ValidParams, ValidRequest};

use crate::constraint::CompiledConstraint;
use crate::sampler::{SamplingParams, TokenUncertainty};

/// Scheduling class: interactive requests run before batch jobs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// A user is waiting.
    #[default]
    Interactive,
    /// Fills idle capacity.
    Batch,
}

/// A generation request over already tokenized input, as the engine loop uses it (built only
/// by validation).
#[derive(Clone, Debug)]
pub(crate) struct GenerateRequest {
    /// Prompt token ids (non-empty).
    pub prompt: Vec<u32>,
    /// Sampling parameters (each choice gets its own sampler; with a seed, choice `i` uses
    /// `seed + i` so choices differ but stay reproducible).
    pub sampling: SamplingParams,
    /// Most tokens to generate per choice.
    pub max_tokens: usize,
    /// Tokens to generate before end-of-sequence tokens are allowed to stop the choice.
    pub min_tokens: usize,
    /// Stop strings: generation stops before the first match, which is not emitted.
    pub stop: Vec<String>,
    /// Token ids that stop generation (the token itself is not emitted as text).
    pub stop_token_ids: Vec<u32>,
    /// Keep going past end-of-sequence tokens.
    pub ignore_eos: bool,
    /// Number of choices.
    pub n: usize,
    /// Top-N logprobs for every prompt token (with the prompt token's own logprob).
    pub prompt_logprobs: Option<usize>,
    /// Scheduling class.
    pub priority: Priority,
    /// Per-tenant salt mixed into prefix-cache keys (tenants never share cached blocks).
    pub cache_salt: Option<Vec<u8>>,
    /// Leave special tokens out of the text.
    pub skip_special_tokens: bool,
    /// The grammar the output must follow (each choice starts its own matcher from it).
    pub constraint: Option<CompiledConstraint>,
}

/// A token with its logprob and the most likely alternatives at that position.
#[derive(Clone, Debug, PartialEq)]
pub struct TokenLogprob {
    /// The token.
    pub token: u32,
    /// Its log-probability.
    pub logprob: f32,
    /// The top alternatives, most likely first.
    pub top: Vec<(u32, f32)>,
}

/// Why a choice ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// An end-of-sequence token, a stop token or a stop string.
    Stop,
    /// `max_tokens` or the context length was reached.
    Length,
    /// The caller went away or cancelled.
    Cancelled,
}

impl FinishReason {
    /// The OpenAI wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::Cancelled => "cancelled",
        }
    }
}

/// Token counts for a finished request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Prompt tokens served from the prefix cache.
    pub cached_prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
}

/// What the engine streams back for a request, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// Logprobs of the prompt tokens (first is `None`: nothing predicts it).
    PromptLogprobs(Vec<Option<TokenLogprob>>),
    /// A generated token and the text it completes (may be empty while UTF-8 or a possible
    /// stop string is pending).
    Token {
        /// Choice index.
        choice: usize,
        /// The token id.
        token: u32,
        /// Newly emitted text.
        text: String,
        /// Logprobs, when asked for.
        logprob: Option<TokenLogprob>,
        /// Entropy, margin and logprob of the choice, when `uncertainty` was asked for.
        uncertainty: Option<TokenUncertainty>,
    },
    /// A choice ended; `text` is any held-back text released at the end.
    Finished {
        /// Choice index.
        choice: usize,
        /// Why.
        reason: FinishReason,
        /// Text released at the end (held back for a possible stop string).
        text: String,
    },
    /// Every choice has ended.
    Done(Usage),
    /// The request failed inside the engine.
    Error(String),
    /// The request's grammar failed while generating (too complex for its limits): the
    /// client's input is at fault, so it is reported like an invalid parameter.
    GrammarError {
        /// The parameter the grammar came from.
        param: &'static str,
        /// What went wrong.
        message: String,
    },
}
