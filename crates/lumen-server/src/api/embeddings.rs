//! `POST /v1/embeddings`.
//!
//! - **Input shapes as OpenAI's.** `input` is a string, a list of strings, a list of token
//!   ids, or a list of lists of token ids; anything else (mixed lists, numbers among strings,
//!   null items) is a 400 naming `input`. The shape is read by hand from the JSON value, so
//!   the error can say what was wrong instead of serde's untagged-enum "did not match".
//! - **Length rules live in the engine.** [`EmbedHandle::prepare`](lumen_engine::EmbedHandle::prepare)
//!   tokenizes (on the blocking pool) and applies the limits: more than 2,048 inputs, empty
//!   strings and over-long inputs are refused unless `truncate_prompt_tokens` asks for
//!   truncation. `usage.prompt_tokens` counts the tokens actually embedded, specials included.
//! - **Batching happens behind the handle.** The handler sends one request to the model's
//!   embedding thread, which packs it with whatever else is waiting into one forward pass.
//! - **`encoding_format: "base64"`** is the vector's little-endian f32 bytes in standard
//!   base64, as OpenAI sends it (and as the official clients request by default).
//! - **`dimensions`** is for models trained to be cut short (Matryoshka); the BERT models
//!   served here are not, so any other value than the model's own size is refused.
//! - **`--request-timeout` holds here too.** Past it the request is answered 504 and its
//!   oneshot dropped, which makes the embedding thread skip whatever of it has not run yet.
//! - **Large bodies are written off the async workers**: 2,048 vectors of 384 floats is
//!   megabytes of JSON.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use lumen_engine::{EmbedInput, MAX_EMBED_INPUTS};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use std::sync::Arc;

use axum::Extension;

use super::generate::check_model;
use super::{deadline, prepare};
use crate::error::ServerError;
use crate::extract::OpenAiJson;
use crate::manager::KeepAlive;
use crate::state::AppState;
use crate::tenancy::meter::EventInfo;
use crate::tenancy::{Principal, RequestCtx};

/// The request body.
#[derive(Deserialize, Debug)]
pub struct EmbeddingsBody {
    /// Model name.
    pub model: String,
    /// What to embed (see the module docs for the accepted shapes).
    pub input: Option<Value>,
    /// `float` (default) or `base64`.
    pub encoding_format: Option<String>,
    /// Output size; only the model's own size is accepted.
    pub dimensions: Option<i64>,
    /// Cut over-long inputs to this many tokens instead of refusing them.
    pub truncate_prompt_tokens: Option<i64>,
    /// End-user id (accepted, unused).
    pub user: Option<String>,
    /// How long the model stays loaded after this request (Ollama's `keep_alive`).
    pub keep_alive: Option<Value>,
}

/// How vectors are written in the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Float,
    Base64,
}

const SHAPES: &str =
    "input must be a string, a list of strings, a list of token ids, or a list of lists of token ids";

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn token_id(v: &Value, at: &str) -> Result<u32, ServerError> {
    v.as_u64()
        .and_then(|t| u32::try_from(t).ok())
        .ok_or_else(|| {
            ServerError::param(
                "input",
                format!("{at} must be a token id (a non-negative integer), not {v}"),
            )
        })
}

