//! The bytes of a model file: a read-only memory map, a resident copy in huge pages, or a
//! buffer the caller owns.
//!
//! Every weight file Lumen reads (GGUF here, safetensors in `lumen-models`) goes through this
//! one type, so the project's only file mapping, and its `unsafe`, live in one place.

use std::fs::File;
use std::io::Read;
use std::ops::{Deref, Range};
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

    /// [`FileBytes::map`], with every page mapped now, for reading (as `Writable::freeze`
    /// does for a map a loader rewrote): for a file about to run, whose first requests should
    /// not fault its pages in one by one.
    pub fn map_populated(path: &Path) -> std::io::Result<FileBytes> {
        let bytes = FileBytes::map(path)?;
        #[cfg(target_os = "linux")]
        if let FileBytes::Mapped(m) = &bytes {
            advise_huge(m);
            populate(m);
        }
        Ok(bytes)
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
        Ok(Writable::Mapped(map, file))
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
    /// A private copy-on-write map of the file, and the file (to read parts given memory of
    /// their own, [`Writable::own`]).
    Mapped(MmapMut, File),
    /// An empty file.
    Owned(Vec<u8>),
}

impl Writable {
    /// The bytes, writable.
    pub(crate) fn bytes_mut(&mut self) -> &mut [u8] {
        match self {
            Writable::Anon(m) | Writable::Mapped(m, _) => &mut m[..],
            Writable::Owned(v) => v,
        }
    }

    /// Before `range` is rewritten whole: in a map of the file, gives its pages memory of the
    /// process's own, in huge pages where the kernel gives them, holding the file's bytes.
    /// Elsewhere (the bytes are already the process's own) it does nothing.
    ///
    /// A page the loader writes stops being the page cache's either way; written through the
    /// copy-on-write map it became a 4 KiB copy, and decoding, which streams every weight per
    /// token, walked the page tables for each (smollm2-1.7b Q6_K packed, two threads: 12.7
    /// t/s mapped against 13.9 t/s read into huge pages, and a 2.8 s load against 1.9 s).
    /// Pages the loader leaves alone stay mapped from the page cache, shared. Only the whole
    /// pages inside `range` move, and only where they span at least a huge page.
    pub(crate) fn own(&mut self, range: Range<usize>) -> std::io::Result<()> {
        #[cfg(not(target_os = "linux"))]
        let _ = range;
        #[cfg(target_os = "linux")]
        if let Writable::Mapped(map, file) = self {
            let Some(pages) = whole_pages(range, map.len(), HUGE_PAGE) else {
                return Ok(());
            };
            // SAFETY: `pages` lies inside the map (checked by `whole_pages`), which this value
            // owns and nothing borrows now (`&mut self`); the new mapping replaces exactly
            // those pages, and the map's drop unmaps its whole range, these pages included.
            unsafe { remap(map, pages.clone(), None)? };
            let _ = map.advise_range(memmap2::Advice::HugePage, pages.start, pages.len());
            use std::os::unix::fs::FileExt;
            let read = match map.get_mut(pages.clone()) {
                Some(dst) => file.read_exact_at(dst, pages.start as u64),
                None => Err(std::io::ErrorKind::InvalidInput.into()),
            };
            if let Err(e) = read {
                // SAFETY: as above; the pages go back to being the file's.
                unsafe { remap(map, pages, Some(file))? };
                return Err(e);
            }
        }
        Ok(())
    }

    /// Undoes [`Writable::own`] for a range the loader then left as it was: its pages are
    /// the page cache's again (shared, and no memory of the process's own).
    pub(crate) fn disown(&mut self, range: Range<usize>) -> std::io::Result<()> {
        #[cfg(not(target_os = "linux"))]
        let _ = range;
        #[cfg(target_os = "linux")]
        if let Writable::Mapped(map, file) = self {
            if let Some(pages) = whole_pages(range, map.len(), HUGE_PAGE) {
                // SAFETY: as in `own`.
                unsafe { remap(map, pages, Some(file))? };
            }
        }
        Ok(())
    }

