//! Batch items under leases: claims (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the write
//! lock on SQLite), renewals, answers written exactly once with their counts and usage event,
//! expiry, and what finalization reads. See [`crate::batches`] for the design.

use sqlx::Row;

use crate::error::Result;
use crate::usage::{insert_events, UsageEvent};
use crate::{Backend, Store};

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

impl Store {
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
