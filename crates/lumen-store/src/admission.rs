//! Admission state shared through PostgreSQL: every server on one database checks and debits
//! the same rows, so a key's limits hold across replicas instead of multiplying by their
//! number.
//!
//! Design (the SQL is in `migrations/postgres/0004_shared_admission.sql`):
//!
//! - **One round trip per check.** [`Store::admit_shared`] is one `SELECT lumen_admit(…)`: a
//!   PL/pgSQL function that locks the key's and its tenant's state rows (always the key
//!   first, so two calls cannot deadlock), checks every limit, and only if all pass debits
//!   them all and records the grant, in the statement's own transaction. The arithmetic is
//!   the in-memory admission's (GCRA for requests per minute, a token bucket for tokens per
//!   minute) on the database's clock, so replicas need not agree on the time.
//! - **Slots are leases.** An admitted request holds one `admission_grants` row per subject
//!   with a parallel limit or a budget, carrying its budget reservation; the state row
//!   counts them (requests in flight, tokens reserved), so no check scans grants. The server
//!   renews its rows ([`Store::renew_grants`]) while the requests run and deletes them at
//!   the end ([`Store::release_shared`]); a server that dies stops renewing, and the next
//!   admission of that key or tenant after the lease ([`LEASE`]) reclaims its rows and their
//!   counts. Tokens per minute are not refunded for a dead server's requests: the bucket
//!   refills on its own within a minute. A key with only per-minute limits writes no grant
//!   rows, so its release is a refund of unused tokens, or nothing at all.
//! - **Budgets** start each period from the day rollups (as the in-memory admission does)
//!   and then count what released grants used, so a burst across replicas cannot overshoot.
//!
//! Only a PostgreSQL store has these functions; on SQLite they return
//! [`StoreError::Invalid`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::{Backend, Store};

/// How long a grant's slot outlives its server's last renewal, by default; servers renew
/// every third of it.
pub const LEASE: Duration = Duration::from_secs(30);

/// One party a request is checked against (a key, then its tenant), with its limits.
#[derive(Clone, Debug, Serialize)]
pub struct SharedSubject {
    /// `key_…` or `tnt_…`.
    pub id: String,
    /// `key` or `tenant`.
    pub kind: &'static str,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
    /// Requests in flight at once.
    pub max_parallel: Option<u64>,
    /// Tokens per budget period.
    pub budget: Option<u64>,
    /// The period's start, Unix seconds (with `budget`).
    pub budget_start: Option<u64>,
    /// The period's end, Unix seconds.
    pub budget_end: Option<u64>,
}

/// Which limit refused a request.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SharedRefusal {
    /// Index of the subject in the list given.
    pub subject: usize,
    /// `budget`, `parallel`, `rpm` or `tpm`.
    pub reason: String,
    /// The limit that was hit.
    pub limit: u64,
    /// How long until it would pass, microseconds (`rpm`, `tpm`).
    #[serde(default)]
    pub wait_us: u64,
    /// Tokens used this period (`budget`).
    #[serde(default)]
    pub used: u64,
    /// Tokens reserved by requests in flight (`budget`).
    #[serde(default)]
    pub reserved: u64,
}

/// A per-minute limit as the `x-ratelimit-*` headers show it.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct SharedView {
    /// The limit.
    pub limit: u64,
    /// What is left now.
    pub remaining: u64,
    /// Microseconds until it is whole again.
    pub reset_us: u64,
}

/// The answer of [`Store::admit_shared`].
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SharedDecision {
    /// Whether the request was admitted.
    pub ok: bool,
    /// Grant rows written (subjects with a parallel limit or a budget); with none, a release
    /// has only unused tokens to refund.
    #[serde(default)]
    pub held: u32,
    /// Why not.
    pub refusal: Option<SharedRefusal>,
    /// Requests per minute of the first subject limiting them.
    pub rpm: Option<SharedView>,
    /// Tokens per minute of the first subject limiting them.
    pub tpm: Option<SharedView>,
}

impl Store {
    fn require_postgres(&self) -> Result<()> {
        match self.backend {
            Backend::Postgres => Ok(()),
            Backend::Sqlite => Err(StoreError::invalid(
                "database",
                "shared admission needs a PostgreSQL store",
            )),
        }
    }

    /// Checks `subjects` (the key first, then its tenant) for a request reserving `cost`
    /// tokens and, if every limit passes, debits them all under grant `grant_id`.
    pub async fn admit_shared(
        &self,
        subjects: &[SharedSubject],
        grant_id: &str,
        cost: u64,
    ) -> Result<SharedDecision> {
        self.require_postgres()?;
        let json = serde_json::to_string(subjects)
            .map_err(|e| StoreError::invalid("subjects", e.to_string()))?;
        let (answer,): (String,) =
            sqlx::query_as("SELECT lumen_admit(CAST($1 AS jsonb), $2, $3, $4)")
                .bind(json)
                .bind(grant_id)
                .bind(cost.min(i64::MAX as u64) as i64)
                .bind(self.lease.as_micros() as i64)
                .fetch_one(&self.pool)
                .await?;
        serde_json::from_str(&answer).map_err(|e| StoreError::Corrupt {
            table: "admission_state",
            reason: format!("lumen_admit answered {answer}: {e}"),
        })
    }

    /// Ends grant `grant_id` of `cost` tokens: frees its slots, counts `used` against its
    /// budget period, and refunds `cost - used` to the token buckets of `refunds` (its
    /// subjects with a tokens-per-minute limit: id and limit). Returns how many grant rows it
    /// held (0 when they had expired and were reclaimed, or there were none).
    pub async fn release_shared(
        &self,
        grant_id: &str,
        used: u64,
        cost: u64,
        refunds: &[(String, u64)],
    ) -> Result<u64> {
        self.require_postgres()?;
        let refunds: Vec<serde_json::Value> = refunds
            .iter()
            .map(|(id, tpm)| serde_json::json!({"id": id, "tpm": tpm}))
            .collect();
        let (n,): (i64,) = sqlx::query_as("SELECT lumen_release($1, $2, $3, CAST($4 AS jsonb))")
            .bind(grant_id)
            .bind(used.min(i64::MAX as u64) as i64)
            .bind(cost.min(i64::MAX as u64) as i64)
            .bind(serde_json::Value::Array(refunds).to_string())
            .fetch_one(&self.pool)
            .await?;
        Ok(n.max(0) as u64)
    }

    /// Extends the leases of `grant_ids` (this server's requests in flight) by the lease.
    pub async fn renew_grants(&self, grant_ids: &[String]) -> Result<u64> {
        self.require_postgres()?;
        if grant_ids.is_empty() {
            return Ok(0);
        }
        let json = serde_json::to_string(grant_ids)
            .map_err(|e| StoreError::invalid("grant_ids", e.to_string()))?;
        let r = sqlx::query(
            "UPDATE admission_grants SET expires_us = \
             CAST(extract(epoch FROM clock_timestamp()) * 1000000 AS BIGINT) + $2 \
             WHERE grant_id IN (SELECT jsonb_array_elements_text(CAST($1 AS jsonb)))",
        )
        .bind(json)
        .bind(self.lease.as_micros() as i64)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }

    /// Live (unexpired) grants of key or tenant `subject`: its requests in flight on every
    /// server.
    pub async fn shared_in_flight(&self, subject: &str) -> Result<u64> {
        self.require_postgres()?;
        let (n,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM admission_grants WHERE subject = $1 \
             AND expires_us > CAST(extract(epoch FROM clock_timestamp()) * 1000000 AS BIGINT)",
        )
        .bind(subject)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }
}
