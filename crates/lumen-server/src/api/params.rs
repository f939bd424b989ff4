//! Generation parameters shared by chat and text completions: OpenAI's fields plus the vLLM
//! extensions, their ranges, and their conversion into an engine request.
//!
//! Ranges are checked here, before the engine sees anything, so every 400 names the
//! parameter as the client knows it (`max_tokens` even when `max_completion_tokens` was
//! sent). The engine validates again; its errors carry a `param` too.

use std::collections::HashMap;

use lumen_engine::{EngineHandle, GenerateRequest, Priority, SamplingParams};
use serde::Deserialize;

use crate::error::ServerError;

/// Most stop sequences per request.
pub const MAX_STOP: usize = 8;
/// Most top logprobs per token.
pub const MAX_TOP_LOGPROBS: i64 = 20;
/// Most choices per prompt.
pub const MAX_N: i64 = 16;

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopField {
    /// A single stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `priority`: vLLM's integer (lower runs earlier) or a class name.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PriorityField {
    /// Above zero means a batch job.
    Int(i64),
    /// `"interactive"` or `"batch"`.
    Name(String),
}

/// `stream_options`.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields both endpoints accept (unknown fields are ignored).
#[derive(Deserialize, Debug, Default)]
pub struct GenFields {
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Most generated tokens per choice.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (wins when both are sent).
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Stop sequences.
    pub stop: Option<StopField>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Penalty for tokens already present.
    pub presence_penalty: Option<f64>,
    /// Penalty by count of tokens already present.
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string) → bias added to its logit.
    pub logit_bias: Option<HashMap<String, f64>>,
    /// End-user id (logged only).
    pub user: Option<String>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// vLLM: keep the k most likely tokens (-1 or 0: off).
    pub top_k: Option<i64>,
    /// vLLM: drop tokens below `min_p` times the top probability.
    pub min_p: Option<f64>,
    /// vLLM: penalty for repeating prompt or generated tokens.
    pub repetition_penalty: Option<f64>,
    /// vLLM: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// vLLM: tokens to generate before a stop may end the choice.
    pub min_tokens: Option<i64>,
    /// vLLM: logprobs of the prompt tokens.
    pub prompt_logprobs: Option<i64>,
    /// vLLM: scheduling priority.
    pub priority: Option<PriorityField>,
    /// vLLM: token ids that end a choice.
    pub stop_token_ids: Option<Vec<i64>>,
    /// vLLM: leave special tokens out of the text (default true).
    pub skip_special_tokens: Option<bool>,
    /// vLLM: salt that keeps this request's prefix-cache entries apart.
    pub cache_salt: Option<String>,
}

/// Validated parameters, ready to be paired with each prompt.
#[derive(Debug, Clone)]
pub struct GenPlan {
    /// An engine request without its prompt (and with `max_tokens` still to be fitted).
    pub template: GenerateRequest,
    /// Explicit `max_tokens`, or `None` to fill the context.
    pub max_tokens: Option<usize>,
    /// Choices per prompt.
    pub n: usize,
    /// Stream the response.
    pub stream: bool,
    /// Send usage in a last chunk.
    pub include_usage: bool,
    /// The end user, for logs.
    pub user: Option<String>,
}

fn range(
    param: &str,
    v: Option<f64>,
    lo: f64,
    hi: f64,
    lo_open: bool,
) -> Result<Option<f32>, ServerError> {
    match v {
        None => Ok(None),
        Some(x) if !x.is_finite() || x > hi || x < lo || (lo_open && x == lo) => {
            let l = if lo_open { "(" } else { "[" };
            Err(ServerError::param(
                param,
                format!("{param} must be in {l}{lo}, {hi}], got {x}"),
            ))
        }
        Some(x) => Ok(Some(x as f32)),
    }
}

