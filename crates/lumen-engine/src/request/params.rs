//! What a caller asks for, as the client sent it, and its validation against the rule book.
//!
//! [`GenerationParams`] keeps the wire's types (`i64`, `f64`, strings for `logit_bias` keys)
//! so that every range check, including "negative" and "too large for this machine", happens
//! here and names the parameter as the client knows it. The HTTP layer only maps JSON names
//! onto these fields.

use std::sync::Arc;

use super::limits::{
    self, count, invalid, MAX_CHOICES, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_STOP, MAX_STOP_BYTES,
};
use super::valid::ValidParams;
use super::{GenerateRequest, Priority};
use crate::constraint::ConstraintSpec;
use crate::engine::ModelInfo;
use crate::error::EngineError;
use crate::sampler::SamplingParams;

/// Which API shape a request came in, so errors name its parameters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Api {
    /// `/v1/chat/completions`: `messages`, `logprobs: bool` + `top_logprobs`.
    #[default]
    Chat,
    /// `/v1/completions`: `prompt`, `logprobs: N`, `echo`, `best_of`.
    Completions,
}

impl Api {
    /// The parameter that holds the prompt.
    pub fn prompt_param(self) -> &'static str {
        match self {
            Api::Chat => "messages",
            Api::Completions => "prompt",
        }
    }

    /// The parameter that holds the number of alternatives per generated token.
    pub fn top_logprobs_param(self) -> &'static str {
        match self {
            Api::Chat => "top_logprobs",
            Api::Completions => "logprobs",
        }
    }
}

/// vLLM's `priority`: an integer (above zero is a batch job) or a class name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PriorityInput {
    /// vLLM's integer: lower runs earlier; above zero means batch.
    Int(i64),
    /// `"interactive"` or `"batch"`.
    Name(String),
}

/// Who sent a request, as the service layer identifies it; opaque to the engine, which only
/// carries it for admission and accounting.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct CallerId(pub Arc<str>);

impl CallerId {
    /// A caller named `id`.
    pub fn new(id: impl AsRef<str>) -> Self {
        CallerId(Arc::from(id.as_ref()))
    }
}

/// A generation request's parameters as the client sent them (OpenAI names and vLLM's
/// extensions); `None` means "not sent". Validated by [`GenerationParams::validate`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationParams {
    /// Which endpoint the request came in on (for parameter names in errors).
    pub api: Api,
    /// Choices per prompt (`n`, 1..=16).
    pub n: Option<i64>,
    /// Most generated tokens per choice (`max_tokens` / `max_completion_tokens`); absent
    /// fills the context.
    pub max_tokens: Option<i64>,
    /// vLLM: tokens to generate before end-of-sequence or stop tokens may end a choice.
    pub min_tokens: Option<i64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// vLLM: keep the k most likely tokens (-1 or 0: off).
    pub top_k: Option<i64>,
    /// vLLM: drop tokens below `min_p` times the top probability.
    pub min_p: Option<f64>,
    /// vLLM: penalty for repeating prompt or generated tokens.
    pub repetition_penalty: Option<f64>,
    /// Penalty for tokens already present.
    pub presence_penalty: Option<f64>,
    /// Penalty by count of tokens already present.
    pub frequency_penalty: Option<f64>,
    /// Token id (as a decimal string) and the bias added to its logit.
    pub logit_bias: Vec<(String, f64)>,
    /// Seed for reproducible sampling (any integer; its bits are used).
    pub seed: Option<i64>,
    /// Stop strings.
    pub stop: Vec<String>,
    /// vLLM: token ids that end a choice.
    pub stop_token_ids: Vec<i64>,
    /// vLLM: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// vLLM: leave special tokens out of the text (default true).
    pub skip_special_tokens: Option<bool>,
    /// Return logprobs of the generated tokens (chat's `logprobs: true`; completions send
    /// `logprobs: N`, mapped to `Some(true)` and `top_logprobs: N`).
    pub logprobs: Option<bool>,
    /// Alternatives per generated token.
    pub top_logprobs: Option<i64>,
    /// vLLM: logprobs of the prompt tokens, with this many alternatives.
    pub prompt_logprobs: Option<i64>,
    /// Lumen: entropy and margin of every generated token (`lumen_uncertainty`).
    pub uncertainty: Option<bool>,
    /// Completions: prepend the prompt to each choice.
    pub echo: Option<bool>,
    /// Completions: must equal `n` when sent (every choice is returned).
    pub best_of: Option<i64>,
    /// vLLM: scheduling priority.
    pub priority: Option<PriorityInput>,
    /// vLLM: salt that keeps this request's prefix-cache entries apart.
    pub cache_salt: Option<String>,
    /// Who is asking (set by the service layer, not by the client).
    pub caller: Option<CallerId>,
    /// Structured output or tool calls: what the output must follow.
    pub constraint: Option<ConstraintSpec>,
}

