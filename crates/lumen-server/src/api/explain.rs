//! `POST /v1/explain` (behind `--enable-explain`): why the model gave a completion.
//!
//! The handler only reads the wire: it renders and tokenizes the prompt (marking the chat
//! template's tokens and BOS as protected), resolves token fields given as text, and lets the
//! engine check every limit ([`lumen_engine::explain`]) before anything computes. Without a
//! `completion`, one is generated greedily by an ordinary request at batch priority. The job
//! then runs on the model's engine thread below generation; its answer is shaped by
//! [`super::explain_out`]. Admission reserves the forward tokens the explanation will run,
//! so the ledger meters it like any request.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lumen_engine::explain::{
    protected_tokens, AttentionParams, DlaParams, ExplainParams, HeadsSpec, LensParams,
    OcclusionMode, OcclusionParams, SpanSpec, ValidExplain,
};
use lumen_engine::{Event, GenerationParams, PriorityInput, Tokenizer, Usage};
use serde::Deserialize;

use super::chat::{convert_messages, MessageIn};
use super::explain_out::{build, Context, ExplainResponse};
use super::generate::check_model;
use super::{prepare, Meta};
use crate::error::ServerError;
use crate::extract::{parse_json, JsonBody};
use crate::state::{AppState, ChatServed};
use crate::tenancy::meter::EventInfo;
use crate::tenancy::{Principal, RequestCtx};

/// Text or token ids.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum TextOrIds {
    /// Text, tokenized by the model.
    Text(String),
    /// Token ids.
    Ids(Vec<i64>),
}

/// A single token: an id, or text that must be exactly one token.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum TokenField {
    /// A token id.
    Id(i64),
    /// Text of one token.
    Text(String),
}

/// `occlusion.spans`.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum SpansField {
    /// `token`, `word` or `sentence`.
    Kind(String),
    /// Explicit `[start, end)` prompt token ranges.
    Ranges(Vec<[i64; 2]>),
}

/// `occlusion`.
#[derive(Deserialize, Debug, Default)]
pub struct OcclusionIn {
    /// How spans are cut (default `word`).
    pub spans: Option<SpansField>,
    /// `mask` (default) or `delete`.
    pub mode: Option<String>,
    /// Contrast token.
    pub contrast: Option<TokenField>,
}

/// `logit_lens`.
#[derive(Deserialize, Debug, Default)]
pub struct LensIn {
    /// Positions.
    pub positions: Option<Vec<i64>>,
    /// Alternatives per cell.
    pub top_k: Option<i64>,
}

/// `dla`.
#[derive(Deserialize, Debug, Default)]
pub struct DlaIn {
    /// Position.
    pub position: Option<i64>,
    /// Target token.
    pub target: Option<TokenField>,
}

/// `attention.heads`: `"mean"` or head indices.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum HeadsField {
    /// `mean`.
    Name(String),
    /// Head indices.
    List(Vec<i64>),
}

/// `attention`.
#[derive(Deserialize, Debug, Default)]
pub struct AttentionIn {
    /// Target positions.
    pub targets: Option<Vec<i64>>,
    /// Mean or chosen heads.
    pub heads: Option<HeadsField>,
    /// Keys per layer.
    pub top_k: Option<i64>,
}

/// The request body.
#[derive(Deserialize, Debug)]
pub struct ExplainBody {
    /// Model name.
    pub model: String,
    /// A conversation (rendered with the model's chat template) ...
    pub messages: Option<Vec<MessageIn>>,
    /// ... or a plain prompt.
    pub prompt: Option<TextOrIds>,
    /// The completion to explain; else generated greedily.
    pub completion: Option<TextOrIds>,
    /// Most tokens to generate (at most 32).
    pub max_tokens: Option<i64>,
    /// Occlusion.
    pub occlusion: Option<OcclusionIn>,
    /// Logit lens.
    pub logit_lens: Option<LensIn>,
    /// Direct logit attribution.
    pub dla: Option<DlaIn>,
    /// Attention summary.
    pub attention: Option<AttentionIn>,
}

fn ids(param: &'static str, list: &[i64], vocab: usize) -> Result<Vec<u32>, ServerError> {
    list.iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ServerError::param(param, format!("token id {t} is outside the vocabulary"))
                })
        })
        .collect()
}

fn one_token(param: &'static str, f: &TokenField, tok: &Tokenizer) -> Result<u32, ServerError> {
    match f {
        TokenField::Id(t) => ids(param, &[*t], tok.vocab_size()).map(|v| v[0]),
        TokenField::Text(s) => {
            let v = tok.encode(s, false, false)?;
            match v.as_slice() {
                [t] => Ok(*t),
                _ => Err(ServerError::param(
                    param,
                    format!("{s:?} is {} tokens, not one (give a token id)", v.len()),
                )),
            }
        }
    }
}

