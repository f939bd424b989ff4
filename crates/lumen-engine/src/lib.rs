//! The engine: everything between an HTTP request and the model's forward pass.
//!
//! This crate turns text into token ids and back, renders chat templates, and picks each
//! next token; the scheduler, KV block manager and engine loop build on these pieces.
//!
//! # Design
//!
//! **Tokenizer: the `tokenizers` crate under llama.cpp's rules.** GGUF models carry their
//! vocabulary as `tokenizer.ggml.*` metadata, and llama.cpp is the reference for how a
//! GGUF model tokenizes. [`Tokenizer`] builds a `tokenizers` BPE model from that metadata
//! (for SentencePiece vocabularies, merges derived from the scores), so the well-tested
//! merge code and its word cache are reused rather than rewritten. Everything around the
//! merging is Lumen's own and follows llama.cpp: splitting out special tokens (longest
//! first; control tokens only with `parse_special`), the pre-tokenizer expressions of each
//! `tokenizer.ggml.pre` (run on the `regex` crate with llama.cpp's whitespace lookahead
//! emulated, about seven times faster than a backtracking engine), BOS/EOS rules,
//! SentencePiece's leading space, the end-of-generation set, and decoding. A committed
//! fixture of llama.cpp's ids for the default model keeps the two in step.
//!
//! **Detokenization works on bytes.** A byte-level token can be part of a UTF-8
//! character (emoji and CJK often span several tokens), so the tokenizer exposes each
//! token's raw bytes and [`IncrementalDecoder`] emits text only once characters are
//! complete. [`StopMatcher`] then holds back text that might still become a stop
//! string, so neither half characters nor stop strings ever reach a client.
//!
//! **Sampling state is per sequence.** A [`Sampler`] owns one sequence's parameters,
//! penalty counts and seeded random generator. Nothing is shared between sequences, so
//! a seeded request samples the same tokens alone or in any batch (batch invariance),
//! and rows of a batch can be sampled in any order or in parallel.
//!
//! **Chat templates run as Jinja2 does in Hugging Face.** [`ChatTemplate`] uses
//! minijinja with the same whitespace settings, Python string methods, and helpers
//! (`raise_exception`, `strftime_now`, a Python-style `tojson`) that model templates
//! expect; a template's own `raise_exception` comes back as a distinct error.
//!
//! **The engine loop owns the model.** One thread per loaded model owns the weights, the
//! KV block pool and the [`scheduler`]; async callers talk to it through [`EngineHandle`]
//! and per-request event streams, so no async task ever computes. Full KV blocks are named
//! by SHA-256 chain hashes ([`kv`]) and reused across requests with a shared prefix.
//!
//! **Embedding models get their own, simpler engine.** [`EmbedEngine`] is one thread per
//! BERT-family model that drains its queue into forward passes under a token budget, so
//! concurrent requests share passes; see [`embed`].
//!
//! **One error type.** Every module reports through [`EngineError`].

pub mod chat_template;
pub mod constraint;
pub mod detokenize;
pub mod embed;
pub mod engine;
pub mod error;
pub mod explain;
pub mod kv;
pub mod registry;
pub mod request;
pub mod sampler;
pub mod scheduler;
pub mod stop;
pub mod tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate, FunctionCallMessage, ToolCallMessage};
pub use constraint::{
    CompiledConstraint, Constraint, ConstraintCompiler, ConstraintSpec, ToolCallParser,
    ToolCalling, ToolChoice, ToolDef, ToolEvent,
};
pub use detokenize::IncrementalDecoder;
pub use embed::{
    EmbedConfig, EmbedEngine, EmbedHandle, EmbedInfo, EmbedInput, EmbedStats, EmbeddingModel,
    MAX_EMBED_INPUTS,
};
pub use engine::{
    ComputeTime, Engine, EngineConfig, EngineHandle, EngineStats, ModelInfo, RequestStream,
    SpecConfig, BLOCK_SIZE,
};
pub use error::{ChatTemplateError, EngineError, SamplingError, TokenizerError};
pub use lumen_models::{Residency, WeightLayout};
pub use request::limits::{
    MAX_CHOICES, MAX_GRAMMAR_BYTES, MAX_GUIDED_CHOICES, MAX_LOGIT_BIAS, MAX_LOGPROBS, MAX_STOP,
    MAX_STOP_BYTES, MAX_TOOLS,
};
pub use request::{
    Api, CallerId, Event, FinishReason, GenerationParams, Priority, PriorityInput, TokenLogprob,
    Usage, ValidParams, ValidRequest,
};
pub use sampler::{
    log_softmax_top_n, logsumexp, Sampled, Sampler, SamplingParams, TokenUncertainty,
};
pub use scheduler::SchedulerConfig;
pub use stop::{StopMatcher, StopOutput};
pub use tokenizer::{GgufVocab, TokenType, Tokenizer, VocabKind};
