//! The crate's one error type.

use lumen_gguf::GgufError;
use lumen_kernels::KernelError;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The GGUF file could not be read.
    #[error("gguf: {0}")]
    Gguf(#[from] GgufError),
    /// A kernel rejected a weight (wrong size, unaligned row).
    #[error("kernel: {0}")]
    Kernel(#[from] KernelError),
    /// Reading a model file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The architecture named by the file is not one Lumen implements.
    #[error("unsupported architecture `{0}`")]
    UnsupportedArch(String),
    /// A tensor the architecture needs is missing.
    #[error("missing tensor `{0}`")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("tensor `{name}` has shape {got:?}, expected {expected:?}")]
    BadShape {
        /// The tensor.
        name: String,
        /// Its shape in the file.
        got: Vec<u64>,
        /// The shape the architecture needs.
        expected: Vec<u64>,
    },
    /// A tensor is stored in a format Lumen cannot compute with.
    #[error("tensor `{name}` uses unsupported type {ty} (supported: {supported})")]
    UnsupportedType {
        /// The tensor.
        name: String,
        /// Its GGUF type.
        ty: String,
        /// The types that would have loaded, comma-separated.
        supported: String,
    },
    /// A hyper-parameter is missing, zero or inconsistent.
    #[error("invalid model config: {0}")]
    BadConfig(String),
    /// A safetensors file is malformed.
    #[error("safetensors: {0}")]
    Safetensors(String),
    /// A JSON config file is malformed.
    #[error("{path}: {message}")]
    BadJson {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
    /// A batch given to the forward pass is inconsistent (a caller bug or bad input).
    #[error("invalid batch: {0}")]
    BadBatch(String),
}
