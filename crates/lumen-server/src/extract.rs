//! A JSON body extractor whose every rejection is an OpenAI-shaped [`ServerError`].
//!
//! axum's own `Json` answers 415/422 with plain text; OpenAI clients expect 400 with a JSON
//! error that names the offending parameter. Deserialization goes through
//! `serde_path_to_error`, so a wrong type deep inside the body reports e.g.
//! `messages[1].content` as its `param`.

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

/// Parses `bytes` as JSON (a syntax error is `InvalidJson`).
pub fn parse_value(bytes: &[u8]) -> Result<serde_json::Value, ServerError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ServerError::InvalidJson(format!("The body is not valid JSON: {e}")))
}

/// Reads `T` out of a parsed body, naming the parameter at fault.
pub fn from_value<T: DeserializeOwned>(value: &serde_json::Value) -> Result<T, ServerError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let mut param = (path != "." && !path.is_empty()).then_some(path);
        // serde reports a missing field at its parent; name the field itself.
        let text = inner.to_string();
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
    })
}

/// Parses `bytes` as `T`, naming the parameter at fault.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ServerError> {
    from_value(&parse_value(bytes)?)
}

impl<T: DeserializeOwned> FromRequest<AppState> for OpenAiJson<T> {
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
        parse_json(&bytes).map(OpenAiJson)
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
