//! Operator endpoints for models: `GET /admin/models`, `POST /admin/models/{id}/load` and
//! `POST /admin/models/{id}/unload`.
//!
//! Like every `/admin/*` route they need an admin key (a user key gets 403).

use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

use super::models::model_json;
use crate::error::ServerError;
use crate::manager::ModelStatus;
use crate::state::{AppState, ServedModel};

fn admin_json(st: &ModelStatus) -> Value {
    let mut v = model_json(st, &st.name);
    v["lumen_idle_seconds"] = json!(st.idle_seconds);
    v["lumen_busy"] = json!(st.busy);
    v["lumen_keep_alive"] = json!(st.keep_alive.to_string());
    v["lumen_loads"] = json!(st.loads);
    v["lumen_last_error"] = json!(st.last_error);
    if let Some(ServedModel::Chat(c)) = &st.served {
        let stats = c.handle.stats();
        v["lumen_kv_usage"] = json!(stats.kv_usage());
        v["lumen_kv_blocks"] = json!(c.handle.info().kv_blocks);
        v["lumen_requests_in_flight"] = json!(c.handle.in_flight());
    }
    if let Some(ServedModel::Embedding(e)) = &st.served {
        v["lumen_requests_in_flight"] = json!(e.handle.in_flight());
    }
    v
}

/// `GET /admin/models`: every model with memory, KV usage, idle time and keep-alive, and
/// the budget.
pub async fn list(State(state): State<AppState>) -> Json<Value> {
    let m = state.manager();
    let data: Vec<Value> = m.statuses().iter().map(admin_json).collect();
    Json(json!({
        "object": "list",
        "data": data,
        "max_memory_bytes": m.config().max_memory,
        "used_memory_bytes": m.used_memory(),
        "aliases": m.aliases(),
    }))
}

fn status_of(state: &AppState, name: &str) -> Result<Value, ServerError> {
    state
        .manager()
        .statuses()
        .iter()
        .find(|s| s.name == name)
        .map(admin_json)
        .ok_or_else(|| ServerError::ModelNotFound(name.to_string()))
}

/// `POST /admin/models/{id}/load`: loads the model (evicting idle ones if the budget needs)
/// and answers once it is loaded.
pub async fn load(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    state.ensure_accepting()?;
    let name = state.manager().resolve(&id)?;
    state.manager().load(&name).await?;
    status_of(&state, &name).map(Json)
}

/// `POST /admin/models/{id}/unload`: unloads the model now if it is idle, or as soon as its
/// running requests finish (never under them); `lumen_unloaded` says which.
pub async fn unload(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    let name = state.manager().resolve(&id)?;
    let now = state.manager().unload(&name)?;
    let mut v = status_of(&state, &name)?;
    v["lumen_unloaded"] = json!(now);
    Ok(Json(v))
}
