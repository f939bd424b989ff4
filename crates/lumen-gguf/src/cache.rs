//! [`RewriteCache`]: rewritten copies of model files on disk, so that a loader which keeps
//! weights in a layout of its own rewrites a file once, not at every start.
//!
//! Why: a loader that rewrites most tensors (Lumen's packed layout rewrites every K-quant
//! matrix of a Q4_K_M file) has to read each one into memory of the process's own first, so
//! a mapped 8B-shaped file took 16-26 s to be ready on the development machine, and two
//! servers on it shared nothing. A copy of the rewritten file, mapped read-only, is ready as
//! fast as the original mapped unrewritten, and its pages are the page cache's, shared by
//! every process serving it.
//!
//! An entry is two files named after the source's canonical path and the rewriting's tag:
//! `NAME.gguf`, the source's bytes with the rewritten tensors in their new layout (same
//! length, same offsets), and `NAME.id`, a few text lines saying which source (path, length,
//! modification time, inode) and which copy (length, modification time, inode) belong
//! together and which tensors were rewritten. The copy is written to a temporary file,
//! flushed to disk and renamed before its `.id` is written the same way, so a crash leaves
//! either a whole entry or one that no longer matches; a changed source, a copy replaced by
//! another process, or a different tag (a new rewriting) make a miss, and the entry is
//! written again. A cache may be given a limit on the bytes its copies take: storing a copy
//! first removes the least recently used others (a hit counts as a use, recorded as the
//! `.id`'s modification time) until the new one fits, and a copy bigger than the limit is not
//! stored. A process still serving a removed copy keeps its mapping (the file lives on until
//! it is unmapped); its next start is a miss. A store also removes what interrupted ones
//! left: temporary files of writers no longer running, and old copies without an `.id`.
//! Entries come from this machine's own loads, so they are trusted as much as the directory
//! they live in; their header and tensor table are still parsed and validated like any model
//! file's.

use std::fs::{File, Metadata as FsMetadata};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Version of the `.id` format.
const ID_FORMAT: &str = "lumen-rewrite-cache 1";

/// Largest `.id` file read: a line per field and one character per tensor.
const MAX_ID_BYTES: u64 = 1 << 20;

/// Age from which a copy without an `.id` counts as left by a crash (a store writes the
/// `.id` milliseconds after the copy).
const ORPHAN_SECS: u64 = 600;

/// Disk space left free after writing a copy.
const SPARE_BYTES: u64 = 256 << 20;

/// Where rewritten copies live, and the name of the rewriting that made them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RewriteCache {
    dir: PathBuf,
    tag: String,
    limit: Option<u64>,
}

/// What the cache did for one load ([`crate::GgufFile::cache_outcome`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CacheOutcome {
    /// No cache was asked for.
    Off,
    /// The rewritten copy was used: nothing was rewritten at load.
    Hit,
    /// The file was rewritten and the copy stored for the next load.
    Stored,
    /// The loader rewrote nothing, so there is nothing to keep.
    NothingRewritten,
    /// The file was rewritten but no copy was stored, for the reason given (no disk space, a
    /// directory that cannot be written); the model still loads.
    NotStored(String),
}

impl std::fmt::Display for CacheOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CacheOutcome::Off => f.write_str("off"),
            CacheOutcome::Hit => f.write_str("hit"),
            CacheOutcome::Stored => f.write_str("stored"),
            CacheOutcome::NothingRewritten => f.write_str("nothing rewritten"),
            CacheOutcome::NotStored(why) => write!(f, "not stored: {why}"),
        }
    }
}

/// What identifies one version of a file: where it is and what it looks like on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileId {
    len: u64,
    mtime_ns: i128,
    inode: u64,
    device: u64,
}

impl FileId {
    fn of(meta: &FsMetadata) -> FileId {
        let mtime_ns = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX));
        #[cfg(unix)]
        let (inode, device) = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.dev())
        };
        #[cfg(not(unix))]
        let (inode, device) = (0, 0);
        FileId {
            len: meta.len(),
            mtime_ns,
            inode,
            device,
        }
    }

    fn line(&self, key: &str) -> String {
        format!(
            "{key} {} {} {} {}",
            self.len, self.mtime_ns, self.inode, self.device
        )
    }

    fn parse(fields: &[String]) -> Option<FileId> {
        let [len, mtime_ns, inode, device] = fields else {
            return None;
        };
        Some(FileId {
            len: len.parse().ok()?,
            mtime_ns: mtime_ns.parse().ok()?,
            inode: inode.parse().ok()?,
            device: device.parse().ok()?,
        })
    }
}

/// A valid entry's contents: the copy's path and which tensors it holds rewritten.
pub(crate) struct Entry {
    pub(crate) copy: PathBuf,
    pub(crate) rewritten: Vec<bool>,
}

