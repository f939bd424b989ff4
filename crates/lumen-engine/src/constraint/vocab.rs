//! Lumen's tokenizer as llguidance sees it: a byte string per token id, special tokens marked,
//! and the end-of-generation ids as its EOS set.

use std::sync::Arc;

use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::tokenizer::{TokenType, Tokenizer};

/// llguidance's view of one model's vocabulary.
struct LumenTokEnv {
    trie: TokTrie,
    tokenizer: Arc<Tokenizer>,
}

impl TokenizerEnv for LumenTokEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Tokenizes text as the model would (grammars built from literals use it); bytes that
    /// are not UTF-8 fall back to the trie's greedy segmentation.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self
                .tokenizer
                .encode(text, false, false)
                .unwrap_or_else(|_| self.trie.greedy_tokenize(s)),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}

/// The token environment for `tokenizer`: ordinary tokens are their bytes; control and
/// unknown tokens are llguidance's special form (a 0xFF byte, then the token's text), so no
/// text grammar can produce them by accident; end-of-generation ids end a grammar.
pub fn tok_env(tokenizer: &Arc<Tokenizer>) -> TokEnv {
    let n = tokenizer.vocab_size();
    let words: Vec<Vec<u8>> = (0..n as u32)
        .map(|id| {
            let bytes = tokenizer.token_bytes(id).unwrap_or_default();
            match tokenizer.token_type(id) {
                Some(TokenType::Control | TokenType::Unknown) => {
                    let mut w = Vec::with_capacity(bytes.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(bytes);
                    w
                }
                // Never sampled on purpose; an empty word is a token no grammar allows.
                Some(TokenType::Unused) => Vec::new(),
                _ => bytes.to_vec(),
            }
        })
        .collect();
    let eog: Vec<u32> = match tokenizer.eog_ids() {
        [] => tokenizer.eos_id().into_iter().collect(),
        ids => ids.to_vec(),
    };
    let first_eos = eog.first().copied().unwrap_or(0);
    let info = TokRxInfo::new(n as u32, first_eos);
    let mut trie = TokTrie::from(&info, &words);
    if !eog.is_empty() {
        trie = trie.with_eos_tokens(&eog);
    }
    Arc::new(LumenTokEnv {
        trie,
        tokenizer: tokenizer.clone(),
    })
}
