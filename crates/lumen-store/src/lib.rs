//! Lumen's durable state: tenants, API keys, and the usage ledger with its rollups.
//!
//! Design choices:
//!
//! - **SQLite by default**, one file at `$LUMEN_HOME/lumen.db`, opened through sqlx's async
//!   pool so the runtime never blocks on it. WAL journal (readers never wait for the writer),
//!   `synchronous = NORMAL` (a power cut may lose the last commits, never corrupt), a busy
//!   timeout so several processes can share the file, and every write transaction starts
//!   with `BEGIN IMMEDIATE`, which takes the write lock up front: a deferred transaction that
//!   reads first and upgrades later can fail with `SQLITE_BUSY` mid-way under contention.
//! - **Migrations are embedded** (`migrations/sqlite/*.sql`, compiled in) and applied at open;
//!   see [`migrate`].
//! - **Secrets are never stored**: a key is `sk-lumen-` plus 192 bits from the OS RNG; the
//!   table holds its SHA-256 (hex) and a display prefix. Lookups hash the presented secret.
//!   A fast hash is right here: the secret has 192 random bits, so there is nothing to
//!   brute-force that a slow password hash would protect.
//! - **Rollups in the same transaction**: each usage event adds to a minute, an hour and a day
//!   row (`INSERT … ON CONFLICT DO UPDATE`) in the transaction that inserts the event, so
//!   reports and budget checks read small rollup tables and raw events can be pruned.
//! - PostgreSQL (`--database-url postgres://…`) is not implemented yet; such a URL is refused
//!   with [`StoreError::UnsupportedUrl`].

pub mod clock;
mod error;
pub mod keys;
pub mod migrate;
pub mod secret;
pub mod tenants;
pub mod usage;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use clock::{Period, Width};
pub use error::{Result, StoreError};
pub use keys::{ApiKey, KeyLimits, KeyPatch, NewKey, Role};
pub use tenants::Tenant;
pub use usage::{GroupBy, Outcome, UsageEvent, UsagePage, UsageQuery};

/// The database file under `$LUMEN_HOME`.
pub const DEFAULT_FILE: &str = "lumen.db";

/// A handle on the database (cheap to clone: a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Opens `url`: `sqlite://PATH`, `sqlite::memory:` or a plain file path; creates the file
    /// and its folder if missing and applies the migrations.
    pub async fn open(url: &str) -> Result<Store> {
        let opts = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        } else if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else if url.contains("://") {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        } else {
            let path = Path::new(url);
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                        e.kind(),
                        format!("cannot create {}: {e}", dir.display()),
                    )))
                })?;
            }
            SqliteConnectOptions::new().filename(path)
        };
        let memory = url.contains(":memory:");
        let opts = opts
            .create_if_missing(true)
            .journal_mode(if memory {
                SqliteJournalMode::Memory
            } else {
                SqliteJournalMode::Wal
            })
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(None)
            .connect_with(opts)
            .await?;
        migrate::run(&pool).await?;
        Ok(Store { pool })
    }

    /// Opens the default database under `home` (`$LUMEN_HOME/lumen.db`).
    pub async fn open_home(home: &Path) -> Result<Store> {
        let path = home.join(DEFAULT_FILE);
        Store::open(&path.to_string_lossy()).await
    }

    /// Closes every connection (waits for them to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
