//! Embedded migrations, applied in order at open.
//!
//! A tiny runner instead of sqlx's `migrate!` macro: the SQL files are compiled in with
//! `include_str!`, applied inside one write transaction each, and recorded in
//! `lumen_migrations`, so two processes opening one database at once apply each exactly
//! once (SQLite: `BEGIN IMMEDIATE` takes the write lock; PostgreSQL: a transaction-scoped
//! advisory lock). It keeps sqlx's proc-macro stack out of the build.
//!
//! Each backend has its own list (`migrations/sqlite`, `migrations/postgres`): the same
//! tables in each dialect's types, with the same version numbers for the same change.
//! PostgreSQL has one more, the shared admission state (see [`crate::admission`]).

use sqlx::AnyPool;

use crate::error::Result;
use crate::Backend;

/// `(version, SQL)` in the order they apply; never edit one that has shipped, add another.
const SQLITE: &[(i64, &str)] = &[
    (1, include_str!("../migrations/sqlite/0001_tenancy.sql")),
    (
        2,
        include_str!("../migrations/sqlite/0002_tenant_limits.sql"),
    ),
    (
        3,
        include_str!("../migrations/sqlite/0003_compute_time.sql"),
    ),
    // Version 4 is PostgreSQL's shared admission, which SQLite does not have.
    (5, include_str!("../migrations/sqlite/0005_batches.sql")),
];

/// The PostgreSQL list (same versions for the same changes).
const POSTGRES: &[(i64, &str)] = &[
    (1, include_str!("../migrations/postgres/0001_tenancy.sql")),
    (
        2,
        include_str!("../migrations/postgres/0002_tenant_limits.sql"),
    ),
    (
        3,
        include_str!("../migrations/postgres/0003_compute_time.sql"),
    ),
    (
        4,
        include_str!("../migrations/postgres/0004_shared_admission.sql"),
    ),
    (5, include_str!("../migrations/postgres/0005_batches.sql")),
];

/// An arbitrary constant naming Lumen's migration lock among PostgreSQL advisory locks.
const PG_LOCK: i64 = 0x4c75_6d65_6e4d_6967; // "LumenMig"

/// Applies every migration `pool`'s database has not seen yet.
pub async fn run(pool: &AnyPool, backend: Backend) -> Result<()> {
    let list = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    for (version, sql) in list {
        let mut tx = crate::begin_write(pool, backend).await?;
        if backend == Backend::Postgres {
            // Serializes concurrent openers; released at commit or rollback.
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_LOCK)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS lumen_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let done: Option<(i64,)> =
            sqlx::query_as("SELECT version FROM lumen_migrations WHERE version = $1")
                .bind(version)
                .fetch_optional(&mut *tx)
                .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
        sqlx::query("INSERT INTO lumen_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(version)
            .bind(crate::clock::unix_secs() as i64)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version, "database migration applied");
    }
    Ok(())
}