impl RewriteCache {
    /// A cache in `dir` (created when first written) for the rewriting called `tag` (letters,
    /// digits, `-`, `_` and `.`; anything else becomes `_`): copies made under another tag
    /// are never used.
    pub fn new(dir: impl Into<PathBuf>, tag: &str) -> RewriteCache {
        let tag = tag
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        RewriteCache {
            dir: dir.into(),
            tag,
            limit: None,
        }
    }

    /// The same cache holding at most `bytes` of copies (`None`: no limit). Storing a copy
    /// removes the least recently used others until it fits; one bigger than the whole limit
    /// is not stored.
    pub fn with_limit(mut self, bytes: Option<u64>) -> RewriteCache {
        self.limit = bytes;
        self
    }

    /// The limit on the bytes the copies take, if any.
    pub fn limit(&self) -> Option<u64> {
        self.limit
    }

    /// The directory the copies live in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The `(copy, id)` paths of `source`'s entry.
    fn paths(&self, source: &Path) -> (PathBuf, PathBuf) {
        let name = format!("{:016x}-{}", fnv1a(source.as_os_str()), self.tag);
        (
            self.dir.join(format!("{name}.gguf")),
            self.dir.join(format!("{name}.id")),
        )
    }

    /// The entry for `source` (`meta` its metadata), if one is stored and still matches it.
    pub(crate) fn find(&self, source: &Path, meta: &FsMetadata) -> Option<Entry> {
        let source = source.canonicalize().ok()?;
        let (copy, id) = self.paths(&source);
        let text = read_small(&id)?;
        let mut lines = text.lines();
        if lines.next()? != ID_FORMAT {
            return None;
        }
        let mut fields = |key: &str| -> Option<Vec<String>> {
            let line = lines.next()?;
            let rest = line.strip_prefix(key)?.strip_prefix(' ')?;
            Some(rest.split(' ').map(str::to_string).collect())
        };
        let tag = fields("tag")?;
        let path = fields("source-path")?;
        let src = fields("source")?;
        let cp = fields("copy")?;
        let flags = fields("rewritten")?;
        let copy_meta = std::fs::metadata(&copy).ok()?;
        let matches = tag == [self.tag.clone()]
            && path.join(" ") == source.to_string_lossy()
            && FileId::parse(&src)? == FileId::of(meta)
            && FileId::parse(&cp)? == FileId::of(&copy_meta)
            && copy_meta.len() == meta.len();
        let [flags] = &flags[..] else {
            return None;
        };
        let rewritten = flags
            .chars()
            .map(|c| match c {
                '1' => Some(true),
                '0' => Some(false),
                _ => None,
            })
            .collect::<Option<Vec<bool>>>()?;
        if !matches {
            return None;
        }
        // The `.id`'s modification time records the last use, for the limit's eviction; a
        // cache that cannot be written still serves its copies.
        let _ = File::options()
            .write(true)
            .open(&id)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        Some(Entry { copy, rewritten })
    }

    /// Stores `bytes`, the rewritten image of `source` (`meta` its metadata as loaded), with
    /// `rewritten` saying which tensors were rewritten.
    pub(crate) fn store(
        &self,
        source: &Path,
        meta: &FsMetadata,
        bytes: &[u8],
        rewritten: &[bool],
    ) -> Result<(), String> {
        // Decided from the size alone, before touching the disk.
        let size = bytes.len() as u64;
        if let Some(limit) = self.limit.filter(|&l| size > l) {
            return Err(format!(
                "a copy needs {} MiB, more than the cache's limit of {} MiB",
                size.div_ceil(1 << 20),
                limit >> 20
            ));
        }
        let source = source
            .canonicalize()
            .map_err(|e| format!("resolving {}: {e}", source.display()))?;
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| format!("creating {}: {e}", self.dir.display()))?;
        let need = size.saturating_add(SPARE_BYTES);
        if let Some(free) = free_bytes(&self.dir) {
            if free < need {
                return Err(format!(
                    "{} has {} MiB free, a copy needs {} MiB",
                    self.dir.display(),
                    free >> 20,
                    need >> 20
                ));
            }
        }
        self.remove_leftovers();
        self.prune(&source);
        if let Some(limit) = self.limit {
            self.evict(&source, limit.saturating_sub(size));
        }
        let (copy, id) = self.paths(&source);
        // The old `.id` goes first, so the old one never describes the new copy.
        match std::fs::remove_file(&id) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(format!("removing {}: {e}", id.display()))
            }
            _ => {}
        }
        write_atomically(&copy, bytes)?;
        let copy_meta =
            std::fs::metadata(&copy).map_err(|e| format!("reading {}: {e}", copy.display()))?;
        let flags: String = rewritten
            .iter()
            .map(|&r| if r { '1' } else { '0' })
            .collect();
        let text = format!(
            "{ID_FORMAT}\ntag {}\nsource-path {}\n{}\n{}\nrewritten {flags}\n",
            self.tag,
            source.to_string_lossy(),
            FileId::of(meta).line("source"),
            FileId::of(&copy_meta).line("copy"),
        );
        write_atomically(&id, text.as_bytes())
    }
}