/// The prompt's tokens, byte offsets and protected flags.
struct Tokenized {
    prompt: Vec<u32>,
    offsets: Vec<usize>,
    protected: Vec<bool>,
}

fn tokenize(body: &ExplainBody, model: &ChatServed) -> Result<Tokenized, ServerError> {
    let tok = model.handle.tokenizer();
    match (&body.messages, &body.prompt) {
        (Some(_), Some(_)) => Err(ServerError::param(
            "prompt",
            "give either messages or prompt, not both",
        )),
        (None, None) => Err(ServerError::param(
            "messages",
            "messages or prompt is required",
        )),
        (Some(m), None) => {
            let messages = convert_messages(m)?;
            let text = model.template.render_with_tools(&messages, true, None)?;
            let prompt = tok.encode(&text, true, true)?;
            // Message contents are what may be occluded; the template's text around them is not.
            let mut ranges = Vec::new();
            let mut from = 0;
            for msg in &messages {
                if msg.content.is_empty() {
                    continue;
                }
                if let Some(at) = text[from..].find(&msg.content) {
                    ranges.push((from + at, from + at + msg.content.len()));
                    from += at + msg.content.len();
                }
            }
            let (offsets, protected) = protected_tokens(tok, &prompt, Some(&ranges));
            Ok(Tokenized {
                prompt,
                offsets,
                protected,
            })
        }
        (None, Some(p)) => {
            let prompt = match p {
                TextOrIds::Text(t) => tok.encode(t, true, true)?,
                TextOrIds::Ids(v) => ids("prompt", v, tok.vocab_size())?,
            };
            let (offsets, protected) = protected_tokens(tok, &prompt, None);
            Ok(Tokenized {
                prompt,
                offsets,
                protected,
            })
        }
    }
}

fn params(
    body: &ExplainBody,
    t: &Tokenized,
    tok: &Tokenizer,
) -> Result<ExplainParams, ServerError> {
    let completion = match &body.completion {
        None => None,
        Some(TextOrIds::Text(s)) => Some(tok.encode(s, false, false)?),
        Some(TextOrIds::Ids(v)) => Some(ids("completion", v, tok.vocab_size())?),
    };
    let occlusion = match &body.occlusion {
        None => None,
        Some(o) => Some(OcclusionParams {
            spans: match &o.spans {
                None => SpanSpec::Word,
                Some(SpansField::Kind(k)) => match k.as_str() {
                    "token" => SpanSpec::Token,
                    "word" => SpanSpec::Word,
                    "sentence" => SpanSpec::Sentence,
                    other => {
                        return Err(ServerError::param(
                            "occlusion.spans",
                            format!("spans must be token, word, sentence or a list of [start, end] ranges, not {other:?}"),
                        ))
                    }
                },
                Some(SpansField::Ranges(r)) => {
                    SpanSpec::Ranges(r.iter().map(|&[s, e]| (s, e)).collect())
                }
            },
            mode: match o.mode.as_deref() {
                None | Some("mask") => OcclusionMode::Mask,
                Some("delete") => OcclusionMode::Delete,
                Some(other) => {
                    return Err(ServerError::param(
                        "occlusion.mode",
                        format!("mode must be mask or delete, not {other:?}"),
                    ))
                }
            },
            contrast: o
                .contrast
                .as_ref()
                .map(|c| one_token("occlusion.contrast", c, tok))
                .transpose()?,
        }),
    };
    let attention = match &body.attention {
        None => None,
        Some(a) => Some(AttentionParams {
            targets: a.targets.clone(),
            heads: match &a.heads {
                None => HeadsSpec::Mean,
                Some(HeadsField::Name(n)) if n == "mean" => HeadsSpec::Mean,
                Some(HeadsField::Name(n)) => {
                    return Err(ServerError::param(
                        "attention.heads",
                        format!("heads must be \"mean\" or a list of head indices, not {n:?}"),
                    ))
                }
                Some(HeadsField::List(l)) => HeadsSpec::Each(l.clone()),
            },
            top_k: a.top_k,
        }),
    };
    Ok(ExplainParams {
        prompt: t.prompt.clone(),
        protected: t.protected.clone(),
        completion,
        max_tokens: body.max_tokens,
        occlusion,
        logit_lens: body.logit_lens.as_ref().map(|l| LensParams {
            positions: l.positions.clone(),
            top_k: l.top_k,
        }),
        dla: match &body.dla {
            None => None,
            Some(d) => Some(DlaParams {
                position: d.position,
                target: d
                    .target
                    .as_ref()
                    .map(|t| one_token("dla.target", t, tok))
                    .transpose()?,
            }),
        },
        attention,
    })
}

