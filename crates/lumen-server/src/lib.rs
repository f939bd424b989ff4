//! Lumen's OpenAI-compatible HTTP service.
//!
//! Any client of the OpenAI API (the official SDKs, LangChain, curl) can point at Lumen:
//! `/v1/chat/completions` and `/v1/completions` with streaming, `/v1/embeddings`, `/v1/models`, vLLM's
//! `/tokenize` and `/detokenize` and sampling extensions, and `/health`, `/ready` and
//! `/metrics` for operations.
//!
//! Design choices:
//! - **No compute here.** Handlers validate, render the chat template and tokenize (on the
//!   blocking pool), then hand an engine request to the model's engine thread and relay its
//!   events. The async runtime needs two worker threads at most.
//! - **Errors mapped once.** Every failure is a [`ServerError`]; its `IntoResponse` is the
//!   single table from variant to status and OpenAI `{"error": {...}}` body. Even malformed
//!   JSON and wrong content types go through it ([`extract::OpenAiJson`]).
//! - **Back-pressure, not buffering.** The engine bounds the requests in flight; past that
//!   a request is answered 429 with `Retry-After` at once. Bodies are capped (4 MiB by
//!   default) and every request must fit the KV cache, so no client can make the server
//!   allocate without bound.
//! - **Cancellation by ownership.** The engine streams of a request live in the handler's
//!   future or the streaming body; when a client disconnects, hyper drops them and the engine
//!   cancels the request before its next step (the same path serves `--request-timeout`).
//! - **Models on demand.** [`manager::ModelManager`] serves every installed model by name,
//!   loads it on its first request, unloads it after its `keep_alive` of idleness, keeps all
//!   loaded models under `--max-memory` and runs them on one shared compute pool. Handlers
//!   hold a lease on the model while they use it, so it is never unloaded under a request.
//! - **Many tenants.** Keys live in `lumen-store` (hashes only) next to static `--api-key`
//!   and `--admin-key` keys ([`tenancy`]); each request is admitted against its key's limits
//!   before it reaches the engine ([`admission`]) and metered by a guard whose drop refunds
//!   the unused reservation and queues its usage event for the batch writer ([`ledger`]).
//! - **Batch jobs in the same process.** [`batch`] serves OpenAI's Files and Batches APIs and
//!   runs each batch line through the live endpoint's own handler core at batch priority,
//!   with every line's state in the store so a killed server finishes its batches exactly
//!   once after a restart.
//! - **A page, not a second API.** The playground at `/` ([`ui`]) is static files compiled
//!   into the binary that call the public endpoints like any client.

pub mod admission;
pub mod api;
pub mod auth;
pub mod batch;
pub mod conn;
pub mod error;
pub mod extract;
pub mod gen;
pub mod ledger;
pub mod manager;
pub mod metrics;
pub mod server;
pub mod sse;
pub mod state;
pub mod tenancy;
pub mod ui;

pub use error::ServerError;
pub use server::{app, router, run, serve, ServerConfig, DEFAULT_MODELS};
pub use state::AppState;
