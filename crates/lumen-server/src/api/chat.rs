//! `POST /v1/chat/completions`.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use lumen_engine::{ChatMessage, TokenLogprob, Tokenizer, Usage};
use serde::Deserialize;
use serde_json::{json, Value};

use super::logprobs::{chat_entry, prompt_logprobs_json};
use super::params::{top_logprobs, GenFields};
use super::{deadline, prepare, Meta};
use crate::error::ServerError;
use crate::extract::{from_value, OpenAiJson};
use crate::gen::{submit_all, usage_json, GenEvent, Generation};
use crate::sse::{stream_response, ChunkFormat};
use crate::state::AppState;

/// The chat-specific fields of a request.
#[derive(Deserialize, Debug)]
pub struct ChatBody {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// Return logprobs of the generated tokens.
    pub logprobs: Option<bool>,
    /// Alternatives per token (0..=20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
}

/// One message of the conversation.
#[derive(Deserialize, Debug)]
pub struct MessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of content parts.
    #[serde(default)]
    pub content: Option<ContentIn>,
}

/// Message content.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum ContentIn {
    /// Plain text.
    Text(String),
    /// Content parts (only `text` parts are supported).
    Parts(Vec<PartIn>),
}

/// A content part.
#[derive(Deserialize, Debug)]
pub struct PartIn {
    /// Part type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Checks roles and content and turns the messages into template input.
pub fn convert_messages(messages: &[MessageIn]) -> Result<Vec<ChatMessage>, ServerError> {
    if messages.is_empty() {
        return Err(ServerError::param("messages", "messages must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ServerError::param(
                format!("messages[{i}].role"),
                format!(
                    "unknown role '{}' (expected one of {})",
                    m.role,
                    ROLES.join(", ")
                ),
            ));
        }
        let content = match &m.content {
            None if m.role == "assistant" => String::new(),
            None => {
                return Err(ServerError::param(
                    format!("messages[{i}].content"),
                    "content is required",
                ))
            }
            Some(ContentIn::Text(t)) => t.clone(),
            Some(ContentIn::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ServerError::param(
                                format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content parts of type '{}' are not supported; send text",
                                    p.kind
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        // The templates know `system`; `developer` is OpenAI's newer name for it.
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

/// The handler.
pub async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<Value>,
) -> Result<Response, ServerError> {
    let arrived = Instant::now();
    let req: ChatBody = from_value(&body)?;
    let fields: GenFields = from_value(&body)?;
    let model = state.chat_model(Some(&req.model))?;
    state.ensure_accepting()?;
    let messages = convert_messages(&req.messages)?;
    let top = top_logprobs("top_logprobs", req.top_logprobs)?;
    let want_logprobs = req.logprobs.unwrap_or(false);
    if top > 0 && !want_logprobs {
        return Err(ServerError::param(
            "top_logprobs",
            "top_logprobs requires logprobs: true",
        ));
    }
    let plan = fields.plan(&model.handle, want_logprobs.then_some(top))?;
    let m = model.clone();
    let prompt = prepare(move || {
        let text = m.template.render(&messages, true, None)?;
        Ok(m.handle.tokenizer().encode(&text, true, true)?)
    })
    .await?;
    let request = plan.request(prompt, &model.handle, "messages")?;
    let streams = submit_all(&model.handle, vec![request])?;
    tracing::debug!(model = %model.name, n = plan.n, stream = plan.stream, user = plan.user.as_deref().unwrap_or(""), "chat completion");
    let gen = Generation::new(
        streams,
        plan.n,
        arrived,
        deadline(&state, arrived),
        model.metrics.clone(),
    );
    let meta = Meta::new(&state, "chatcmpl", &model.name);
    let tokenizer = model.handle.tokenizer().clone();
    if plan.stream {
        let fmt = ChatChunks {
            meta,
            tokenizer,
            n: plan.n,
            include_usage: plan.include_usage,
        };
        return Ok(stream_response(gen, fmt, plan.include_usage));
    }
    collect(gen, meta, tokenizer, want_logprobs).await
}

async fn collect(
    mut gen: Generation,
    meta: Meta,
    tok: Arc<Tokenizer>,
    want_logprobs: bool,
) -> Result<Response, ServerError> {
    let n = gen.num_choices();
    let mut texts = vec![String::new(); n];
    let mut lps: Vec<Vec<Value>> = vec![Vec::new(); n];
    let mut reasons = vec!["cancelled"; n];
    let mut prompt_lps: Option<Vec<Option<TokenLogprob>>> = None;
    while let Some(ev) = gen.next().await? {
        match ev {
            GenEvent::PromptLogprobs { logprobs, .. } => prompt_lps = Some(logprobs),
            GenEvent::Token {
                index,
                text,
                logprob,
                ..
            } => {
                texts[index].push_str(&text);
                if let Some(lp) = logprob {
                    lps[index].push(chat_entry(&tok, &lp));
                }
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                texts[index].push_str(&text);
                reasons[index] = reason.as_str();
            }
        }
    }
    let choices: Vec<Value> = (0..n)
        .map(|i| {
            let logprobs = if want_logprobs { json!({"content": std::mem::take(&mut lps[i])}) } else { Value::Null };
            json!({"index": i, "message": {"role": "assistant", "content": std::mem::take(&mut texts[i])}, "logprobs": logprobs, "finish_reason": reasons[i]})
        })
        .collect();
    let mut out = json!({
        "id": meta.id, "object": "chat.completion", "created": meta.created, "model": meta.model,
        "choices": choices, "usage": usage_json(&gen.usage()), "system_fingerprint": null,
    });
    if let Some(p) = prompt_lps {
        out["prompt_logprobs"] = prompt_logprobs_json(&tok, &p);
    }
    Ok(Json(out).into_response())
}

/// `chat.completion.chunk` frames.
struct ChatChunks {
    meta: Meta,
    tokenizer: Arc<Tokenizer>,
    n: usize,
    include_usage: bool,
}

impl ChatChunks {
    fn chunk(&self, choices: Value) -> Value {
        let mut c = json!({"id": self.meta.id, "object": "chat.completion.chunk", "created": self.meta.created, "model": self.meta.model, "system_fingerprint": null, "choices": choices});
        if self.include_usage {
            c["usage"] = Value::Null;
        }
        c
    }
}

impl ChunkFormat for ChatChunks {
    fn start(&mut self, out: &mut Vec<Value>) {
        for i in 0..self.n {
            out.push(self.chunk(json!([{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])));
        }
    }

    fn event(&mut self, ev: GenEvent, out: &mut Vec<Value>) {
        match ev {
            GenEvent::Token {
                index,
                text,
                logprob,
                ..
            } => {
                if text.is_empty() && logprob.is_none() {
                    return;
                }
                let lp = match logprob {
                    Some(lp) => json!({"content": [chat_entry(&self.tokenizer, &lp)]}),
                    None => Value::Null,
                };
                out.push(self.chunk(json!([{"index": index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}])));
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                let delta = if text.is_empty() {
                    json!({})
                } else {
                    json!({"content": text})
                };
                out.push(self.chunk(json!([{"index": index, "delta": delta, "logprobs": null, "finish_reason": reason.as_str()}])));
            }
            GenEvent::PromptLogprobs { .. } => {}
        }
    }

    fn usage_chunk(&self, usage: &Usage) -> Value {
        json!({"id": self.meta.id, "object": "chat.completion.chunk", "created": self.meta.created, "model": self.meta.model, "system_fingerprint": null, "choices": [], "usage": usage_json(usage)})
    }
}
