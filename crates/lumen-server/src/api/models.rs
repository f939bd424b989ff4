//! `GET /v1/models`, `GET /v1/models/{id}`, and vLLM's `POST /tokenize` and `POST /detokenize`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

use super::chat::{convert_messages, MessageIn};
use super::generate::check_model;
use super::prepare;
use crate::error::ServerError;
use crate::extract::OpenAiJson;
use crate::manager::ModelStatus;
use crate::state::{AppState, ServedModel};
use crate::tenancy::{Principal, RequestCtx};
use lumen_engine::registry::ModelKind;

/// One model as `/v1/models` lists it: OpenAI's fields plus Lumen's state and memory.
pub fn model_json(st: &ModelStatus, id: &str) -> Value {
    let kind = match st.kind {
        ModelKind::Chat => "chat",
        ModelKind::Embedding => "embedding",
    };
    let created = st.served.as_ref().map(ServedModel::created).unwrap_or(0);
    let mut v = json!({"id": id, "object": "model", "created": created, "owned_by": "lumen",
        "lumen_kind": kind, "lumen_state": st.state, "lumen_memory_bytes": st.memory_bytes});
    if id != st.name {
        v["lumen_alias_of"] = json!(st.name);
    }
    if let Some(m) = &st.served {
        v["max_model_len"] = json!(m.context_len());
        if let ServedModel::Embedding(e) = m {
            v["lumen_dimensions"] = json!(e.handle.info().dims);
        }
    }
    v
}

/// Every served model, then every alias, as `/v1/models` entries.
pub fn all_models_json(state: &AppState) -> Vec<Value> {
    let m = state.manager();
    let statuses = m.statuses();
    let mut out: Vec<Value> = statuses.iter().map(|s| model_json(s, &s.name)).collect();
    for (alias, target) in m.aliases() {
        if let Some(s) = statuses.iter().find(|s| &s.name == target) {
            out.push(model_json(s, alias));
        }
    }
    out
}

/// `GET /v1/models`: every installed model (loaded or not) and every alias the caller's key
/// may use.
pub async fn list_models(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
) -> Result<Json<Value>, ServerError> {
    let principal = ctx.map_or(Principal::Open, |Extension(c)| c.principal.clone());
    let data: Vec<Value> = all_models_json(&state)
        .into_iter()
        .filter(|m| {
            m["id"]
                .as_str()
                .is_some_and(|id| check_model(&state, &principal, id).is_ok())
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    let principal = ctx.map_or(Principal::Open, |Extension(c)| c.principal.clone());
    check_model(&state, &principal, &id)?;
    let name = state.manager().resolve(&id)?;
    let st = state
        .manager()
        .statuses()
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ServerError::ModelNotFound(id.clone()))?;
    Ok(Json(model_json(&st, &id)))
}

/// `POST /tokenize` body: a text prompt, or messages rendered through the chat template.
#[derive(Deserialize, Debug)]
pub struct TokenizeBody {
    /// Model name (default: the first chat model).
    pub model: Option<String>,
    /// Text to tokenize.
    pub prompt: Option<String>,
    /// Messages to render and tokenize instead.
    pub messages: Option<Vec<MessageIn>>,
    /// Add BOS/EOS as the model does (default true).
    pub add_special_tokens: Option<bool>,
    /// With messages: end with the assistant's turn header (default true).
    pub add_generation_prompt: Option<bool>,
    /// Also return each token's text.
    pub return_token_strs: Option<bool>,
}

/// The chat model `name` (or the first one) if the caller's key may use it.
async fn allowed_chat_model(
    state: &AppState,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    name: Option<&str>,
) -> Result<crate::manager::lease::ChatLease, ServerError> {
    let principal = ctx.map_or(Principal::Open, |Extension(c)| c.principal.clone());
    if let Some(n) = name {
        check_model(state, &principal, n)?;
    }
    let model = state.chat_model(name, None).await?;
    if name.is_none() {
        check_model(state, &principal, &model.name)?;
    }
    Ok(model)
}

/// `POST /tokenize`.
pub async fn tokenize(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    OpenAiJson(body): OpenAiJson<TokenizeBody>,
) -> Result<Json<Value>, ServerError> {
    let model = allowed_chat_model(&state, ctx, body.model.as_deref()).await?;
    let max_model_len = model.handle.info().context_len;
    let m = model.clone();
    let strs = body.return_token_strs.unwrap_or(false);
    let (tokens, token_strs) = prepare(move || {
        let add_special = body.add_special_tokens.unwrap_or(true);
        let tok = m.handle.tokenizer();
        let ids = match (body.prompt, body.messages) {
            (Some(p), None) => tok.encode(&p, add_special, true)?,
            (None, Some(msgs)) => {
                let text = m.template.render(
                    &convert_messages(&msgs)?,
                    body.add_generation_prompt.unwrap_or(true),
                    None,
                )?;
                tok.encode(&text, add_special, true)?
            }
            _ => {
                return Err(ServerError::param(
                    "prompt",
                    "send exactly one of prompt and messages",
                ))
            }
        };
        let strs: Option<Vec<String>> = strs.then(|| {
            ids.iter()
                .map(|&t| tok.token_to_piece(t).unwrap_or_default())
                .collect()
        });
        Ok((ids, strs))
    })
    .await?;
    let mut out = json!({"count": tokens.len(), "max_model_len": max_model_len, "tokens": tokens});
    if let Some(s) = token_strs {
        out["token_strs"] = json!(s);
    }
    Ok(Json(out))
}

/// `POST /detokenize` body.
#[derive(Deserialize, Debug)]
pub struct DetokenizeBody {
    /// Model name (default: the first chat model).
    pub model: Option<String>,
    /// Token ids.
    pub tokens: Vec<i64>,
}

/// `POST /detokenize`.
pub async fn detokenize(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    OpenAiJson(body): OpenAiJson<DetokenizeBody>,
) -> Result<Json<Value>, ServerError> {
    let model = allowed_chat_model(&state, ctx, body.model.as_deref()).await?;
    let tok = model.handle.tokenizer().clone();
    let vocab = tok.vocab_size();
    let ids = body
        .tokens
        .iter()
        .map(|&t| {
            u32::try_from(t)
                .ok()
                .filter(|&t| (t as usize) < vocab)
                .ok_or_else(|| {
                    ServerError::param(
                        "tokens",
                        format!("token id {t} is outside the vocabulary of {vocab} tokens"),
                    )
                })
        })
        .collect::<Result<Vec<u32>, _>>()?;
    let text = prepare(move || Ok(tok.decode(&ids, false)?)).await?;
    Ok(Json(json!({"prompt": text})))
}
