//! The HTTP endpoints: OpenAI's (`/v1/...`, chat, completions and embeddings), vLLM's tokenizer extensions and operations
//! (`/health`, `/ready`, `/metrics`).

pub mod admin;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod explain;
pub mod explain_out;
pub mod generate;
pub mod keys;
pub mod logprobs;
pub mod models;
pub mod ops;
pub mod params;
pub mod response;
pub mod structured;
pub mod tool_calls;
pub mod uncertainty;
pub mod usage;

use std::time::Instant;

use crate::error::ServerError;
use crate::state::{unix_now, AppState};

/// What every response object of one request repeats.
#[derive(Clone, Debug)]
pub struct Meta {
    /// Response id.
    pub id: String,
    /// Unix time.
    pub created: u64,
    /// Model name.
    pub model: String,
}

impl Meta {
    /// A fresh id with `prefix` for `model`.
    pub fn new(state: &AppState, prefix: &str, model: &str) -> Self {
        Meta {
            id: state.new_id(prefix),
            created: unix_now(),
            model: model.to_string(),
        }
    }
}

/// When a request that arrived at `arrived` must be cancelled.
pub fn deadline(state: &AppState, arrived: Instant) -> Option<tokio::time::Instant> {
    state
        .limits()
        .request_timeout
        .map(|t| tokio::time::Instant::from_std(arrived + t))
}

/// Runs prompt preparation (template rendering, tokenization) off the async workers: a
/// multi-megabyte prompt takes long enough to stall other connections otherwise.
pub async fn prepare<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ServerError> + Send + 'static,
) -> Result<T, ServerError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ServerError::Internal(format!("prompt preparation failed: {e}")))?
}
