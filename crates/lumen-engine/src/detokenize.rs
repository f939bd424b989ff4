//! Streaming detokenization: token ids in, finished UTF-8 text out.
//!
//! A byte-level token can be a fragment of a character (an emoji is often two to four
//! tokens), so the decoder buffers the bytes of an unfinished character and emits it once
//! complete. Only bytes that can never become valid UTF-8 turn into U+FFFD.
//!
//! Tokens are emitted as their raw bytes, leading spaces included (as llama.cpp's server
//! streams them): a completion that starts with " Paris" continues the prompt's text.

use std::sync::Arc;

use crate::tokenizer::Tokenizer;

/// Longest possible incomplete UTF-8 sequence (a 4-byte character missing its last byte).
const MAX_PENDING: usize = 3;

/// Per-sequence decoder that turns ids into text without splitting characters.
#[derive(Debug, Clone)]
pub struct IncrementalDecoder {
    tokenizer: Arc<Tokenizer>,
    pending: Vec<u8>,
    skip_special: bool,
}

impl IncrementalDecoder {
    /// A decoder for one sequence; with `skip_special`, control tokens produce no text.
    pub fn new(tokenizer: Arc<Tokenizer>, skip_special: bool) -> IncrementalDecoder {
        IncrementalDecoder {
            tokenizer,
            pending: Vec::with_capacity(MAX_PENDING + 4),
            skip_special,
        }
    }

    /// Adds token `id` and returns the text it completes (possibly empty).
    ///
    /// An id the vocabulary does not have (a padded logit row) produces no text.
    pub fn push(&mut self, id: u32) -> String {
        let Some(bytes) = self.tokenizer.token_bytes(id) else {
            tracing::debug!(id, "detokenizing an id outside the vocabulary");
            return String::new();
        };
        if self.skip_special && self.tokenizer.is_special(id) {
            return String::new();
        }
        feed(&mut self.pending, bytes)
    }

    /// Adds raw bytes and returns the text they complete (possibly empty).
    pub fn push_bytes(&mut self, bytes: &[u8]) -> String {
        feed(&mut self.pending, bytes)
    }

    /// Ends the stream: bytes of an unfinished character become U+FFFD.
    pub fn flush(&mut self) -> String {
        if self.pending.is_empty() {
            return String::new();
        }
        let out = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        out
    }

    /// Number of bytes held back waiting for the rest of a character.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

/// Appends `bytes` to `pending` and takes out every complete character.
fn feed(pending: &mut Vec<u8>, bytes: &[u8]) -> String {
    pending.extend_from_slice(bytes);
    let mut out = String::new();
    let mut rest: &[u8] = pending;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                out.push_str(s);
                rest = &[];
                break;
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                // `valid_up_to` guarantees this prefix is valid UTF-8.
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    // Truly invalid bytes: replace them and keep going.
                    Some(n) => {
                        out.push('\u{FFFD}');
                        rest = after.get(n..).unwrap_or_default();
                    }
                    // An incomplete character at the end: wait for more bytes.
                    None => {
                        rest = after;
                        break;
                    }
                }
            }
        }
    }
    let keep = rest.len();
    let start = pending.len() - keep;
    pending.drain(..start);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoder over a vocabulary of the 256 byte-level tokens (id = byte value).
    fn decoder() -> IncrementalDecoder {
        let mut v = crate::GgufVocab::new(crate::VocabKind::Bpe);
        v.tokens = crate::tokenizer::byte_to_char_table()
            .iter()
            .map(|c| c.to_string())
            .collect();
        IncrementalDecoder::new(Arc::new(Tokenizer::from_vocab(v).unwrap()), false)
    }

    #[test]
    fn byte_tokens_of_emoji_and_cjk() {
        let mut d = decoder();
        let text = "a😀日本";
        let out: Vec<String> = text.bytes().map(|b| d.push(u32::from(b))).collect();
        assert_eq!(out, vec!["a", "", "", "", "😀", "", "", "日", "", "", "本"]);
        assert_eq!(d.push(256), "", "unknown ids produce no text");
        assert_eq!(d.flush(), "");
    }

    fn stream(chunks: &[&[u8]]) -> Vec<String> {
        let mut d = decoder();
        let mut out: Vec<String> = chunks.iter().map(|c| d.push_bytes(c)).collect();
        out.push(d.flush());
        out
    }

    #[test]
    fn emoji_split_across_byte_tokens() {
        let e = "😀".as_bytes(); // F0 9F 98 80
        let out = stream(&[b"hi ", &e[..1], &e[1..2], &e[2..3], &e[3..], b"!"]);
        assert_eq!(out, vec!["hi ", "", "", "", "😀", "!", ""]);
    }

    #[test]
    fn cjk_split_mid_character_and_joined_with_next() {
        let s = "日本".as_bytes(); // two 3-byte characters
        let out = stream(&[&s[..2], &s[2..4], &s[4..]]);
        assert_eq!(out, vec!["", "日", "本", ""]);
    }

    #[test]
    fn invalid_bytes_become_replacement_characters() {
        let out = stream(&[b"a\xFFb", b"\xC3", b"(", b"\xE6\x97"]);
        // 0xFF is never valid; C3 followed by '(' is a broken sequence; a trailing
        // incomplete character is flushed as U+FFFD by `finish`.
        assert_eq!(out, vec!["a\u{FFFD}b", "", "\u{FFFD}(", "", "\u{FFFD}"]);
    }

    #[test]
    fn pending_never_exceeds_three_bytes() {
        let mut d = decoder();
        for b in "€𝄞日".bytes() {
            d.push_bytes(&[b]);
            assert!(d.pending_len() <= MAX_PENDING);
        }
        assert_eq!(d.pending_len(), 0);
    }
}
