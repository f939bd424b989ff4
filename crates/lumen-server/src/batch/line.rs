//! One batch line, answered: the line's body through the live endpoint's handler core, the
//! answer (or the refusal, in the live endpoint's words) as OpenAI's result line. The
//! executor and `lumen batch run` both use it, so a batch answer is the live one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::api::chat::Chat;
use crate::api::completions::Completions;
use crate::api::embeddings::{self, EmbeddingsBody};
use crate::api::generate;
use crate::error::ServerError;
use crate::extract::parse_json;
use crate::state::AppState;
use crate::tenancy::RequestCtx;

/// Largest response body read back from a handler.
const MAX_RESPONSE: usize = 64 << 20;

/// Whether a refusal means "not now" rather than an answer for the item.
pub fn is_transient(e: &ServerError) -> bool {
    matches!(
        e,
        ServerError::QueueFull
            | ServerError::RateLimited { .. }
            | ServerError::StoreUnavailable(_)
            | ServerError::LedgerFull
            | ServerError::NotReady
            | ServerError::ShuttingDown
            | ServerError::EngineStopped
            | ServerError::LoadTimeout { .. }
            | ServerError::OverMemory(_)
    )
}

/// Runs one line's `body` on `endpoint` through the live endpoint's handler core (as
/// `ctx`'s caller; none: an open server's). `(status, body)` of the answer, or the refusal.
pub async fn run_body(
    state: AppState,
    endpoint: &str,
    body: &str,
    ctx: Option<Arc<RequestCtx>>,
) -> Result<(u16, Bytes), ServerError> {
    let body = batch_body(body);
    let resp = match endpoint {
        "/v1/chat/completions" => generate::serve::<Chat>(state, ctx, body).await?,
        "/v1/completions" => generate::serve::<Completions>(state, ctx, body).await?,
        "/v1/embeddings" => {
            let req: EmbeddingsBody = parse_json(&body)?;
            embeddings::serve(state, ctx, req).await?
        }
        other => {
            return Err(ServerError::param(
                "url",
                format!("batch lines may call /v1/chat/completions, /v1/completions or /v1/embeddings, not '{other}'"),
            ))
        }
    };
    let status = resp.status().as_u16();
    Ok((status, read_body(resp).await))
}

/// [`run_body`], with a final refusal turned into its error answer (status and OpenAI error
/// body, as the live endpoint sends it); `Err` only for refusals that mean "retry later".
pub async fn answer(
    state: AppState,
    endpoint: &str,
    body: &str,
    ctx: Option<Arc<RequestCtx>>,
) -> Result<(u16, Bytes), ServerError> {
    match run_body(state, endpoint, body, ctx).await {
        Ok(r) => Ok(r),
        Err(e) if is_transient(&e) => Err(e),
        Err(e) => Ok(refusal(e).await),
    }
}

/// A refusal as the live endpoint sends it: its status and OpenAI error body (the one error
/// table's).
pub async fn refusal(e: ServerError) -> (u16, Bytes) {
    let resp = e.into_response();
    let status = resp.status().as_u16();
    (status, read_body(resp).await)
}

/// The `id` of an answer's body (its request id), if it has one.
pub fn request_id_of(body: &[u8]) -> Option<String> {
    serde_json::from_slice::<IdOnly>(body)
        .ok()
        .and_then(|b| b.id)
}

/// The body a batch line sends: its own, without `stream` and `stream_options` (a batch
/// answer is always one JSON object).
fn batch_body(text: &str) -> Bytes {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(mut m)) => {
            m.remove("stream");
            m.remove("stream_options");
            Bytes::from(Value::Object(m).to_string())
        }
        _ => Bytes::from(text.to_string()),
    }
}

/// The `id` of a response body, if it has one.
#[derive(serde::Deserialize)]
struct IdOnly {
    id: Option<String>,
}

/// A response's body bytes.
async fn read_body(resp: axum::response::Response) -> Bytes {
    match axum::body::to_bytes(resp.into_body(), MAX_RESPONSE).await {
        Ok(b) => b,
        Err(e) => Bytes::from(
            json!({"error": {"message": format!("could not read the answer: {e}"), "type": "server_error", "param": null, "code": "internal_error"}})
                .to_string(),
        ),
    }
}

/// One line of the output or error file (OpenAI's format). The body is spliced in as the
/// handler wrote it: parsing and printing it again would change float digits, and the line
/// must equal what the live endpoint returns. A body that is not one line of JSON (never
/// from these handlers) is carried as a string instead.
pub fn result_line(
    batch_id: &str,
    line: u64,
    custom_id: &str,
    status: u16,
    request_id: &str,
    body: &[u8],
) -> String {
    let id = format!("batch_req_{}_{line}", batch_id.trim_start_matches("batch_"));
    let head = json!({"id": id, "custom_id": custom_id}).to_string();
    let one_json_line =
        !body.contains(&b'\n') && serde_json::from_slice::<serde::de::IgnoredAny>(body).is_ok();
    let body = if one_json_line {
        String::from_utf8_lossy(body).into_owned()
    } else {
        Value::String(String::from_utf8_lossy(body).into_owned()).to_string()
    };
    // `head` is `{"id":…,"custom_id":…}`: drop its closing brace and continue the object.
    format!(
        "{},\"response\":{{\"status_code\":{status},\"request_id\":{},\"body\":{body}}},\"error\":null}}",
        &head[..head.len() - 1],
        Value::String(request_id.to_string())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_result_line_carries_the_body_bytes_unchanged() {
        let body = br#"{"id":"chatcmpl-1","x":-2.6723079e-33}"#;
        let line = result_line("batch_ab", 7, "q\"1", 200, "chatcmpl-1", body);
        assert_eq!(request_id_of(body).as_deref(), Some("chatcmpl-1"));
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["id"], "batch_req_ab_7");
        assert_eq!(v["custom_id"], "q\"1");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["error"], Value::Null);
        assert!(line.contains(r#""body":{"id":"chatcmpl-1","x":-2.6723079e-33}"#));
        let odd = result_line("batch_ab", 7, "x", 500, "r", b"not\njson");
        let v: Value = serde_json::from_str(&odd).unwrap();
        assert_eq!(v["response"]["body"], "not\njson");
    }
}
