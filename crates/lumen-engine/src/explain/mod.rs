//! Explanations of a completion (`POST /v1/explain`): occlusion, logit lens, direct logit
//! attribution and attention weights, computed by the model's own forward pass.
//!
//! The road is the generation's: [`ExplainParams`] (the client's values) is checked by
//! [`ExplainParams::validate`] against the limits below, all before any compute, into a
//! [`ValidExplain`]; once the completion is known (given, or generated greedily by an
//! ordinary request) [`ValidExplain::with_completion`] makes the [`ExplainJob`] the engine
//! thread runs. Every error names the parameter (`occlusion.spans`, `logit_lens.top_k`, …).
//!
//! The engine runs a job as a series of small forward passes ([`ExplainJob`]) on its own thread, at
//! lower priority than generation (only when no sequence is scheduled, or one pass every few
//! steps), each in a KV cache of its own (`lumen_models::LlamaModel::explain_pass`), so
//! explanations never take blocks from, or evict, interactive requests.

mod job;
mod spans;

pub use job::{
    AttentionKey, AttentionLayer, AttentionOut, DlaOut, ExplainJob, ExplainOutput, LensLayer,
    LensOut, OcclusionOut,
};
pub use lumen_models::{DlaPart, DlaTerm};
pub use spans::{protected_tokens, SpanSpec};

use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// Most prompt tokens an explanation takes.
pub const MAX_EXPLAIN_PROMPT: usize = 512;
/// Most completion tokens explained.
pub const MAX_EXPLAIN_COMPLETION: usize = 32;
/// Most occlusion spans.
pub const MAX_EXPLAIN_SPANS: usize = 64;
/// Most logit-lens cells (positions × layers).
pub const MAX_LENS_CELLS: usize = 256;
/// Most alternatives (`top_k`) in the lens and keys in the attention summary.
pub const MAX_EXPLAIN_TOP_K: usize = 20;
/// Most tokens all the forward passes of one explanation may run.
pub const MAX_EXPLAIN_FORWARD_TOKENS: usize = 50_000;
/// Largest response an explanation may produce (estimated before compute).
pub const MAX_EXPLAIN_RESPONSE_BYTES: usize = 2 << 20;
/// Explanations queued per model before the next is refused (429).
pub const MAX_EXPLAIN_QUEUED: usize = 8;
/// Most attention target positions.
pub const MAX_ATTENTION_TARGETS: usize = 8;

/// Occlusion's way of removing a span.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OcclusionMode {
    /// Attention to the span is blocked; every other token keeps its position.
    #[default]
    Mask,
    /// The span is removed; later tokens move up.
    Delete,
}

/// Occlusion as asked for.
#[derive(Clone, Debug, Default)]
pub struct OcclusionParams {
    /// How the prompt is cut into spans.
    pub spans: SpanSpec,
    /// Mask or delete.
    pub mode: OcclusionMode,
    /// A token to contrast each completion token with.
    pub contrast: Option<u32>,
}

/// The logit lens as asked for.
#[derive(Clone, Debug, Default)]
pub struct LensParams {
    /// Token positions (indices into prompt + completion); default: the rows that predict
    /// the completion, as many as the cell limit allows.
    pub positions: Option<Vec<i64>>,
    /// Alternatives per cell (default 5).
    pub top_k: Option<i64>,
}

/// Direct logit attribution as asked for.
#[derive(Clone, Debug, Default)]
pub struct DlaParams {
    /// Position (default: the row predicting the first completion token).
    pub position: Option<i64>,
    /// Target token (default: the token that follows `position`).
    pub target: Option<u32>,
}

/// Which heads the attention summary reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum HeadsSpec {
    /// The mean over heads.
    #[default]
    Mean,
    /// These heads, each on its own.
    Each(Vec<i64>),
}

/// The attention summary as asked for.
#[derive(Clone, Debug, Default)]
pub struct AttentionParams {
    /// Target positions (default: the row predicting the first completion token).
    pub targets: Option<Vec<i64>>,
    /// Mean or chosen heads.
    pub heads: HeadsSpec,
    /// Keys per layer (default 5).
    pub top_k: Option<i64>,
}

