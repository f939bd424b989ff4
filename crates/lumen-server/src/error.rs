//! The crate's single error type and its one mapping to HTTP.
//!
//! Every failure a client can see is a [`ServerError`]; [`IntoResponse`] turns it into
//! OpenAI's shape `{"error":{"message","type","param","code"}}` with one status per variant,
//! so the table below is the whole contract (as TGI and vLLM keep theirs in one place).
//!
//! | variant | status | type | code |
//! | --- | --- | --- | --- |
//! | `InvalidJson`, `UnsupportedMediaType`, `InvalidParam`, `WrongModelKind` | 400 | `invalid_request_error` | `invalid_json` / `unsupported_media_type` / `invalid_value` / `model_not_supported` |
//! | `Unauthorized` | 401 | `invalid_request_error` | `invalid_api_key` |
//! | `Unsupported` | 400 | `invalid_request_error` | `unsupported_parameter` |
//! | `ModelNotFound`, `RouteNotFound` | 404 | `invalid_request_error` | `model_not_found` / `not_found` |
//! | `MethodNotAllowed` | 405 | `invalid_request_error` | `method_not_allowed` |
//! | `PayloadTooLarge` | 413 | `invalid_request_error` | `request_too_large` |
//! | `Forbidden` | 403 | `invalid_request_error` | `insufficient_permissions` |
//! | `NotFound` | 404 | `invalid_request_error` | `not_found` |
//! | `Conflict` | 409 | `invalid_request_error` | `conflict` |
//! | `QueueFull` | 429 (+ `Retry-After: 1`) | `rate_limit_error` | `queue_full` |
//! | `RateLimited` | 429 (+ `Retry-After`, `retry-after-ms`) | `requests` / `tokens` | `rate_limit_exceeded` |
//! | `RequestTooLarge` | 429 (+ `x-should-retry: false`) | `tokens` | `rate_limit_exceeded` |
//! | `QuotaExceeded` | 429 (+ `x-should-retry: false`, no `Retry-After`) | `insufficient_quota` | `insufficient_quota` |
//! | `StoreUnavailable` | 503 | `server_error` | `store_unavailable` |
//! | `LedgerFull` | 503 (+ `Retry-After: 1`) | `server_error` | `ledger_backlog` |
//! | `NotReady`, `ShuttingDown` | 503 (+ `Retry-After: 1`) | `server_error` | `not_ready` / `shutting_down` |
//! | `EngineStopped` | 503 | `server_error` | `engine_stopped` |
//! | `Timeout` | 504 | `server_error` | `timeout` |
//! | `LoadTimeout` | 503 (+ `Retry-After: 1`) | `server_error` | `model_loading` |
//! | `OverMemory` | 503 | `server_error` | `insufficient_memory` |
//! | `LoadFailed` | 500 | `server_error` | `model_load_failed` |
//! | `Internal`, `Startup` | 500 | `server_error` | `internal_error` |
//!
//! Engine errors are sorted into these variants once, in `From<EngineError>`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lumen_engine::EngineError;
use serde_json::json;

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The body is not valid JSON.
    #[error("{0}")]
    InvalidJson(String),
    /// The body is not declared as JSON.
    #[error("Content-Type must be application/json")]
    UnsupportedMediaType,
    /// A parameter is missing, of the wrong type or out of range.
    #[error("{message}")]
    InvalidParam {
        /// The OpenAI parameter name (`messages[1].role`), if one is to blame.
        param: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// The model exists but cannot serve this endpoint (a chat model asked for embeddings or
    /// the reverse).
    #[error("The model '{model}' does not support this endpoint: it needs a model of kind '{expected}'.")]
    WrongModelKind {
        /// The model asked for.
        model: String,
        /// The kind the endpoint needs (`chat` or `embedding`).
        expected: &'static str,
    },
    /// No or a wrong API key.
    #[error("Incorrect or missing API key. Send it as 'Authorization: Bearer KEY'.")]
    Unauthorized,
    /// The caller's key may not do this (a user key on `/admin/*`).
    #[error("{0}")]
    Forbidden(String),
    /// No object (key, tenant) with that id.
    #[error("{0}")]
    NotFound(String),
    /// The object would clash with an existing one.
    #[error("{0}")]
    Conflict(String),
    /// A per-minute limit of the key is reached; retry after `retry_after_ms`.
    #[error("{message}")]
    RateLimited {
        /// `requests` or `tokens` (OpenAI's error type).
        kind: &'static str,
        /// What was hit.
        message: String,
        /// How long until it would pass.
        retry_after_ms: u64,
    },
    /// The request alone is over the key's per-minute token capacity: it can never pass.
    #[error("{0}")]
    RequestTooLarge(String),
    /// The key's token budget for the period is spent.
    #[error("{0}")]
    QuotaExceeded(String),
    /// The database cannot be reached.
    #[error("The usage and key database is unavailable: {0}")]
    StoreUnavailable(String),
    /// The usage ledger's queue is full (the database is down or too slow).
    #[error("The server cannot record usage right now (ledger queue full); retry shortly.")]
    LedgerFull,
    /// No model of that name is served.
    #[error("The model '{0}' does not exist or is not served here.")]
    ModelNotFound(String),
    /// No route for this path.
    #[error("No route for {0}.")]
    RouteNotFound(String),
    /// The path exists but not with this method.
    #[error("{method} is not allowed on {path}.")]
    MethodNotAllowed {
        /// The method sent.
        method: String,
        /// The path.
        path: String,
    },
    /// A parameter names a feature this server does not implement (yet).
    #[error("{message}")]
    Unsupported {
        /// The parameter.
        param: String,
        /// What is not supported.
        message: String,
    },
    /// The body is over the configured limit.
    #[error("The request body is larger than the limit of {limit} bytes.")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The engine's queue is full; the client should retry shortly.
    #[error("The server is at capacity (queue full); retry shortly.")]
    QueueFull,
    /// Models are still loading.
    #[error("The server is still loading its models.")]
    NotReady,
    /// The model's engine thread has stopped (it failed).
    #[error("The engine serving this model has stopped.")]
    EngineStopped,
    /// The server is draining for shutdown.
    #[error("The server is shutting down.")]
    ShuttingDown,
    /// The request ran past `--request-timeout` with nothing to show for it (a generation
    /// that times out ends with what it has; an embedding request has no partial answer).
    #[error(
        "The request did not finish within {secs:.1} s (--request-timeout) and was cancelled."
    )]
    Timeout {
        /// The timeout, seconds.
        secs: f64,
    },
    /// The model did not finish loading within `--load-timeout`.
    #[error(
        "The model '{model}' is still loading after {secs:.1} s (--load-timeout); retry shortly."
    )]
    LoadTimeout {
        /// The model.
        model: String,
        /// The timeout, seconds.
        secs: f64,
    },
    /// Loading the model would exceed `--max-memory` and no loaded model is idle.
    #[error("{0}")]
    OverMemory(String),
    /// The model's files could not be loaded.
    #[error("The model '{model}' failed to load: {reason}")]
    LoadFailed {
        /// The model.
        model: String,
        /// The loader's error.
        reason: String,
    },
    /// A bug or an engine failure.
    #[error("{0}")]
    Internal(String),
    /// The server could not start (never sent to a client).
    #[error("{0}")]
    Startup(String),
}

