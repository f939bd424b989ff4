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
use crate::Store;

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
}
