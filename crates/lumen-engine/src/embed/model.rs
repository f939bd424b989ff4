//! Loading an embedding model found by the registry: the BERT encoder and its
//! `tokenizer.json`.

use std::sync::Arc;

use lumen_models::bert::BertModel;

use crate::registry::{ModelKind, ModelLocation};
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// An embedding model with the tokenizer that turns text into its ids.
pub struct EmbeddingModel {
    /// Served name.
    pub name: String,
    /// Weights, pooling and forward pass.
    pub model: Arc<BertModel>,
    /// The folder's `tokenizer.json` (its own padding and truncation turned off).
    pub tokenizer: Arc<Tokenizer>,
}

impl EmbeddingModel {
    /// Loads the sentence-transformers folder at `loc`.
    pub fn load(loc: &ModelLocation) -> Result<EmbeddingModel, EngineError> {
        if loc.kind != ModelKind::Embedding {
            return Err(EngineError::WrongModelKind {
                name: loc.name.clone(),
                expected: "embedding",
            });
        }
        let model = BertModel::load(&loc.path)?;
        let tj = loc.path.join("tokenizer.json");
        if !tj.is_file() {
            return Err(EngineError::Model(format!(
                "{} has no tokenizer.json",
                loc.path.display()
            )));
        }
        let tokenizer = Tokenizer::from_tokenizer_json(&tj)?;
        if tokenizer.vocab_size() > model.config().vocab_size {
            return Err(EngineError::InvalidVocab(format!(
                "tokenizer.json has {} tokens but the model's vocabulary only {}",
                tokenizer.vocab_size(),
                model.config().vocab_size
            )));
        }
        Ok(EmbeddingModel {
            name: loc.name.clone(),
            model: Arc::new(model),
            tokenizer: Arc::new(tokenizer),
        })
    }
}
