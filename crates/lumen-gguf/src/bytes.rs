//! The bytes of a model file: a read-only memory map, a resident copy in huge pages, or a
//! buffer the caller owns.
//!
//! Every weight file Lumen reads (GGUF here, safetensors in `lumen-models`) goes through this
//! one type, so the project's only file mapping, and its `unsafe`, live in one place.

use std::fs::File;
use std::io::Read;
use std::ops::Deref;
use std::path::Path;

use memmap2::{Mmap, MmapMut, MmapOptions};

/// Immutable bytes of a whole file.
pub enum FileBytes {
    /// A read-only map: of a file on disk, or of anonymous memory holding a copy of one.
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

    /// Reads the whole file at `path` into anonymous memory advised for transparent huge pages,
    /// then makes it read-only.
    ///
    /// For weights that every decode step streams in full: with 4 KiB pages of a file map each
    /// step walks the page tables tens of thousands of times, with 2 MiB pages a few dozen
    /// (tg128 on SmolLM2 measured 3-18% faster, side by side). The cost is a read of the file
    /// at load and no sharing of the pages between processes.
    pub fn read_resident(path: &Path) -> std::io::Result<FileBytes> {
        Ok(match FileBytes::read_writable(path)? {
            Writable::Anon(m) => FileBytes::Mapped(m.make_read_only()?),
            Writable::Owned(v) => FileBytes::Owned(v),
        })
    }

    /// [`FileBytes::read_resident`] before it is made read-only, so that a loader can rewrite
    /// parts in place (see [`Writable::freeze`]).
    pub(crate) fn read_writable(path: &Path) -> std::io::Result<Writable> {
        let mut file = File::open(path)?;
        let len = usize::try_from(file.metadata()?.len()).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                "file larger than the address space",
            )
        })?;
        if len == 0 {
            return Ok(Writable::Owned(Vec::new()));
        }
        let mut anon = MmapOptions::new().len(len).map_anon()?;
        // Best effort: without transparent huge pages this is plain anonymous memory.
        #[cfg(target_os = "linux")]
        let _ = anon.advise(memmap2::Advice::HugePage);
        // A file truncated since its length was read fails here, not later.
        file.read_exact(&mut anon[..])?;
        Ok(Writable::Anon(anon))
    }
}

/// A resident copy of a file that may still be written.
pub(crate) enum Writable {
    /// Anonymous memory (huge pages where the kernel gives them).
    Anon(MmapMut),
    /// An empty file.
    Owned(Vec<u8>),
}

impl Writable {
    /// The bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Writable::Anon(m) => &mut m[..],
            Writable::Owned(v) => v,
        }
    }

    /// Makes the copy read-only.
    pub(crate) fn freeze(self) -> std::io::Result<FileBytes> {
        Ok(match self {
            Writable::Anon(m) => FileBytes::Mapped(m.make_read_only()?),
            Writable::Owned(v) => FileBytes::Owned(v),
        })
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