impl GenerationParams {
    /// Greedy decoding of at most `max_tokens` tokens per choice.
    pub fn greedy(max_tokens: usize) -> Self {
        GenerationParams {
            temperature: Some(0.0),
            max_tokens: Some(i64::try_from(max_tokens).unwrap_or(i64::MAX)),
            ..GenerationParams::default()
        }
    }

    /// Checks every parameter against the rule book and `model`; the prompt is checked
    /// later, per prompt, by [`ValidParams::for_prompt`].
    pub fn validate(self, model: &ModelInfo) -> Result<ValidParams, EngineError> {
        let api = self.api;
        let vocab = model.vocab_size;
        if vocab == 0 {
            return Err(EngineError::Config(
                "the model's vocabulary is empty".into(),
            ));
        }
        let n = count("n", self.n.unwrap_or(1), 1, MAX_CHOICES)?;
        if let Some(b) = self.best_of {
            if b != n as i64 {
                return Err(invalid(
                    "best_of",
                    "best_of is not supported unless it equals n",
                ));
            }
        }
        let max_tokens = match self.max_tokens {
            Some(m) if m < 1 => {
                return Err(invalid(
                    "max_tokens",
                    format!("max_tokens must be at least 1, got {m}"),
                ))
            }
            Some(m) => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            None => None,
        };
        let min_tokens = match self.min_tokens {
            None => 0,
            Some(m) if m < 0 => {
                return Err(invalid("min_tokens", "min_tokens must not be negative"))
            }
            Some(m) => usize::try_from(m).unwrap_or(usize::MAX),
        };
        if max_tokens.is_some_and(|max| min_tokens > max) {
            return Err(invalid(
                "min_tokens",
                "min_tokens must not exceed max_tokens",
            ));
        }
        let logprobs = top_logprobs(api, self.logprobs, self.top_logprobs)?;
        let mut prompt_logprobs = match self.prompt_logprobs {
            None => None,
            Some(p) => Some(count("prompt_logprobs", p, 0, MAX_LOGPROBS)?),
        };
        let show_prompt_logprobs = prompt_logprobs.is_some();
        let echo = self.echo.unwrap_or(false);
        if let (true, Some(k)) = (echo, logprobs) {
            // Echo with logprobs shows the prompt's own logprobs first.
            prompt_logprobs = Some(prompt_logprobs.unwrap_or(0).max(k));
        }
        let sampling = SamplingParams {
            temperature: limits::TEMPERATURE.check_or_default(self.temperature)?,
            top_p: limits::TOP_P.check_or_default(self.top_p)?,
            min_p: limits::MIN_P.check_or_default(self.min_p)?,
            presence_penalty: limits::PRESENCE_PENALTY.check_or_default(self.presence_penalty)?,
            frequency_penalty: limits::FREQUENCY_PENALTY
                .check_or_default(self.frequency_penalty)?,
            repetition_penalty: limits::REPETITION_PENALTY
                .check_or_default(self.repetition_penalty)?,
            top_k: top_k(self.top_k, vocab)?,
            // OpenAI seeds are any integer; the bits are what matter.
            seed: self.seed.map(|s| s as u64),
            logprobs,
            uncertainty: self.uncertainty.unwrap_or(false),
            logit_bias: logit_bias(&self.logit_bias, vocab)?,
        };
        if self.stop.len() > MAX_STOP {
            return Err(invalid(
                "stop",
                format!("at most {MAX_STOP} stop sequences, got {}", self.stop.len()),
            ));
        }
        if self.stop.iter().any(String::is_empty) {
            return Err(invalid("stop", "stop sequences must not be empty"));
        }
        if let Some(long) = self.stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(invalid(
                "stop",
                format!(
                    "stop sequences may be at most {MAX_STOP_BYTES} bytes, got one of {}",
                    long.len()
                ),
            ));
        }
        let stop_token_ids = self
            .stop_token_ids
            .iter()
            .map(|&t| {
                token_id(t, vocab).ok_or_else(|| {
                    invalid(
                        "stop_token_ids",
                        format!("token id {t} is outside the vocabulary"),
                    )
                })
            })
            .collect::<Result<Vec<u32>, _>>()?;
        if let Some(spec) = &self.constraint {
            spec.check()?;
        }
        let request = GenerateRequest {
            prompt: Vec::new(),
            sampling,
            max_tokens: max_tokens.unwrap_or(1),
            min_tokens,
            stop: self.stop,
            stop_token_ids,
            ignore_eos: self.ignore_eos.unwrap_or(false),
            n,
            prompt_logprobs,
            priority: priority(self.priority)?,
            cache_salt: self.cache_salt.map(String::into_bytes),
            skip_special_tokens: self.skip_special_tokens.unwrap_or(true),
            constraint: None,
        };
        Ok(ValidParams::new(
            request,
            max_tokens,
            api,
            echo,
            show_prompt_logprobs,
            self.caller,
            self.constraint,
            model,
        ))
    }
}

