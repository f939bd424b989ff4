//! The tokenizer description as GGUF stores it (`tokenizer.ggml.*`), as a plain struct.
//!
//! Keeping this separate from [`lumen_gguf::Metadata`] lets tests build small vocabularies
//! by hand and keeps the metadata keys in one place.

use lumen_gguf::Metadata;

use crate::error::EngineError;

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    /// Type 0 or any value outside 1..=6.
    Undefined,
    /// An ordinary piece of text (1).
    Normal,
    /// The unknown token (2).
    Unknown,
    /// A control token such as `<|im_start|>` or `</s>` (3).
    Control,
    /// A token added by the model's authors, always matched as a whole (4).
    UserDefined,
    /// A reserved, unused slot (5).
    Unused,
    /// A SentencePiece byte-fallback token `<0xXX>` (6).
    Byte,
}

impl TokenType {
    /// Maps the integer stored in GGUF to a type.
    pub fn from_i32(v: i32) -> TokenType {
        match v {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// Which segmentation algorithm the vocabulary uses (`tokenizer.ggml.model`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// `gpt2`: byte-level BPE with ranked merges and a pre-tokenizer regex.
    Bpe,
    /// `llama`: SentencePiece-style BPE driven by scores, `▁` for spaces, byte fallback.
    Spm,
}

/// Everything Lumen reads from a GGUF file's `tokenizer.ggml.*` keys.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// Segmentation algorithm.
    pub kind: VocabKind,
    /// Pre-tokenizer name (`tokenizer.ggml.pre`), BPE only; `None` means `default`.
    pub pre: Option<String>,
    /// Token texts, indexed by id.
    pub tokens: Vec<String>,
    /// Token types, same length as `tokens`; empty means all normal.
    pub token_types: Vec<TokenType>,
    /// SentencePiece scores, same length as `tokens`; empty means all zero.
    pub scores: Vec<f32>,
    /// BPE merges as `"left right"`, highest priority first.
    pub merges: Vec<String>,
    /// Beginning-of-sequence token.
    pub bos_id: Option<u32>,
    /// End-of-sequence token.
    pub eos_id: Option<u32>,
    /// End-of-turn token.
    pub eot_id: Option<u32>,
    /// End-of-message token (llama 3.1 tool calls).
    pub eom_id: Option<u32>,
    /// Unknown token.
    pub unk_id: Option<u32>,
    /// Padding token.
    pub pad_id: Option<u32>,
    /// Whether prompts start with BOS (`None`: the model kind's default).
    pub add_bos: Option<bool>,
    /// Whether prompts end with EOS (`None`: false).
    pub add_eos: Option<bool>,
    /// Whether SentencePiece text gets a leading space (`None`: true for `llama`).
    pub add_space_prefix: Option<bool>,
}

impl GgufVocab {
    /// An empty vocabulary of the given kind, for building one by hand.
    pub fn new(kind: VocabKind) -> GgufVocab {
        GgufVocab {
            kind,
            pre: None,
            tokens: Vec::new(),
            token_types: Vec::new(),
            scores: Vec::new(),
            merges: Vec::new(),
            bos_id: None,
            eos_id: None,
            eot_id: None,
            eom_id: None,
            unk_id: None,
            pad_id: None,
            add_bos: None,
            add_eos: None,
            add_space_prefix: None,
        }
    }

