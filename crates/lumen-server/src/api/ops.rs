//! Operations endpoints: liveness, readiness, metrics, and the OpenAI-shaped 404.

use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::error::ServerError;
use crate::metrics;
use crate::state::AppState;

/// `GET /health`: 200 while the process runs.
pub async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /ready`: 200 once the models are loaded, 503 before and while shutting down.
pub async fn ready(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, Json(json!({"status": "ready"}))).into_response()
    } else if state.is_draining() {
        ServerError::ShuttingDown.into_response()
    } else {
        ServerError::NotReady.into_response()
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics::render(&state),
    )
        .into_response()
}

/// Any other path.
pub async fn not_found(uri: Uri) -> ServerError {
    ServerError::RouteNotFound(uri.path().to_string())
}

/// A known path with a method it does not serve.
pub async fn method_not_allowed(method: Method, uri: Uri) -> ServerError {
    ServerError::MethodNotAllowed {
        method: method.to_string(),
        path: uri.path().to_string(),
    }
}