/// An explanation as the client asked for it (token ids resolved, nothing checked).
#[derive(Clone, Debug, Default)]
pub struct ExplainParams {
    /// The prompt's tokens.
    pub prompt: Vec<u32>,
    /// Per prompt token: never masked (chat template, BOS).
    pub protected: Vec<bool>,
    /// The completion's tokens, when given; else generated (at most `max_tokens`).
    pub completion: Option<Vec<u32>>,
    /// Most tokens to generate when no completion is given.
    pub max_tokens: Option<i64>,
    /// Occlusion.
    pub occlusion: Option<OcclusionParams>,
    /// Logit lens.
    pub logit_lens: Option<LensParams>,
    /// Direct logit attribution.
    pub dla: Option<DlaParams>,
    /// Attention summary.
    pub attention: Option<AttentionParams>,
}

/// Facts of the model an explanation is checked against.
#[derive(Clone, Copy, Debug)]
pub struct ExplainModel {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Attention heads.
    pub n_heads: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
}

/// The attention summary, checked.
#[derive(Clone, Debug)]
pub(crate) struct ValidAttention {
    /// Target positions (`None`: the row predicting the first completion token).
    pub targets: Option<Vec<usize>>,
    /// Heads reported one by one (`None`: their mean).
    pub heads: Option<Vec<usize>>,
    /// Keys per layer.
    pub top_k: usize,
}

/// An explanation whose every limit holds; the completion may still be to generate.
#[derive(Clone, Debug)]
pub struct ValidExplain {
    pub(crate) prompt: Vec<u32>,
    pub(crate) protected: Vec<bool>,
    pub(crate) completion: Option<Vec<u32>>,
    pub(crate) max_completion: usize,
    pub(crate) spans: Vec<Vec<usize>>,
    pub(crate) mode: OcclusionMode,
    pub(crate) contrast: Option<u32>,
    pub(crate) occlusion: bool,
    pub(crate) lens: Option<(Option<Vec<usize>>, usize)>,
    pub(crate) dla: Option<(Option<usize>, Option<u32>)>,
    pub(crate) attention: Option<ValidAttention>,
    pub(crate) model: ExplainModel,
    pub(crate) warnings: Vec<String>,
}

fn invalid(param: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest {
        param,
        message: message.into(),
    }
}

fn top_k(param: &'static str, k: Option<i64>) -> Result<usize, EngineError> {
    match k {
        None => Ok(5),
        Some(k) if (1..=MAX_EXPLAIN_TOP_K as i64).contains(&k) => Ok(k as usize),
        Some(k) => Err(invalid(
            param,
            format!("must be in [1, {MAX_EXPLAIN_TOP_K}], got {k}"),
        )),
    }
}

fn positions(param: &'static str, v: &[i64], end: usize) -> Result<Vec<usize>, EngineError> {
    v.iter()
        .map(|&p| {
            usize::try_from(p)
                .ok()
                .filter(|&p| p < end)
                .ok_or_else(|| invalid(param, format!("position {p} is not in [0, {end})")))
        })
        .collect()
}

fn vocab_token(param: &'static str, t: u32, vocab: usize) -> Result<u32, EngineError> {
    if (t as usize) < vocab {
        Ok(t)
    } else {
        Err(invalid(
            param,
            format!("token id {t} is outside the vocabulary"),
        ))
    }
}

