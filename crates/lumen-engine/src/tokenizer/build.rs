//! Builds a `tokenizers` BPE model from a GGUF vocabulary.
//!
//! Only the merging of one pre-token is delegated to the `tokenizers` crate; splitting,
//! special tokens, BOS/EOS and decoding are handled by [`super::Tokenizer`] itself so
//! that they follow llama.cpp exactly.

use ahash::AHashMap;
use tokenizers::models::bpe::BPE;

use crate::error::EngineError;

/// Bound on the sum of squared token lengths of a SentencePiece-style vocabulary (real
/// ones are under 10^8).
pub(crate) const MAX_SPLIT_WORK: usize = 1 << 30;

/// Text → id for every token.
pub(crate) fn vocab_map(texts: &[String]) -> AHashMap<String, u32> {
    texts
        .iter()
        .enumerate()
        .filter_map(|(i, t)| Some((t.clone(), u32::try_from(i).ok()?)))
        .collect()
}

/// The BPE model of a byte-level vocabulary (GGUF `gpt2`); pre-tokens must already be
/// mapped to GPT-2's byte characters.
pub(crate) fn build_bpe(
    texts: &[String],
    merges: &[String],
    ignore_merges: bool,
) -> Result<BPE, EngineError> {
    let vocab = vocab_map(texts);
    let mut pairs = Vec::with_capacity(merges.len());
    let mut skipped = 0usize;
    for m in merges {
        // llama.cpp splits at the first space after the first byte.
        // The space is ASCII, so the split point is always a character boundary.
        let Some(pos) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else {
            skipped += 1;
            continue;
        };
        let (left, right) = (&m[..pos], &m[pos + 1..]);
        let usable = vocab.contains_key(left)
            && vocab.contains_key(right)
            && vocab.contains_key(&format!("{left}{right}"));
        if usable {
            pairs.push((left.to_owned(), right.to_owned()));
        } else {
            skipped += 1;
        }
    }
    if skipped > 0 {
        tracing::debug!(
            skipped,
            "ignored BPE merges whose parts or result are not tokens"
        );
    }
    Ok(BPE::builder()
        .vocab_and_merges(vocab, pairs)
        .ignore_merges(ignore_merges)
        .build()?)
}

/// A SentencePiece-style vocabulary as a BPE model.
#[derive(Debug, Clone)]
pub(crate) struct SpmModel {
    /// Merges derived from the scores, highest-scoring result first.
    pub bpe: BPE,
    /// Characters the merges need that are not tokens themselves; id `n + k` in the BPE
    /// model (for a vocabulary of `n`) is `phantoms[k]`, and is emitted as its bytes.
    pub phantoms: Vec<String>,
}

/// Builds the BPE model of a SentencePiece-style vocabulary (GGUF `llama`).
///
/// llama.cpp starts from single characters and repeatedly merges the adjacent pair whose
/// concatenation is the highest-scoring token. As BPE merges, that is: every split of a
/// token into two parts that can each be a symbol (a token or a single character),
/// ranked by the token's score. A character that is not itself a token gets a phantom
/// id so the merge can be expressed; left unmerged, it falls back to byte tokens.
pub(crate) fn build_spm(
    texts: &[String],
    scores: &[f32],
    unk: Option<&str>,
) -> Result<SpmModel, EngineError> {
    let mut vocab = vocab_map(texts);
    let single_char = |s: &str| s.chars().nth(1).is_none();
    // (score, merged id, left, right)
    let mut splits: Vec<(f32, u32, &str, &str)> = Vec::new();
    // Each token is tried at every split point, with a lookup of both halves: the work
    // grows with the square of token lengths, which the file chooses.
    let work: usize = texts
        .iter()
        .map(|t| t.len().saturating_mul(t.len()))
        .fold(0, usize::saturating_add);
    if work > MAX_SPLIT_WORK {
        return Err(EngineError::InvalidVocab(format!(
            "the tokens are too long to derive merges from (sum of squared lengths {work}, limit {MAX_SPLIT_WORK})"
        )));
    }
    for (i, text) in texts.iter().enumerate() {
        let Ok(id) = u32::try_from(i) else { break };
        let score = scores.get(i).copied().unwrap_or(0.0);
        for (pos, _) in text.char_indices().skip(1) {
            let (l, r) = text.split_at(pos);
            let symbol = |s: &str| single_char(s) || vocab.contains_key(s);
            if symbol(l) && symbol(r) {
                splits.push((score, id, l, r));
            }
        }
    }
    let mut phantoms: Vec<String> = Vec::new();
    for &(_, _, l, r) in &splits {
        for part in [l, r] {
            if !vocab.contains_key(part) {
                let id = u32::try_from(texts.len() + phantoms.len())
                    .map_err(|_| EngineError::InvalidVocab("vocabulary too large".into()))?;
                vocab.insert(part.to_owned(), id);
                phantoms.push(part.to_owned());
            }
        }
    }
    let id_of = |s: &str| vocab.get(s).copied().unwrap_or(u32::MAX);
    let mut cands: Vec<(f32, u32, u32, u32, &str, &str)> = splits
        .into_iter()
        .map(|(sc, id, l, r)| (sc, id, id_of(l), id_of(r), l, r))
        .collect();
    cands.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    let merges = cands
        .into_iter()
        .map(|c| (c.4.to_owned(), c.5.to_owned()))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.to_owned());
    }
    Ok(SpmModel {
        bpe: builder.build()?,
        phantoms,
    })
}
