//! The usage ledger: one event per request, written in batches with the minute, hour and day
//! rollups updated in the same transaction; reports read rollups only.

use std::collections::BTreeMap;

use serde::{Serialize, Serializer};
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
    /// Engine time attributed to the request, microseconds (shown as `compute_ms`).
    #[serde(rename = "compute_ms", serialize_with = "us_as_ms")]
    pub compute_us: u64,
    /// The batch item this request answered, when it came from a batch job.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub batch: Option<BatchRef>,
}

/// Which batch item a usage event belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BatchRef {
    /// `batch_…`.
    pub batch_id: String,
    /// The input line's `custom_id`.
    pub custom_id: String,
}

/// Writes microseconds as (fractional) milliseconds.
fn us_as_ms<S: Serializer>(us: &u64, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(*us as f64 / 1000.0)
}

/// A model's price, USD per million tokens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Price {
    /// Per million input (prompt) tokens, cached ones included.
    pub input: f64,
    /// Per million output (generated) tokens.
    pub output: f64,
}

/// Highest price accepted, USD per million tokens (a typo guard, far above any real price).
pub const MAX_PRICE: f64 = 1_000_000.0;

impl Price {
    /// Parses `MODEL=IN:OUT` (USD per million input and output tokens, e.g.
    /// `smollm2=0.05:0.2`): a model name and two finite prices from 0 to [`MAX_PRICE`].
    pub fn parse_flag(s: &str) -> std::result::Result<(String, Price), String> {
        let Some((model, prices)) = s.split_once('=') else {
            return Err(format!(
                "'{s}' is not MODEL=IN:OUT (USD per million input and output tokens)"
            ));
        };
        let model = model.trim();
        if model.is_empty() || model.len() > crate::keys::MAX_NAME {
            return Err(format!(
                "'{s}': the model name must be 1 to {} characters",
                crate::keys::MAX_NAME
            ));
        }
        let Some((input, output)) = prices.split_once(':') else {
            return Err(format!("'{s}': the prices must be IN:OUT, like 0.05:0.2"));
        };
        let num = |what: &str, v: &str| -> std::result::Result<f64, String> {
            match v.trim().parse::<f64>() {
                Ok(x) if x.is_finite() && (0.0..=MAX_PRICE).contains(&x) => Ok(x),
                _ => Err(format!(
                    "'{s}': the {what} price must be a number from 0 to {MAX_PRICE} (USD per million tokens)"
                )),
            }
        };
        Ok((
            model.to_string(),
            Price {
                input: num("input", input)?,
                output: num("output", output)?,
            },
        ))
    }

    /// Parses every `--price` flag; a model priced twice is an error.
    pub fn parse_flags(flags: &[String]) -> std::result::Result<BTreeMap<String, Price>, String> {
        let mut out = BTreeMap::new();
        for f in flags {
            let (model, price) = Price::parse_flag(f)?;
            if out.insert(model.clone(), price).is_some() {
                return Err(format!("model '{model}' has two --price flags"));
            }
        }
        Ok(out)
    }

    /// What `input` and `output` tokens cost, USD.
    pub fn cost(&self, input: u64, output: u64) -> f64 {
        (input as f64 * self.input + output as f64 * self.output) / 1e6
    }
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

/// One result row of a bucket (OpenAI's completions usage result, plus Lumen's compute time
/// and cost).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
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
    /// Engine time attributed to these requests, milliseconds.
    pub compute_ms: f64,
    /// USD at the configured prices (`None` when no price is configured); models without a
    /// price add nothing.
    pub cost: Option<f64>,
    /// The key, when grouped by it.
    pub api_key_id: Option<String>,
    /// The model, when grouped by it.
    pub model: Option<String>,
    /// The tenant, when grouped by it (Lumen's; OpenAI calls it a project).
    pub tenant: Option<String>,
}

/// One time bucket of a report.
#[derive(Clone, Debug, PartialEq, Serialize)]
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
    /// Prices by model, for `cost` (empty: no cost column).
    pub prices: BTreeMap<String, Price>,
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

/// PostgreSQL advisory lock serializing ledger batches ("LumenLed").
const LEDGER_LOCK: i64 = 0x4c75_6d65_6e4c_6564;

/// Ledger rows a single events page returns at most.
pub const MAX_EVENTS_PAGE: usize = 1000;

