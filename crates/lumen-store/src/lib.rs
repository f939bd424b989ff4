//! Lumen's durable state: tenants, API keys, the usage ledger with its rollups, and batch
//! jobs (uploaded files, batches and their items; see [`batches`]).
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
//! - **PostgreSQL by URL** (`--database-url postgres://…`): the same tables in its own
//!   migrations (`migrations/postgres`), and shared admission state (see [`admission`]) so
//!   that several servers on one database enforce one set of limits.
//! - **One code path for both.** The pool is sqlx's `Any` driver, chosen by URL at run time:
//!   every query is written once with `$1, $2, …` placeholders, which SQLite accepts too, and
//!   reads rows through the same `AnyRow` decoding. What differs is kept small and explicit:
//!   how a write transaction starts (`BEGIN IMMEDIATE` on SQLite), the column types in each
//!   migration list, and sums cast to `BIGINT` (PostgreSQL's `SUM(bigint)` is `numeric`).
//!   The `Any` driver only carries plain values (integers, floats, text), which is all this
//!   schema uses; lists cross into PostgreSQL functions as JSON text.

pub mod admission;
pub mod batches;
pub mod clock;
mod error;
pub mod files;
pub mod items;
pub mod keys;
pub mod migrate;
pub mod secret;
pub mod tenants;
pub mod usage;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Any, AnyPool, ConnectOptions, Executor, Transaction};

pub use batches::{BatchRow, NewBatch, NewItem, RequestCounts};
pub use clock::{Period, Width};
pub use error::{Result, StoreError};
pub use files::FileRow;
pub use items::{ClaimedItem, ItemOutcome, ItemResult};
pub use keys::{ApiKey, KeyLimits, KeyPatch, NewKey, Role};
pub use tenants::Tenant;
pub use usage::{BatchRef, GroupBy, Outcome, Price, UsageEvent, UsagePage, UsageQuery};

/// The database file under `$LUMEN_HOME`.
pub const DEFAULT_FILE: &str = "lumen.db";

/// Which database a [`Store`] talks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// One SQLite file (or memory): one process's limits, in memory.
    Sqlite,
    /// A PostgreSQL server: limits shared by every server on it.
    Postgres,
}

/// A handle on the database (cheap to clone: a connection pool).
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// How long a shared-admission grant lives past its last renewal.
    lease: Duration,
}

/// Starts a write transaction: `BEGIN IMMEDIATE` on SQLite (the write lock up front),
/// PostgreSQL's default `BEGIN` (row locks and constraints do the rest).
pub(crate) async fn begin_write(
    pool: &AnyPool,
    backend: Backend,
) -> Result<Transaction<'static, Any>> {
    Ok(match backend {
        Backend::Sqlite => pool.begin_with("BEGIN IMMEDIATE").await?,
        Backend::Postgres => pool.begin().await?,
    })
}

impl Store {
    /// Opens `url`: `postgres://…` (or `postgresql://…`), `sqlite://PATH`, `sqlite::memory:`
    /// or a plain file path; creates a SQLite file and its folder if missing and applies the
    /// migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Self::open_postgres(url).await;
        }
        let opts = if url.starts_with("sqlite:") {
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
            let path = std::path::absolute(path).map_err(sqlx::Error::Io)?;
            SqliteConnectOptions::new().filename(path)
        };
        let memory = url.contains(":memory:");
        // The `Any` driver rebuilds SQLite's options from a URL (file name and mode only),
        // so the pragmas are set on each new connection instead.
        let any = if memory {
            AnyConnectOptions::from_str("sqlite::memory:")?
        } else {
            AnyConnectOptions::from_url(&opts.create_if_missing(true).to_url_lossy())?
        };
        let pragmas = if memory {
            "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
        } else {
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
             PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;"
        };
        let pool = AnyPoolOptions::new()
            // An in-memory database exists once per connection: keep exactly one.
            .max_connections(if memory { 1 } else { 4 })
            .min_connections(if memory { 1 } else { 0 })
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(None)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    conn.execute(pragmas).await?;
                    Ok(())
                })
            })
            .connect_with(any)
            .await?;
        migrate::run(&pool, Backend::Sqlite).await?;
        Ok(Store {
            pool,
            backend: Backend::Sqlite,
            lease: admission::LEASE,
        })
    }

    async fn open_postgres(url: &str) -> Result<Store> {
        let any = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .idle_timeout(Some(Duration::from_secs(600)))
            .connect_with(any)
            .await?;
        migrate::run(&pool, Backend::Postgres).await?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            lease: admission::LEASE,
        })
    }

    /// Opens the default database under `home` (`$LUMEN_HOME/lumen.db`).
    pub async fn open_home(home: &Path) -> Result<Store> {
        let path = home.join(DEFAULT_FILE);
        Store::open(&path.to_string_lossy()).await
    }

    /// This store with shared-admission leases of `lease` instead of [`admission::LEASE`]
    /// (tests of a server that dies).
    pub fn with_lease(mut self, lease: Duration) -> Store {
        self.lease = lease;
        self
    }

    /// How long a shared-admission grant outlives its last renewal.
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        begin_write(&self.pool, self.backend).await
    }

    /// Closes every connection (waits for them to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