    /// Makes the copy read-only. A map of the file gets all its pages mapped now, for
    /// reading (so the first requests do not fault them in one by one, and untouched pages
    /// stay the page cache's); on a kernel without `MADV_POPULATE_READ` (before 5.14) they
    /// are only read ahead.
    pub(crate) fn freeze(self) -> std::io::Result<FileBytes> {
        Ok(match self {
            Writable::Anon(m) => FileBytes::Mapped(m.make_read_only()?),
            Writable::Mapped(m, _) => {
                let m = m.make_read_only()?;
                #[cfg(target_os = "linux")]
                populate(&m);
                FileBytes::Mapped(m)
            }
            Writable::Owned(v) => FileBytes::Owned(v),
        })
    }
}

/// Maps every page of `m` for reading now; on a kernel without `MADV_POPULATE_READ` (before
/// 5.14) only reads them ahead.
#[cfg(target_os = "linux")]
fn populate(m: &Mmap) {
    if m.advise(memmap2::Advice::PopulateRead).is_err() {
        let _ = m.advise(memmap2::Advice::WillNeed);
    }
}

/// Advises `m` for transparent huge pages: where they are on `madvise` only, a file mapping
/// must ask, and a page fault then reads the file ahead in huge folios, which map as huge
/// pages. Faulted in cold this way, 99 % of an 8B-shaped packed copy was mapped in huge pages
/// (`FilePmdMapped`), against 70 % from the folios the page cache had made of it while it
/// was written. Huge pages of the page cache are shared like any other.
#[cfg(target_os = "linux")]
fn advise_huge(m: &Mmap) {
    let _ = m.advise(memmap2::Advice::HugePage);
}

/// Bytes of a transparent huge page on x86-64 and most arm64 kernels: a range smaller than
/// this gains nothing from memory of its own.
#[cfg(target_os = "linux")]
const HUGE_PAGE: usize = 2 << 20;

/// The whole pages inside `range` (clamped to `len`), if they span at least `min` bytes.
#[cfg(target_os = "linux")]
fn whole_pages(range: Range<usize>, len: usize, min: usize) -> Option<Range<usize>> {
    // SAFETY: sysconf has no preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .ok()
        .filter(|&p| p.is_power_of_two())?;
    let start = range.start.checked_next_multiple_of(page)?;
    let end = range.end.min(len).checked_div(page)?.checked_mul(page)?;
    (end.checked_sub(start)? >= min).then_some(start..end)
}

/// Replaces `pages` of `map` with new private pages: anonymous (zeros) with no `file`, the
/// file's at the same offsets (copy-on-write, as [`FileBytes::map_writable`] maps them)
/// with one.
///
/// # Safety
/// `pages` must be page-aligned and inside `map`, and nothing may hold a reference into
/// those bytes.
#[cfg(target_os = "linux")]
unsafe fn remap(
    map: &mut MmapMut,
    pages: Range<usize>,
    file: Option<&File>,
) -> std::io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let (fd, flags) = match file {
        Some(f) => (f.as_raw_fd(), libc::MAP_PRIVATE | libc::MAP_FIXED),
        None => (
            -1,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
        ),
    };
    let offset = libc::off_t::try_from(if file.is_some() { pages.start } else { 0 })
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: the caller's contract: the address range is part of `map`'s own mapping, so
    // MAP_FIXED replaces only pages this value owns.
    let got = unsafe {
        let at = map.as_mut_ptr().add(pages.start).cast::<libc::c_void>();
        libc::mmap(
            at,
            pages.len(),
            libc::PROT_READ | libc::PROT_WRITE,
            flags,
            fd,
            offset,
        )
    };
    if got == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
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
    /// the same file share its pages (those the loader does not rewrite; a rewritten
    /// tensor is read into huge pages of the process's own first).
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
