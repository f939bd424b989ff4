//! [`GgufFile`]: owning the bytes, parsing the header, metadata and tensor table.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use crate::bytes::{FileBytes, Residency};
use crate::cache::{CacheOutcome, RewriteCache};

use crate::error::GgufError;
use crate::metadata::Metadata;
use crate::reader::Reader;
use crate::tensor::{read_tensor_info, validate, TensorInfo, MIN_TENSOR_INFO_SIZE};
use crate::value::{read_value, Value};

/// Alignment of the data section when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// Metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";

/// The byte range of `t`'s data in the file, if it fits in `usize`.
fn tensor_range(t: &TensorInfo) -> Option<std::ops::Range<usize>> {
    let start = usize::try_from(t.offset).ok()?;
    let len = usize::try_from(t.n_bytes).ok()?;
    Some(start..start.checked_add(len)?)
}

/// The file held by `cache`'s copy of `path` (`meta` its metadata), as `residency` says, if
/// the cache has a valid one; `outcome` is what it reports.
fn from_copy<E: From<GgufError>>(
    cache: &RewriteCache,
    path: &Path,
    meta: &std::fs::Metadata,
    residency: Residency,
    outcome: CacheOutcome,
) -> Result<Option<GgufFile>, E> {
    let Some(entry) = cache.find(path, meta) else {
        return Ok(None);
    };
    let storage = match residency {
        Residency::Mapped => FileBytes::map_populated(&entry.copy),
        _ => FileBytes::read_resident(&entry.copy),
    };
    let storage = storage.map_err(GgufError::from)?;
    let p = parse(&storage[..]).map_err(E::from)?;
    Ok((entry.rewritten.len() == p.tensors.len())
        .then(|| GgufFile::from_parts(storage, p, entry.rewritten, outcome)))
}

/// Fewest bytes one metadata entry can occupy: key length, value type, a one-byte value.
const MIN_KV_SIZE: u64 = 8 + 4 + 1;

/// A parsed GGUF file that owns its bytes; tensor data is borrowed from it.
pub struct GgufFile {
    storage: FileBytes,
    /// Per tensor: whether a loader rewrote its bytes ([`GgufFile::load_rewriting`]).
    rewritten: Vec<bool>,
    /// What the rewrite cache did for this load ([`GgufFile::load_rewriting_cached`]).
    cache: CacheOutcome,
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

/// Everything parsed out of the bytes, before they are moved into the [`GgufFile`].
struct Parsed {
    version: u32,
    metadata: Metadata,
    tensors: Vec<TensorInfo>,
    by_name: HashMap<String, usize>,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Maps the file at `path` read-only and parses it.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        GgufFile::with_storage(FileBytes::map(path)?)
    }

    /// Reads the file at `path` into resident huge-page memory and parses it: for a model
    /// that is about to run (see [`FileBytes::read_resident`]). [`GgufFile::open`] maps it
    /// lazily instead, for reading metadata.
    pub fn load(path: &Path) -> Result<GgufFile, GgufError> {
        GgufFile::with_storage(FileBytes::read_resident(path)?)
    }

    /// Like [`GgufFile::load`], and before the bytes become read-only, hands each tensor's
    /// data to `rewrite`, which may transform it in place (same length) and returns whether it
    /// did; [`GgufFile::is_rewritten`] reports that afterwards. For a model loader that keeps
    /// weights in a layout of its own without holding a second copy of them.
    ///
    /// `residency` says whether the bytes are read into the process's own memory or mapped
    /// copy-on-write from the page cache (see [`Residency`]). `may_rewrite` says, from a
    /// tensor's descriptor alone, whether `rewrite` might change it: in a map, only those
    /// tensors are first read into memory of the process's own (the others stay the page
    /// cache's without being read at load).
    pub fn load_rewriting<E>(
        path: &Path,
        residency: Residency,
        may_rewrite: impl Fn(&TensorInfo) -> bool,
        rewrite: impl FnMut(&TensorInfo, &mut [u8]) -> Result<bool, E>,
    ) -> Result<GgufFile, E>
    where
        E: From<GgufError>,
    {
        GgufFile::load_rewriting_cached(path, residency, None, may_rewrite, rewrite)
    }

