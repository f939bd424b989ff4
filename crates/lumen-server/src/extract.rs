//! A JSON body extractor whose every rejection is an OpenAI-shaped [`ServerError`].
//!
//! axum's own `Json` answers 415/422 with plain text; OpenAI clients expect 400 with a JSON
//! error that names the offending parameter. Deserialization goes through
//! `serde_path_to_error`, so a wrong type deep inside the body reports e.g.
//! `messages[1].content` as its `param`. Bodies are parsed straight into their typed
//! structs, on the blocking pool, never into a `serde_json::Value` tree first.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde::de::DeserializeOwned;

use crate::error::ServerError;
use crate::state::AppState;

/// A JSON request body of type `T`.
pub struct OpenAiJson<T>(pub T);

fn is_json(req: &Request) -> bool {
    let Some(ct) = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let mime = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// The 400 for a body that is JSON but not of the expected shape at `path`.
fn data_error(path: String, text: String) -> ServerError {
    let mut param = (path != "." && !path.is_empty()).then_some(path);
    // serde reports a missing field at its parent; name the field itself.
    if let Some(field) = text
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        param = Some(match param {
            Some(p) => format!("{p}.{field}"),
            None => field.to_string(),
        });
    }
    let message = match &param {
        Some(p) => format!("Invalid value for '{p}': {text}"),
        None => format!("Invalid request body: {text}"),
    };
    ServerError::InvalidParam { param, message }
}

/// Parses `bytes` straight into `T`, naming the parameter at fault. No `serde_json::Value`
/// tree is built: a body of many small items (a million `logit_bias` keys) would cost
/// many times its size in memory as one.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServerError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data => data_error(path, inner.to_string()),
            _ => ServerError::InvalidJson(format!("The body is not valid JSON: {inner}")),
        }
    })?;
    de.end()
        .map_err(|e| ServerError::InvalidJson(format!("The body is not valid JSON: {e}")))?;
    Ok(value)
}

/// [`parse_json`] on the blocking pool: parsing a multi-megabyte body must not hold one of
/// the two async workers (and with it `/health`).
pub async fn parse_json_off_thread<T: DeserializeOwned + Send + 'static>(
    bytes: Bytes,
) -> Result<T, ServerError> {
    crate::api::prepare(move || parse_json(&bytes)).await
}

/// A JSON request body, its content type and size checked, not parsed yet.
pub struct JsonBody(pub Bytes);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(&req) {
            return Err(ServerError::UnsupportedMediaType);
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ServerError::PayloadTooLarge {
                    limit: state.limits().max_body_bytes,
                }
            } else {
                ServerError::InvalidJson(format!("Could not read the request body: {rejection}"))
            }
        })?;
        Ok(JsonBody(bytes))
    }
}

impl<T: DeserializeOwned + Send + 'static> FromRequest<AppState> for OpenAiJson<T> {
    type Rejection = ServerError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let JsonBody(bytes) = JsonBody::from_request(req, state).await?;
        parse_json_off_thread(bytes).await.map(OpenAiJson)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Msg {
        role: String,
    }
    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        model: String,
        messages: Vec<Msg>,
    }

    fn param_of(json: &str) -> (Option<String>, bool) {
        match parse_json::<Body>(json.as_bytes()) {
            Err(ServerError::InvalidParam { param, .. }) => (param, false),
            Err(ServerError::InvalidJson(_)) => (None, true),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn names_the_parameter_at_fault() {
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{"role":"user"},{"role":3}]}"#)
                .0
                .as_deref(),
            Some("messages[1].role")
        );
        assert_eq!(
            param_of(r#"{"model":1,"messages":[]}"#).0.as_deref(),
            Some("model")
        );
        assert!(param_of(r#"{"model":"m","#).1);
        assert_eq!(param_of(r#"{"model":"m"}"#).0.as_deref(), Some("messages"));
        assert_eq!(
            param_of(r#"{"model":"m","messages":[{}]}"#).0.as_deref(),
            Some("messages[0].role")
        );
        assert!(param_of(r#"{"model":"m","messages":[]} x"#).1);
    }

    #[test]
    fn ignores_unknown_fields() {
        let b: Body = parse_json(br#"{"model":"m","messages":[],"extra_body":{"x":1}}"#).unwrap();
        assert_eq!(b.model, "m");
    }
}
