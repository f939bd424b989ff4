//! Model architectures and their forward passes.
//!
//! `lumen-models` turns weight files into something that computes: it validates a file's
//! hyper-parameters and tensor shapes at load time, so the forward pass can assume them, and
//! runs the forward pass over a ragged batch on the kernels crate. It never owns the KV block
//! pool's bookkeeping or sampling (that is `lumen-engine`); [`KvStorage`] is only the memory.
pub mod bert;
pub mod byte_size;
pub mod error;
pub mod kv;
pub mod llama;
pub mod packed_cache;
pub mod weights;

pub use byte_size::parse_byte_size;
pub use error::ModelError;
pub use kv::KvStorage;
pub use llama::{
    AttentionRow, DlaPart, DlaProbe, DlaTerm, DlaTerms, ForwardHook, ForwardWorkspace, LlamaConfig,
    LlamaModel, LogitsWanted, Observer, PassCache, PassOutput, Probe, SeqChunk, TeacherForced,
};
pub use lumen_gguf::{CacheOutcome, Residency};
pub use packed_cache::{lumen_home, PackedCachePolicy};
pub use weights::{check_load_env, WeightLayout};
