//! The admin API for tenants and keys: `POST/GET /admin/tenants`, `PATCH /admin/tenants/{id}`
//! (limits shared by a tenant's keys), `POST/GET /admin/keys`,
//! `GET|PATCH|DELETE /admin/keys/{id}` and `POST /admin/keys/{id}/rotate`.
//!
//! Bodies refuse unknown fields (a misspelt `rpn` must be a 400, not a key without a limit).
//! A key's secret appears in exactly two answers, creation and rotation, as `"key"`. Every
//! change clears this server's key cache, so it holds at once here and within a second on
//! any other process sharing the database.

use axum::extract::{Path, State};
use axum::Json;
use lumen_store::{ApiKey, KeyLimits, KeyPatch, NewKey, Period, Role};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};

use crate::error::ServerError;
use crate::extract::OpenAiJson;
use crate::state::AppState;

/// `POST /admin/tenants` body: a name and optional limits shared by all its keys.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateTenant {
    /// Unique name.
    pub name: String,
    /// Requests per minute over all its keys.
    pub rpm: Option<u64>,
    /// Tokens per minute over all its keys.
    pub tpm: Option<u64>,
    /// Requests in flight over all its keys.
    pub max_parallel: Option<u64>,
    /// Tokens per budget period over all its keys.
    pub budget_tokens: Option<u64>,
    /// `day` or `month` (default `month` when a budget is set).
    pub budget_period: Option<Period>,
}

/// `PATCH /admin/tenants/{id}` body: absent fields stay, `null` removes a limit.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchTenant {
    #[serde(default, deserialize_with = "patch")]
    rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    max_parallel: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    budget_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    budget_period: Option<Option<Period>>,
}

/// `POST /admin/keys` body; every limit is optional (absent: unlimited).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// A label.
    pub name: String,
    /// `admin` or `user` (default).
    pub role: Option<Role>,
    /// Tenant id or name.
    pub tenant: Option<String>,
    /// Models the key may use (null: all).
    pub models: Option<Vec<String>>,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Requests in flight.
    pub max_parallel: Option<u64>,
    /// Tokens per budget period.
    pub budget_tokens: Option<u64>,
    /// `day` or `month` (default `month` when a budget is set).
    pub budget_period: Option<Period>,
    /// Highest priority the key may ask for.
    pub max_priority: Option<i64>,
    /// Unix seconds after which the key is refused.
    pub expires_at: Option<u64>,
}

/// A field that may be absent (keep), null (clear) or a value (set).
fn patch<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// `PATCH /admin/keys/{id}` body: absent fields stay, `null` removes a limit.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct PatchKey {
    /// New label.
    pub name: Option<String>,
    #[serde(default, deserialize_with = "patch")]
    models: Option<Option<Vec<String>>>,
    #[serde(default, deserialize_with = "patch")]
    rpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    tpm: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    max_parallel: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    budget_tokens: Option<Option<u64>>,
    #[serde(default, deserialize_with = "patch")]
    budget_period: Option<Option<Period>>,
    #[serde(default, deserialize_with = "patch")]
    max_priority: Option<Option<i64>>,
    #[serde(default, deserialize_with = "patch")]
    expires_at: Option<Option<u64>>,
}

fn key_json(key: &ApiKey, secret: Option<String>) -> Result<Value, ServerError> {
    let mut v = serde_json::to_value(key)
        .map_err(|e| ServerError::Internal(format!("writing a key: {e}")))?;
    if let Some(s) = secret {
        v["key"] = json!(s);
    }
    Ok(v)
}

/// `POST /admin/tenants`.
pub async fn create_tenant(
    State(state): State<AppState>,
    OpenAiJson(body): OpenAiJson<CreateTenant>,
) -> Result<Json<Value>, ServerError> {
    let limits = KeyLimits {
        rpm: body.rpm,
        tpm: body.tpm,
        max_parallel: body.max_parallel,
        budget_tokens: body.budget_tokens,
        budget_period: body.budget_period,
        max_priority: None,
    };
    let t = state
        .tenancy()
        .store()?
        .create_tenant(&body.name, limits)
        .await?;
    Ok(Json(json!(t)))
}

