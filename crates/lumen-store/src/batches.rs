//! Batch jobs (OpenAI's Batches API): one `batches` row per job and one `batch_items` row per
//! input line, so a job survives any crash of the server running it.
//!
//! - **Claims are leases.** A worker takes pending items (and running ones whose lease ran
//!   out: their worker died) by setting them `running` under its owner id until a deadline,
//!   in one statement: on PostgreSQL the candidates are locked `FOR UPDATE SKIP LOCKED`, so
//!   several servers on one database take disjoint items; on SQLite the write transaction
//!   (`BEGIN IMMEDIATE`) serializes claims. Workers renew their leases while they work.
//! - **Answered exactly once.** [`Store::answer_item`] turns a row `done` only if it is still
//!   `running` under the caller's lease, and in the same transaction adds to the batch's
//!   counts and records the item's usage event; a worker whose lease was taken over loses
//!   the race and writes nothing.
//! - **Times come from the caller** (`now`), so a server's test clock moves expiry.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::error::{Result, StoreError};
use crate::usage::{insert_events, UsageEvent};
use crate::{Backend, Store};

/// Most lines a batch may have (OpenAI's limit).
pub const MAX_LINES: usize = 50_000;
/// Most batches one list page returns.
pub const MAX_BATCHES_PAGE: usize = 100;

/// A batch's counts (OpenAI's `request_counts`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestCounts {
    /// Input lines.
    pub total: u64,
    /// Answered with a 2xx.
    pub completed: u64,
    /// Answered with an error, or expired.
    pub failed: u64,
}