/// Reads `input` into the engine's inputs, checking only its shape.
pub fn parse_input(input: Option<Value>) -> Result<Vec<EmbedInput>, ServerError> {
    let bad = |message: String| ServerError::param("input", message);
    let items = match input {
        None | Some(Value::Null) => return Err(bad("input is required".into())),
        Some(Value::String(s)) => return Ok(vec![EmbedInput::Text(s)]),
        Some(Value::Array(items)) => items,
        Some(other) => return Err(bad(format!("{SHAPES}, not {}", kind_of(&other)))),
    };
    let Some(first) = items.first() else {
        return Err(bad("input must not be empty".into()));
    };
    if first.is_number() {
        // One input given as token ids.
        let ids = items
            .iter()
            .enumerate()
            .map(|(i, v)| token_id(v, &format!("input[{i}]")))
            .collect::<Result<Vec<u32>, _>>()?;
        return Ok(vec![EmbedInput::Tokens(ids)]);
    }
    if items.len() > MAX_EMBED_INPUTS {
        return Err(bad(format!(
            "input has {} items; at most {MAX_EMBED_INPUTS} are allowed per request",
            items.len()
        )));
    }
    let (strings, lists) = (first.is_string(), first.is_array());
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        match item {
            Value::String(s) if strings => out.push(EmbedInput::Text(s)),
            Value::Array(ids) if lists => {
                let ids = ids
                    .iter()
                    .enumerate()
                    .map(|(j, v)| token_id(v, &format!("input[{i}][{j}]")))
                    .collect::<Result<Vec<u32>, _>>()?;
                out.push(EmbedInput::Tokens(ids));
            }
            other => {
                let want = if strings {
                    "a string like input[0]"
                } else if lists {
                    "a list of token ids like input[0]"
                } else {
                    "a string"
                };
                return Err(bad(format!(
                    "{SHAPES}; input[{i}] is {}, expected {want}",
                    kind_of(&other)
                )));
            }
        }
    }
    Ok(out)
}

