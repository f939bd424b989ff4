//! Logprobs in the two shapes OpenAI uses: chat's list of token objects, and the legacy
//! completions' parallel arrays (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`).

use lumen_engine::{TokenLogprob, Tokenizer};
use serde_json::{json, Map, Value};

fn piece(tok: &Tokenizer, id: u32) -> String {
    tok.token_to_piece(id).unwrap_or_default()
}

fn bytes(tok: &Tokenizer, id: u32) -> Vec<u8> {
    tok.token_bytes(id).map(<[u8]>::to_vec).unwrap_or_default()
}

/// A finite logprob for JSON (`-inf` becomes the most negative f32, as JSON has no infinity).
fn finite(lp: f32) -> f32 {
    if lp.is_finite() {
        lp
    } else {
        -9999.0
    }
}

/// One entry of chat's `logprobs.content`.
pub fn chat_entry(tok: &Tokenizer, lp: &TokenLogprob) -> Value {
    let top: Vec<Value> = lp.top.iter().map(|&(id, l)| json!({"token": piece(tok, id), "logprob": finite(l), "bytes": bytes(tok, id)})).collect();
    json!({"token": piece(tok, lp.token), "logprob": finite(lp.logprob), "bytes": bytes(tok, lp.token), "top_logprobs": top})
}

/// vLLM's `prompt_logprobs`: `null` for the first token, then `{id: {logprob, decoded_token}}`.
pub fn prompt_logprobs_json(tok: &Tokenizer, lps: &[Option<TokenLogprob>]) -> Value {
    Value::Array(
        lps.iter()
            .map(|e| match e {
                None => Value::Null,
                Some(lp) => {
                    let mut m = Map::new();
                    m.insert(lp.token.to_string(), json!({"logprob": finite(lp.logprob), "decoded_token": piece(tok, lp.token)}));
                    for &(id, l) in &lp.top {
                        m.entry(id.to_string()).or_insert_with(|| json!({"logprob": finite(l), "decoded_token": piece(tok, id)}));
                    }
                    Value::Object(m)
                }
            })
            .collect(),
    )
}

/// The completions logprobs object, built token by token.
#[derive(Default, Debug, Clone)]
pub struct CompletionLogprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Option<f32>>,
    top_logprobs: Vec<Option<Map<String, Value>>>,
    text_offset: Vec<usize>,
    offset: usize,
}

impl CompletionLogprobs {
    /// Starts with text offsets counted from `offset` characters.
    pub fn starting_at(offset: usize) -> Self {
        CompletionLogprobs {
            offset,
            ..Default::default()
        }
    }

    fn push_piece(&mut self, text: String, lp: Option<f32>, top: Option<Map<String, Value>>) {
        self.text_offset.push(self.offset);
        self.offset += text.chars().count();
        self.tokens.push(text);
        self.token_logprobs.push(lp);
        self.top_logprobs.push(top);
    }

    fn top_map(tok: &Tokenizer, top: &[(u32, f32)]) -> Map<String, Value> {
        let mut m = Map::new();
        for &(id, l) in top {
            m.entry(piece(tok, id)).or_insert_with(|| json!(finite(l)));
        }
        m
    }

    /// Adds the echoed prompt (`prompt[i]` with its logprob entry `lps[i]`).
    pub fn push_prompt(&mut self, tok: &Tokenizer, prompt: &[u32], lps: &[Option<TokenLogprob>]) {
        for (i, &id) in prompt.iter().enumerate() {
            match lps.get(i).and_then(Option::as_ref) {
                Some(lp) => self.push_piece(
                    piece(tok, id),
                    Some(finite(lp.logprob)),
                    Some(Self::top_map(tok, &lp.top)),
                ),
                None => self.push_piece(piece(tok, id), None, None),
            }
        }
    }

    /// Adds a generated token.
    pub fn push(&mut self, tok: &Tokenizer, lp: &TokenLogprob) {
        self.push_piece(
            piece(tok, lp.token),
            Some(finite(lp.logprob)),
            Some(Self::top_map(tok, &lp.top)),
        );
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The JSON object.
    pub fn to_json(&self) -> Value {
        json!({"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs, "text_offset": self.text_offset})
    }

    /// The JSON of the entries added since the last call (for streaming), then forgets them.
    pub fn take_json(&mut self) -> Value {
        let v = self.to_json();
        self.tokens.clear();
        self.token_logprobs.clear();
        self.top_logprobs.clear();
        self.text_offset.clear();
        v
    }
}