impl GenFields {
    /// Checks every field and builds the plan; `logprobs` is the top-N already read from the
    /// endpoint's own fields.
    pub fn plan(
        self,
        engine: &EngineHandle,
        logprobs: Option<usize>,
    ) -> Result<GenPlan, ServerError> {
        let vocab = engine.info().vocab_size;
        let n = self.n.unwrap_or(1);
        if !(1..=MAX_N).contains(&n) {
            return Err(ServerError::param(
                "n",
                format!("n must be between 1 and {MAX_N}, got {n}"),
            ));
        }
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            Some(m) if m < 1 => {
                return Err(ServerError::param(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}"),
                ))
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k > 0 => usize::try_from(k).unwrap_or(usize::MAX).min(vocab),
            Some(k) => {
                return Err(ServerError::param(
                    "top_k",
                    format!("top_k must be -1 (off) or positive, got {k}"),
                ))
            }
        };
        let mut logit_bias = Vec::new();
        for (k, v) in self.logit_bias.unwrap_or_default() {
            let id = k
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|&t| (t as usize) < vocab);
            let Some(id) = id else {
                return Err(ServerError::param(
                    "logit_bias",
                    format!("logit_bias key '{k}' is not a token id below {vocab}"),
                ));
            };
            if !(-100.0..=100.0).contains(&v) {
                return Err(ServerError::param(
                    "logit_bias",
                    format!("logit_bias values must be in [-100, 100], got {v}"),
                ));
            }
            logit_bias.push((id, v as f32));
        }
        logit_bias.sort_by_key(|&(id, _)| id);
        let sampling = SamplingParams {
            temperature: range("temperature", self.temperature, 0.0, 2.0, false)?.unwrap_or(1.0),
            top_p: range("top_p", self.top_p, 0.0, 1.0, true)?.unwrap_or(1.0),
            presence_penalty: range("presence_penalty", self.presence_penalty, -2.0, 2.0, false)?
                .unwrap_or(0.0),
            frequency_penalty: range(
                "frequency_penalty",
                self.frequency_penalty,
                -2.0,
                2.0,
                false,
            )?
            .unwrap_or(0.0),
            min_p: range("min_p", self.min_p, 0.0, 1.0, false)?.unwrap_or(0.0),
            repetition_penalty: range(
                "repetition_penalty",
                self.repetition_penalty,
                0.0,
                10.0,
                true,
            )?
            .unwrap_or(1.0),
            top_k,
            // OpenAI seeds are any integer; the bits are what matter.
            seed: self.seed.map(|s| s as u64),
            logprobs,
            logit_bias,
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(StopField::One(s)) => vec![s],
            Some(StopField::Many(v)) => v,
        };
        if stop.len() > MAX_STOP {
            return Err(ServerError::param(
                "stop",
                format!("at most {MAX_STOP} stop sequences, got {}", stop.len()),
            ));
        }
        if stop.iter().any(String::is_empty) {
            return Err(ServerError::param(
                "stop",
                "stop sequences must not be empty",
            ));
        }
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(m) if m < 0 => {
                return Err(ServerError::param(
                    "min_tokens",
                    "min_tokens must not be negative",
                ))
            }
            Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        };
        if max_tokens.is_some_and(|max| min_tokens > max) {
            return Err(ServerError::param(
                "min_tokens",
                "min_tokens must not exceed max_tokens",
            ));
        }
        let prompt_logprobs = match self.prompt_logprobs {
            None => None,
            Some(p) if !(0..=MAX_TOP_LOGPROBS).contains(&p) => {
                return Err(ServerError::param(
                    "prompt_logprobs",
                    format!("prompt_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
                ))
            }
            Some(p) => Some(p as usize),
        };
        let priority = match self.priority {
            None => Priority::Interactive,
            Some(PriorityField::Int(p)) if p > 0 => Priority::Batch,
            Some(PriorityField::Int(_)) => Priority::Interactive,
            Some(PriorityField::Name(s)) if s == "interactive" => Priority::Interactive,
            Some(PriorityField::Name(s)) if s == "batch" => Priority::Batch,
            Some(PriorityField::Name(s)) => {
                return Err(ServerError::param(
                    "priority",
                    format!(
                        "unknown priority '{s}' (use an integer, \"interactive\" or \"batch\")"
                    ),
                ))
            }
        };
        let mut stop_token_ids = Vec::new();
        for t in self.stop_token_ids.unwrap_or_default() {
            match u32::try_from(t).ok().filter(|&t| (t as usize) < vocab) {
                Some(t) => stop_token_ids.push(t),
                None => {
                    return Err(ServerError::param(
                        "stop_token_ids",
                        format!("token id {t} is outside the vocabulary"),
                    ))
                }
            }
        }
        let mut template = GenerateRequest::new(Vec::new());
        template.sampling = sampling;
        template.max_tokens = max_tokens.unwrap_or(1);
        template.min_tokens = min_tokens;
        template.stop = stop;
        template.stop_token_ids = stop_token_ids;
        template.ignore_eos = self.ignore_eos.unwrap_or(false);
        template.n = n as usize;
        template.prompt_logprobs = prompt_logprobs;
        template.priority = priority;
        template.cache_salt = self.cache_salt.map(String::into_bytes);
        template.skip_special_tokens = self.skip_special_tokens.unwrap_or(true);
        let stream = self.stream.unwrap_or(false);
        let include_usage = stream
            && self
                .stream_options
                .and_then(|o| o.include_usage)
                .unwrap_or(false);
        Ok(GenPlan {
            template,
            max_tokens,
            n: n as usize,
            stream,
            include_usage,
            user: self.user,
        })
    }
}

impl GenPlan {
    /// The engine request for one tokenized prompt; `prompt_param` names the field the prompt
    /// came from (`messages` or `prompt`) for errors about its length.
    pub fn request(
        &self,
        prompt: Vec<u32>,
        engine: &EngineHandle,
        prompt_param: &str,
    ) -> Result<GenerateRequest, ServerError> {
        let info = engine.info();
        let ctx = info.context_len;
        let kv_tokens = info.kv_blocks.saturating_mul(lumen_engine::BLOCK_SIZE);
        let limit = ctx.min(kv_tokens);
        if prompt.is_empty() {
            return Err(ServerError::param(prompt_param, "the prompt is empty"));
        }
        if prompt.len() >= limit {
            return Err(ServerError::param(prompt_param, format!("This model's maximum context length is {limit} tokens, but the prompt has {} tokens.", prompt.len())));
        }
        let max_tokens = match self.max_tokens {
            Some(m) if prompt.len().saturating_add(m) > ctx => {
                return Err(ServerError::param("max_tokens", format!("This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the prompt, {m} for the completion). Please reduce the length of the prompt or max_tokens.", prompt.len().saturating_add(m), prompt.len())))
            }
            Some(m) => m,
            None => limit - prompt.len(),
        };
        let mut req = self.template.clone();
        req.prompt = prompt;
        req.max_tokens = max_tokens;
        req.min_tokens = req.min_tokens.min(max_tokens);
        Ok(req)
    }
}

/// The top-N of OpenAI's `top_logprobs`, checked.
pub fn top_logprobs(param: &str, v: Option<i64>) -> Result<usize, ServerError> {
    match v {
        None => Ok(0),
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Ok(k as usize),
        Some(k) => Err(ServerError::param(
            param,
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}"),
        )),
    }
}