/// One batch, as the store keeps it (the server shapes OpenAI's object from it).
#[derive(Clone, Debug, PartialEq)]
pub struct BatchRow {
    /// `batch_…`.
    pub id: String,
    /// Who may see it (as for files).
    pub owner: String,
    /// The store key that created it (empty: static key or open server).
    pub key_id: String,
    /// `/v1/chat/completions`, `/v1/completions` or `/v1/embeddings`.
    pub endpoint: String,
    /// The uploaded input.
    pub input_file_id: String,
    /// Results that succeeded, once finalized.
    pub output_file_id: Option<String>,
    /// Results that failed, once finalized.
    pub error_file_id: Option<String>,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`, `expired`,
    /// `cancelling` or `cancelled`.
    pub status: String,
    /// `24h`.
    pub completion_window: String,
    /// OpenAI's metadata object (JSON text), if given.
    pub metadata: Option<String>,
    /// Validation errors (JSON array text), if it failed validation.
    pub errors: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// When the completion window ends.
    pub expires_at: u64,
    /// Lifecycle times, Unix seconds.
    pub in_progress_at: Option<u64>,
    /// See `in_progress_at`.
    pub finalizing_at: Option<u64>,
    /// See `in_progress_at`.
    pub completed_at: Option<u64>,
    /// See `in_progress_at`.
    pub failed_at: Option<u64>,
    /// See `in_progress_at`.
    pub expired_at: Option<u64>,
    /// See `in_progress_at`.
    pub cancelling_at: Option<u64>,
    /// See `in_progress_at`.
    pub cancelled_at: Option<u64>,
    /// Live counts.
    pub counts: RequestCounts,
}

/// A new batch (status `validating`).
#[derive(Clone, Debug)]
pub struct NewBatch {
    /// `batch_…`.
    pub id: String,
    /// Who may see it.
    pub owner: String,
    /// The creating store key (empty if none).
    pub key_id: String,
    /// The endpoint every line calls.
    pub endpoint: String,
    /// The uploaded input.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// Metadata JSON text.
    pub metadata: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    /// When the window ends.
    pub expires_at: u64,
}

/// One validated input line.
#[derive(Clone, Debug)]
pub struct NewItem {
    /// 1-based line number in the input file.
    pub line: u64,
    /// The line's `custom_id`.
    pub custom_id: String,
    /// The request body (JSON text).
    pub body: String,
}

/// An item a worker has claimed.
#[derive(Clone, Debug)]
pub struct ClaimedItem {
    /// Its batch.
    pub batch_id: String,
    /// Its line.
    pub line: u64,
    /// Its `custom_id`.
    pub custom_id: String,
    /// The request body (JSON text).
    pub body: String,
}

/// How an item ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ItemOutcome {
    /// A 2xx answer: the line goes to the output file.
    Ok,
    /// An error answer: the line goes to the error file.
    Error,
    /// The window ended first: a `batch_expired` line in the error file.
    Expired,
}

impl ItemOutcome {
    fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Ok => "ok",
            ItemOutcome::Error => "error",
            ItemOutcome::Expired => "expired",
        }
    }
}

/// A finished item as finalization reads it.
#[derive(Clone, Debug)]
pub struct ItemResult {
    /// Its line.
    pub line: u64,
    /// Its `custom_id`.
    pub custom_id: String,
    /// How it ended.
    pub outcome: ItemOutcome,
    /// The result line (JSON text; `None` for expired items, whose line is made from the id).
    pub result: Option<String>,
}

const BATCH_COLUMNS: &str = "id, owner, key_id, endpoint, input_file_id, output_file_id, \
    error_file_id, status, completion_window, metadata, errors, created_at, expires_at, \
    in_progress_at, finalizing_at, completed_at, failed_at, expired_at, cancelling_at, \
    cancelled_at, total, completed, failed";

fn batch_from_row(r: &AnyRow) -> Result<BatchRow> {
    let n = |c: &str| -> Result<u64> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
    let t = |c: &str| -> Result<Option<u64>> {
        Ok(r.try_get::<Option<i64>, _>(c)?.map(|v| v.max(0) as u64))
    };
    Ok(BatchRow {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        key_id: r.try_get("key_id")?,
        endpoint: r.try_get("endpoint")?,
        input_file_id: r.try_get("input_file_id")?,
        output_file_id: r.try_get("output_file_id")?,
        error_file_id: r.try_get("error_file_id")?,
        status: r.try_get("status")?,
        completion_window: r.try_get("completion_window")?,
        metadata: r.try_get("metadata")?,
        errors: r.try_get("errors")?,
        created_at: n("created_at")?,
        expires_at: n("expires_at")?,
        in_progress_at: t("in_progress_at")?,
        finalizing_at: t("finalizing_at")?,
        completed_at: t("completed_at")?,
        failed_at: t("failed_at")?,
        expired_at: t("expired_at")?,
        cancelling_at: t("cancelling_at")?,
        cancelled_at: t("cancelled_at")?,
        counts: RequestCounts {
            total: n("total")?,
            completed: n("completed")?,
            failed: n("failed")?,
        },
    })
}

fn not_found(id: &str) -> StoreError {
    StoreError::NotFound {
        kind: "batch",
        id: id.to_string(),
    }
}

impl Store {
    /// Records a new batch in `validating`.
    pub async fn create_batch(&self, b: &NewBatch) -> Result<BatchRow> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO batches (id, owner, key_id, endpoint, input_file_id, status, \
             completion_window, metadata, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, 'validating', $6, $7, $8, $9)",
        )
        .bind(&b.id)
        .bind(&b.owner)
        .bind(&b.key_id)
        .bind(&b.endpoint)
        .bind(&b.input_file_id)
        .bind(&b.completion_window)
        .bind(b.metadata.clone())
        .bind(b.created_at as i64)
        .bind(b.expires_at as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.batch_by_id(&b.id).await
    }

    /// Batch `id` whoever owns it (the executor's view).
    pub async fn batch_by_id(&self, id: &str) -> Result<BatchRow> {
        let row = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(batch_from_row)
            .transpose()?
            .ok_or_else(|| not_found(id))
    }

    /// Batch `id` of `owner`.
    pub async fn get_batch(&self, owner: &str, id: &str) -> Result<BatchRow> {
        let b = self.batch_by_id(id).await?;
        if b.owner != owner {
            return Err(not_found(id));
        }
        Ok(b)
    }

    /// `owner`'s batches, newest first, after batch id `after`, at most `limit`.
    pub async fn list_batches(
        &self,
        owner: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<BatchRow>> {
        let (at, after_id) = match after {
            Some(a) => {
                let b = self.get_batch(owner, a).await?;
                (b.created_at as i64, b.id)
            }
            None => (i64::MAX, String::new()),
        };
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE owner = $1 \
             AND (created_at < $2 OR (created_at = $2 AND id < $3)) \
             ORDER BY created_at DESC, id DESC LIMIT $4"
        ))
        .bind(owner)
        .bind(at)
        .bind(&after_id)
        .bind(limit.clamp(1, MAX_BATCHES_PAGE + 1) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(batch_from_row).collect()
    }

    /// Batches some server must act on: `validating`, `in_progress` (to expire or
    /// finalize), `finalizing` and `cancelling`.
    pub async fn active_batches(&self) -> Result<Vec<BatchRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {BATCH_COLUMNS} FROM batches WHERE status IN \
             ('validating', 'in_progress', 'finalizing', 'cancelling') ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(batch_from_row).collect()
    }

    /// Ends validation: stores `items` and moves the batch to `in_progress` (only from
    /// `validating`: a second validator after a crash finds the work done).
    pub async fn start_batch(&self, id: &str, items: &[NewItem], now: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let status: Option<(String,)> = sqlx::query_as("SELECT status FROM batches WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        if status.as_ref().map(|s| s.0.as_str()) != Some("validating") {
            return Ok(false);
        }
        for it in items {
            sqlx::query(
                "INSERT INTO batch_items (batch_id, line, custom_id, body, state) \
                 VALUES ($1, $2, $3, $4, 'pending') ON CONFLICT (batch_id, line) DO NOTHING",
            )
            .bind(id)
            .bind(it.line as i64)
            .bind(&it.custom_id)
            .bind(&it.body)
            .execute(&mut *tx)
            .await?;
        }
        sqlx::query(
            "UPDATE batches SET status = 'in_progress', in_progress_at = $2, total = $3 \
             WHERE id = $1",
        )
        .bind(id)
        .bind(now as i64)
        .bind(items.len() as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends validation with a refusal: `errors` (a JSON array) and status `failed`.
    pub async fn fail_batch(&self, id: &str, errors: &str, now: u64) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE batches SET status = 'failed', errors = $2, failed_at = $3 \
             WHERE id = $1 AND status = 'validating'",
        )
        .bind(id)
        .bind(errors)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Asks batch `id` of `owner` to stop: items not started are cancelled, running ones
    /// finish; the executor moves it from `cancelling` to `cancelled`. A batch already
    /// finished is returned as it is.
    pub async fn cancel_batch(&self, owner: &str, id: &str, now: u64) -> Result<BatchRow> {
        self.get_batch(owner, id).await?;
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE batches SET status = 'cancelling', cancelling_at = $2 \
             WHERE id = $1 AND status IN ('validating', 'in_progress')",
        )
        .bind(id)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed > 0 {
            sqlx::query(
                "UPDATE batch_items SET state = 'cancelled' WHERE batch_id = $1 AND state = 'pending'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        self.batch_by_id(id).await
    }

    /// Claims up to `limit` items of `in_progress` batches for `owner` until `lease_until_ms`:
    /// pending ones, and running ones whose lease ended before `now_ms`.
    pub async fn claim_items(
        &self,
        owner: &str,
        limit: usize,
        now_ms: u64,
        lease_until_ms: u64,
    ) -> Result<Vec<ClaimedItem>> {
        let lock = match self.backend {
            Backend::Postgres => "FOR UPDATE OF i SKIP LOCKED",
            Backend::Sqlite => "",
        };
        let sql = format!(
            "UPDATE batch_items SET state = 'running', lease_owner = $1, lease_expires_ms = $2 \
             WHERE (batch_id, line) IN (SELECT i.batch_id, i.line FROM batch_items i \
             JOIN batches b ON b.id = i.batch_id WHERE b.status = 'in_progress' \
             AND (i.state = 'pending' OR (i.state = 'running' AND i.lease_expires_ms < $3)) \
             ORDER BY b.created_at, i.batch_id, i.line LIMIT $4 {lock}) \
             RETURNING batch_id, line, custom_id, body"
        );
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query(&sql)
            .bind(owner)
            .bind(lease_until_ms as i64)
            .bind(now_ms as i64)
            .bind(limit as i64)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(ClaimedItem {
                    batch_id: r.try_get("batch_id")?,
                    line: r.try_get::<i64, _>("line")?.max(0) as u64,
                    custom_id: r.try_get("custom_id")?,
                    body: r.try_get("body")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (&a.batch_id, a.line).cmp(&(&b.batch_id, b.line)));
        Ok(out)
    }

    /// Extends every lease `owner` holds to `lease_until_ms`.
    pub async fn renew_leases(&self, owner: &str, lease_until_ms: u64) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE batch_items SET lease_expires_ms = $2 WHERE lease_owner = $1 AND state = 'running'",
        )
        .bind(owner)
        .bind(lease_until_ms as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Gives item (`batch_id`, `line`) back unanswered (a transient refusal: it runs again).
    pub async fn release_item(&self, batch_id: &str, line: u64, owner: &str) -> Result<()> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE batch_items SET state = 'pending', lease_owner = NULL, lease_expires_ms = NULL \
             WHERE batch_id = $1 AND line = $2 AND state = 'running' AND lease_owner = $3",
        )
        .bind(batch_id)
        .bind(line as i64)
        .bind(owner)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Puts every running item back to pending: at the start of a server on SQLite, where
    /// one file serves one server, so any running item belonged to a process that died.
    pub async fn reclaim_all_leases(&self) -> Result<u64> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE batch_items SET state = 'pending', lease_owner = NULL, lease_expires_ms = NULL \
             WHERE state = 'running'",
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n)
    }

    /// Records the answer of item (`batch_id`, `line`) held by `owner`: the result line, the
    /// batch's counts and the usage `event`, in one transaction. `false` (and nothing written)
    /// when the item is no longer running under this lease.
    pub async fn answer_item(
        &self,
        batch_id: &str,
        line: u64,
        owner: &str,
        outcome: ItemOutcome,
        result: &str,
        event: Option<&UsageEvent>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE batch_items SET state = 'done', outcome = $4, result = $5, lease_owner = NULL, \
             lease_expires_ms = NULL \
             WHERE batch_id = $1 AND line = $2 AND state = 'running' AND lease_owner = $3",
        )
        .bind(batch_id)
        .bind(line as i64)
        .bind(owner)
        .bind(outcome.as_str())
        .bind(result)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let (ok, failed) = if outcome == ItemOutcome::Ok {
            (1, 0)
        } else {
            (0, 1)
        };
        sqlx::query(
            "UPDATE batches SET completed = completed + $2, failed = failed + $3 WHERE id = $1",
        )
        .bind(batch_id)
        .bind(ok as i64)
        .bind(failed as i64)
        .execute(&mut *tx)
        .await?;
        if let Some(e) = event {
            insert_events(&mut tx, self.backend, std::slice::from_ref(e)).await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Ends the window of batch `id`: every item not answered yet becomes `expired` (counted
    /// as failed) and the batch goes to `finalizing` with `expired_at` set, in one
    /// transaction. A worker still running one of them loses its answer (the row is no longer
    /// `running`).
    pub async fn expire_batch(&self, id: &str, now: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(
            "UPDATE batches SET status = 'finalizing', expired_at = $2, finalizing_at = $2 \
             WHERE id = $1 AND status = 'in_progress'",
        )
        .bind(id)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if changed == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        let n = sqlx::query(
            "UPDATE batch_items SET state = 'done', outcome = 'expired', lease_owner = NULL, \
             lease_expires_ms = NULL WHERE batch_id = $1 AND state IN ('pending', 'running')",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        sqlx::query("UPDATE batches SET failed = failed + $2 WHERE id = $1")
            .bind(id)
            .bind(n as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Moves batch `id` from `in_progress` to `finalizing` once every item is done.
    pub async fn begin_finalizing(&self, id: &str, now: u64) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE batches SET status = 'finalizing', finalizing_at = $2 \
             WHERE id = $1 AND status = 'in_progress' AND NOT EXISTS \
             (SELECT 1 FROM batch_items WHERE batch_id = $1 AND state <> 'done')",
        )
        .bind(id)
        .bind(now as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(n > 0)
    }

    /// Items of batch `id` still running under a lease that has not ended at `now_ms` (a
    /// cancelling batch waits for them).
    pub async fn running_items(&self, id: &str, now_ms: u64) -> Result<u64> {
        let row: (i64,) = sqlx::query_as(
            "SELECT COUNT(*) FROM batch_items WHERE batch_id = $1 AND state = 'running' \
             AND lease_expires_ms >= $2",
        )
        .bind(id)
        .bind(now_ms as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0.max(0) as u64)
    }

    /// Answered items of batch `id` after line `after`, in line order, at most `limit`.
    pub async fn item_results(
        &self,
        id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ItemResult>> {
        let rows = sqlx::query(
            "SELECT line, custom_id, outcome, result FROM batch_items \
             WHERE batch_id = $1 AND state = 'done' AND line > $2 ORDER BY line LIMIT $3",
        )
        .bind(id)
        .bind(after as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let outcome: String = r.try_get("outcome")?;
                Ok(ItemResult {
                    line: r.try_get::<i64, _>("line")?.max(0) as u64,
                    custom_id: r.try_get("custom_id")?,
                    outcome: match outcome.as_str() {
                        "ok" => ItemOutcome::Ok,
                        "expired" => ItemOutcome::Expired,
                        _ => ItemOutcome::Error,
                    },
                    result: r.try_get("result")?,
                })
            })
            .collect()
    }

    /// Ends batch `id` (from `finalizing` or `cancelling`) with its result files: status
    /// `expired` when its window ended, `cancelled` when it was cancelled, else `completed`.
    /// Running items of a cancelled batch whose lease ended are marked cancelled.
    pub async fn finish_batch(
        &self,
        id: &str,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
        now: u64,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let n = sqlx::query(
            "UPDATE batches SET output_file_id = $2, error_file_id = $3, \
             status = CASE WHEN status = 'cancelling' THEN 'cancelled' \
                 WHEN expired_at IS NOT NULL THEN 'expired' ELSE 'completed' END, \
             cancelled_at = CASE WHEN status = 'cancelling' THEN $4 ELSE cancelled_at END, \
             completed_at = CASE WHEN status = 'finalizing' AND expired_at IS NULL THEN $4 \
                 ELSE completed_at END \
             WHERE id = $1 AND status IN ('finalizing', 'cancelling')",
        )
        .bind(id)
        .bind(output_file_id.map(str::to_string))
        .bind(error_file_id.map(str::to_string))
        .bind(now as i64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n > 0 {
            sqlx::query(
                "UPDATE batch_items SET state = 'cancelled' WHERE batch_id = $1 AND state = 'running'",
            )
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(n > 0)
    }
}
