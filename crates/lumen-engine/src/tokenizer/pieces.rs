//! The bytes each token stands for, computed once per vocabulary.
//!
//! Decoding, streaming and logprob output all need a token's raw bytes (a token can be
//! half a UTF-8 character), so the table stores bytes, not strings, in one flat buffer.

use super::vocab::{TokenType, VocabKind};

/// SentencePiece's visible space, `▁` (U+2581).
pub(crate) const SPM_SPACE: char = '\u{2581}';

/// GPT-2's byte-to-character table: printable Latin-1 bytes map to themselves, the rest
/// to U+0100 onwards, so every byte has a visible, non-space character.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, 33..=126 | 161..=172 | 174..=255);
        let cp = if printable {
            u32::from(b)
        } else {
            let cp = next;
            next += 1;
            cp
        };
        table[usize::from(b)] = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

/// The inverse of [`byte_to_char_table`], indexed by code point (0..=323).
fn char_to_byte_table() -> Vec<Option<u8>> {
    let mut inv = vec![None; 324];
    for (b, c) in byte_to_char_table().iter().enumerate() {
        if let Some(slot) = inv.get_mut(*c as usize) {
            *slot = u8::try_from(b).ok();
        }
    }
    inv
}

/// Parses a SentencePiece byte token `<0xAB>`.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Token bytes in one buffer, with `offsets[id]..offsets[id + 1]` for each token.
#[derive(Debug, Clone, Default)]
pub(crate) struct PieceTable {
    bytes: Vec<u8>,
    offsets: Vec<usize>,
}

impl PieceTable {
    /// Builds the table as llama.cpp's `token_to_piece(special = true)` renders tokens.
    pub(crate) fn build(kind: VocabKind, texts: &[String], types: &[TokenType]) -> PieceTable {
        let inv = char_to_byte_table();
        let mut table = PieceTable {
            bytes: Vec::with_capacity(texts.iter().map(String::len).sum()),
            offsets: Vec::with_capacity(texts.len() + 1),
        };
        table.offsets.push(0);
        for (i, text) in texts.iter().enumerate() {
            let ty = types.get(i).copied().unwrap_or(TokenType::Normal);
            match (kind, ty) {
                (_, TokenType::Control | TokenType::Unknown | TokenType::UserDefined) => {
                    table.bytes.extend_from_slice(text.as_bytes());
                }
                (VocabKind::Bpe, TokenType::Normal) => {
                    let mut buf = [0u8; 4];
                    for c in text.chars() {
                        match inv.get(c as usize).copied().flatten() {
                            Some(b) => table.bytes.push(b),
                            // Not a byte-level character: keep it as text.
                            None => table
                                .bytes
                                .extend_from_slice(c.encode_utf8(&mut buf).as_bytes()),
                        }
                    }
                }
                (VocabKind::Spm, TokenType::Normal) => {
                    for c in text.chars() {
                        let c = if c == SPM_SPACE { ' ' } else { c };
                        let mut buf = [0u8; 4];
                        table
                            .bytes
                            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
                (VocabKind::Spm, TokenType::Byte) => match parse_byte_token(text) {
                    Some(b) => table.bytes.push(b),
                    None => table.bytes.extend_from_slice(text.as_bytes()),
                },
                // Unused and undefined tokens (and byte tokens in a BPE vocabulary)
                // render as nothing, as in llama.cpp.
                _ => {}
            }
            table.offsets.push(table.bytes.len());
        }
        table
    }

    /// Builds the table from already-decoded strings (the tokenizer.json path).
    pub(crate) fn from_strings<'a>(pieces: impl Iterator<Item = &'a str>) -> PieceTable {
        let mut table = PieceTable {
            bytes: Vec::new(),
            offsets: vec![0],
        };
        for p in pieces {
            table.bytes.extend_from_slice(p.as_bytes());
            table.offsets.push(table.bytes.len());
        }
        table
    }

    /// The bytes of token `id`.
    pub(crate) fn get(&self, id: u32) -> Option<&[u8]> {
        let i = usize::try_from(id).ok()?;
        let start = *self.offsets.get(i)?;
        let end = *self.offsets.get(i.checked_add(1)?)?;
        self.bytes.get(start..end)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection() {
        let t = byte_to_char_table();
        let mut seen = std::collections::HashSet::new();
        for c in t {
            assert!(seen.insert(c));
        }
        assert_eq!(t[usize::from(b' ')], '\u{120}');
        assert_eq!(t[usize::from(b'\n')], '\u{10A}');
        assert_eq!(t[usize::from(b'a')], 'a');
    }

    #[test]
    fn pieces_decode_each_kind() {
        let texts: Vec<String> = ["\u{120}hi", "<|im_end|>", "\u{2581}yo", "<0x0A>", "x"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let types = [
            TokenType::Normal,
            TokenType::Control,
            TokenType::Normal,
            TokenType::Byte,
            TokenType::Unused,
        ];
        let bpe = PieceTable::build(VocabKind::Bpe, &texts[..2], &types[..2]);
        assert_eq!(bpe.get(0), Some(&b" hi"[..]));
        assert_eq!(bpe.get(1), Some(&b"<|im_end|>"[..]));
        assert_eq!(bpe.get(2), None);
        let spm = PieceTable::build(VocabKind::Spm, &texts, &types);
        assert_eq!(spm.get(2), Some(&b" yo"[..]));
        assert_eq!(spm.get(3), Some(&b"\n"[..]));
        assert_eq!(spm.get(4), Some(&b""[..]));
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
    }
}
