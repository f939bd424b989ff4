//! The crate's single error type.
//!
//! Each module family reports through [`EngineError`]; the aliases
//! ([`TokenizerError`], [`ChatTemplateError`], [`SamplingError`]) only name
//! which family a function belongs to, so callers can match one enum.

/// Everything that can go wrong in the engine crate.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Reading tokenizer metadata from the GGUF file failed.
    #[error("tokenizer metadata: {0}")]
    Gguf(#[from] lumen_gguf::GgufError),

    /// The vocabulary is empty, inconsistent or malformed.
    #[error("invalid tokenizer vocabulary: {0}")]
    InvalidVocab(String),

    /// `tokenizer.ggml.model` names a tokenizer Lumen does not implement.
    #[error("unsupported tokenizer model '{0}' (supported: gpt2, llama)")]
    UnsupportedTokenizer(String),

    /// A token id is not below the vocabulary size.
    #[error("token id {id} is out of range for a vocabulary of {vocab_size} tokens")]
    TokenOutOfRange {
        /// The offending id.
        id: u32,
        /// Number of tokens in the vocabulary.
        vocab_size: usize,
    },

    /// The underlying `tokenizers` crate reported an error.
    #[error("tokenizer: {0}")]
    Tokenizer(String),

    /// The chat template does not parse.
    #[error("chat template syntax error: {0}")]
    TemplateSyntax(String),

    /// The chat template failed while rendering.
    #[error("chat template render error: {0}")]
    TemplateRender(String),

    /// The chat template called `raise_exception` (usually: unsupported roles or order).
    #[error("chat template rejected the conversation: {0}")]
    TemplateException(String),

    /// The chat template exceeded its budget (size, instructions, depth or time): the
    /// model file's template is hostile or broken, or the conversation makes it so.
    #[error("chat template budget exceeded: {0}")]
    TemplateBudget(String),

    /// A chat message does not have the expected shape.
    #[error("invalid chat message: {0}")]
    InvalidMessage(String),

    /// Loading or running the model failed.
    #[error("model: {0}")]
    Model(String),

    /// No model by that name or path.
    #[error("model '{name}' not found (looked for a file or folder of that name, and in {looked_in})", looked_in = looked_in.display())]
    ModelNotFound {
        /// What was asked for.
        name: String,
        /// The folder under `$LUMEN_HOME/models` that was checked.
        looked_in: std::path::PathBuf,
    },

    /// A folder was found where a model was expected, but it holds no model.
    #[error("'{path}' is not a model folder: {reason}", path = path.display())]
    NotAModel {
        /// The folder.
        path: std::path::PathBuf,
        /// What is missing.
        reason: String,
    },

    /// The model exists but is of the other kind (chat vs embedding).
    #[error("model '{name}' is of another kind than needed here ({expected})")]
    WrongModelKind {
        /// The model.
        name: String,
        /// The kind the caller needed.
        expected: &'static str,
    },

    /// The engine was configured with impossible limits.
    #[error("engine configuration: {0}")]
    Config(String),

    /// A request parameter is invalid for this model (names the OpenAI parameter).
    #[error("{message}")]
    InvalidRequest {
        /// The request parameter at fault.
        param: &'static str,
        /// What is wrong.
        message: String,
    },

    /// Too many requests in flight; try again later.
    #[error("the server is at capacity: too many requests in flight")]
    QueueFull,

    /// The engine thread has stopped.
    #[error("the engine has stopped")]
    Stopped,

    /// A sampling parameter is out of its allowed range.
    #[error("invalid sampling parameter '{field}': {reason}")]
    InvalidSampling {
        /// Name of the field as it appears in the API.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

impl From<lumen_models::ModelError> for EngineError {
    fn from(e: lumen_models::ModelError) -> Self {
        EngineError::Model(e.to_string())
    }
}

/// Errors from the tokenizer family ([`crate::Tokenizer`], [`crate::IncrementalDecoder`]).
pub type TokenizerError = EngineError;
/// Errors from [`crate::ChatTemplate`].
pub type ChatTemplateError = EngineError;
/// Errors from [`crate::SamplingParams`] and [`crate::Sampler`].
pub type SamplingError = EngineError;

impl From<tokenizers::Error> for EngineError {
    fn from(e: tokenizers::Error) -> Self {
        EngineError::Tokenizer(e.to_string())
    }
}