impl ExplainParams {
    /// Checks every limit before any compute; `tok` cuts spans into words and sentences.
    pub fn validate(
        self,
        model: ExplainModel,
        tok: &Tokenizer,
    ) -> Result<ValidExplain, EngineError> {
        let n_prompt = self.prompt.len();
        if n_prompt == 0 {
            return Err(invalid("prompt", "the prompt is empty"));
        }
        if n_prompt > MAX_EXPLAIN_PROMPT {
            return Err(invalid(
                "prompt",
                format!("at most {MAX_EXPLAIN_PROMPT} prompt tokens, got {n_prompt}"),
            ));
        }
        if self.protected.len() != n_prompt {
            return Err(EngineError::Config(
                "one protected flag per prompt token".into(),
            ));
        }
        let max_completion = match (&self.completion, self.max_tokens) {
            (Some(c), _) if c.is_empty() => {
                return Err(invalid("completion", "the completion is empty"))
            }
            (Some(c), _) if c.len() > MAX_EXPLAIN_COMPLETION => {
                return Err(invalid(
                    "completion",
                    format!(
                        "at most {MAX_EXPLAIN_COMPLETION} completion tokens, got {}",
                        c.len()
                    ),
                ))
            }
            (Some(c), _) => c.len(),
            (None, None) => 16,
            (None, Some(m)) if (1..=MAX_EXPLAIN_COMPLETION as i64).contains(&m) => m as usize,
            (None, Some(m)) => {
                return Err(invalid(
                    "max_tokens",
                    format!("must be in [1, {MAX_EXPLAIN_COMPLETION}], got {m}"),
                ))
            }
        };
        if let Some(c) = &self.completion {
            for &t in c {
                vocab_token("completion", t, model.vocab_size)?;
            }
        }
        let total = n_prompt + max_completion;
        let mut warnings = Vec::new();
        let (spans, mode, contrast, occlusion) = match &self.occlusion {
            None => (Vec::new(), OcclusionMode::Mask, None, false),
            Some(o) => {
                let spans = spans::build(&o.spans, &self.prompt, &self.protected, tok)?;
                if spans.is_empty() {
                    return Err(invalid(
                        "occlusion.spans",
                        "the prompt has no unprotected token to occlude",
                    ));
                }
                let contrast = o
                    .contrast
                    .map(|t| vocab_token("occlusion.contrast", t, model.vocab_size))
                    .transpose()?;
                (spans, o.mode, contrast, true)
            }
        };
        let n_layers = model.n_layers + 1;
        let lens = match &self.logit_lens {
            None => None,
            Some(l) => {
                let k = top_k("logit_lens.top_k", l.top_k)?;
                let pos = l
                    .positions
                    .as_deref()
                    .map(|p| positions("logit_lens.positions", p, total))
                    .transpose()?;
                let cells = pos.as_ref().map_or(n_layers, |p| p.len() * n_layers);
                if cells > MAX_LENS_CELLS {
                    return Err(invalid(
                        "logit_lens.positions",
                        format!(
                            "{cells} lens cells (positions x {n_layers} layers); at most {MAX_LENS_CELLS}"
                        ),
                    ));
                }
                Some((pos, k))
            }
        };
        let dla = match &self.dla {
            None => None,
            Some(d) => {
                let pos = d
                    .position
                    .map(|p| positions("dla.position", &[p], total).map(|v| v[0]))
                    .transpose()?;
                let target = d
                    .target
                    .map(|t| vocab_token("dla.target", t, model.vocab_size))
                    .transpose()?;
                Some((pos, target))
            }
        };
        let attention = match &self.attention {
            None => None,
            Some(a) => {
                let k = top_k("attention.top_k", a.top_k)?;
                let targets = a
                    .targets
                    .as_deref()
                    .map(|t| positions("attention.targets", t, total))
                    .transpose()?;
                if targets
                    .as_ref()
                    .is_some_and(|t| t.len() > MAX_ATTENTION_TARGETS || t.is_empty())
                {
                    return Err(invalid(
                        "attention.targets",
                        format!("between 1 and {MAX_ATTENTION_TARGETS} targets"),
                    ));
                }
                let heads = match &a.heads {
                    HeadsSpec::Mean => None,
                    HeadsSpec::Each(h) => {
                        if h.is_empty() {
                            return Err(invalid("attention.heads", "no head chosen"));
                        }
                        Some(positions("attention.heads", h, model.n_heads)?)
                    }
                };
                Some(ValidAttention {
                    targets,
                    heads,
                    top_k: k,
                })
            }
        };
        // What the passes will cost, before any of them runs.
        let generate = if self.completion.is_some() { 0 } else { total };
        let forward = generate + total * (1 + spans.len());
        if forward > MAX_EXPLAIN_FORWARD_TOKENS {
            return Err(invalid(
                "occlusion.spans",
                format!(
                    "about {forward} forward tokens ({} spans over {total} tokens); at most {MAX_EXPLAIN_FORWARD_TOKENS}",
                    spans.len()
                ),
            ));
        }
        let bytes = estimate_bytes(
            total,
            spans.len(),
            contrast.is_some(),
            lens.as_ref().map(|(p, k)| {
                (
                    p.as_ref().map_or(MAX_LENS_CELLS / n_layers, Vec::len) * n_layers,
                    *k,
                )
            }),
            dla.is_some()
                .then_some(model.n_layers * (model.n_heads + 2) + 1),
            attention.as_ref().map(|a| {
                let rows = a.targets.as_ref().map_or(1, Vec::len)
                    * model.n_layers
                    * a.heads.as_ref().map_or(1, Vec::len);
                (rows, a.top_k)
            }),
        );
        if bytes > MAX_EXPLAIN_RESPONSE_BYTES {
            return Err(invalid(
                "response",
                format!("the response would take about {bytes} bytes; at most {MAX_EXPLAIN_RESPONSE_BYTES}"),
            ));
        }
        if !occlusion && lens.is_none() && dla.is_none() && attention.is_none() {
            warnings.push("no section asked for: only the tokens are returned".to_string());
        }
        Ok(ValidExplain {
            prompt: self.prompt,
            protected: self.protected,
            completion: self.completion,
            max_completion,
            spans,
            mode,
            contrast,
            occlusion,
            lens,
            dla,
            attention,
            model,
            warnings,
        })
    }
}

