//! Request inputs to token sequences: tokenization with the model's special tokens, the
//! length limit, and explicit truncation.
//!
//! The rules, shared by the HTTP API and the CLI:
//! - A text is tokenized with the tokenizer's post-processor, so BERT models get
//!   `[CLS] … [SEP]`; its length counts those special tokens.
//! - Token ids are taken as given: the caller includes any special tokens.
//! - An input longer than the model's maximum (sentence-transformers' `max_seq_length`, 256
//!   for all-MiniLM-L6-v2) is refused, never cut silently, unless the request asks for
//!   truncation with `truncate_prompt_tokens = k` (1 ≤ k ≤ the maximum). Then a text keeps its
//!   first `k − 1` tokens (`[CLS]` and the start of the text) and its closing `[SEP]`, so it is
//!   exactly `k` tokens long, the way sentence-transformers truncates; token ids keep their
//!   first `k`. Inputs already at most `k` long are left alone.
//! - Empty texts, empty id lists, no inputs and more than [`MAX_EMBED_INPUTS`] inputs are
//!   refused, naming `input`.

use super::EmbedInfo;
use crate::tokenizer::Tokenizer;
use crate::EngineError;

/// Most inputs one embedding request may carry (OpenAI's limit).
pub const MAX_EMBED_INPUTS: usize = 2048;

/// One input of an embedding request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EmbedInput {
    /// Text, tokenized with the model's special tokens.
    Text(String),
    /// Token ids, taken as given (the caller includes any special tokens).
    Tokens(Vec<u32>),
}

fn bad(param: &'static str, message: String) -> EngineError {
    EngineError::InvalidRequest { param, message }
}

/// The special tokens the tokenizer appends after a text (`[SEP]` for BERT), found by
/// comparing a probe's ids with and without special tokens.
pub(crate) fn special_suffix(tok: &Tokenizer) -> Result<Vec<u32>, EngineError> {
    let bare = tok.encode("a", false, false)?;
    let full = tok.encode("a", true, false)?;
    if bare.is_empty() {
        return Ok(Vec::new());
    }
    let pos = full.windows(bare.len()).position(|w| w == bare.as_slice());
    Ok(pos
        .map(|p| full[p + bare.len()..].to_vec())
        .unwrap_or_default())
}

/// Cuts a tokenized text to `k` tokens, keeping its trailing special tokens.
fn truncate_text(mut ids: Vec<u32>, k: usize, suffix: &[u32]) -> Vec<u32> {
    if ids.len() <= k {
        return ids;
    }
    if suffix.len() < k && ids.ends_with(suffix) {
        ids.truncate(k - suffix.len());
        ids.extend_from_slice(suffix);
    } else {
        ids.truncate(k);
    }
    ids
}

/// Tokenizes and checks `inputs` under the rules above; `truncate` is the request's
/// `truncate_prompt_tokens`.
pub fn prepare(
    tok: &Tokenizer,
    info: &EmbedInfo,
    inputs: Vec<EmbedInput>,
    truncate: Option<usize>,
) -> Result<Vec<Vec<u32>>, EngineError> {
    if inputs.is_empty() {
        return Err(bad("input", "input must not be empty".into()));
    }
    if inputs.len() > MAX_EMBED_INPUTS {
        return Err(bad(
            "input",
            format!(
                "input has {} items; at most {MAX_EMBED_INPUTS} are allowed per request",
                inputs.len()
            ),
        ));
    }
    let max = info.max_seq_len;
    if let Some(k) = truncate {
        if k == 0 || k > max {
            return Err(bad(
                "truncate_prompt_tokens",
                format!("truncate_prompt_tokens must be between 1 and the model's maximum input length of {max} tokens, got {k}"),
            ));
        }
    }
    let single = inputs.len() == 1;
    let name = |i: usize| {
        if single {
            "input".to_string()
        } else {
            format!("input[{i}]")
        }
    };
    let mut out = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.into_iter().enumerate() {
        let (ids, is_text) = match input {
            EmbedInput::Text(t) if t.is_empty() => {
                return Err(bad("input", format!("{} is an empty string", name(i))))
            }
            EmbedInput::Text(t) => (tok.encode(&t, true, false)?, true),
            EmbedInput::Tokens(ids) if ids.is_empty() => {
                return Err(bad(
                    "input",
                    format!("{} is an empty list of token ids", name(i)),
                ))
            }
            EmbedInput::Tokens(ids) => {
                if let Some(&t) = ids.iter().find(|&&t| t as usize >= info.vocab_size) {
                    return Err(bad(
                        "input",
                        format!(
                            "{} has token id {t}, outside the vocabulary of {} tokens",
                            name(i),
                            info.vocab_size
                        ),
                    ));
                }
                (ids, false)
            }
        };
        let ids = match truncate {
            Some(k) if is_text => truncate_text(ids, k, &info.suffix),
            Some(k) => {
                let mut ids = ids;
                ids.truncate(k);
                ids
            }
            None if ids.len() > max => {
                return Err(bad(
                    "input",
                    format!(
                        "{} is {} tokens long, more than the model's maximum of {max}; shorten it or set truncate_prompt_tokens",
                        name(i),
                        ids.len()
                    ),
                ))
            }
            None => ids,
        };
        if ids.is_empty() {
            // A tokenizer without special tokens can turn text into nothing.
            return Err(bad("input", format!("{} has no tokens", name(i))));
        }
        out.push(ids);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_keeps_the_closing_special_token() {
        let ids = vec![101, 1, 2, 3, 4, 102];
        assert_eq!(truncate_text(ids.clone(), 4, &[102]), vec![101, 1, 2, 102]);
        assert_eq!(truncate_text(ids.clone(), 2, &[102]), vec![101, 102]);
        assert_eq!(truncate_text(ids.clone(), 1, &[102]), vec![101]);
        assert_eq!(truncate_text(ids.clone(), 6, &[102]), ids);
        assert_eq!(truncate_text(ids.clone(), 3, &[]), vec![101, 1, 2]);
    }
}
