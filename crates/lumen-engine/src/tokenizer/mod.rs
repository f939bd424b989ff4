//! Text ⇄ token ids, built from GGUF metadata (or a `tokenizer.json` for embeddings).
//!
//! BPE merging runs on the `tokenizers` crate (well tested, with a word cache);
//! everything around it follows llama.cpp so that a GGUF model tokenizes in Lumen exactly
//! as in llama.cpp: special-token splitting (longest text first, control tokens only when
//! `parse_special`), the pre-tokenizer expressions of each `tokenizer.ggml.pre`, BOS/EOS
//! rules, the SentencePiece leading space, the end-of-generation set, and detokenization
//! through a per-token byte table.

mod build;
mod pieces;
mod pretok;
mod special;
mod split;
mod vocab;

use std::path::Path;

use lumen_gguf::Metadata;
use tokenizers::models::bpe::BPE;
use tokenizers::Model;

pub use vocab::{GgufVocab, TokenType, VocabKind};

#[cfg(test)]
pub(crate) use pieces::byte_to_char_table;

use crate::error::EngineError;
use pieces::{PieceTable, SPM_SPACE};
use special::{Fragment, SpecialToken};
use split::Splitter;

/// How plain text is segmented.
#[derive(Debug, Clone)]
enum Backend {
    /// Byte-level BPE: split, map bytes to GPT-2's characters, merge each piece.
    Bpe {
        bpe: BPE,
        splitter: Splitter,
        byte_chars: Box<[char; 256]>,
    },
    /// SentencePiece-style: spaces as `▁`, merge the whole fragment.
    Spm {
        model: build::SpmModel,
        byte_ids: Box<[Option<u32>; 256]>,
    },
    /// Loaded from `tokenizer.json`: the `tokenizers` crate does everything.
    HfJson(Box<tokenizers::Tokenizer>),
}

/// A model's tokenizer: encoding, decoding and the facts about special tokens.
#[derive(Debug, Clone)]
pub struct Tokenizer {
    backend: Backend,
    pieces: PieceTable,
    types: Vec<TokenType>,
    specials: Vec<SpecialToken>,
    eog: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

impl Tokenizer {
    /// Builds the tokenizer described by a GGUF file's `tokenizer.ggml.*` keys.
    pub fn from_gguf(meta: &Metadata) -> Result<Tokenizer, EngineError> {
        Tokenizer::from_vocab(GgufVocab::from_metadata(meta)?)
    }