    /// [`GgufFile::load_rewriting`] with a [`RewriteCache`]: where it holds a rewritten copy
    /// of this very file (same path, length, modification time and inode) made under its
    /// tag, that copy is loaded as it is (mapped read-only, or read in, as `residency` says)
    /// and `rewrite` is not called; otherwise the file is rewritten as without a cache and,
    /// if any tensor was, the copy is stored for the next load (and, mapped, this load
    /// serves from it too). A copy that cannot be stored (no space, no permission) is
    /// reported by [`GgufFile::cache_outcome`], not as an error.
    pub fn load_rewriting_cached<E>(
        path: &Path,
        residency: Residency,
        cache: Option<&RewriteCache>,
        may_rewrite: impl Fn(&TensorInfo) -> bool,
        mut rewrite: impl FnMut(&TensorInfo, &mut [u8]) -> Result<bool, E>,
    ) -> Result<GgufFile, E>
    where
        E: From<GgufError>,
    {
        let meta = std::fs::metadata(path).map_err(GgufError::from)?;
        let residency = residency.resolve(meta.len());
        if let Some(c) = cache {
            if let Some(f) = from_copy::<E>(c, path, &meta, residency, CacheOutcome::Hit)? {
                return Ok(f);
            }
        }
        let bytes = match residency {
            Residency::Mapped => FileBytes::map_writable(path),
            _ => FileBytes::read_writable(path),
        };
        let mut bytes = bytes.map_err(GgufError::from)?;
        let p = parse(bytes.bytes_mut()).map_err(E::from)?;
        let mut rewritten = vec![false; p.tensors.len()];
        for (t, done) in p.tensors.iter().zip(rewritten.iter_mut()) {
            let Some(range) = tensor_range(t).filter(|r| r.end <= bytes.bytes_mut().len()) else {
                continue;
            };
            let owned = may_rewrite(t);
            if owned {
                bytes.own(range.clone()).map_err(GgufError::from)?;
            }
            if let Some(data) = bytes.bytes_mut().get_mut(range.clone()) {
                *done = rewrite(t, data)?;
            }
            if owned && !*done {
                bytes.disown(range).map_err(GgufError::from)?;
            }
        }
        let outcome = match cache {
            None => CacheOutcome::Off,
            Some(_) if !rewritten.contains(&true) => CacheOutcome::NothingRewritten,
            Some(c) => match c.store(path, &meta, bytes.bytes_mut(), &rewritten) {
                Ok(()) => {
                    // Mapped, this process too serves from the copy, whose pages the next
                    // processes share, instead of from memory of its own.
                    if residency == Residency::Mapped {
                        let stored = CacheOutcome::Stored;
                        if let Ok(Some(f)) = from_copy::<E>(c, path, &meta, residency, stored) {
                            return Ok(f);
                        }
                    }
                    CacheOutcome::Stored
                }
                Err(why) => CacheOutcome::NotStored(why),
            },
        };
        let storage = bytes.freeze().map_err(GgufError::from)?;
        Ok(GgufFile::from_parts(storage, p, rewritten, outcome))
    }

    /// What the rewrite cache did for this load (see [`GgufFile::load_rewriting_cached`]).
    pub fn cache_outcome(&self) -> &CacheOutcome {
        &self.cache
    }

    /// Whether `t`'s bytes were rewritten by the loader (see [`GgufFile::load_rewriting`]).
    pub fn is_rewritten(&self, t: &TensorInfo) -> bool {
        self.by_name
            .get(&t.name)
            .and_then(|&i| self.rewritten.get(i))
            .is_some_and(|&r| r)
    }

    /// Parses a GGUF file held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::with_storage(FileBytes::Owned(bytes))
    }

    /// Parses `storage` and takes ownership of it.
    fn with_storage(storage: FileBytes) -> Result<GgufFile, GgufError> {
        let p = parse(&storage[..])?;
        let rewritten = vec![false; p.tensors.len()];
        Ok(GgufFile::from_parts(
            storage,
            p,
            rewritten,
            CacheOutcome::Off,
        ))
    }

    fn from_parts(
        storage: FileBytes,
        p: Parsed,
        rewritten: Vec<bool>,
        cache: CacheOutcome,
    ) -> GgufFile {
        GgufFile {
            storage,
            rewritten,
            cache,
            version: p.version,
            metadata: p.metadata,
            tensors: p.tensors,
            by_name: p.by_name,
            alignment: p.alignment,
            data_offset: p.data_offset,
        }
    }

    /// GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The key-value metadata.
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// Tensor descriptors in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// The descriptor of the tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.get(*self.by_name.get(name)?)
    }

    /// The `t.n_bytes` bytes of tensor `t`'s data. `t` must come from this file; a
    /// descriptor whose range lies outside it yields an empty slice rather than a panic.
    ///
    /// The slice's address is aligned to [`alignment`](Self::alignment) when the file was
    /// opened with [`open`](Self::open) (maps are page-aligned); bytes given to
    /// [`from_bytes`](Self::from_bytes) carry no alignment guarantee.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        tensor_range(t)
            .and_then(|r| self.storage.get(r))
            .unwrap_or(&[])
    }

    /// Alignment of the data section and of every tensor's data, in bytes.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Absolute byte offset where the data section starts.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.len() as u64
    }
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("file_len", &self.file_len())
            .field("metadata_len", &self.metadata.len())
            .field("tensors_len", &self.tensors.len())
            .field("alignment", &self.alignment)
            .finish_non_exhaustive()
    }
}

