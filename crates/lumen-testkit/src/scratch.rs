//! [`ScratchDir`]: an empty directory for one test, removed when the test is done.

use std::path::{Path, PathBuf};

/// `$TMPDIR/lumen-NAME-PID`, emptied when made and removed on drop: the pid keeps test
/// binaries running side by side apart, the name keeps a binary's tests apart.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    /// Makes the empty directory for `name`; panics if it cannot (a test cannot go on).
    pub fn new(name: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!("lumen-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        ScratchDir(dir)
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