impl ServerError {
    /// A 400 naming `param`.
    pub fn param(param: impl Into<String>, message: impl Into<String>) -> Self {
        ServerError::InvalidParam {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// The (status, type, code, param) this error is answered with.
    fn parts(&self) -> (StatusCode, &'static str, &'static str, Option<String>) {
        use ServerError::*;
        let invalid = "invalid_request_error";
        match self {
            InvalidJson(_) => (StatusCode::BAD_REQUEST, invalid, "invalid_json", None),
            UnsupportedMediaType => (
                StatusCode::BAD_REQUEST,
                invalid,
                "unsupported_media_type",
                None,
            ),
            InvalidParam { param, .. } => (
                StatusCode::BAD_REQUEST,
                invalid,
                "invalid_value",
                param.clone(),
            ),
            WrongModelKind { .. } => (
                StatusCode::BAD_REQUEST,
                invalid,
                "model_not_supported",
                Some("model".into()),
            ),
            Unauthorized => (StatusCode::UNAUTHORIZED, invalid, "invalid_api_key", None),
            ModelNotFound(_) => (
                StatusCode::NOT_FOUND,
                invalid,
                "model_not_found",
                Some("model".into()),
            ),
            RouteNotFound(_) | NotFound(_) => (StatusCode::NOT_FOUND, invalid, "not_found", None),
            Forbidden(_) => (
                StatusCode::FORBIDDEN,
                invalid,
                "insufficient_permissions",
                None,
            ),
            Conflict(_) => (StatusCode::CONFLICT, invalid, "conflict", None),
            RateLimited { kind, .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                kind,
                "rate_limit_exceeded",
                None,
            ),
            RequestTooLarge(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "tokens",
                "rate_limit_exceeded",
                None,
            ),
            QuotaExceeded(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                "insufficient_quota",
                "insufficient_quota",
                None,
            ),
            StoreUnavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "store_unavailable",
                None,
            ),
            LedgerFull => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "ledger_backlog",
                None,
            ),
            MethodNotAllowed { .. } => (
                StatusCode::METHOD_NOT_ALLOWED,
                invalid,
                "method_not_allowed",
                None,
            ),
            Unsupported { param, .. } => (
                StatusCode::BAD_REQUEST,
                invalid,
                "unsupported_parameter",
                Some(param.clone()),
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                invalid,
                "request_too_large",
                None,
            ),
            QueueFull => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                "queue_full",
                None,
            ),
            NotReady => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "not_ready",
                None,
            ),
            ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "shutting_down",
                None,
            ),
            EngineStopped => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "engine_stopped",
                None,
            ),
            Timeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "server_error", "timeout", None),
            LoadTimeout { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "model_loading",
                Some("model".into()),
            ),
            OverMemory(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "server_error",
                "insufficient_memory",
                Some("model".into()),
            ),
            LoadFailed { .. } => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "model_load_failed",
                Some("model".into()),
            ),
            Internal(_) | Startup(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "internal_error",
                None,
            ),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The OpenAI error object (`{"error":{...}}`), also used inside event streams.
    pub fn body(&self) -> serde_json::Value {
        let (_, kind, code, param) = self.parts();
        json!({"error": {"message": self.to_string(), "type": kind, "param": param, "code": code}})
    }
}