/// Parses header, metadata and tensor table, validating every tensor against `bytes`.
fn parse(bytes: &[u8]) -> Result<Parsed, GgufError> {
    let mut r = Reader::new(bytes);
    if r.take(4, "magic")? != b"GGUF" {
        return Err(GgufError::BadMagic);
    }
    let version = r.u32("version")?;
    if !(2..=3).contains(&version) {
        return Err(GgufError::UnsupportedVersion(version));
    }
    let n_tensors = r.u64("tensor count")?;
    let n_kv = r.u64("metadata count")?;
    // Early, cheap rejection; each count is checked again right before it is used.
    r.bounded_count(n_tensors, MIN_TENSOR_INFO_SIZE, "tensor count")?;
    let n_kv = r.bounded_count(n_kv, MIN_KV_SIZE, "metadata count")?;

    let mut metadata = Metadata::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = r.string("metadata key")?;
        let ty = r.u32("metadata value type")?;
        let value = read_value(&mut r, ty, 0)?;
        metadata.insert(key, value)?;
    }
    let alignment = alignment(&metadata)?;

    let n_tensors = r.bounded_count(n_tensors, MIN_TENSOR_INFO_SIZE, "tensor count")?;
    let mut raw = Vec::with_capacity(n_tensors);
    let mut by_name = HashMap::with_capacity(n_tensors);
    for i in 0..n_tensors {
        let t = read_tensor_info(&mut r)?;
        if by_name.insert(t.name().to_owned(), i).is_some() {
            return Err(GgufError::DuplicateTensor(t.name().to_owned()));
        }
        raw.push(t);
    }

    let data_offset = align_up(r.pos() as u64, alignment)?;
    let file_len = bytes.len() as u64;
    let tensors = raw
        .into_iter()
        .map(|t| validate(t, data_offset, alignment, file_len))
        .collect::<Result<Vec<_>, _>>()?;

    Ok(Parsed {
        version,
        metadata,
        tensors,
        by_name,
        alignment,
        data_offset,
    })
}

/// The data alignment: `general.alignment` if present (an unsigned integer that is a
/// non-zero power of two), else [`DEFAULT_ALIGNMENT`].
fn alignment(metadata: &Metadata) -> Result<u64, GgufError> {
    let align = match metadata.get(ALIGNMENT_KEY) {
        None => return Ok(DEFAULT_ALIGNMENT),
        Some(Value::U8(v)) => u64::from(*v),
        Some(Value::U16(v)) => u64::from(*v),
        Some(Value::U32(v)) => u64::from(*v),
        Some(Value::U64(v)) => *v,
        Some(other) => {
            return Err(GgufError::WrongType {
                key: ALIGNMENT_KEY.to_owned(),
                expected: "unsigned integer",
                found: other.type_name(),
            })
        }
    };
    if align.is_power_of_two() {
        Ok(align)
    } else {
        Err(GgufError::BadAlignment(align))
    }
}

/// `pos` rounded up to a multiple of `align` (a power of two).
fn align_up(pos: u64, align: u64) -> Result<u64, GgufError> {
    let mask = align.checked_sub(1).ok_or(GgufError::BadAlignment(align))?;
    pos.checked_add(mask)
        .map(|p| p & !mask)
        .ok_or(GgufError::BadAlignment(align))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_rounds_and_reports_overflow() {
        assert_eq!(align_up(0, 32).unwrap(), 0);
        assert_eq!(align_up(33, 32).unwrap(), 64);
        assert_eq!(align_up(64, 64).unwrap(), 64);
        assert!(align_up((1 << 63) + 1, 1 << 63).is_err());
    }

    #[test]
    fn gguf_file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GgufFile>();
    }
}
