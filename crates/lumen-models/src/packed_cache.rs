//! The packed cache: copies of model files with their matrices already in the packed layout,
//! so that a big model is rewritten once, at its first load, and every later start (of this
//! process or another) maps the copy: ready in about a second instead of the 16-26 s that
//! rewriting an 8B-shaped Q4_K_M file took on the development machine, and with its pages
//! shared by every server on the same machine (see [`lumen_gguf::RewriteCache`]).
//!
//! `LUMEN_PACKED_CACHE` says which files get a copy: `auto` (the default) those from
//! [`lumen_gguf::MAP_FROM_BYTES`] (1 GiB) on, the size from which they are mapped rather
//! than read in, and where rewriting at every start costs seconds; `always` every file the
//! packed layout rewrites; `off` none. `LUMEN_PACKED_CACHE_DIR` says where (default
//! `$LUMEN_HOME/cache/packed`). A copy is as big as its model, one per model file and
//! [`lumen_kernels::PACKED_LAYOUT_VERSION`]; deleting the directory is always safe.
//! `LUMEN_PACKED_CACHE_MAX` (a size such as `40GiB`) bounds the directory: storing a copy
//! removes the least recently used others until it fits, and a model bigger than the bound
//! is rewritten at every start instead, as without the cache.

use std::path::PathBuf;

use lumen_gguf::RewriteCache;

/// Which files get a packed copy (`LUMEN_PACKED_CACHE`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PackedCachePolicy {
    /// Files from [`lumen_gguf::MAP_FROM_BYTES`] on.
    #[default]
    Auto,
    /// Every file the packed layout rewrites.
    Always,
    /// None.
    Off,
}

impl std::str::FromStr for PackedCachePolicy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(PackedCachePolicy::Auto),
            "always" | "on" => Ok(PackedCachePolicy::Always),
            "off" | "never" => Ok(PackedCachePolicy::Off),
            other => Err(format!(
                "LUMEN_PACKED_CACHE={other:?}: expected `auto`, `always` or `off`"
            )),
        }
    }
}

impl PackedCachePolicy {
    /// From `LUMEN_PACKED_CACHE`; anything but its three values is refused.
    pub fn from_env() -> Result<PackedCachePolicy, String> {
        std::env::var("LUMEN_PACKED_CACHE").map_or(Ok(PackedCachePolicy::default()), |v| v.parse())
    }

    /// Whether a file of `len` bytes gets a copy.
    pub fn covers(self, len: u64) -> bool {
        match self {
            PackedCachePolicy::Auto => len >= lumen_gguf::MAP_FROM_BYTES,
            PackedCachePolicy::Always => true,
            PackedCachePolicy::Off => false,
        }
    }
}

/// The cache for a packed file of `len` bytes under the environment's policy, if it gets one.
pub fn packed_cache(len: u64) -> Result<Option<RewriteCache>, String> {
    if !PackedCachePolicy::from_env()?.covers(len) {
        return Ok(None);
    }
    let dir = match std::env::var_os("LUMEN_PACKED_CACHE_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => lumen_home().join("cache").join("packed"),
    };
    let tag = format!("packed-{}", lumen_kernels::PACKED_LAYOUT_VERSION);
    Ok(Some(
        RewriteCache::new(dir, &tag).with_limit(limit_from_env()?),
    ))
}

/// The bound `LUMEN_PACKED_CACHE_MAX` sets, if any.
pub fn limit_from_env() -> Result<Option<u64>, String> {
    cache_limit(std::env::var("LUMEN_PACKED_CACHE_MAX").ok().as_deref())
}

/// The bound `LUMEN_PACKED_CACHE_MAX` sets on the cache's bytes: none when unset or empty.
fn cache_limit(value: Option<&str>) -> Result<Option<u64>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => crate::parse_byte_size(v)
            .map(Some)
            .map_err(|e| format!("LUMEN_PACKED_CACHE_MAX: {e}")),
    }
}

/// `$LUMEN_HOME`, or `~/.lumen` when unset or empty (`./.lumen` without a `HOME`).
pub fn lumen_home() -> PathBuf {
    match std::env::var_os("LUMEN_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".lumen"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_is_named_or_refused() {
        assert_eq!("auto".parse(), Ok(PackedCachePolicy::Auto));
        assert_eq!(" Always".parse(), Ok(PackedCachePolicy::Always));
        assert_eq!("off".parse(), Ok(PackedCachePolicy::Off));
        let err = "sometimes".parse::<PackedCachePolicy>().unwrap_err();
        assert!(err.contains("auto") && err.contains("always") && err.contains("off"));
        let big = lumen_gguf::MAP_FROM_BYTES;
        assert!(!PackedCachePolicy::Auto.covers(big - 1));
        assert!(PackedCachePolicy::Auto.covers(big));
        assert!(PackedCachePolicy::Always.covers(1));
        assert!(!PackedCachePolicy::Off.covers(big));
    }

    #[test]
    fn the_limit_is_a_size_or_none() {
        assert_eq!(cache_limit(None), Ok(None));
        assert_eq!(cache_limit(Some(" ")), Ok(None));
        assert_eq!(cache_limit(Some("40GiB")), Ok(Some(40 << 30)));
        let err = cache_limit(Some("lots")).unwrap_err();
        assert!(err.contains("LUMEN_PACKED_CACHE_MAX"), "{err}");
    }
}
