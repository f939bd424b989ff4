//! Logprobs in the shapes OpenAI and vLLM use: chat's list of token objects, the legacy
//! completions' parallel arrays (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`),
//! and vLLM's `prompt_logprobs`.
//!
//! Values are carried as `f64` widened from the engine's `f32`, which is how they have
//! always been printed; JSON has no infinity, so `-inf` is sent as -9999.

use lumen_engine::{TokenLogprob, Tokenizer};
use serde::Serialize;
use serde_json::{Map, Value};

fn piece(tok: &Tokenizer, id: u32) -> String {
    tok.token_to_piece(id).unwrap_or_default()
}

fn bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    tok.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default()
}

/// A finite logprob for JSON.
fn finite(lp: f32) -> f64 {
    if lp.is_finite() {
        f64::from(lp)
    } else {
        -9999.0
    }
}

/// One alternative in chat's `top_logprobs`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its logprob.
    pub logprob: f64,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
}

/// One entry of chat's `logprobs.content`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ChatTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its logprob.
    pub logprob: f64,
    /// Its UTF-8 bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives.
    pub top_logprobs: Vec<TopLogprob>,
}

impl ChatTokenLogprob {
    /// The entry for a generated token.
    pub fn new(tok: &Tokenizer, lp: &TokenLogprob) -> Self {
        let top = lp
            .top
            .iter()
            .map(|&(id, l)| TopLogprob {
                token: piece(tok, id),
                logprob: finite(l),
                bytes: bytes(tok, id),
            })
            .collect();
        ChatTokenLogprob {
            token: piece(tok, lp.token),
            logprob: finite(lp.logprob),
            bytes: bytes(tok, lp.token),
            top_logprobs: top,
        }
    }
}

/// Chat's `logprobs` object.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ChatLogprobs {
    /// One entry per generated token.
    pub content: Vec<ChatTokenLogprob>,
}

/// vLLM's `prompt_logprobs`: `null` for the first token, then `{id: {logprob, decoded_token}}`.
pub type PromptLogprobs = Vec<Option<Map<String, Value>>>;

/// [`PromptLogprobs`] of one prompt.
pub fn prompt_logprobs(tok: &Tokenizer, lps: &[Option<TokenLogprob>]) -> PromptLogprobs {
    let entry = |id: u32, l: f32| {
        let mut e = Map::new();
        e.insert("logprob".into(), Value::from(finite(l)));
        e.insert("decoded_token".into(), Value::from(piece(tok, id)));
        Value::Object(e)
    };
    lps.iter()
        .map(|e| {
            e.as_ref().map(|lp| {
                let mut m = Map::new();
                m.insert(lp.token.to_string(), entry(lp.token, lp.logprob));
                for &(id, l) in &lp.top {
                    m.entry(id.to_string()).or_insert_with(|| entry(id, l));
                }
                m
            })
        })
        .collect()
}

/// The completions logprobs object, built token by token.
#[derive(Serialize, Default, Debug, Clone, PartialEq)]
pub struct CompletionLogprobs {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// Each token's logprob (`null` for the first prompt token).
    pub token_logprobs: Vec<Option<f64>>,
    /// Each token's alternatives, text → logprob.
    pub top_logprobs: Vec<Option<Map<String, Value>>>,
    /// Where each token starts in the choice's text, in characters.
    pub text_offset: Vec<usize>,
}

impl CompletionLogprobs {
    fn push_piece(
        &mut self,
        at: &mut usize,
        text: String,
        lp: Option<f64>,
        top: Option<Map<String, Value>>,
    ) {
        self.text_offset.push(*at);
        *at += text.chars().count();
        self.tokens.push(text);
        self.token_logprobs.push(lp);
        self.top_logprobs.push(top);
    }

    fn top_map(tok: &Tokenizer, top: &[(u32, f32)]) -> Map<String, Value> {
        let mut m = Map::new();
        for &(id, l) in top {
            m.entry(piece(tok, id))
                .or_insert_with(|| Value::from(finite(l)));
        }
        m
    }

    /// Adds the echoed prompt (`prompt[i]` with its logprob entry `lps[i]`); `at` is the
    /// character offset of the next token and advances.
    pub fn push_prompt(
        &mut self,
        tok: &Tokenizer,
        at: &mut usize,
        prompt: &[u32],
        lps: &[Option<TokenLogprob>],
    ) {
        for (i, &id) in prompt.iter().enumerate() {
            match lps.get(i).and_then(Option::as_ref) {
                Some(lp) => self.push_piece(
                    at,
                    piece(tok, id),
                    Some(finite(lp.logprob)),
                    Some(Self::top_map(tok, &lp.top)),
                ),
                None => self.push_piece(at, piece(tok, id), None, None),
            }
        }
    }

    /// Adds a generated token at character offset `at` (which advances).
    pub fn push(&mut self, tok: &Tokenizer, at: &mut usize, lp: &TokenLogprob) {
        self.push_piece(
            at,
            piece(tok, lp.token),
            Some(finite(lp.logprob)),
            Some(Self::top_map(tok, &lp.top)),
        );
    }

    /// Appends `other`'s entries (folding a stream of chunks into one answer).
    pub fn extend(&mut self, other: CompletionLogprobs) {
        self.tokens.extend(other.tokens);
        self.token_logprobs.extend(other.token_logprobs);
        self.top_logprobs.extend(other.top_logprobs);
        self.text_offset.extend(other.text_offset);
    }
}
