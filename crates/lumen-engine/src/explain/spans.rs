//! Which prompt tokens occlusion removes together, and which it never touches.

use super::{invalid, MAX_EXPLAIN_SPANS};
use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// How the prompt is cut into spans.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum SpanSpec {
    /// Every unprotected token on its own.
    Token,
    /// Words: a new one starts after whitespace (or a protected token).
    #[default]
    Word,
    /// Sentences: a new one starts after `.`, `!`, `?` or a line break.
    Sentence,
    /// Explicit half-open ranges of prompt token indices.
    Ranges(Vec<(i64, i64)>),
}

/// Per token: its byte offset in the concatenation of every token's bytes, and whether it is
/// protected: special tokens (BOS, chat-template markers) always; with `content`, every token
/// not wholly inside one of those byte ranges (the template's own text around messages).
pub fn protected_tokens(
    tok: &Tokenizer,
    ids: &[u32],
    content: Option<&[(usize, usize)]>,
) -> (Vec<usize>, Vec<bool>) {
    let mut offsets = Vec::with_capacity(ids.len());
    let mut protected = Vec::with_capacity(ids.len());
    let mut at = 0usize;
    for &id in ids {
        let len = tok.token_bytes(id).map_or(0, <[u8]>::len);
        let inside =
            content.is_none_or(|ranges| ranges.iter().any(|&(s, e)| s <= at && at + len <= e));
        offsets.push(at);
        protected.push(tok.is_special(id) || !inside);
        at += len;
    }
    (offsets, protected)
}

fn starts_word(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b.is_ascii_whitespace())
}

fn ends_sentence(bytes: &[u8]) -> bool {
    let trimmed = bytes.trim_ascii_end();
    bytes.contains(&b'\n')
        || trimmed
            .last()
            .is_some_and(|b| matches!(b, b'.' | b'!' | b'?'))
}

/// The spans of `spec` over `prompt`, each the unprotected token indices it removes.
pub(super) fn build(
    spec: &SpanSpec,
    prompt: &[u32],
    protected: &[bool],
    tok: &Tokenizer,
) -> Result<Vec<Vec<usize>>, EngineError> {
    let bytes = |i: usize| tok.token_bytes(prompt[i]).unwrap_or(&[]);
    let mut spans: Vec<Vec<usize>> = Vec::new();
    match spec {
        SpanSpec::Ranges(ranges) => {
            if ranges.len() > MAX_EXPLAIN_SPANS {
                return Err(too_many(ranges.len()));
            }
            for &(s, e) in ranges {
                let ok = 0 <= s && s < e && e as usize <= prompt.len();
                if !ok {
                    return Err(invalid(
                        "occlusion.spans",
                        format!(
                            "range [{s}, {e}) is not a non-empty range of the {} prompt tokens",
                            prompt.len()
                        ),
                    ));
                }
                let span: Vec<usize> = (s as usize..e as usize)
                    .filter(|&i| !protected[i])
                    .collect();
                if span.is_empty() {
                    return Err(invalid(
                        "occlusion.spans",
                        format!("range [{s}, {e}) holds only protected tokens"),
                    ));
                }
                spans.push(span);
            }
        }
        _ => {
            let mut current: Vec<usize> = Vec::new();
            let mut prev_protected = true;
            let mut boundary = false;
            for (i, &prot) in protected.iter().enumerate() {
                if prot {
                    if !current.is_empty() {
                        spans.push(std::mem::take(&mut current));
                    }
                    prev_protected = true;
                    continue;
                }
                let b = bytes(i);
                let new = match spec {
                    SpanSpec::Token => true,
                    SpanSpec::Word => prev_protected || boundary || starts_word(b),
                    _ => prev_protected || boundary,
                };
                if new && !current.is_empty() {
                    spans.push(std::mem::take(&mut current));
                }
                current.push(i);
                prev_protected = false;
                boundary = match spec {
                    SpanSpec::Word => b.last().is_some_and(|c| c.is_ascii_whitespace()),
                    SpanSpec::Sentence => ends_sentence(b),
                    _ => false,
                };
            }
            if !current.is_empty() {
                spans.push(current);
            }
            if spans.len() > MAX_EXPLAIN_SPANS {
                return Err(too_many(spans.len()));
            }
        }
    }
    let n_unprotected = protected.iter().filter(|p| !**p).count();
    let n_protected = prompt.len() - n_unprotected;
    if n_protected == 0 && spans.iter().any(|s| s.len() == prompt.len()) {
        return Err(invalid(
            "occlusion.spans",
            "a span covers the whole prompt: nothing would be left to predict from",
        ));
    }
    Ok(spans)
}

fn too_many(n: usize) -> EngineError {
    invalid(
        "occlusion.spans",
        format!("{n} spans; at most {MAX_EXPLAIN_SPANS} (use coarser spans or explicit ranges)"),
    )
}
