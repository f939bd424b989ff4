//! Tenants: the organisations keys belong to.

use serde::Serialize;
use sqlx::Row;

use crate::clock::{unix_secs, Period};
use crate::error::{Result, StoreError};
use crate::keys::{check_limits, check_name, i64_of, opt_u64, KeyLimits};
use crate::secret::random_hex;
use crate::Store;

/// A tenant.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// `tnt_…`.
    pub id: String,
    /// Always `tenant`.
    pub object: &'static str,
    /// Its unique name.
    pub name: String,
    /// Unix time of creation.
    pub created_at: u64,
    /// Limits shared by all its keys (`max_priority` is unused).
    #[serde(flatten)]
    pub limits: KeyLimits,
}

fn tenant_from_row(row: &sqlx::any::AnyRow) -> Result<Tenant> {
    let created: i64 = row.try_get("created_at")?;
    let period: Option<String> = row.try_get("budget_period")?;
    Ok(Tenant {
        id: row.try_get("id")?,
        object: "tenant",
        name: row.try_get("name")?,
        created_at: created.max(0) as u64,
        limits: KeyLimits {
            rpm: opt_u64(row, "rpm")?,
            tpm: opt_u64(row, "tpm")?,
            max_parallel: opt_u64(row, "max_parallel")?,
            budget_tokens: opt_u64(row, "budget_tokens")?,
            budget_period: period.as_deref().and_then(Period::parse),
            max_priority: None,
        },
    })
}

fn normalize(mut l: KeyLimits) -> Result<KeyLimits> {
    check_limits(&l)?;
    l.max_priority = None;
    if l.budget_tokens.is_some() && l.budget_period.is_none() {
        l.budget_period = Some(Period::Month);
    }
    Ok(l)
}

/// The id of the tenant whose id or name is `id_or_name`.
pub(crate) async fn resolve(conn: &mut sqlx::AnyConnection, id_or_name: &str) -> Result<String> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM tenants WHERE id = $1 OR name = $2 LIMIT 1")
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&mut *conn)
            .await?;
    row.map(|r| r.0).ok_or_else(|| StoreError::NotFound {
        kind: "tenant",
        id: id_or_name.to_string(),
    })
}

impl Store {
    /// Creates tenant `name` (names are unique) with `limits` shared by its keys.
    pub async fn create_tenant(&self, name: &str, limits: KeyLimits) -> Result<Tenant> {
        check_name("name", name)?;
        let limits = normalize(limits)?;
        let name = name.trim();
        let mut tx = self.begin_write().await?;
        let taken: Option<(String,)> = sqlx::query_as("SELECT id FROM tenants WHERE name = $1")
            .bind(name)
            .fetch_optional(&mut *tx)
            .await?;
        if taken.is_some() {
            return Err(StoreError::Conflict(format!(
                "a tenant named '{name}' exists"
            )));
        }
        let t = Tenant {
            id: format!("tnt_{}", random_hex(12)),
            object: "tenant",
            name: name.to_string(),
            created_at: unix_secs(),
            limits,
        };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES ($1, $2, $3)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at as i64)
            .execute(&mut *tx)
            .await
            .map_err(|e| match e.as_database_error() {
                // PostgreSQL's transaction does not lock the name: a concurrent create can
                // pass the check above and lose here, on the UNIQUE constraint.
                Some(d) if d.is_unique_violation() => {
                    StoreError::Conflict(format!("a tenant named '{name}' exists"))
                }
                _ => StoreError::Database(e),
            })?;
        write_limits(&mut tx, &t.id, &t.limits).await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Tenant `id_or_name`.
    pub async fn get_tenant(&self, id_or_name: &str) -> Result<Tenant> {
        let row = sqlx::query("SELECT * FROM tenants WHERE id = $1 OR name = $2 LIMIT 1")
            .bind(id_or_name)
            .bind(id_or_name)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => tenant_from_row(&r),
            None => Err(StoreError::NotFound {
                kind: "tenant",
                id: id_or_name.to_string(),
            }),
        }
    }

    /// Replaces tenant `id_or_name`'s limits.
    pub async fn set_tenant_limits(&self, id_or_name: &str, limits: KeyLimits) -> Result<Tenant> {
        let limits = normalize(limits)?;
        let mut tx = self.begin_write().await?;
        let id = resolve(&mut tx, id_or_name).await?;
        write_limits(&mut tx, &id, &limits).await?;
        tx.commit().await?;
        self.get_tenant(&id).await
    }

    /// Tokens (prompt plus completion) tenant `tenant_id`'s keys used in `[start, end)`.
    pub async fn tenant_tokens_used(&self, tenant_id: &str, start: u64, end: u64) -> Result<u64> {
        let row: (Option<i64>,) = sqlx::query_as(
            "SELECT CAST(SUM(input_tokens + output_tokens) AS BIGINT) FROM usage_rollups \
             WHERE tenant_id = $1 AND width = '1d' AND bucket_start >= $2 AND bucket_start < $3",
        )
        .bind(tenant_id)
        .bind(start as i64)
        .bind(end as i64)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.0.unwrap_or(0).max(0) as u64)
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }
}

async fn write_limits(conn: &mut sqlx::AnyConnection, id: &str, l: &KeyLimits) -> Result<()> {
    sqlx::query(
        "UPDATE tenants SET rpm = $1, tpm = $2, max_parallel = $3, budget_tokens = $4, budget_period = $5 WHERE id = $6",
    )
    .bind(i64_of(l.rpm))
    .bind(i64_of(l.tpm))
    .bind(i64_of(l.max_parallel))
    .bind(i64_of(l.budget_tokens))
    .bind(l.budget_period.map(Period::as_str))
    .bind(id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
