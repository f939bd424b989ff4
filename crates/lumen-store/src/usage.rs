//! The usage ledger: one event per request, written in batches with the minute, hour and day
//! rollups updated in the same transaction; reports read rollups only.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::Row;

use crate::clock::Width;
use crate::error::Result;
use crate::Store;

/// How a request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Answered in full.
    Ok,
    /// Failed after admission.
    Error,
    /// The client went away or the request timed out.
    Cancelled,
}

impl Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One request's usage.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageEvent {
    /// The response id (`chatcmpl-…`).
    pub request_id: String,
    /// When it ended, Unix milliseconds.
    pub created_at_ms: u64,
    /// The key's id (empty: a static `--api-key` or an open server).
    pub key_id: String,
    /// The tenant's id (empty: none).
    pub tenant_id: String,
    /// The model.
    pub model: String,
    /// `chat.completions`, `completions` or `embeddings`.
    pub endpoint: String,
    /// Prompt (input) tokens.
    pub prompt_tokens: u64,
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: u64,
    /// Generated tokens.
    pub completion_tokens: u64,
    /// How it ended.
    pub status: Outcome,
    /// Arrival to end, milliseconds.
    pub latency_ms: u64,
    /// Arrival to first token, milliseconds.
    pub ttft_ms: Option<u64>,
}

/// A stored event with its ledger id.
#[derive(Clone, Debug, Serialize)]
pub struct StoredEvent {
    /// Ledger id (increasing).
    pub id: i64,
    /// The event.
    #[serde(flatten)]
    pub event: UsageEvent,
}

/// Which dimensions a usage report splits results by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBy {
    /// By key.
    pub api_key_id: bool,
    /// By model.
    pub model: bool,
    /// By tenant.
    pub tenant: bool,
}

/// One result row of a bucket (OpenAI's completions usage result).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageResult {
    /// `organization.usage.completions.result`.
    pub object: &'static str,
    /// Prompt tokens.
    pub input_tokens: u64,
    /// Generated tokens.
    pub output_tokens: u64,
    /// Prompt tokens from the cache.
    pub input_cached_tokens: u64,
    /// Requests.
    pub num_model_requests: u64,
    /// The key, when grouped by it.
    pub api_key_id: Option<String>,
    /// The model, when grouped by it.
    pub model: Option<String>,
    /// The tenant, when grouped by it (Lumen's; OpenAI calls it a project).
    pub tenant: Option<String>,
}

/// One time bucket of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UsageBucket {
    /// `bucket`.
    pub object: &'static str,
    /// Unix seconds, inclusive.
    pub start_time: u64,
    /// Unix seconds, exclusive.
    pub end_time: u64,
    /// One row per group (none when nothing happened).
    pub results: Vec<UsageResult>,
}

/// A report query.
#[derive(Clone, Debug)]
pub struct UsageQuery {
    /// Inclusive start, Unix seconds (aligned down to the width).
    pub start_time: u64,
    /// Exclusive end, Unix seconds.
    pub end_time: u64,
    /// Bucket width.
    pub width: Width,
    /// Grouping.
    pub group_by: GroupBy,
    /// Only this key's usage.
    pub key_id: Option<String>,
    /// Most buckets returned.
    pub limit: usize,
}

/// A report page (OpenAI's `page` object).
#[derive(Clone, Debug, Serialize)]
pub struct UsagePage {
    /// `page`.
    pub object: &'static str,
    /// The buckets, oldest first.
    pub data: Vec<UsageBucket>,
    /// Whether buckets remain before `end_time`.
    pub has_more: bool,
    /// The `start_time` of the next page, when there is one.
    pub next_page: Option<String>,
}

/// Ledger rows a single events page returns at most.
pub const MAX_EVENTS_PAGE: usize = 1000;

