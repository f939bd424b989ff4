//! A handler's hold on a loaded model: while any lease on a model lives, it is not unloaded.

use std::sync::Arc;

use super::ModelManager;
use crate::error::ServerError;
use crate::state::{ChatServed, EmbeddingServed, ServedModel};

/// A hold on one loaded model; cloning takes another, dropping releases it.
pub struct Lease {
    manager: Arc<ModelManager>,
    name: String,
    served: ServedModel,
}

impl Lease {
    pub(super) fn new(manager: Arc<ModelManager>, name: String, served: ServedModel) -> Lease {
        Lease {
            manager,
            name,
            served,
        }
    }

    /// The model's engine.
    pub fn served(&self) -> &ServedModel {
        &self.served
    }

    /// This lease as a chat model's, or 400 if the model is of another kind.
    pub fn into_chat(self) -> Result<ChatLease, ServerError> {
        match &self.served {
            ServedModel::Chat(c) => Ok(ChatLease {
                model: c.clone(),
                _lease: self,
            }),
            ServedModel::Embedding(e) => Err(ServerError::WrongModelKind {
                model: e.name.clone(),
                expected: "chat",
            }),
        }
    }

    /// This lease as an embedding model's, or 400 if the model is of another kind.
    pub fn into_embedding(self) -> Result<EmbedLease, ServerError> {
        match &self.served {
            ServedModel::Embedding(e) => Ok(EmbedLease {
                model: e.clone(),
                _lease: self,
            }),
            ServedModel::Chat(c) => Err(ServerError::WrongModelKind {
                model: c.name.clone(),
                expected: "embedding",
            }),
        }
    }
}

impl Clone for Lease {
    fn clone(&self) -> Lease {
        self.manager.add_lease(&self.name);
        Lease {
            manager: self.manager.clone(),
            name: self.name.clone(),
            served: self.served.clone(),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.manager.release(&self.name);
    }
}

/// A lease on a chat model; dereferences to the model.
#[derive(Clone)]
pub struct ChatLease {
    model: Arc<ChatServed>,
    _lease: Lease,
}

impl std::ops::Deref for ChatLease {
    type Target = ChatServed;
    fn deref(&self) -> &ChatServed {
        &self.model
    }
}

/// A lease on an embedding model; dereferences to the model.
#[derive(Clone)]
pub struct EmbedLease {
    model: Arc<EmbeddingServed>,
    _lease: Lease,
}

impl std::ops::Deref for EmbedLease {
    type Target = EmbeddingServed;
    fn deref(&self) -> &EmbeddingServed {
        &self.model
    }
}
