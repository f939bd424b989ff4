//! `GET /v1/models`, `GET /v1/models/{id}`, and vLLM's `POST /tokenize` and `POST /detokenize`.

use axum::extract::{Path, State};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::chat::{convert_messages, MessageIn};
use super::prepare;
use crate::error::ServerError;
use crate::extract::OpenAiJson;
use crate::state::{AppState, ServedModel};

fn model_json(m: &ServedModel) -> Value {
    let mut v = json!({"id": m.name(), "object": "model", "created": m.created(), "owned_by": "lumen", "max_model_len": m.context_len(), "lumen_kind": m.kind()});
    if let ServedModel::Embedding(e) = m {
        v["lumen_dimensions"] = json!(e.handle.info().dims);
    }
    v
}

/// `GET /v1/models`.
pub async fn list_models(State(state): State<AppState>) -> Result<Json<Value>, ServerError> {
    if !state.is_ready() && state.models().is_empty() {
        return Err(ServerError::NotReady);
    }
    let data: Vec<Value> = state.models().iter().map(model_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /v1/models/{id}`.
pub async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    Ok(Json(model_json(&state.model(&id)?)))
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

/// `POST /tokenize`.
pub async fn tokenize(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<TokenizeBody>,
) -> Result<Json<Value>, ServerError> {
    let model = state.chat_model(body.model.as_deref())?;
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
    OpenAiJson(body): OpenAiJson<DetokenizeBody>,
) -> Result<Json<Value>, ServerError> {
    let model = state.chat_model(body.model.as_deref())?;
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
