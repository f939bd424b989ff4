//! Usage reports: `GET /admin/usage` (everyone's), `GET /v1/usage` (the caller's own key)
//! in the bucket shape of OpenAI's Usage API, and `GET /admin/usage/events` (raw ledger
//! events, paginated by id).
//!
//! Query: `start_time`, `end_time` (Unix seconds), `bucket_width` (`1m`, `1h`, `1d`),
//! `group_by` (repeatable or comma-separated: `api_key_id`, `model`, `tenant`), `limit`
//! (buckets: by default 60, 24 or 7, at most 1440, 168 or 31, as OpenAI's).

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::{Extension, Json};
use lumen_store::usage::MAX_EVENTS_PAGE;
use lumen_store::{GroupBy, UsageQuery, Width};
use serde_json::{json, Value};

use crate::error::ServerError;
use crate::state::AppState;
use crate::tenancy::RequestCtx;

type Params = Query<Vec<(String, String)>>;

fn number(name: &'static str, v: &str) -> Result<u64, ServerError> {
    v.parse::<u64>()
        .ok()
        .filter(|n| *n <= i64::MAX as u64 / 1000)
        .ok_or_else(|| ServerError::param(name, format!("{name} must be a non-negative integer")))
}

/// Reads a report query; `key_id` restricts it to one key.
fn report_query(
    params: &[(String, String)],
    key_id: Option<String>,
) -> Result<UsageQuery, ServerError> {
    let mut width = Width::Day;
    let mut start = None;
    let mut end = None;
    let mut limit = None;
    let mut group_by = GroupBy::default();
    for (k, v) in params {
        match k.as_str() {
            "bucket_width" => {
                width = Width::parse(v).ok_or_else(|| {
                    ServerError::param("bucket_width", "bucket_width must be 1m, 1h or 1d")
                })?
            }
            "start_time" => start = Some(number("start_time", v)?),
            "end_time" => end = Some(number("end_time", v)?),
            "limit" => limit = Some(number("limit", v)?),
            "group_by" | "group_by[]" => {
                for g in v.split(',').map(str::trim).filter(|g| !g.is_empty()) {
                    match g {
                        "api_key_id" => group_by.api_key_id = true,
                        "model" => group_by.model = true,
                        "tenant" | "project_id" => group_by.tenant = true,
                        other => {
                            return Err(ServerError::param(
                                "group_by",
                                format!(
                                    "cannot group by '{other}': use api_key_id, model or tenant"
                                ),
                            ))
                        }
                    }
                }
            }
            // OpenAI's filters this server does not have are ignored, like unknown fields.
            _ => {}
        }
    }
    let (default_limit, max_limit) = match width {
        Width::Minute => (60, 1440),
        Width::Hour => (24, 168),
        Width::Day => (7, 31),
    };
    let limit = limit.unwrap_or(default_limit);
    if limit == 0 || limit > max_limit {
        return Err(ServerError::param(
            "limit",
            format!(
                "limit must be 1 to {max_limit} for bucket_width {}",
                width.as_str()
            ),
        ));
    }
    let now = lumen_store::clock::unix_secs();
    let end_time = end.unwrap_or(now + 1);
    let start_time = start.unwrap_or_else(|| {
        width.floor(end_time.saturating_sub(limit * width.secs()) + width.secs())
    });
    if start_time >= end_time {
        return Err(ServerError::param(
            "start_time",
            "start_time must be before end_time",
        ));
    }
    Ok(UsageQuery {
        start_time,
        end_time,
        width,
        group_by,
        key_id,
        limit: limit as usize,
        prices: Default::default(),
    })
}

/// `GET /admin/usage`.
pub async fn admin_usage(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Json<Value>, ServerError> {
    let mut q = report_query(&params, None)?;
    q.prices = state.tenancy().prices.clone();
    let page = state.tenancy().store()?.usage_report(&q).await?;
    Ok(Json(json!(page)))
}

/// `GET /v1/usage`: the caller's own usage (a static key or an open server sees the usage of
/// requests made without a store key).
pub async fn own_usage(
    State(state): State<AppState>,
    ctx: Option<Extension<Arc<RequestCtx>>>,
    Query(params): Params,
) -> Result<Json<Value>, ServerError> {
    let key_id = ctx.map_or(String::new(), |Extension(c)| {
        c.principal.key_id().to_string()
    });
    let mut q = report_query(&params, Some(key_id))?;
    q.prices = state.tenancy().prices.clone();
    let page = state.tenancy().store()?.usage_report(&q).await?;
    Ok(Json(json!(page)))
}

/// `GET /admin/usage/events?after=ID&limit=N&api_key_id=KEY`: events oldest first.
pub async fn events(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Json<Value>, ServerError> {
    let mut after = 0i64;
    let mut limit = 100usize;
    let mut key = None;
    for (k, v) in &params {
        match k.as_str() {
            "after" => after = number("after", v)? as i64,
            "limit" => {
                limit = number("limit", v)? as usize;
                if limit == 0 || limit > MAX_EVENTS_PAGE {
                    return Err(ServerError::param(
                        "limit",
                        format!("limit must be 1 to {MAX_EVENTS_PAGE}"),
                    ));
                }
            }
            "api_key_id" => key = Some(v.clone()),
            _ => {}
        }
    }
    let data = state
        .tenancy()
        .store()?
        .usage_events(after, limit, key.as_deref())
        .await?;
    let last_id = data.last().map(|e| e.id);
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "has_more": data.len() == limit,
        "last_id": last_id,
    })))
}