fn token_id(t: i64, vocab: usize) -> Option<u32> {
    u32::try_from(t).ok().filter(|&t| (t as usize) < vocab)
}

/// The alternatives per generated token, `None` when no logprobs are asked for.
fn top_logprobs(
    api: Api,
    logprobs: Option<bool>,
    top: Option<i64>,
) -> Result<Option<usize>, EngineError> {
    let param = api.top_logprobs_param();
    let top = match top {
        None => 0,
        Some(k) => count(param, k, 0, MAX_LOGPROBS)?,
    };
    match logprobs {
        Some(true) => Ok(Some(top)),
        _ if top > 0 => Err(invalid(param, format!("{param} requires logprobs: true"))),
        _ => Ok(None),
    }
}

fn top_k(k: Option<i64>, vocab: usize) -> Result<usize, EngineError> {
    match k {
        None | Some(-1) | Some(0) => Ok(0),
        Some(k) if k > 0 => Ok(usize::try_from(k).unwrap_or(usize::MAX).min(vocab)),
        Some(k) => Err(invalid(
            "top_k",
            format!("top_k must be -1 (off) or positive, got {k}"),
        )),
    }
}

fn logit_bias(entries: &[(String, f64)], vocab: usize) -> Result<Vec<(u32, f32)>, EngineError> {
    if entries.len() > MAX_LOGIT_BIAS {
        return Err(invalid(
            "logit_bias",
            format!(
                "logit_bias may have at most {MAX_LOGIT_BIAS} entries, got {}",
                entries.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (key, v) in entries {
        let id = key
            .trim()
            .parse::<i64>()
            .ok()
            .and_then(|t| token_id(t, vocab));
        let Some(id) = id else {
            return Err(invalid(
                "logit_bias",
                format!("logit_bias key '{key}' is not a token id below {vocab}"),
            ));
        };
        if !limits::LOGIT_BIAS.contains(*v) {
            return Err(invalid(
                "logit_bias",
                format!("logit_bias values must be in [-100, 100], got {v}"),
            ));
        }
        out.push((id, *v as f32));
    }
    // Sorted by id; a key given twice (JSON allows it, "5" and " 5" name one token) keeps
    // its last value, as a JSON object read into a map would.
    out.reverse();
    out.sort_by_key(|&(id, _)| id);
    out.dedup_by_key(|&mut (id, _)| id);
    Ok(out)
}

fn priority(p: Option<PriorityInput>) -> Result<Priority, EngineError> {
    match p {
        None => Ok(Priority::Interactive),
        Some(PriorityInput::Int(p)) if p > 0 => Ok(Priority::Batch),
        Some(PriorityInput::Int(_)) => Ok(Priority::Interactive),
        Some(PriorityInput::Name(s)) if s == "interactive" => Ok(Priority::Interactive),
        Some(PriorityInput::Name(s)) if s == "batch" => Ok(Priority::Batch),
        Some(PriorityInput::Name(s)) => Err(invalid(
            "priority",
            format!("unknown priority '{s}' (use an integer, \"interactive\" or \"batch\")"),
        )),
    }
}
