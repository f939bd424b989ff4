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
        FileBytes::read_writable(path)?.freeze()
    }

    /// A private, copy-on-write map of the file at `path`, so that a loader can rewrite parts
    /// in place; [`Writable::freeze`] then maps every page up front, reading.
    ///
    /// The pages a loader leaves alone stay the page cache's: nothing is read into memory of
    /// the process's own, loading costs no copy, and two processes serving the same file
    /// share those pages. A page the loader writes becomes the process's own copy (the file
    /// on disk never changes). The price is 4 KiB pages where [`FileBytes::read_resident`]
    /// gets huge ones (see there).
    pub(crate) fn map_writable(path: &Path) -> std::io::Result<Writable> {
        let file = File::open(path)?;
        if file.metadata()?.len() == 0 {
            return Ok(Writable::Owned(Vec::new()));
        }
        // SAFETY: as in `map`: a private map, handed out only through this value; writes go
        // to private copies of the pages (MAP_PRIVATE), never to the file. We rely on the
        // file not being truncated while it is open, as every mmap-based reader does.
        // Not MAP_POPULATE: on a writable private map it faults every page in for writing,
        // which copies them all.
        let map = unsafe { MmapOptions::new().map_copy(&file)? };
        Ok(Writable::Mapped(map))
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

/// A copy of a file that may still be written.
pub(crate) enum Writable {
    /// Anonymous memory (huge pages where the kernel gives them).
    Anon(MmapMut),
    /// A private copy-on-write map of the file.
    Mapped(MmapMut),
    /// An empty file.
    Owned(Vec<u8>),
}

impl Writable {
    /// The bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Writable::Anon(m) | Writable::Mapped(m) => &mut m[..],
            Writable::Owned(v) => v,
        }
    }

    /// Makes the copy read-only. A map of the file gets all its pages mapped now, for
    /// reading (so the first requests do not fault them in one by one, and untouched pages
    /// stay the page cache's); on a kernel without `MADV_POPULATE_READ` (before 5.14) they
    /// are only read ahead.
    pub(crate) fn freeze(self) -> std::io::Result<FileBytes> {
        Ok(match self {
            Writable::Anon(m) => FileBytes::Mapped(m.make_read_only()?),
            Writable::Mapped(m) => {
                let m = m.make_read_only()?;
                #[cfg(target_os = "linux")]
                if m.advise(memmap2::Advice::PopulateRead).is_err() {
                    let _ = m.advise(memmap2::Advice::WillNeed);
                }
                FileBytes::Mapped(m)
            }
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

/// How a model's bytes are held while it runs (`LUMEN_WEIGHTS_MEMORY`).
///
/// Measured on the 2-core development machine with an 8B-shaped Q4_K_M file (4.9 GB, in the
/// page cache): read into huge pages, a server was ready in 16.4 s (the read alone took
/// 13.8 s, 4.7 s into 4 KiB pages: making huge pages costs more than it saves here); mapped,
/// in 0.96 s, and a second server on the same file shared its pages (Pss 2.6 GB each instead
/// of 5.0 GB). Decoding reads every weight per token, and with 4 KiB pages of a map it was
/// about 10 % slower (tg16 3.75–3.89 vs 4.25–4.33 tokens/s). Hence [`Residency::Auto`]: a
/// small model is read in (fractions of a second, then the faster decoding), a big one is
/// mapped (ready at once, shared, small).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Residency {
    /// Resident below [`MAP_FROM_BYTES`], mapped from there on.
    #[default]
    Auto,
    /// Read into the process's own memory, in huge pages where the kernel gives them: the
    /// fastest decoding, at the cost of a read of the whole file at load and no sharing.
    Resident,
    /// Mapped from the page cache, copy-on-write: no read at load, and processes serving
    /// the same file share its pages (those the loader does not rewrite).
    Mapped,
}

/// Files from this size on are mapped under [`Residency::Auto`] (1 GiB: reading one in takes
/// about a second on the development machine, and every larger one longer).
pub const MAP_FROM_BYTES: u64 = 1 << 30;

impl Residency {
    /// `LUMEN_WEIGHTS_MEMORY`: `auto` (the default), `resident` or `mapped`; anything else
    /// is refused with a message naming them.
    pub fn from_env() -> Result<Residency, String> {
        match std::env::var("LUMEN_WEIGHTS_MEMORY") {
            Err(_) => Ok(Residency::default()),
            Ok(v) => v.parse(),
        }
    }

    /// What a file of `len` bytes gets: `Auto` decides by size, the others are themselves.
    pub fn resolve(self, len: u64) -> Residency {
        match self {
            Residency::Auto if len >= MAP_FROM_BYTES => Residency::Mapped,
            Residency::Auto => Residency::Resident,
            other => other,
        }
    }

    /// The name `LUMEN_WEIGHTS_MEMORY` takes.
    pub fn name(self) -> &'static str {
        match self {
            Residency::Auto => "auto",
            Residency::Resident => "resident",
            Residency::Mapped => "mapped",
        }
    }
}

impl std::str::FromStr for Residency {
    type Err = String;

    fn from_str(s: &str) -> Result<Residency, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(Residency::Auto),
            "resident" => Ok(Residency::Resident),
            "mapped" | "mmap" => Ok(Residency::Mapped),
            other => Err(format!(
                "LUMEN_WEIGHTS_MEMORY={other:?}: expected `auto`, `resident` or `mapped`"
            )),
        }
    }
}
