//! Batch jobs: OpenAI's Files and Batches APIs, and the executor that runs their lines.
//!
//! - **Files** ([`files`]) are streamed to `$LUMEN_HOME/files` under a temporary name in
//!   `files/.partial`, hashed on the way, renamed when whole and only then given a row: a
//!   crash mid-upload leaves a temporary file, which the next start deletes, and never a row.
//! - **Batches** ([`api`]) are rows in the store, one per job and one per input line, created
//!   `validating`; [`validate`] checks every line and moves the job to `in_progress` (or
//!   `failed` with line numbers).
//! - **The executor** ([`executor`]) is one task per server. It claims items under a lease,
//!   runs each through the live endpoint's own handler core ([`mod@line`]) at batch
//!   priority (so an answer equals what the endpoint returns for the same body, and the
//!   scheduler fills only the
//!   capacity interactive requests leave), and records each answer with its usage event in
//!   one transaction. It also expires, cancels and finalizes jobs ([`finalize`] writes the
//!   output and error files from the item rows, with ids derived from the batch id, so a
//!   crash during finalizing just writes them again).
//! - **Time** is the [`Clock`]: the wall clock, plus an offset a test may write to a file
//!   (`--test-clock-file`), so a test can move a batch past its window.

pub mod api;
pub mod executor;
pub mod files;
pub mod finalize;
pub mod line;
pub mod validate;

use std::path::PathBuf;
use std::time::Duration;

/// Largest upload (OpenAI's limit for batch input files): one byte more is a 413.
pub const MAX_FILE_BYTES: u64 = 200_000_000;

/// The batch endpoints a line may call.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

/// The only completion window (OpenAI's).
pub const WINDOW: &str = "24h";

/// Seconds in [`WINDOW`].
pub const WINDOW_SECS: u64 = 24 * 3600;

/// Unix time as batches see it: the wall clock plus an offset read from a file, when one is
/// configured (tests move time forward by writing seconds into it).
#[derive(Clone, Debug, Default)]
pub struct Clock {
    offset_file: Option<PathBuf>,
}

impl Clock {
    /// The wall clock, shifted by the seconds written in `offset_file` (if any).
    pub fn new(offset_file: Option<PathBuf>) -> Self {
        Clock { offset_file }
    }

    fn offset_secs(&self) -> u64 {
        self.offset_file
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .unwrap_or(0)
    }

    /// Unix seconds.
    pub fn now_secs(&self) -> u64 {
        lumen_store::clock::unix_secs() + self.offset_secs()
    }

    /// Unix milliseconds (leases; never shifted: leases are about real time).
    pub fn real_ms(&self) -> u64 {
        lumen_store::clock::unix_ms()
    }
}

/// How this server runs batch jobs.
#[derive(Clone, Debug)]
pub struct BatchConfig {
    /// `$LUMEN_HOME/files`.
    pub files_dir: PathBuf,
    /// Items one server runs at once.
    pub concurrency: usize,
    /// Items it keeps running while other (interactive) requests are in flight: every
    /// running sequence decodes in every engine step, so batch lines beyond a few slow each
    /// interactive token down.
    pub busy_concurrency: usize,
    /// How long a claim lasts without renewal (a dead server's items are redone after it).
    pub lease: Duration,
    /// Batch time.
    pub clock: Clock,
    /// Wakes the executor (a batch was created or cancelled, an item finished).
    pub wake: std::sync::Arc<tokio::sync::Notify>,
}

impl BatchConfig {
    /// Defaults under `home`: 32 items at once (4 while interactive requests run), 30-second
    /// leases, the wall clock.
    pub fn new(home: &std::path::Path) -> Self {
        BatchConfig {
            files_dir: home.join("files"),
            concurrency: 32,
            busy_concurrency: 4,
            lease: Duration::from_secs(30),
            clock: Clock::default(),
            wake: Default::default(),
        }
    }

    /// Where uploads are written before they are whole.
    pub fn partial_dir(&self) -> PathBuf {
        self.files_dir.join(".partial")
    }

    /// The path of file `id` (ids are generated here: `file-` and hex, never a path).
    pub fn path_of(&self, id: &str) -> PathBuf {
        self.files_dir.join(id)
    }
}

/// Whose files and batches a caller sees: its tenant, or for a store key without one the
/// key itself, or (static keys, an open server) the shared empty owner.
pub fn owner_of(principal: &crate::tenancy::Principal) -> String {
    match principal.key() {
        Some(k) => match &k.tenant {
            Some(t) => t.clone(),
            None => format!("key:{}", k.id),
        },
        None => String::new(),
    }
}

/// `prefix` and 24 random hex digits (file and batch ids).
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{}", lumen_store::secret::random_hex(12))
}