impl From<EngineError> for ServerError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::QueueFull => ServerError::QueueFull,
            EngineError::InvalidRequest { param, message } => ServerError::param(param, message),
            EngineError::InvalidSampling { field, reason } => ServerError::param(field, reason),
            EngineError::TokenOutOfRange { .. } => ServerError::param("prompt", e.to_string()),
            EngineError::TemplateException(_)
            | EngineError::TemplateRender(_)
            | EngineError::TemplateBudget(_)
            | EngineError::InvalidMessage(_) => ServerError::param("messages", e.to_string()),
            EngineError::Stopped => ServerError::EngineStopped,
            other => ServerError::Internal(other.to_string()),
        }
    }
}

impl From<lumen_store::StoreError> for ServerError {
    fn from(e: lumen_store::StoreError) -> Self {
        use lumen_store::StoreError as S;
        match e {
            S::NotFound { .. } => ServerError::NotFound(e.to_string()),
            S::Invalid { field, reason } => ServerError::param(field, reason),
            S::Conflict(m) => ServerError::Conflict(m),
            S::Database(_) | S::Corrupt { .. } | S::UnsupportedUrl(_) => {
                ServerError::StoreUnavailable(e.to_string())
            }
        }
    }
}

impl IntoResponse for ServerError {
    fn into_response(self) -> Response {
        let status = self.status();
        // Not ready (still loading) and shutting down are the server's announced states,
        // polled by health checks and load balancers: not failures worth an error line.
        let expected = matches!(
            self,
            ServerError::NotReady | ServerError::ShuttingDown | ServerError::LoadTimeout { .. }
        );
        if matches!(self, ServerError::OverMemory(_)) {
            // The budget doing its job, but an operator should see it.
            tracing::warn!(status = status.as_u16(), error = %self, "request refused: memory budget");
        } else if status.is_server_error() && !expected {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %self, "request rejected");
        }
        let mut resp = (status, axum::Json(self.body())).into_response();
        let h = resp.headers_mut();
        match &self {
            ServerError::RateLimited { retry_after_ms, .. } => {
                // Whole seconds, rounded up, for clients that only read Retry-After; the
                // official SDKs prefer `retry-after-ms`.
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_ms.div_ceil(1000)),
                );
                h.insert("retry-after-ms", HeaderValue::from(*retry_after_ms));
            }
            // Waiting does not help: tell the SDKs not to retry.
            ServerError::RequestTooLarge(_) | ServerError::QuotaExceeded(_) => {
                h.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            ServerError::QueueFull
            | ServerError::ShuttingDown
            | ServerError::NotReady
            | ServerError::LoadTimeout { .. }
            | ServerError::LedgerFull => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let e = ServerError::param("temperature", "temperature must be in [0, 2]");
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let b = e.body();
        assert_eq!(b["error"]["param"], "temperature");
        assert_eq!(b["error"]["type"], "invalid_request_error");
        assert_eq!(b["error"]["message"], "temperature must be in [0, 2]");
        assert!(b["error"].get("code").is_some());
    }

    #[test]
    fn queue_full_says_when_to_retry() {
        let r = ServerError::QueueFull.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    }

    #[test]
    fn limits_answer_as_openai_does() {
        let r = ServerError::RateLimited {
            kind: "requests",
            message: "slow down".into(),
            retry_after_ms: 5_500,
        };
        let b = r.body();
        assert_eq!(
            (b["error"]["type"].as_str(), b["error"]["code"].as_str()),
            (Some("requests"), Some("rate_limit_exceeded"))
        );
        let r = r.into_response();
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(r.headers()[header::RETRY_AFTER], "6");
        assert_eq!(r.headers()["retry-after-ms"], "5500");
        let q = ServerError::QuotaExceeded("spent".into());
        assert_eq!(q.body()["error"]["code"], "insufficient_quota");
        let q = q.into_response();
        assert_eq!(q.status(), StatusCode::TOO_MANY_REQUESTS);
        assert!(q.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(q.headers()["x-should-retry"], "false");
        assert_eq!(
            ServerError::Forbidden("no".into()).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn engine_errors_keep_their_param() {
        let e: ServerError = EngineError::InvalidRequest {
            param: "max_tokens",
            message: "too long".into(),
        }
        .into();
        assert_eq!(e.body()["error"]["param"], "max_tokens");
        let budget: ServerError = EngineError::TemplateBudget("prompt over 1 MiB".into()).into();
        assert_eq!(
            (budget.status(), budget.body()["error"]["param"].as_str()),
            (StatusCode::BAD_REQUEST, Some("messages"))
        );
        assert_eq!(
            ServerError::from(EngineError::QueueFull).status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        let nf = ServerError::ModelNotFound("x".into()).body();
        assert_eq!(
            (nf["error"]["code"].as_str(), nf["error"]["param"].as_str()),
            (Some("model_not_found"), Some("model"))
        );
    }
}