/// Standard base64 (with padding) of `bytes`.
pub fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for k in 0..4 {
            if k <= chunk.len() {
                out.push(char::from(ABC[(n >> (18 - 6 * k)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A vector as little-endian f32 bytes in base64.
fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64(&bytes)
}

#[derive(Serialize)]
#[serde(untagged)]
enum Vector {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
struct Item {
    object: &'static str,
    index: usize,
    embedding: Vector,
}

#[derive(Serialize)]
struct Usage {
    prompt_tokens: usize,
    total_tokens: usize,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<Item>,
    model: String,
    usage: Usage,
}

/// The handler.
pub async fn embeddings(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    OpenAiJson(req): OpenAiJson<EmbeddingsBody>,
) -> Result<Response, ServerError> {
    serve(state, ctx.map(|Extension(c)| c), req).await
}

/// Serves one embeddings request (the handler's core; batch items call it too).
pub async fn serve(
    state: AppState,
    ctx: Option<Arc<RequestCtx>>,
    req: EmbeddingsBody,
) -> Result<Response, ServerError> {
    let arrived = std::time::Instant::now();
    let principal = ctx
        .as_ref()
        .map_or(Principal::Open, |c| c.principal.clone());
    check_model(&state, &principal, &req.model)?;
    let keep_alive = match &req.keep_alive {
        None | Some(Value::Null) => None,
        Some(v) => Some(KeepAlive::from_json(v).map_err(|m| ServerError::param("keep_alive", m))?),
    };
    let model = state.embedding_model(&req.model, keep_alive).await?;
    state.ensure_accepting()?;
    let format = match req.encoding_format.as_deref() {
        None | Some("float") => Format::Float,
        Some("base64") => Format::Base64,
        Some(other) => {
            return Err(ServerError::param(
                "encoding_format",
                format!("encoding_format must be 'float' or 'base64', not '{other}'"),
            ))
        }
    };
    let dims = model.handle.info().dims;
    if let Some(d) = req.dimensions {
        if d != dims as i64 {
            return Err(ServerError::param(
                "dimensions",
                format!("The model '{}' was not trained to return shortened embeddings; it only returns {dims} dimensions (omit 'dimensions').", model.name),
            ));
        }
    }
    let truncate = match req.truncate_prompt_tokens {
        None => None,
        Some(k) if k >= 1 => Some(usize::try_from(k).unwrap_or(usize::MAX)),
        Some(k) => {
            return Err(ServerError::param(
                "truncate_prompt_tokens",
                format!("truncate_prompt_tokens must be at least 1, got {k}"),
            ))
        }
    };
    let inputs = parse_input(req.input)?;
    let handle = model.handle.clone();
    let seqs = prepare(move || Ok(handle.prepare(inputs, truncate)?)).await?;
    let prompt_tokens: usize = seqs.iter().map(Vec::len).sum();
    let n = seqs.len();
    // Admitted and metered like generation: the cost is the input tokens.
    let mut meter = state
        .tenancy()
        .admit(
            ctx.as_deref(),
            prompt_tokens as u64,
            EventInfo {
                request_id: state.new_id("embd"),
                model: model.name.clone(),
                endpoint: "embeddings",
                arrived,
            },
        )
        .await?;
    meter.set_usage(lumen_engine::Usage {
        prompt_tokens,
        ..Default::default()
    });
    let compute = lumen_engine::ComputeTime::default();
    meter.add_compute(compute.clone());
    // `--request-timeout` holds here too: past it the request is answered 504 and the
    // dropped oneshot makes the embedding thread skip what has not run.
    let work = model.handle.embed_metered(seqs, compute);
    let embedded = match deadline(&state, arrived) {
        None => Ok(work.await),
        Some(at) => tokio::time::timeout_at(at, work).await.map_err(|_| at),
    };
    let vectors = match embedded {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => {
            meter.set_outcome(lumen_store::Outcome::Error);
            return Err(e.into());
        }
        Err(at) => {
            tracing::warn!(model = %model.name, inputs = n, "embedding request timed out; cancelling it");
            meter.set_outcome(lumen_store::Outcome::Cancelled);
            return Err(ServerError::Timeout {
                secs: (at.into_std() - arrived).as_secs_f64(),
            });
        }
    };
    meter.set_outcome(lumen_store::Outcome::Ok);
    drop(meter);
    tracing::debug!(model = %model.name, inputs = n, tokens = prompt_tokens, "embeddings");
    let name = model.name.clone();
    let bytes = prepare(move || {
        let data = vectors
            .into_iter()
            .enumerate()
            .map(|(index, v)| Item {
                object: "embedding",
                index,
                embedding: match format {
                    Format::Float => Vector::Float(v),
                    Format::Base64 => Vector::Base64(base64_f32(&v)),
                },
            })
            .collect();
        let resp = EmbeddingsResponse {
            object: "list",
            data,
            model: name,
            usage: Usage {
                prompt_tokens,
                total_tokens: prompt_tokens,
            },
        };
        serde_json::to_vec(&resp)
            .map_err(|e| ServerError::Internal(format!("writing the response: {e}")))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_the_standard_vectors() {
        for (plain, coded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), coded);
        }
        // 1.0f32 is 00 00 80 3f little-endian.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }

    fn shape(v: Value) -> Result<Vec<EmbedInput>, String> {
        parse_input(Some(v)).map_err(|e| {
            assert_eq!(e.body()["error"]["param"], "input", "{e}");
            e.to_string()
        })
    }

    #[test]
    fn reads_every_openai_input_shape() {
        let t = |s: &str| EmbedInput::Text(s.into());
        assert_eq!(shape(json!("a")).unwrap(), vec![t("a")]);
        assert_eq!(shape(json!(["a", "b"])).unwrap(), vec![t("a"), t("b")]);
        assert_eq!(
            shape(json!([101, 7592, 102])).unwrap(),
            vec![EmbedInput::Tokens(vec![101, 7592, 102])]
        );
        assert_eq!(
            shape(json!([[101, 102], [101, 7, 102]])).unwrap(),
            vec![
                EmbedInput::Tokens(vec![101, 102]),
                EmbedInput::Tokens(vec![101, 7, 102])
            ]
        );
        // A long list of ids is one input, not many.
        assert_eq!(shape(json!(vec![7; 3000])).unwrap().len(), 1);
    }

    #[test]
    fn refuses_other_shapes_naming_input() {
        for bad in [
            json!([]),
            json!(null),
            json!(3),
            json!({"a": 1}),
            json!(["a", 1]),
            json!(["a", null]),
            json!([1, "a"]),
            json!([1, -2]),
            json!([1.5]),
            json!([[1], "a"]),
            json!([[1, "x"]]),
            json!([true]),
            json!(vec!["a"; MAX_EMBED_INPUTS + 1]),
        ] {
            assert!(shape(bad.clone()).is_err(), "{bad}");
        }
        assert!(parse_input(None).is_err());
    }
}
