//! Llama-family decoder models (llama, mistral, qwen2, qwen3, smollm).
//!
//! One loader and one forward pass serve every variant: what differs between them (Q/K/V
//! biases, per-head Q/K norms, RoPE layout) is read from the file as optional tensors and a
//! per-architecture RoPE style, never a copied loader.
mod config;
mod explain;
mod explain_prefix;
mod forward;
mod hook;
mod model;

pub use config::{LlamaConfig, LlamaVariant};
pub use explain::{
    AttentionRow, DlaPart, DlaProbe, DlaTerm, DlaTerms, PassOutput, Probe, TeacherForced,
};
pub use explain_prefix::PassCache;
pub use forward::{ForwardWorkspace, LogitsWanted, SeqChunk};
pub use hook::{ForwardHook, Observer};
pub use model::LlamaModel;
