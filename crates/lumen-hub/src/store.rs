//! The folders under `$LUMEN_HOME`: `models/NAME/` (installed) and `.partial/NAME/` (a pull or
//! import in progress), the manifest each installed model carries, and removal.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::HubError;

/// The manifest file written into every model folder Lumen installs.
pub const MANIFEST: &str = ".lumen.json";

/// Where a model came from and what its weights hash to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// `catalog PACKAGE==VERSION` or `import PATH`.
    pub source: String,
    /// The weights file, relative to the model folder.
    pub main_file: String,
    /// SHA-256 of the weights file when installed.
    pub sha256: String,
    /// The license, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub license: Option<String>,
}

/// `$LUMEN_HOME` and the layout below it.
#[derive(Clone, Debug)]
pub struct Store {
    home: PathBuf,
}

/// Whether `name` can be a model name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with `.`
/// or `-` (so it is never a hidden folder, an option or a path).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// `name` if it is a valid model name, else the error saying what is allowed.
pub fn check_name(name: &str) -> Result<&str, HubError> {
    if valid_name(name) {
        Ok(name)
    } else {
        Err(HubError::InvalidName(name.to_string()))
    }
}

impl Store {
    /// The store under `home`.
    pub fn new(home: impl Into<PathBuf>) -> Store {
        Store { home: home.into() }
    }

    /// `$LUMEN_HOME`.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// `$LUMEN_HOME/models`.
    pub fn models_dir(&self) -> PathBuf {
        self.home.join("models")
    }

    /// `$LUMEN_HOME/models/NAME`.
    pub fn model_dir(&self, name: &str) -> PathBuf {
        self.models_dir().join(name)
    }

    /// `$LUMEN_HOME/.partial/NAME`: the staging folder of a pull or import of `name`.
    pub fn partial_dir(&self, name: &str) -> PathBuf {
        self.home.join(".partial").join(name)
    }

    /// Deletes the staging folder of `name`, and `.partial` itself once empty.
    pub fn clear_partial(&self, name: &str) {
        let _ = std::fs::remove_dir_all(self.partial_dir(name));
        let _ = std::fs::remove_dir(self.home.join(".partial"));
    }

    /// Whether a model called `name` is installed.
    pub fn is_installed(&self, name: &str) -> bool {
        self.model_dir(name).is_dir()
    }

    /// The manifest of the installed model `name`, if it has one.
    pub fn manifest(&self, name: &str) -> Option<Manifest> {
        let text = std::fs::read_to_string(self.model_dir(name).join(MANIFEST)).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// Writes `manifest` into the staged folder `dir`.
    pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), HubError> {
        let path = dir.join(MANIFEST);
        let text = serde_json::to_string_pretty(manifest).map_err(|e| HubError::Io {
            what: "writing",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&path, text).map_err(HubError::io("writing", &path))
    }

    /// Moves the staged, verified folder `staged` into place as model `name` (one rename, so
    /// `serve` never sees half a model).
    pub fn install(&self, staged: &Path, name: &str) -> Result<PathBuf, HubError> {
        let dest = self.model_dir(check_name(name)?);
        if dest.exists() {
            return Err(HubError::AlreadyInstalled(name.to_string()));
        }
        let models = self.models_dir();
        std::fs::create_dir_all(&models).map_err(HubError::io("creating", &models))?;
        std::fs::rename(staged, &dest).map_err(HubError::io("moving into place", &dest))?;
        Ok(dest)
    }

    /// Deletes the installed model `name`.
    pub fn remove(&self, name: &str) -> Result<PathBuf, HubError> {
        let dir = self.model_dir(check_name(name)?);
        if !dir.is_dir() {
            return Err(HubError::NotInstalled {
                name: name.to_string(),
                dir: self.models_dir(),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(HubError::io("removing", &dir))?;
        Ok(dir)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_folder_names_only() {
        for ok in ["smollm2", "all-minilm-l6-v2", "Qwen2.5_7B", "a"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "-rf",
            "a/b",
            "a\\b",
            "a b",
            "é",
            &"x".repeat(65),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn install_and_remove() {
        let home = std::env::temp_dir().join(format!("lumen-hub-store-{}", std::process::id()));
        let store = Store::new(&home);
        let staged = store.partial_dir("m");
        std::fs::create_dir_all(&staged).unwrap();
        Store::write_manifest(
            &staged,
            &Manifest {
                source: "test".into(),
                ..Default::default()
            },
        )
        .unwrap();
        store.install(&staged, "m").unwrap();
        assert_eq!(store.manifest("m").unwrap().source, "test");
        std::fs::create_dir_all(&staged).unwrap();
        assert!(matches!(
            store.install(&staged, "m"),
            Err(HubError::AlreadyInstalled(_))
        ));
        store.remove("m").unwrap();
        assert!(matches!(
            store.remove("m"),
            Err(HubError::NotInstalled { .. })
        ));
        assert!(matches!(
            store.remove("../x"),
            Err(HubError::InvalidName(_))
        ));
        std::fs::remove_dir_all(&home).unwrap();
    }
}