    /// Builds the tokenizer from an already-read vocabulary.
    pub fn from_vocab(v: GgufVocab) -> Result<Tokenizer, EngineError> {
        let n = v.tokens.len();
        if n == 0 {
            return Err(EngineError::InvalidVocab(
                "the vocabulary has no tokens".into(),
            ));
        }
        if u32::try_from(n).is_err() {
            return Err(EngineError::InvalidVocab(format!("{n} tokens is too many")));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(EngineError::InvalidVocab(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        if !v.scores.is_empty() && v.scores.len() != n {
            return Err(EngineError::InvalidVocab(format!(
                "{} scores for {n} tokens",
                v.scores.len()
            )));
        }
        let mut texts = v.tokens;
        let mut seen = std::collections::HashSet::with_capacity(n);
        for (i, t) in texts.iter_mut().enumerate() {
            // llama.cpp reads token texts as C strings: a NUL ends the text.
            if let Some(nul) = t.find('\0') {
                t.truncate(nul);
            }
            if t.is_empty() {
                *t = format!("[EMPTY_{i}]");
            }
            if !seen.insert(t.clone()) {
                return Err(EngineError::InvalidVocab(format!(
                    "token text {t:?} appears twice"
                )));
            }
        }
        drop(seen);
        let mut types = if v.token_types.is_empty() {
            vec![TokenType::Normal; n]
        } else {
            v.token_types
        };

        let check = |name: &str, id: Option<u32>| -> Result<Option<u32>, EngineError> {
            match id {
                Some(id) if id as usize >= n => Err(EngineError::InvalidVocab(format!(
                    "{name} token id {id} is out of range for {n} tokens"
                ))),
                other => Ok(other),
            }
        };
        let spm_default = |id: u32| (v.kind == VocabKind::Spm && (id as usize) < n).then_some(id);
        let bos = check("bos", v.bos_id.or_else(|| spm_default(1)))?;
        let eos = check("eos", v.eos_id.or_else(|| spm_default(2)))?;
        let unk = check("unknown", v.unk_id.or_else(|| spm_default(0)))?;
        let eot = check("eot", v.eot_id)?;
        let eom = check("eom", v.eom_id)?;
        let pad = match check("padding", v.pad_id) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("ignoring {e}");
                None
            }
        };
        let scan = special::scan_specials(&texts, &mut types, &[eos], eot, eom);

        let (backend, pre_add_bos, clean_spaces) = match v.kind {
            VocabKind::Bpe => {
                let pre = match pretok::pre_config(v.pre.as_deref()) {
                    Some(p) => p,
                    None => {
                        tracing::warn!(pre = ?v.pre, "unknown pre-tokenizer, using 'default'");
                        pretok::default_config()
                    }
                };
                let backend = Backend::Bpe {
                    bpe: build::build_bpe(&texts, &v.merges, pre.ignore_merges)?,
                    splitter: Splitter::new(pre.splits)?,
                    byte_chars: Box::new(pieces::byte_to_char_table()),
                };
                (backend, pre.add_bos, pre.clean_spaces)
            }
            VocabKind::Spm => {
                let unk_text = unk.and_then(|u| texts.get(u as usize)).map(String::as_str);
                let model = build::build_spm(&texts, &v.scores, unk_text)?;
                let mut byte_ids = Box::new([None; 256]);
                for (i, ty) in types.iter().enumerate() {
                    if *ty == TokenType::Byte {
                        if let Some(b) = texts.get(i).and_then(|t| pieces::parse_byte_token(t)) {
                            byte_ids[usize::from(b)] = u32::try_from(i).ok();
                        }
                    }
                }
                (Backend::Spm { model, byte_ids }, true, false)
            }
        };
        let add_bos = v.add_bos.unwrap_or(pre_add_bos);
        if add_bos && bos.is_none() {
            return Err(EngineError::InvalidVocab(
                "add_bos_token is set but there is no BOS token".into(),
            ));
        }
        let add_eos = v.add_eos.unwrap_or(false);
        if add_eos && eos.is_none() {
            return Err(EngineError::InvalidVocab(
                "add_eos_token is set but there is no EOS token".into(),
            ));
        }
        Ok(Tokenizer {
            backend,
            pieces: PieceTable::build(v.kind, &texts, &types),
            specials: special::special_tokens(&texts, &types),
            types,
            eog: scan.eog,
            bos,
            eos,
            eot: scan.eot_id,
            eom: scan.eom_id,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix: v.add_space_prefix.unwrap_or(v.kind == VocabKind::Spm),
            clean_spaces,
        })
    }

    /// Loads a Hugging Face `tokenizer.json` (used for BERT/WordPiece embedding models).
    ///
    /// Everything goes through the `tokenizers` crate; special tokens in the text are
    /// always parsed, and no ids count as end of generation. Padding and truncation
    /// configured in the file are turned off: callers see every token and decide.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, EngineError> {
        let mut hf = tokenizers::Tokenizer::from_file(path)?;
        hf.with_padding(None);
        hf.with_truncation(None)?;
        let n = hf.get_vocab_size(true);
        let added = hf.get_added_tokens_decoder();
        let mut texts = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for id in 0..u32::try_from(n).unwrap_or(u32::MAX) {
            texts.push(hf.id_to_token(id).unwrap_or_default());
            let special = added.get(&id).is_some_and(|t| t.special);
            types.push(if special {
                TokenType::Control
            } else {
                TokenType::Normal
            });
        }
        if texts.is_empty() {
            return Err(EngineError::InvalidVocab(
                "the vocabulary has no tokens".into(),
            ));
        }
        Ok(Tokenizer {
            pieces: PieceTable::from_strings(texts.iter().map(String::as_str)),
            backend: Backend::HfJson(Box::new(hf)),
            types,
            specials: Vec::new(),
            eog: Vec::new(),
            bos: None,
            eos: None,
            eot: None,
            eom: None,
            unk: None,
            pad: None,
            add_bos: true,
            add_eos: false,
            add_space_prefix: false,
            clean_spaces: false,
        })
    }