impl Store {
    /// Writes `events` and their rollups in one `BEGIN IMMEDIATE` transaction.
    pub async fn record(&self, events: &[UsageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        for e in events {
            sqlx::query(
                "INSERT INTO usage_events (request_id, created_at_ms, key_id, tenant_id, model, endpoint, \
                 prompt_tokens, cached_tokens, completion_tokens, status, latency_ms, ttft_ms) \
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&e.request_id)
            .bind(e.created_at_ms as i64)
            .bind(&e.key_id)
            .bind(&e.tenant_id)
            .bind(&e.model)
            .bind(&e.endpoint)
            .bind(e.prompt_tokens as i64)
            .bind(e.cached_tokens as i64)
            .bind(e.completion_tokens as i64)
            .bind(e.status.as_str())
            .bind(e.latency_ms as i64)
            .bind(e.ttft_ms.map(|t| t as i64))
            .execute(&mut *tx)
            .await?;
            let secs = e.created_at_ms / 1000;
            for w in Width::ALL {
                sqlx::query(
                    "INSERT INTO usage_rollups (width, bucket_start, key_id, tenant_id, model, \
                     input_tokens, cached_tokens, output_tokens, requests) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1) \
                     ON CONFLICT (width, bucket_start, key_id, tenant_id, model) DO UPDATE SET \
                     input_tokens = input_tokens + excluded.input_tokens, \
                     cached_tokens = cached_tokens + excluded.cached_tokens, \
                     output_tokens = output_tokens + excluded.output_tokens, \
                     requests = requests + 1",
                )
                .bind(w.as_str())
                .bind(w.floor(secs) as i64)
                .bind(&e.key_id)
                .bind(&e.tenant_id)
                .bind(&e.model)
                .bind(e.prompt_tokens as i64)
                .bind(e.cached_tokens as i64)
                .bind(e.completion_tokens as i64)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Tokens (prompt plus completion) key `key_id` used in `[start, end)` Unix seconds,
    /// from the day rollups (`start` and `end` are day-aligned budget periods).
    pub async fn tokens_used(&self, key_id: &str, start: u64, end: u64) -> Result<u64> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT SUM(input_tokens + output_tokens) FROM usage_rollups \
             WHERE key_id = ? AND width = '1d' AND bucket_start >= ? AND bucket_start < ?",
        )
        .bind(key_id)
        .bind(start as i64)
        .bind(end as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0.unwrap_or(0).max(0) as u64)
    }

    /// A usage report in the shape of OpenAI's Usage API.
    pub async fn usage_report(&self, q: &UsageQuery) -> Result<UsagePage> {
        let w = q.width.secs();
        let start = q.width.floor(q.start_time);
        let end = q.end_time.max(start + 1);
        let buckets_total = end.saturating_sub(start).div_ceil(w);
        let n = (buckets_total as usize).min(q.limit.max(1));
        let page_end = (start + n as u64 * w).min(end);
        let mut cols = vec!["bucket_start"];
        if q.group_by.api_key_id {
            cols.push("key_id");
        }
        if q.group_by.tenant {
            cols.push("tenant_id");
        }
        if q.group_by.model {
            cols.push("model");
        }
        // Only fixed column names reach the SQL text; values are bound.
        let group = cols.join(", ");
        let key_filter = if q.key_id.is_some() {
            " AND key_id = ?"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {group}, SUM(input_tokens) AS i, SUM(cached_tokens) AS c, SUM(output_tokens) AS o, \
             SUM(requests) AS r FROM usage_rollups WHERE width = ? AND bucket_start >= ? AND bucket_start < ?{key_filter} \
             GROUP BY {group} ORDER BY {group}"
        );
        let mut query = sqlx::query(&sql)
            .bind(q.width.as_str())
            .bind(start as i64)
            .bind(page_end as i64);
        if let Some(k) = &q.key_id {
            query = query.bind(k);
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut by_bucket: BTreeMap<u64, Vec<UsageResult>> = BTreeMap::new();
        let text = |row: &sqlx::sqlite::SqliteRow, col: &str, on: bool| -> Result<Option<String>> {
            Ok(if on { Some(row.try_get(col)?) } else { None })
        };
        for row in &rows {
            let b: i64 = row.try_get("bucket_start")?;
            let num = |c: &str| -> Result<u64> {
                let v: Option<i64> = row.try_get(c)?;
                Ok(v.unwrap_or(0).max(0) as u64)
            };
            by_bucket
                .entry(b.max(0) as u64)
                .or_default()
                .push(UsageResult {
                    object: "organization.usage.completions.result",
                    input_tokens: num("i")?,
                    output_tokens: num("o")?,
                    input_cached_tokens: num("c")?,
                    num_model_requests: num("r")?,
                    api_key_id: text(row, "key_id", q.group_by.api_key_id)?,
                    model: text(row, "model", q.group_by.model)?,
                    tenant: text(row, "tenant_id", q.group_by.tenant)?,
                });
        }
        let data = (0..n as u64)
            .map(|i| {
                let s = start + i * w;
                UsageBucket {
                    object: "bucket",
                    start_time: s,
                    end_time: s + w,
                    results: by_bucket.remove(&s).unwrap_or_default(),
                }
            })
            .collect();
        let has_more = page_end < end;
        Ok(UsagePage {
            object: "page",
            data,
            has_more,
            next_page: has_more.then(|| page_end.to_string()),
        })
    }

    /// Up to `limit` events with ids above `after`, oldest first (optionally one key's).
    pub async fn usage_events(
        &self,
        after: i64,
        limit: usize,
        key_id: Option<&str>,
    ) -> Result<Vec<StoredEvent>> {
        let limit = limit.clamp(1, MAX_EVENTS_PAGE) as i64;
        let rows =
            match key_id {
                Some(k) => sqlx::query(
                    "SELECT * FROM usage_events WHERE id > ? AND key_id = ? ORDER BY id LIMIT ?",
                )
                .bind(after)
                .bind(k)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM usage_events WHERE id > ? ORDER BY id LIMIT ?")
                        .bind(after)
                        .bind(limit)
                        .fetch_all(&self.pool)
                        .await?
                }
            };
        rows.iter()
            .map(|r| {
                let n = |c: &str| -> Result<u64> {
                    let v: i64 = r.try_get(c)?;
                    Ok(v.max(0) as u64)
                };
                let status: String = r.try_get("status")?;
                let ttft: Option<i64> = r.try_get("ttft_ms")?;
                Ok(StoredEvent {
                    id: r.try_get("id")?,
                    event: UsageEvent {
                        request_id: r.try_get("request_id")?,
                        created_at_ms: n("created_at_ms")?,
                        key_id: r.try_get("key_id")?,
                        tenant_id: r.try_get("tenant_id")?,
                        model: r.try_get("model")?,
                        endpoint: r.try_get("endpoint")?,
                        prompt_tokens: n("prompt_tokens")?,
                        cached_tokens: n("cached_tokens")?,
                        completion_tokens: n("completion_tokens")?,
                        status: match status.as_str() {
                            "ok" => Outcome::Ok,
                            "cancelled" => Outcome::Cancelled,
                            _ => Outcome::Error,
                        },
                        latency_ms: n("latency_ms")?,
                        ttft_ms: ttft.map(|t| t.max(0) as u64),
                    },
                })
            })
            .collect()
    }

    /// Deletes raw events older than `before_ms` (rollups stay); returns how many.
    pub async fn prune_events(&self, before_ms: u64) -> Result<u64> {
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let r = sqlx::query("DELETE FROM usage_events WHERE created_at_ms < ?")
            .bind(before_ms as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }
}
