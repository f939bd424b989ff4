//! Tenants: the organisations keys belong to.

use serde::Serialize;
use sqlx::Row;

use crate::clock::unix_secs;
use crate::error::{Result, StoreError};
use crate::keys::check_name;
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
}

fn tenant_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Tenant> {
    let created: i64 = row.try_get("created_at")?;
    Ok(Tenant {
        id: row.try_get("id")?,
        object: "tenant",
        name: row.try_get("name")?,
        created_at: created.max(0) as u64,
    })
}

/// The id of the tenant whose id or name is `id_or_name`.
pub(crate) async fn resolve(conn: &mut sqlx::SqliteConnection, id_or_name: &str) -> Result<String> {
    let row: Option<(String,)> =
        sqlx::query_as("SELECT id FROM tenants WHERE id = ? OR name = ? LIMIT 1")
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
    /// Creates tenant `name` (names are unique).
    pub async fn create_tenant(&self, name: &str) -> Result<Tenant> {
        check_name("name", name)?;
        let name = name.trim();
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let taken: Option<(String,)> = sqlx::query_as("SELECT id FROM tenants WHERE name = ?")
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
        };
        sqlx::query("INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(t.created_at as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(t)
    }

    /// Every tenant, oldest first.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>> {
        let rows = sqlx::query("SELECT * FROM tenants ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(tenant_from_row).collect()
    }
}
