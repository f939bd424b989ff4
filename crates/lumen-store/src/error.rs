//! The crate's error type.

/// Everything the store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no (I/O, locking, constraint, a broken file).
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A `--database-url` this build cannot open.
    #[error(
        "unsupported database URL '{0}': use a file path, sqlite://PATH or postgres://USER@HOST/DB"
    )]
    UnsupportedUrl(String),
    /// No row with that id (or name).
    #[error("{kind} '{id}' not found")]
    NotFound {
        /// `tenant` or `api key`.
        kind: &'static str,
        /// What was looked for.
        id: String,
    },
    /// The row would clash with an existing one (a tenant name taken).
    #[error("{0}")]
    Conflict(String),
    /// A value failed validation before reaching the database.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// A stored row holds a value this version cannot read (a corrupted or newer database).
    #[error("corrupt row in {table}: {reason}")]
    Corrupt {
        /// The table.
        table: &'static str,
        /// What was wrong.
        reason: String,
    },
}

impl StoreError {
    /// An [`StoreError::Invalid`] for `field`.
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        StoreError::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, StoreError>;
