//! `/v1/batches`: create, retrieve, cancel and list, in OpenAI's `batch` object shape.
//!
//! Creating a batch records it `validating` and returns at once; the executor validates the
//! input file and moves it on (a crash during validation leaves it `validating`, and the
//! next start validates it again).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lumen_store::{BatchRow, NewBatch};
use serde::Deserialize;
use serde_json::{json, Value};

use super::files::context;
use super::{new_id, ENDPOINTS, WINDOW, WINDOW_SECS};
use crate::error::ServerError;
use crate::extract::{parse_json, JsonBody};
use crate::state::AppState;
use crate::tenancy::{Principal, RequestCtx};

/// Most metadata pairs (OpenAI's limit), and their key and value lengths.
const MAX_METADATA: usize = 16;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;

/// `POST /v1/batches` body.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    /// An uploaded file with purpose `batch`.
    pub input_file_id: String,
    /// The endpoint every line calls.
    pub endpoint: String,
    /// `24h`.
    pub completion_window: String,
    /// Up to 16 string pairs.
    pub metadata: Option<BTreeMap<String, String>>,
    /// OpenAI's output expiry policy: accepted, not applied (results are kept until deleted).
    pub output_expires_after: Option<Value>,
}

/// OpenAI's `batch` object.
pub fn batch_json(b: &BatchRow) -> Value {
    let errors = b
        .errors
        .as_deref()
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
        .map(|data| json!({"object": "list", "data": data}));
    let metadata = b
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok());
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": b.created_at,
        "in_progress_at": b.in_progress_at,
        "expires_at": b.expires_at,
        "finalizing_at": b.finalizing_at,
        "completed_at": b.completed_at,
        "failed_at": b.failed_at,
        "expired_at": b.expired_at,
        "cancelling_at": b.cancelling_at,
        "cancelled_at": b.cancelled_at,
        "request_counts": {
            "total": b.counts.total,
            "completed": b.counts.completed,
            "failed": b.counts.failed,
        },
        "metadata": metadata,
    })
}

/// `POST /v1/batches`.
pub async fn create(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    JsonBody(body): JsonBody,
) -> Result<Response, ServerError> {
    let (owner, store, config) = context(&state, &ctx)?;
    let req: CreateBody = parse_json(&body as &Bytes)?;
    if !ENDPOINTS.contains(&req.endpoint.as_str()) {
        return Err(ServerError::param(
            "endpoint",
            format!(
                "endpoint must be one of {}, not '{}'",
                ENDPOINTS.join(", "),
                req.endpoint
            ),
        ));
    }
    if req.completion_window != WINDOW {
        return Err(ServerError::param(
            "completion_window",
            format!("completion_window must be '{WINDOW}'"),
        ));
    }
    if let Some(m) = &req.metadata {
        let bad = m.len() > MAX_METADATA
            || m.iter()
                .any(|(k, v)| k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE);
        if bad {
            return Err(ServerError::param(
                "metadata",
                format!("metadata holds at most {MAX_METADATA} pairs, keys up to {MAX_METADATA_KEY} and values up to {MAX_METADATA_VALUE} characters"),
            ));
        }
    }
    let file = store
        .get_file(&owner, &req.input_file_id)
        .await
        .map_err(|_| ServerError::NotFound(format!("No file with id '{}'.", req.input_file_id)))?;
    if file.purpose != "batch" {
        return Err(ServerError::param(
            "input_file_id",
            format!(
                "file '{}' has purpose '{}', not 'batch'",
                file.id, file.purpose
            ),
        ));
    }
    let principal = ctx
        .as_ref()
        .map_or(Principal::Open, |Extension(c)| c.principal.clone());
    let now = config.clock.now_secs();
    let row = store
        .create_batch(&NewBatch {
            id: new_id("batch_"),
            owner,
            key_id: principal.key_id().to_string(),
            endpoint: req.endpoint,
            input_file_id: file.id,
            completion_window: req.completion_window,
            metadata: req.metadata.map(|m| json!(m).to_string()),
            created_at: now,
            expires_at: now + WINDOW_SECS,
        })
        .await?;
    tracing::info!(batch = %row.id, endpoint = %row.endpoint, "batch created");
    state.batch_wake();
    Ok(Json(batch_json(&row)).into_response())
}

/// `GET /v1/batches/{id}`.
pub async fn get(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ServerError> {
    let (owner, store, _) = context(&state, &ctx)?;
    let b = store.get_batch(&owner, &id).await?;
    Ok(Json(batch_json(&b)).into_response())
}

/// `POST /v1/batches/{id}/cancel`.
pub async fn cancel(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ServerError> {
    let (owner, store, config) = context(&state, &ctx)?;
    let b = store
        .cancel_batch(&owner, &id, config.clock.now_secs())
        .await?;
    state.batch_wake();
    Ok(Json(batch_json(&b)).into_response())
}

/// `GET /v1/batches` query.
#[derive(Deserialize, Debug)]
pub struct ListQuery {
    /// The last id of the previous page.
    pub after: Option<String>,
    /// Page size, 1 to 100 (default 20).
    pub limit: Option<i64>,
}

/// `GET /v1/batches`.
pub async fn list(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ServerError> {
    let (owner, store, _) = context(&state, &ctx)?;
    let Query(q) = query.map_err(|e| ServerError::param("query", e.body_text()))?;
    let max = lumen_store::batches::MAX_BATCHES_PAGE;
    let limit = match q.limit {
        None => 20,
        Some(l) if (1..=max as i64).contains(&l) => l as usize,
        Some(_) => {
            return Err(ServerError::param(
                "limit",
                format!("limit must be 1 to {max}"),
            ))
        }
    };
    let mut rows = store
        .list_batches(&owner, q.after.as_deref(), limit + 1)
        .await?;
    let has_more = rows.len() > limit;
    rows.truncate(limit);
    Ok(Json(json!({
        "object": "list",
        "data": rows.iter().map(batch_json).collect::<Vec<_>>(),
        "has_more": has_more,
        "first_id": rows.first().map(|b| b.id.clone()),
        "last_id": rows.last().map(|b| b.id.clone()),
    }))
    .into_response())
}
