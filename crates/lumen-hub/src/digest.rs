//! SHA-256 of files, streamed (weights are hundreds of megabytes), with progress.

use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::HubError;
use crate::progress::Progress;

const CHUNK: usize = 1 << 20;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 of the file at `path`, as hex.
pub fn sha256_file(path: &Path) -> Result<String, HubError> {
    let mut f = File::open(path).map_err(HubError::io("opening", path))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut progress = Progress::new(format!("verifying {name}"), len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf).map_err(HubError::io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        progress.add(n as u64);
    }
    progress.finish();
    Ok(hex(&h.finalize()))
}

/// Checks `path` against `expected`; on a mismatch deletes the file and says so.
pub fn verify_or_delete(path: &Path, expected: &str) -> Result<(), HubError> {
    let got = sha256_file(path)?;
    if got.eq_ignore_ascii_case(expected) {
        return Ok(());
    }
    let _ = std::fs::remove_file(path);
    Err(HubError::ChecksumMismatch {
        file: path.to_path_buf(),
        expected: expected.to_string(),
        got,
    })
}

/// Copies `from` to `to` (a new file), returning the SHA-256 of what was written.
pub fn copy_hashing(from: &Path, to: &Path, label: &str) -> Result<String, HubError> {
    let mut src = File::open(from).map_err(HubError::io("opening", from))?;
    let len = src.metadata().map(|m| m.len()).unwrap_or(0);
    let mut dst = File::create(to).map_err(HubError::io("creating", to))?;
    let mut progress = Progress::new(label, len);
    let mut h = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = src.read(&mut buf).map_err(HubError::io("reading", from))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        dst.write_all(&buf[..n])
            .map_err(HubError::io("writing", to))?;
        progress.add(n as u64);
    }
    dst.sync_all().map_err(HubError::io("syncing", to))?;
    progress.finish();
    Ok(hex(&h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_deletes_on_mismatch() {
        let dir = std::env::temp_dir().join(format!("lumen-hub-digest-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("abc");
        std::fs::write(&f, b"abc").unwrap();
        let abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
        assert_eq!(sha256_file(&f).unwrap(), abc);
        let copy = dir.join("copy");
        assert_eq!(copy_hashing(&f, &copy, "copy").unwrap(), abc);
        verify_or_delete(&copy, abc).unwrap();
        let err = verify_or_delete(&copy, &"0".repeat(64)).unwrap_err();
        assert!(err.to_string().contains("deleted it"), "{err}");
        assert!(!copy.exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