/// `PATCH /admin/tenants/{id}`: changes the tenant's limits (its keys see them within a
/// second, at once on this server).
pub async fn update_tenant(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OpenAiJson(b): OpenAiJson<PatchTenant>,
) -> Result<Json<Value>, ServerError> {
    let t = state.tenancy();
    let store = t.store()?;
    let mut l = store.get_tenant(&id).await?.limits;
    if let Some(v) = b.rpm {
        l.rpm = v;
    }
    if let Some(v) = b.tpm {
        l.tpm = v;
    }
    if let Some(v) = b.max_parallel {
        l.max_parallel = v;
    }
    if let Some(v) = b.budget_tokens {
        l.budget_tokens = v;
    }
    if let Some(v) = b.budget_period {
        l.budget_period = v;
    }
    let tenant = store.set_tenant_limits(&id, l).await?;
    t.cache.clear();
    Ok(Json(json!(tenant)))
}

/// `GET /admin/tenants`.
pub async fn list_tenants(State(state): State<AppState>) -> Result<Json<Value>, ServerError> {
    let data = state.tenancy().store()?.list_tenants().await?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `POST /admin/keys`: the key object plus its secret as `"key"`.
pub async fn create_key(
    State(state): State<AppState>,
    OpenAiJson(b): OpenAiJson<CreateKey>,
) -> Result<Json<Value>, ServerError> {
    let t = state.tenancy();
    let (key, secret) = t
        .store()?
        .create_key(NewKey {
            name: b.name,
            role: b.role,
            tenant: b.tenant,
            models: b.models,
            limits: KeyLimits {
                rpm: b.rpm,
                tpm: b.tpm,
                max_parallel: b.max_parallel,
                budget_tokens: b.budget_tokens,
                budget_period: b.budget_period,
                max_priority: b.max_priority,
            },
            expires_at: b.expires_at,
        })
        .await?;
    t.note_store_key();
    t.cache.clear();
    tracing::info!(id = %key.id, role = key.role.as_str(), "api key created");
    Ok(Json(key_json(&key, Some(secret))?))
}

/// `GET /admin/keys`.
pub async fn list_keys(State(state): State<AppState>) -> Result<Json<Value>, ServerError> {
    let keys = state.tenancy().store()?.list_keys(None).await?;
    let data = keys
        .iter()
        .map(|k| key_json(k, None))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({"object": "list", "data": data})))
}

/// `GET /admin/keys/{id}`: the key plus its requests in flight (on this server; on every
/// server sharing a PostgreSQL store).
pub async fn get_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    let t = state.tenancy();
    let key = t.store()?.get_key(&id).await?;
    let mut v = key_json(&key, None)?;
    v["in_flight"] = json!(t.in_flight(&key.id).await?);
    Ok(Json(v))
}

/// `PATCH /admin/keys/{id}`.
pub async fn update_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
    OpenAiJson(b): OpenAiJson<PatchKey>,
) -> Result<Json<Value>, ServerError> {
    let t = state.tenancy();
    let key = t
        .store()?
        .update_key(
            &id,
            KeyPatch {
                name: b.name,
                models: b.models,
                rpm: b.rpm,
                tpm: b.tpm,
                max_parallel: b.max_parallel,
                budget_tokens: b.budget_tokens,
                budget_period: b.budget_period,
                max_priority: b.max_priority,
                expires_at: b.expires_at,
            },
        )
        .await?;
    t.cache.clear();
    Ok(Json(key_json(&key, None)?))
}

/// `DELETE /admin/keys/{id}`: revokes the key (it stays listed, `revoked: true`).
pub async fn revoke_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    let t = state.tenancy();
    let key = t.store()?.revoke_key(&id).await?;
    t.cache.clear();
    tracing::info!(id = %key.id, "api key revoked");
    Ok(Json(key_json(&key, None)?))
}

/// `POST /admin/keys/{id}/rotate`: a new secret for the same key (limits and usage stay).
pub async fn rotate_key(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ServerError> {
    let t = state.tenancy();
    let (key, secret) = t.store()?.rotate_key(&id).await?;
    t.cache.clear();
    tracing::info!(id = %key.id, "api key rotated");
    Ok(Json(key_json(&key, Some(secret))?))
}