impl Store {
    /// Writes `events` and their rollups in one write transaction (ids grow in commit order).
    pub async fn record(&self, events: &[UsageEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        insert_events(&mut tx, self.backend, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Tokens (prompt plus completion) key `key_id` used in `[start, end)` Unix seconds,
    /// from the day rollups (`start` and `end` are day-aligned budget periods).
    pub async fn tokens_used(&self, key_id: &str, start: u64, end: u64) -> Result<u64> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT CAST(SUM(input_tokens + output_tokens) AS BIGINT) FROM usage_rollups \
             WHERE key_id = $1 AND width = '1d' AND bucket_start >= $2 AND bucket_start < $3",
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
        // Costs are per model: without a model grouping, rows are fetched per model anyway
        // and folded below.
        let priced = !q.prices.is_empty();
        let mut cols = vec!["bucket_start"];
        if q.group_by.api_key_id {
            cols.push("key_id");
        }
        if q.group_by.tenant {
            cols.push("tenant_id");
        }
        if q.group_by.model || priced {
            cols.push("model");
        }
        // Only fixed column names reach the SQL text; values are bound.
        let group = cols.join(", ");
        let key_filter = if q.key_id.is_some() {
            " AND key_id = $4"
        } else {
            ""
        };
        let sql = format!(
            "SELECT {group}, CAST(SUM(input_tokens) AS BIGINT) AS i, CAST(SUM(cached_tokens) AS BIGINT) AS c, \
             CAST(SUM(output_tokens) AS BIGINT) AS o, CAST(SUM(requests) AS BIGINT) AS r, \
             CAST(SUM(compute_us) AS BIGINT) AS u FROM usage_rollups \
             WHERE width = $1 AND bucket_start >= $2 AND bucket_start < $3{key_filter} \
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
        // Bucket start, then the group's values, to its result (rows arrive sorted).
        type GroupKey = (Option<String>, Option<String>, Option<String>);
        let mut by_bucket: BTreeMap<u64, BTreeMap<GroupKey, UsageResult>> = BTreeMap::new();
        let text = |row: &sqlx::any::AnyRow, col: &str, on: bool| -> Result<Option<String>> {
            Ok(if on { Some(row.try_get(col)?) } else { None })
        };
        for row in &rows {
            let b: i64 = row.try_get("bucket_start")?;
            let num = |c: &str| -> Result<u64> {
                let v: Option<i64> = row.try_get(c)?;
                Ok(v.unwrap_or(0).max(0) as u64)
            };
            let (input, output, compute) = (num("i")?, num("o")?, num("u")?);
            let cost = if priced {
                let model: String = row.try_get("model")?;
                Some(q.prices.get(&model).map_or(0.0, |p| p.cost(input, output)))
            } else {
                None
            };
            let group = (
                text(row, "key_id", q.group_by.api_key_id)?,
                text(row, "model", q.group_by.model)?,
                text(row, "tenant_id", q.group_by.tenant)?,
            );
            let r = by_bucket
                .entry(b.max(0) as u64)
                .or_default()
                .entry(group.clone())
                .or_insert_with(|| UsageResult {
                    object: "organization.usage.completions.result",
                    api_key_id: group.0,
                    model: group.1,
                    tenant: group.2,
                    cost: priced.then_some(0.0),
                    ..UsageResult::default()
                });
            r.input_tokens += input;
            r.output_tokens += output;
            r.input_cached_tokens += num("c")?;
            r.num_model_requests += num("r")?;
            r.compute_ms += compute as f64 / 1000.0;
            if let (Some(total), Some(c)) = (r.cost.as_mut(), cost) {
                *total += c;
            }
        }
        let data = (0..n as u64)
            .map(|i| {
                let s = start + i * w;
                UsageBucket {
                    object: "bucket",
                    start_time: s,
                    end_time: s + w,
                    results: by_bucket
                        .remove(&s)
                        .map(|m| m.into_values().collect())
                        .unwrap_or_default(),
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
                    "SELECT * FROM usage_events WHERE id > $1 AND key_id = $2 ORDER BY id LIMIT $3",
                )
                .bind(after)
                .bind(k)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?,
                None => {
                    sqlx::query("SELECT * FROM usage_events WHERE id > $1 ORDER BY id LIMIT $2")
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
                        compute_us: n("compute_us")?,
                        batch: match (
                            r.try_get::<Option<String>, _>("batch_id")?,
                            r.try_get::<Option<String>, _>("custom_id")?,
                        ) {
                            (Some(batch_id), Some(custom_id)) => Some(BatchRef {
                                batch_id,
                                custom_id,
                            }),
                            _ => None,
                        },
                    },
                })
            })
            .collect()
    }

    /// Deletes raw events older than `before_ms` (rollups stay); returns how many.
    pub async fn prune_events(&self, before_ms: u64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let r = sqlx::query("DELETE FROM usage_events WHERE created_at_ms < $1")
            .bind(before_ms as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected())
    }
}

/// Inserts `events` and adds them to their rollups inside the write transaction `tx` (the
/// ledger's batches and a batch item's answer both use it, so an answer and its usage commit
/// together).
pub(crate) async fn insert_events(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    backend: crate::Backend,
    events: &[UsageEvent],
) -> Result<()> {
    if backend == crate::Backend::Postgres {
        // Ledger ids must grow in commit order, or a reader paging by id could pass an id
        // that another server's batch commits later. Holding this lock from the first
        // insert to the commit serializes writers (one short transaction per batch per
        // server), as SQLite's `BEGIN IMMEDIATE` does.
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(LEDGER_LOCK)
            .execute(&mut **tx)
            .await?;
    }
    // (width, bucket, key, tenant, model) to input, cached, output, requests, compute.
    type RollupKey<'a> = (Width, u64, &'a str, &'a str, &'a str);
    let mut rollups: BTreeMap<RollupKey<'_>, [u64; 5]> = BTreeMap::new();
    for e in events {
        sqlx::query(
                "INSERT INTO usage_events (request_id, created_at_ms, key_id, tenant_id, model, endpoint, \
                 prompt_tokens, cached_tokens, completion_tokens, status, latency_ms, ttft_ms, compute_us, \
                 batch_id, custom_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
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
            .bind(e.compute_us as i64)
            .bind(e.batch.as_ref().map(|b| b.batch_id.clone()))
            .bind(e.batch.as_ref().map(|b| b.custom_id.clone()))
            .execute(&mut **tx)
            .await?;
        let secs = e.created_at_ms / 1000;
        for w in Width::ALL {
            let sum = rollups
                .entry((w, w.floor(secs), &*e.key_id, &*e.tenant_id, &*e.model))
                .or_default();
            sum[0] += e.prompt_tokens;
            sum[1] += e.cached_tokens;
            sum[2] += e.completion_tokens;
            sum[3] += 1;
            sum[4] += e.compute_us;
        }
    }
    // One upsert per rollup row the batch touches, not per event.
    for ((w, bucket, key, tenant, model), sum) in rollups {
        sqlx::query(
            "INSERT INTO usage_rollups (width, bucket_start, key_id, tenant_id, model, \
                 input_tokens, cached_tokens, output_tokens, requests, compute_us) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
                 ON CONFLICT (width, bucket_start, key_id, tenant_id, model) DO UPDATE SET \
                 input_tokens = usage_rollups.input_tokens + excluded.input_tokens, \
                 cached_tokens = usage_rollups.cached_tokens + excluded.cached_tokens, \
                 output_tokens = usage_rollups.output_tokens + excluded.output_tokens, \
                 requests = usage_rollups.requests + excluded.requests, \
                 compute_us = usage_rollups.compute_us + excluded.compute_us",
        )
        .bind(w.as_str())
        .bind(bucket as i64)
        .bind(key)
        .bind(tenant)
        .bind(model)
        .bind(sum[0] as i64)
        .bind(sum[1] as i64)
        .bind(sum[2] as i64)
        .bind(sum[3] as i64)
        .bind(sum[4] as i64)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn price_flags_are_validated() {
        let (m, p) = Price::parse_flag("smollm2=0.05:0.2").unwrap();
        assert_eq!(
            (m.as_str(), p),
            (
                "smollm2",
                Price {
                    input: 0.05,
                    output: 0.2
                }
            )
        );
        assert!((p.cost(1_000_000, 500_000) - 0.15).abs() < 1e-12);
        for bad in [
            "smollm2", "=1:2", "m=1", "m=a:2", "m=-1:2", "m=1:inf", "m=NaN:1", "m=1:2e7",
        ] {
            assert!(Price::parse_flag(bad).is_err(), "{bad}");
        }
        let twice = ["m=1:2".to_string(), "m=3:4".to_string()];
        assert!(Price::parse_flags(&twice).unwrap_err().contains("two"));
    }
}
