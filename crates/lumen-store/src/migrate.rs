//! Embedded migrations, applied in order at open.
//!
//! A tiny runner instead of sqlx's `migrate!` macro: the SQL files are compiled in with
//! `include_str!`, applied inside one `BEGIN IMMEDIATE` transaction each, and recorded in
//! `lumen_migrations`, so two processes opening one file at once apply each exactly once.
//! It keeps sqlx's proc-macro stack out of the build.

use sqlx::SqlitePool;

use crate::error::Result;

/// `(version, SQL)` in the order they apply; never edit one that has shipped, add another.
const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_tenancy.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_tenant_limits.sql"),
    ),
];

/// Applies every migration `pool`'s database has not seen yet.
pub async fn run(pool: &SqlitePool) -> Result<()> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS lumen_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )
    .execute(pool)
    .await?;
    for (version, sql) in SQLITE {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM lumen_migrations WHERE version = ?")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO lumen_migrations (version, applied_at) VALUES (?, ?)")
            .bind(version)
            .bind(crate::clock::unix_secs() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "database migration applied");
    }
    Ok(())
}