/// A generous estimate of the JSON an explanation produces.
fn estimate_bytes(
    tokens: usize,
    spans: usize,
    contrast: bool,
    lens: Option<(usize, usize)>,
    dla_terms: Option<usize>,
    attention: Option<(usize, usize)>,
) -> usize {
    let mut b = 1024 + tokens * 120 + spans * 120;
    b += tokens * spans * 24 * if contrast { 2 } else { 1 };
    if let Some((cells, k)) = lens {
        b += cells * (100 + k * 70);
    }
    b += dla_terms.unwrap_or(0) * 70;
    if let Some((rows, k)) = attention {
        b += rows * (40 + k * 60);
    }
    b
}

impl ValidExplain {
    /// The prompt's tokens.
    pub fn prompt(&self) -> &[u32] {
        &self.prompt
    }

    /// The completion, when the client gave it.
    pub fn completion(&self) -> Option<&[u32]> {
        self.completion.as_deref()
    }

    /// Most tokens to generate (the completion's length when given).
    pub fn max_completion(&self) -> usize {
        self.max_completion
    }

    /// Per prompt token: never occluded.
    pub fn protected(&self) -> &[bool] {
        &self.protected
    }

    /// The spans occlusion removes, as prompt token indices.
    pub fn spans(&self) -> &[Vec<usize>] {
        &self.spans
    }

    /// Forward tokens the explanation's own passes run (generation not included).
    pub fn forward_tokens(&self) -> usize {
        (self.prompt.len() + self.max_completion) * (1 + self.spans.len())
    }

    /// The job for `completion` (the given one, or what was generated).
    pub fn with_completion(self, completion: Vec<u32>) -> Result<ExplainJob, EngineError> {
        if completion.is_empty() {
            return Err(invalid(
                "completion",
                "the model generated nothing to explain (it ended at once)",
            ));
        }
        if completion.len() > self.max_completion {
            return Err(EngineError::Config(
                "completion longer than validated".into(),
            ));
        }
        Ok(ExplainJob::new(self, completion))
    }
}