    /// Encodes `text`. With `add_special`, the BOS (and EOS) tokens the vocabulary asks
    /// for are added, as llama.cpp's `add_special`; with `parse_special`, control-token
    /// texts such as `<|im_start|>` become their single token.
    pub fn encode(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
    ) -> Result<Vec<u32>, EngineError> {
        if let Backend::HfJson(hf) = &self.backend {
            return Ok(hf.encode(text, add_special)?.get_ids().to_vec());
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        let mut prev_special = true;
        let mut buf = String::new();
        for frag in special::partition(text, &self.specials, parse_special) {
            match frag {
                Fragment::Token(id) => {
                    out.push(id);
                    prev_special = true;
                }
                Fragment::Text(t) => {
                    self.encode_text(t, prev_special, &mut buf, &mut out)?;
                    prev_special = false;
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Segments one run of plain text (no special tokens in it) onto `out`.
    fn encode_text(
        &self,
        text: &str,
        after_special: bool,
        buf: &mut String,
        out: &mut Vec<u32>,
    ) -> Result<(), EngineError> {
        match &self.backend {
            Backend::Bpe {
                bpe,
                splitter,
                byte_chars,
            } => {
                for piece in splitter.split(text) {
                    buf.clear();
                    buf.extend(piece.bytes().map(|b| byte_chars[usize::from(b)]));
                    out.extend(bpe.tokenize(buf)?.iter().map(|t| t.id));
                }
            }
            Backend::Spm { model, byte_ids } => {
                buf.clear();
                if self.add_space_prefix && after_special {
                    buf.push(SPM_SPACE);
                }
                buf.extend(text.chars().map(|c| if c == ' ' { SPM_SPACE } else { c }));
                let n = self.types.len();
                for t in model.bpe.tokenize(buf)? {
                    match (t.id as usize)
                        .checked_sub(n)
                        .and_then(|k| model.phantoms.get(k))
                    {
                        // An unmerged character that is not a token: its bytes.
                        Some(ch) => out.extend(
                            ch.bytes()
                                .filter_map(|b| byte_ids[usize::from(b)].or(self.unk)),
                        ),
                        None => out.push(t.id),
                    }
                }
            }
            Backend::HfJson(hf) => out.extend_from_slice(hf.encode(text, false)?.get_ids()),
        }
        Ok(())
    }

    /// Decodes `ids` to text, as llama.cpp's `detokenize`: with `skip_special`, control
    /// and unknown tokens are left out; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, EngineError> {
        self.check_ids(ids)?;
        if let Backend::HfJson(hf) = &self.backend {
            return Ok(hf.decode(ids, skip_special)?);
        }
        let mut ids = ids;
        let mut strip_space = self.add_space_prefix;
        if skip_special && self.add_bos && ids.first().is_some_and(|&f| Some(f) == self.bos) {
            strip_space = false;
            ids = &ids[1..];
        }
        if skip_special && self.add_eos && ids.last().is_some_and(|&l| Some(l) == self.eos) {
            ids = &ids[..ids.len() - 1];
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            if skip_special && self.is_special(id) {
                strip_space = false;
                continue;
            }
            let mut piece = self.pieces.get(id).unwrap_or_default();
            if strip_space {
                piece = piece.strip_prefix(b" ").unwrap_or(piece);
                strip_space = false;
            }
            bytes.extend_from_slice(piece);
        }
        if self.clean_spaces {
            bytes = pretok::clean_up_spaces(&bytes);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The raw bytes token `id` stands for (special tokens render as their text).
    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        self.pieces.get(id)
    }

    /// Token `id` as text (lossy where the token is part of a UTF-8 character).
    pub fn token_to_piece(&self, id: u32) -> Result<String, EngineError> {
        self.check_ids(&[id])?;
        Ok(String::from_utf8_lossy(self.pieces.get(id).unwrap_or_default()).into_owned())
    }

    /// Number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.types.len()
    }

    /// Beginning-of-sequence token.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// End-of-sequence token.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (from metadata, else recognised by its text).
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// End-of-message token.
    pub fn eom_id(&self) -> Option<u32> {
        self.eom
    }

    /// Unknown token.
    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    /// Padding token.
    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn adds_bos(&self) -> bool {
        self.add_bos
    }

    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn adds_eos(&self) -> bool {
        self.add_eos
    }

    /// Whether generating `id` ends the sequence (EOS, EOT, EOM and llama.cpp's EOG texts).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> &[u32] {
        &self.eog
    }

    /// Whether pieces are WordPiece's: no leading space, `##` marks a word's continuation
    /// (so a piece without it starts a new word).
    pub fn is_wordpiece(&self) -> bool {
        match &self.backend {
            Backend::HfJson(hf) => matches!(hf.get_model(), tokenizers::ModelWrapper::WordPiece(_)),
            _ => false,
        }
    }

    /// Whether `id` is a control or unknown token (hidden when decoding with `skip_special`).
    pub fn is_special(&self, id: u32) -> bool {
        matches!(
            self.token_type(id),
            Some(TokenType::Control | TokenType::Unknown)
        )
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), EngineError> {
        let n = self.vocab_size();
        match ids.iter().find(|&&id| id as usize >= n) {
            Some(&id) => Err(EngineError::TokenOutOfRange { id, vocab_size: n }),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