impl RewriteCache {
    /// Removes the entries a store of `source` makes useless: `source`'s under other tags
    /// (an older rewriting's), and any whose source file is gone. So the directory holds at
    /// most one copy per model file that still exists. Best effort: an entry that cannot be
    /// read or removed stays.
    fn prune(&self, source: &Path) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let same_source = format!("{:016x}-", fnv1a(source.as_os_str()));
        for entry in dir.flatten() {
            let id = entry.path();
            if id.extension().is_none_or(|e| e != "id") {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let other_tag =
                name.starts_with(&same_source) && !name.ends_with(&format!("-{}.id", self.tag));
            let gone = read_small(&id)
                .and_then(|t| {
                    let line = t
                        .lines()
                        .find(|l| l.starts_with("source-path "))?
                        .to_string();
                    line.strip_prefix("source-path ").map(PathBuf::from)
                })
                .is_some_and(|p| !p.exists());
            if other_tag || gone {
                let _ = std::fs::remove_file(&id);
                let _ = std::fs::remove_file(id.with_extension("gguf"));
            }
        }
    }
}

impl RewriteCache {
    /// Removes what interrupted stores left: temporary files of writers that are no longer
    /// running, and copies without an `.id` (a crash between the copy's rename and its
    /// `.id`'s) older than [`ORPHAN_SECS`], so that no other store can still be about to
    /// write their `.id`. Neither is ever used, and the limit's eviction does not see them.
    fn remove_leftovers(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let now = std::time::SystemTime::now();
        for entry in dir.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let stale = if let Some((_, pid)) = name.rsplit_once(".tmp-") {
                pid.parse().is_ok_and(|pid| !process_alive(pid))
            } else if path.extension().is_some_and(|e| e == "gguf") {
                !path.with_extension("id").exists()
                    && entry
                        .metadata()
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|t| now.duration_since(t).ok())
                        .is_some_and(|age| age.as_secs() >= ORPHAN_SECS)
            } else {
                false
            };
            if stale {
                let _ = std::fs::remove_file(&path);
            }
        }
    }

    /// Removes the least recently used entries other than `source`'s (which a store is about
    /// to replace) until their copies take at most `room` bytes. Best effort, like `prune`.
    fn evict(&self, source: &Path, room: u64) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let (_, own) = self.paths(source);
        let mut entries: Vec<(std::time::SystemTime, u64, PathBuf)> = dir
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "id") && *p != own)
            .filter_map(|id| {
                let used = std::fs::metadata(&id).and_then(|m| m.modified()).ok()?;
                let size = std::fs::metadata(id.with_extension("gguf")).map_or(0, |m| m.len());
                Some((used, size, id))
            })
            .collect();
        entries.sort();
        let mut total: u64 = entries.iter().map(|e| e.1).sum();
        for (_, size, id) in entries {
            if total <= room {
                break;
            }
            let _ = std::fs::remove_file(&id);
            if std::fs::remove_file(id.with_extension("gguf")).is_ok() {
                total = total.saturating_sub(size);
            }
        }
    }
}

/// Writes `bytes` to `path` through a temporary file in the same directory that is flushed
/// to disk and then renamed: readers see the old file or the whole new one.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    renamed.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("writing {}: {e}", path.display())
    })
}

/// Whether process `pid` exists (where the OS cannot say: assumed so, and its files stay).
fn process_alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(pid) = libc::pid_t::try_from(pid) else {
            return false;
        };
        if pid <= 0 {
            return false;
        }
        // SAFETY: signal 0 only checks that the process exists and may be signalled.
        let r = unsafe { libc::kill(pid, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// The contents of `path` if it is a small text file.
fn read_small(path: &Path) -> Option<String> {
    let meta = std::fs::metadata(path).ok()?;
    if meta.len() > MAX_ID_BYTES {
        return None;
    }
    std::fs::read_to_string(path).ok()
}

/// Bytes available to this user on the file system holding `dir`, where the OS says.
fn free_bytes(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
        // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the right type, which
        // statvfs fills completely when it returns 0.
        let st = unsafe {
            if libc::statvfs(c.as_ptr(), st.as_mut_ptr()) != 0 {
                return None;
            }
            st.assume_init()
        };
        // `fsblkcnt_t` and `c_ulong` are 32 bits on some targets.
        #[allow(clippy::useless_conversion)]
        u64::from(st.f_bavail).checked_mul(u64::from(st.f_frsize))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// 64-bit FNV-1a of `s`'s bytes: a stable name for a path (std's hasher may change between
/// Rust releases, and the name must not).
fn fnv1a(s: &std::ffi::OsStr) -> u64 {
    s.as_encoded_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
}
