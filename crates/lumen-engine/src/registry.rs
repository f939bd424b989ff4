//! Where models live on disk and how a name or path becomes a loaded chat model.
//!
//! `$LUMEN_HOME/models/<name>/` holds one model: a single `.gguf` file (chat models) or a
//! sentence-transformers folder with `config.json` and `model.safetensors` (embedding models).
//! A name may also be a path to a `.gguf` file or to such a folder.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lumen_models::weights::{load_gguf, WeightLayout};
use lumen_models::LlamaModel;

use crate::chat_template::ChatTemplate;
use crate::tokenizer::Tokenizer;
use crate::EngineError;

pub use crate::embed::EmbeddingModel;

/// What kind of model a location holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelKind {
    /// A GGUF decoder model for chat and completions.
    Chat,
    /// A BERT-family sentence embedding model.
    Embedding,
}

/// A model found on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelLocation {
    /// The name it is served under.
    pub name: String,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// The `.gguf` file, or the embedding model's folder.
    pub path: PathBuf,
}

pub use lumen_models::lumen_home;

fn classify_dir(dir: &Path) -> Option<(ModelKind, PathBuf)> {
    if dir.join("config.json").is_file() && dir.join("model.safetensors").is_file() {
        return Some((ModelKind::Embedding, dir.to_path_buf()));
    }
    let mut ggufs: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "gguf"))
        .collect();
    ggufs.sort();
    ggufs.into_iter().next().map(|p| (ModelKind::Chat, p))
}

/// The error for a folder that exists but holds no model Lumen recognizes, saying what is
/// missing (an embedding folder without `config.json` is not "not found").
fn not_a_model(dir: &Path) -> EngineError {
    let has = |f: &str| dir.join(f).is_file();
    let missing: Vec<&str> = ["config.json", "model.safetensors"]
        .into_iter()
        .filter(|f| !has(f))
        .collect();
    let reason = if missing.len() < 2 {
        format!(
            "an embedding model folder needs config.json and model.safetensors; missing: {}",
            missing.join(", ")
        )
    } else {
        "no .gguf file (a chat model) and no config.json + model.safetensors (an embedding model)"
            .to_string()
    };
    EngineError::NotAModel {
        path: dir.to_path_buf(),
        reason,
    }
}

fn stem(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into())
}

/// Resolves a model name (under `home/models`) or a path.
pub fn resolve(name_or_path: &str, home: &Path) -> Result<ModelLocation, EngineError> {
    let as_path = Path::new(name_or_path);
    if as_path.is_file() {
        return Ok(ModelLocation {
            name: stem(as_path),
            kind: ModelKind::Chat,
            path: as_path.to_path_buf(),
        });
    }
    if as_path.is_dir() {
        if let Some((kind, path)) = classify_dir(as_path) {
            return Ok(ModelLocation {
                name: stem(as_path),
                kind,
                path,
            });
        }
        return Err(not_a_model(as_path));
    }
    let dir = home.join("models").join(name_or_path);
    let valid_name =
        !name_or_path.is_empty() && !name_or_path.contains(['/', '\\']) && name_or_path != "..";
    if valid_name && dir.is_dir() {
        if let Some((kind, path)) = classify_dir(&dir) {
            return Ok(ModelLocation {
                name: name_or_path.to_string(),
                kind,
                path,
            });
        }
        return Err(not_a_model(&dir));
    }
    Err(EngineError::ModelNotFound {
        name: name_or_path.to_string(),
        looked_in: dir,
    })
}

/// Every model under `home/models`, sorted by name.
pub fn list(home: &Path) -> Vec<ModelLocation> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(home.join("models")) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some((kind, path)) = classify_dir(&e.path()) {
                out.push(ModelLocation { name, kind, path });
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// A chat model with what it needs to turn messages into tokens and back.
pub struct ChatModel {
    /// Served name.
    pub name: String,
    /// Weights and forward pass.
    pub model: Arc<LlamaModel>,
    /// The tokenizer from the file's metadata.
    pub tokenizer: Arc<Tokenizer>,
    /// The file's chat template (ChatML when it has none).
    pub template: ChatTemplate,
}

impl ChatModel {
    /// Loads the GGUF model at `loc`, weights in the default layout.
    pub fn load(loc: &ModelLocation) -> Result<ChatModel, EngineError> {
        Self::load_with(loc, WeightLayout::default())
    }

    /// Loads the GGUF model at `loc` with its linear weights in `layout`.
    pub fn load_with(loc: &ModelLocation, layout: WeightLayout) -> Result<ChatModel, EngineError> {
        if loc.kind != ModelKind::Chat {
            return Err(EngineError::WrongModelKind {
                name: loc.name.clone(),
                expected: "chat",
            });
        }
        let file = Arc::new(load_gguf(&loc.path, layout)?);
        let model = LlamaModel::load(file.clone(), layout)?;
        let tokenizer = Tokenizer::from_gguf(file.metadata())?;
        let template = ChatTemplate::from_metadata(file.metadata(), &tokenizer)?;
        Ok(ChatModel {
            name: loc.name.clone(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
            template,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_model_names_the_place_looked() {
        let home = std::env::temp_dir().join("lumen-registry-test-none");
        let err = resolve("nope", &home).unwrap_err().to_string();
        assert!(
            err.contains("nope") && err.contains("lumen-registry-test-none"),
            "{err}"
        );
    }

    #[test]
    fn finds_gguf_and_embedding_dirs() {
        let home = std::env::temp_dir().join(format!("lumen-registry-test-{}", std::process::id()));
        let chat = home.join("models/chatty");
        let emb = home.join("models/embedder");
        std::fs::create_dir_all(&chat).unwrap();
        std::fs::create_dir_all(&emb).unwrap();
        std::fs::write(chat.join("m.gguf"), b"x").unwrap();
        std::fs::write(emb.join("config.json"), b"{}").unwrap();
        std::fs::write(emb.join("model.safetensors"), b"x").unwrap();
        let c = resolve("chatty", &home).unwrap();
        assert_eq!(
            (c.kind, c.path.clone()),
            (ModelKind::Chat, chat.join("m.gguf"))
        );
        assert_eq!(
            resolve("embedder", &home).unwrap().kind,
            ModelKind::Embedding
        );
        assert_eq!(list(&home).len(), 2);
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn a_folder_without_a_model_says_what_is_missing() {
        let home =
            std::env::temp_dir().join(format!("lumen-registry-test-half-{}", std::process::id()));
        let half = home.join("models/half");
        std::fs::create_dir_all(&half).unwrap();
        std::fs::write(half.join("model.safetensors"), b"x").unwrap();
        let by_name = resolve("half", &home).unwrap_err();
        let by_path = resolve(half.to_str().unwrap(), &home).unwrap_err();
        for err in [by_name, by_path] {
            assert!(matches!(err, EngineError::NotAModel { .. }), "{err:?}");
            let text = err.to_string();
            assert!(
                text.contains("missing: config.json") && !text.contains("not found"),
                "{text}"
            );
        }
        std::fs::remove_dir_all(&home).unwrap();
    }
}
