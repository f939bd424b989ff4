//! `lumen pull PATH --name NAME`: a local GGUF file or sentence-transformers folder.
//!
//! The files are copied (or hard-linked with `--link`, when on the same file system) into the
//! staging folder, hashed on the way, then loaded by the serving code: header, metadata,
//! tensor table and shapes, tokenizer and chat template. Only a model that loads is moved
//! into `models/`; anything else is refused with the reader's own error and the staging
//! folder is deleted, so nothing is installed.

use std::path::{Path, PathBuf};

use lumen_engine::registry::{resolve, ChatModel, EmbeddingModel, ModelKind};

use crate::digest::{copy_hashing, sha256_file};
use crate::error::HubError;
use crate::store::{check_name, Manifest, Store};

/// Loads the model in `dir` as `serve` would; the reader's error if it cannot.
pub fn validate(dir: &Path, name: &str) -> Result<ModelKind, HubError> {
    let refused = |reason: String| HubError::Refused {
        path: dir.to_path_buf(),
        reason,
    };
    let dir_str = dir
        .to_str()
        .ok_or_else(|| refused("the path is not UTF-8".into()))?;
    let mut loc = resolve(dir_str, dir).map_err(|e| refused(e.to_string()))?;
    loc.name = name.to_string();
    match loc.kind {
        ModelKind::Chat => {
            ChatModel::load(&loc).map_err(|e| refused(e.to_string()))?;
        }
        ModelKind::Embedding => {
            EmbeddingModel::load(&loc).map_err(|e| refused(e.to_string()))?;
        }
    }
    Ok(loc.kind)
}

/// Copies (or hard-links) `from` to `to`, returning the SHA-256 of the staged file.
fn stage_file(from: &Path, to: &Path, link: bool) -> Result<String, HubError> {
    if link && std::fs::hard_link(from, to).is_ok() {
        return sha256_file(to);
    }
    let label = format!(
        "copying {}",
        from.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    );
    copy_hashing(from, to, &label)
}

/// Copies the regular files of the folder `from` (recursively) into `to`; symbolic links
/// are refused, since they could point anywhere.
fn stage_dir(from: &Path, to: &Path, link: bool) -> Result<(), HubError> {
    std::fs::create_dir_all(to).map_err(HubError::io("creating", to))?;
    for e in std::fs::read_dir(from).map_err(HubError::io("listing", from))? {
        let e = e.map_err(HubError::io("listing", from))?;
        let ty = e.file_type().map_err(HubError::io("reading", e.path()))?;
        let target = to.join(e.file_name());
        if ty.is_symlink() {
            return Err(HubError::Refused {
                path: e.path(),
                reason: "symbolic links are not imported".into(),
            });
        } else if ty.is_dir() {
            stage_dir(&e.path(), &target, link)?;
        } else if ty.is_file() {
            stage_file(&e.path(), &target, link)?;
        }
    }
    Ok(())
}

/// Imports the GGUF file or model folder at `src` as `name`.
pub fn import(
    store: &Store,
    src: &Path,
    name: &str,
    link: bool,
    say: &mut dyn FnMut(String),
) -> Result<PathBuf, HubError> {
    check_name(name)?;
    if store.is_installed(name) {
        return Err(HubError::AlreadyInstalled(name.to_string()));
    }
    let meta = std::fs::metadata(src).map_err(HubError::io("reading", src))?;
    let stage = store.partial_dir(name);
    let _ = std::fs::remove_dir_all(&stage);
    let out = stage.join("out");
    std::fs::create_dir_all(&out).map_err(HubError::io("creating", &out))?;
    let result = (|| {
        let (main_file, sha256) = if meta.is_file() {
            let file_name = src
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let file_name = if file_name.ends_with(".gguf") {
                file_name
            } else {
                format!("{name}.gguf")
            };
            let sha = stage_file(src, &out.join(&file_name), link)?;
            (file_name, sha)
        } else {
            stage_dir(src, &out, link)?;
            let main = "model.safetensors".to_string();
            let sha = if out.join(&main).is_file() {
                sha256_file(&out.join(&main))?
            } else {
                String::new()
            };
            (main, sha)
        };
        // Name the user's file in the refusal, not the staging copy.
        let kind = validate(&out, name).map_err(|e| match e {
            HubError::Refused { reason, .. } => HubError::Refused {
                path: src.to_path_buf(),
                reason,
            },
            other => other,
        })?;
        say(format!(
            "{} read and accepted as a {} model (sha256 {sha256})",
            src.display(),
            match kind {
                ModelKind::Chat => "chat",
                ModelKind::Embedding => "embedding",
            }
        ));
        Store::write_manifest(
            &out,
            &Manifest {
                source: format!("import {}", src.display()),
                main_file,
                sha256,
                license: None,
            },
        )?;
        store.install(&out, name)
    })();
    store.clear_partial(name);
    result
}