/// Generates the completion greedily with an ordinary request at batch priority.
async fn generate(
    model: &ChatServed,
    prompt: Vec<u32>,
    max_tokens: usize,
) -> Result<Vec<u32>, ServerError> {
    let mut gp = GenerationParams::greedy(max_tokens);
    gp.priority = Some(PriorityInput::Name("batch".into()));
    let req = model.handle.prepare(gp, prompt)?;
    let mut stream = model.handle.submit(req)?;
    let mut out = Vec::new();
    while let Some(ev) = stream.recv().await {
        match ev {
            Event::Token { token, .. } => out.push(token),
            Event::Error(e) => return Err(ServerError::Internal(e)),
            Event::GrammarError { param, message } => {
                return Err(ServerError::param(param, message))
            }
            Event::Done(_) => break,
            _ => {}
        }
    }
    Ok(out)
}

/// A request read, tokenized and checked against every limit, nothing computed yet.
pub struct Prepared {
    valid: ValidExplain,
    tokenized: Tokenized,
    mode: &'static str,
    asked: [bool; 4],
}

impl Prepared {
    /// The forward tokens the explanation may cost (generation included), for admission.
    pub fn cost(&self) -> u64 {
        let generate = if self.valid.completion().is_some() {
            0
        } else {
            self.valid.prompt().len() + self.valid.max_completion()
        };
        (self.valid.forward_tokens() + generate) as u64
    }
}

/// Renders, tokenizes and validates `body` for `model` (blocking work: run it off the async
/// workers).
pub fn prepare_explain(body: &ExplainBody, model: &ChatServed) -> Result<Prepared, ServerError> {
    let tokenized = tokenize(body, model)?;
    let p = params(body, &tokenized, model.handle.tokenizer())?;
    let mode = match p.occlusion.as_ref().map(|o| o.mode) {
        Some(OcclusionMode::Delete) => "delete",
        _ => "mask",
    };
    let asked = [
        p.occlusion.is_some(),
        p.logit_lens.is_some(),
        p.dla.is_some(),
        p.attention.is_some(),
    ];
    let valid = p.validate(model.handle.explain_model(), model.handle.tokenizer())?;
    Ok(Prepared {
        valid,
        tokenized,
        mode,
        asked,
    })
}

/// Generates the completion when none was given, runs the explanation on the model's engine
/// thread and shapes the answer (`lumen explain` calls this in-process).
pub async fn run_explain(model: &ChatServed, p: Prepared) -> Result<ExplainResponse, ServerError> {
    let (completion, generated) = match p.valid.completion() {
        Some(c) => (c.to_vec(), 0),
        None => {
            let c = generate(model, p.valid.prompt().to_vec(), p.valid.max_completion()).await?;
            let n = c.len();
            (c, n)
        }
    };
    let job = p.valid.with_completion(completion)?;
    let reply = model.handle.explain(job)?;
    let out = reply
        .await
        .map_err(|_| ServerError::EngineStopped)?
        .map_err(ServerError::from)?;
    let tok = model.handle.tokenizer().clone();
    Ok(build(
        Context {
            tok: &tok,
            model: model.name.clone(),
            prompt: &p.tokenized.prompt,
            offsets: &p.tokenized.offsets,
            protected: &p.tokenized.protected,
            mode: p.mode,
            asked: p.asked,
            generated,
        },
        out,
    ))
}

/// The handler.
pub async fn explain(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ServerError> {
    let arrived = Instant::now();
    let ctx = ctx.map(|Extension(c)| c);
    let body = prepare(move || parse_json::<ExplainBody>(&body)).await?;
    let principal = ctx
        .as_ref()
        .map_or(Principal::Open, |c| c.principal.clone());
    check_model(&state, &principal, &body.model)?;
    let model = state.chat_model(Some(&body.model), None).await?;
    state.ensure_accepting()?;
    let m = model.clone();
    // Template, tokenization and every limit, before any compute.
    let prepared = prepare(move || prepare_explain(&body, &m)).await?;
    let meta = Meta::new(&state, "explain", &model.name);
    let mut meter = state
        .tenancy()
        .admit(
            ctx.as_deref(),
            prepared.cost(),
            EventInfo {
                request_id: meta.id.clone(),
                model: model.name.clone(),
                endpoint: "explain",
                arrived,
            },
        )
        .await?;
    let response = run_explain(&model, prepared).await?;
    meter.set_usage(Usage {
        prompt_tokens: response.usage.forward_tokens,
        cached_prompt_tokens: 0,
        completion_tokens: response.usage.generated_tokens,
    });
    meter.set_outcome(lumen_store::Outcome::Ok);
    Ok(Json(response).into_response())
}