    /// Reads the `tokenizer.ggml.*` keys of a GGUF file.
    pub fn from_metadata(meta: &Metadata) -> Result<GgufVocab, EngineError> {
        let model = meta.get_str("tokenizer.ggml.model")?;
        let kind = match model {
            "gpt2" => VocabKind::Bpe,
            "llama" => VocabKind::Spm,
            other => return Err(EngineError::UnsupportedTokenizer(other.to_owned())),
        };
        let mut v = GgufVocab::new(kind);
        v.pre = opt(meta, "tokenizer.ggml.pre", |k| meta.get_str(k))?.map(str::to_owned);
        v.tokens = meta
            .get_str_array("tokenizer.ggml.tokens")?
            .into_iter()
            .map(str::to_owned)
            .collect();
        if let Some(types) = opt(meta, "tokenizer.ggml.token_type", |k| meta.get_i32_array(k))? {
            v.token_types = types.into_iter().map(TokenType::from_i32).collect();
        }
        if let Some(scores) = opt(meta, "tokenizer.ggml.scores", |k| meta.get_f32_array(k))? {
            v.scores = scores;
        }
        if kind == VocabKind::Bpe {
            v.merges = meta
                .get_str_array("tokenizer.ggml.merges")?
                .into_iter()
                .map(str::to_owned)
                .collect();
        }
        v.check_bounds()?;
        let id = |key: &str| opt(meta, key, |k| meta.get_u32(k));
        v.bos_id = id("tokenizer.ggml.bos_token_id")?;
        v.eos_id = id("tokenizer.ggml.eos_token_id")?;
        v.eot_id = id("tokenizer.ggml.eot_token_id")?;
        v.eom_id = id("tokenizer.ggml.eom_token_id")?;
        v.unk_id = id("tokenizer.ggml.unknown_token_id")?;
        v.pad_id = id("tokenizer.ggml.padding_token_id")?;
        let flag = |key: &str| opt(meta, key, |k| meta.get_bool(k));
        v.add_bos = flag("tokenizer.ggml.add_bos_token")?;
        v.add_eos = flag("tokenizer.ggml.add_eos_token")?;
        v.add_space_prefix = flag("tokenizer.ggml.add_space_prefix")?;
        Ok(v)
    }

    /// Refuses vocabularies past `MAX_TOKENS`, `MAX_TOKEN_BYTES`, `MAX_MERGES` or
    /// `MAX_SPECIAL_TOKENS`: the file decides these sizes, and building the tokenizer
    /// (and, for special tokens, every encode) does work that grows with them.
    pub fn check_bounds(&self) -> Result<(), EngineError> {
        let over = |what: &str, n: usize, max: usize| {
            EngineError::InvalidVocab(format!("{what}: {n} is over the limit of {max}"))
        };
        if self.tokens.len() > MAX_TOKENS {
            return Err(over("tokens", self.tokens.len(), MAX_TOKENS));
        }
        if self.merges.len() > MAX_MERGES {
            return Err(over("merges", self.merges.len(), MAX_MERGES));
        }
        for (what, list) in [("token", &self.tokens), ("merge", &self.merges)] {
            if let Some((i, t)) = list
                .iter()
                .enumerate()
                .find(|(_, t)| t.len() > MAX_TOKEN_BYTES)
            {
                return Err(over(
                    &format!("bytes in {what} {i}"),
                    t.len(),
                    MAX_TOKEN_BYTES,
                ));
            }
        }
        let special = self
            .token_types
            .iter()
            .filter(|t| {
                matches!(
                    t,
                    TokenType::Control | TokenType::UserDefined | TokenType::Unknown
                )
            })
            .count();
        if special > MAX_SPECIAL_TOKENS {
            return Err(over("special tokens", special, MAX_SPECIAL_TOKENS));
        }
        Ok(())
    }

    /// The type of token `id` (normal when the file has no types).
    pub fn token_type(&self, id: usize) -> TokenType {
        self.token_types
            .get(id)
            .copied()
            .unwrap_or(TokenType::Normal)
    }
}

/// Most tokens a vocabulary may have (the largest real ones have about 262 000).
pub const MAX_TOKENS: usize = 1 << 22;
/// Most BPE merges (real vocabularies have fewer merges than tokens).
pub const MAX_MERGES: usize = 1 << 23;
/// Longest token or merge text, in bytes (real ones are at most a few hundred).
pub const MAX_TOKEN_BYTES: usize = 4096;
/// Most control, user-defined and unknown tokens: each encode scans the text once per
/// special token, as llama.cpp does.
pub const MAX_SPECIAL_TOKENS: usize = 1 << 16;

/// Reads an optional key: absent is `None`, present but malformed is an error.
fn opt<T>(
    meta: &Metadata,
    key: &str,
    get: impl FnOnce(&str) -> Result<T, lumen_gguf::GgufError>,
) -> Result<Option<T>, EngineError> {
    if meta.contains_key(key) {
        Ok(Some(get(key)?))
    } else {
        Ok(None)
    }
}
