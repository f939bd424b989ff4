//! The bytes of a model file: a read-only memory map, or a buffer the caller owns.
//!
//! Every weight file Lumen reads (GGUF here, safetensors in `lumen-models`) goes through this
//! one type, so the project's only file mapping, and its `unsafe`, live in one place.

use std::fs::File;
use std::ops::Deref;
use std::path::Path;

use memmap2::Mmap;

/// Immutable bytes of a whole file.
pub enum FileBytes {
    /// A read-only map of a file on disk.
    Mapped(Mmap),
    /// Bytes handed over by the caller (tests, fuzzing, files read some other way).
    Owned(Vec<u8>),
}

impl FileBytes {
    /// Maps the file at `path` read-only (an empty file becomes an empty buffer).
    pub fn map(path: &Path) -> std::io::Result<FileBytes> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            // Mapping an empty file fails on some platforms; callers report it as truncated.
            return Ok(FileBytes::Owned(Vec::new()));
        }
        // SAFETY: the map is read-only and private to this value, which only hands out shared
        // slices of it. Like every mmap-based reader we rely on the file not being truncated
        // or rewritten by another process while it is open; model files are treated as
        // immutable once written.
        let map = unsafe { Mmap::map(&file)? };
        Ok(FileBytes::Mapped(map))
    }
}

impl Deref for FileBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => m,
            FileBytes::Owned(v) => v,
        }
    }
}
