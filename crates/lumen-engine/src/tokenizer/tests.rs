//! Unit tests on small hand-built vocabularies (the real-model comparison with llama.cpp
//! lives in `tests/tokenizer_fixture.rs`).

use super::pieces::byte_to_char_table;
use super::*;

/// A byte-level BPE vocabulary: three control tokens, the 256 byte characters, and a few
/// merged tokens.
pub(crate) fn tiny_bpe(pre: &str) -> Tokenizer {
    let mut v = GgufVocab::new(VocabKind::Bpe);
    v.pre = Some(pre.to_owned());
    let mut types = Vec::new();
    for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] {
        v.tokens.push(s.to_owned());
        types.push(TokenType::Control);
    }
    for c in byte_to_char_table() {
        v.tokens.push(c.to_string());
        types.push(TokenType::Normal);
    }
    for s in [
        "he",
        "ll",
        "hell",
        "hello",
        "\u{120}w",
        "or",
        "\u{120}wor",
        "ld",
        "\u{120}world",
        "12",
    ] {
        v.tokens.push(s.to_owned());
        types.push(TokenType::Normal);
    }
    v.token_types = types;
    v.merges = [
        "h e",
        "l l",
        "he ll",
        "hell o",
        "\u{120} w",
        "o r",
        "\u{120}w or",
        "l d",
        "\u{120}wor ld",
        "1 2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    v.bos_id = Some(0);
    v.eos_id = Some(2);
    Tokenizer::from_vocab(v).expect("tiny bpe vocab builds")
}

pub(crate) fn id_of(t: &Tokenizer, text: &str) -> u32 {
    (0..t.vocab_size() as u32)
        .find(|&id| t.token_bytes(id) == Some(text.as_bytes()) && !t.is_special(id))
        .or_else(|| {
            (0..t.vocab_size() as u32).find(|&id| t.token_bytes(id) == Some(text.as_bytes()))
        })
        .expect("token exists")
}

#[test]
fn bpe_encodes_merges_and_round_trips() {
    let t = tiny_bpe("gpt2");
    let ids = t.encode("hello world", true, false).unwrap();
    assert_eq!(ids, vec![id_of(&t, "hello"), id_of(&t, " world")]);
    assert!(!t.adds_bos(), "gpt2 vocabularies do not add BOS by default");
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
    // Characters without merges fall back to byte tokens, multi-byte ones included.
    let ids = t.encode("h\u{e9}!", false, false).unwrap();
    assert_eq!(ids.len(), 4);
    assert_eq!(t.decode(&ids, false).unwrap(), "h\u{e9}!");
}

#[test]
fn special_tokens_follow_parse_special() {
    let t = tiny_bpe("gpt2");
    let on = t
        .encode("<|im_start|>hello<|im_end|>", false, true)
        .unwrap();
    assert_eq!(on, vec![1, id_of(&t, "hello"), 2]);
    let off = t
        .encode("<|im_start|>hello<|im_end|>", false, false)
        .unwrap();
    assert!(off.len() > 3 && !off.contains(&1) && !off.contains(&2));
    assert_eq!(
        t.decode(&off, false).unwrap(),
        "<|im_start|>hello<|im_end|>"
    );
    assert_eq!(t.decode(&on, false).unwrap(), "<|im_start|>hello<|im_end|>");
    assert_eq!(t.decode(&on, true).unwrap(), "hello");
    assert!(t.is_eog(2) && t.is_eog(0) && !t.is_eog(1));
    assert!(t.is_special(1) && !t.is_special(id_of(&t, "hello")));
}

#[test]
fn smollm_pre_tokenizer_splits_digits() {
    let gpt2 = tiny_bpe("gpt2");
    let smol = tiny_bpe("smollm");
    assert_eq!(
        gpt2.encode("12", false, false).unwrap(),
        vec![id_of(&gpt2, "12")]
    );
    assert_eq!(
        smol.encode("12", false, false).unwrap(),
        vec![id_of(&smol, "1"), id_of(&smol, "2")]
    );
}

#[test]
fn out_of_range_ids_are_errors() {
    let t = tiny_bpe("gpt2");
    let n = t.vocab_size() as u32;
    assert!(
        matches!(t.decode(&[0, n], false), Err(EngineError::TokenOutOfRange { id, .. }) if id == n)
    );
    assert!(t.token_to_piece(n).is_err());
    assert!(t.token_bytes(n).is_none());
    assert!(!t.is_eog(n) && !t.is_special(n));
}

#[test]
fn invalid_vocabularies_are_rejected() {
    let empty = GgufVocab::new(VocabKind::Bpe);
    assert!(matches!(
        Tokenizer::from_vocab(empty),
        Err(EngineError::InvalidVocab(_))
    ));

    let mut dup = GgufVocab::new(VocabKind::Bpe);
    dup.tokens = vec!["a".into(), "a".into()];
    assert!(matches!(
        Tokenizer::from_vocab(dup),
        Err(EngineError::InvalidVocab(_))
    ));

    let mut bad_types = GgufVocab::new(VocabKind::Bpe);
    bad_types.tokens = vec!["a".into(), "b".into()];
    bad_types.token_types = vec![TokenType::Normal];
    assert!(Tokenizer::from_vocab(bad_types).is_err());

    let mut bad_bos = GgufVocab::new(VocabKind::Bpe);
    bad_bos.tokens = vec!["a".into()];
    bad_bos.bos_id = Some(7);
    assert!(Tokenizer::from_vocab(bad_bos).is_err());

    let mut bos_needed = GgufVocab::new(VocabKind::Bpe);
    bos_needed.tokens = vec!["a".into()];
    bos_needed.add_bos = Some(true);
    assert!(Tokenizer::from_vocab(bos_needed).is_err());
}

/// A SentencePiece vocabulary: unk, BOS, EOS, 256 byte tokens and a few pieces.
fn tiny_spm() -> Tokenizer {
    let mut v = GgufVocab::new(VocabKind::Spm);
    let mut push = |text: String, ty: TokenType, score: f32| {
        v.tokens.push(text);
        v.token_types.push(ty);
        v.scores.push(score);
    };
    push("<unk>".into(), TokenType::Unknown, 0.0);
    push("<s>".into(), TokenType::Control, 0.0);
    push("</s>".into(), TokenType::Control, 0.0);
    for b in 0..=255u8 {
        push(format!("<0x{b:02X}>"), TokenType::Byte, 0.0);
    }
    let pieces = [
        ("\u{2581}", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("\u{2581}h", -3.0),
        ("ll", -4.0),
        ("\u{2581}he", -5.0),
        ("\u{2581}hell", -6.0),
        ("\u{2581}hello", -7.0),
        // '≤' is not a token on its own, only after a space.
        ("\u{2581}\u{2264}", -8.0),
    ];
    for (p, s) in pieces {
        push(p.to_owned(), TokenType::Normal, s);
    }
    Tokenizer::from_vocab(v).expect("tiny spm vocab builds")
}

#[test]
fn spm_adds_bos_and_space_prefix() {
    let t = tiny_spm();
    assert!(t.adds_bos());
    assert_eq!(t.bos_id(), Some(1));
    let hello = id_of(&t, " hello");
    assert_eq!(t.encode("hello", true, false).unwrap(), vec![1, hello]);
    assert_eq!(t.encode("hello", false, false).unwrap(), vec![hello]);
    // The leading space llama.cpp adds is removed again when decoding.
    assert_eq!(t.decode(&[hello], false).unwrap(), "hello");
    assert_eq!(t.decode(&[1, hello], true).unwrap(), " hello");
    // A space is prepended again after a special token.
    assert_eq!(t.encode("<s>hello", false, true).unwrap(), vec![1, hello]);
}

#[test]
fn spm_byte_fallback_for_unknown_characters() {
    let t = tiny_spm();
    let ids = t.encode("h\u{20ac}", false, false).unwrap();
    // "▁h" then the three bytes of '€' (E2 82 AC).
    assert_eq!(ids, vec![id_of(&t, " h"), 3 + 0xE2, 3 + 0x82, 3 + 0xAC]);
    assert_eq!(t.decode(&ids, false).unwrap(), "h\u{20ac}");
    assert_eq!(t.token_bytes(3 + 0xE2), Some(&[0xE2u8][..]));
    assert!(t.is_eog(2));
}

#[test]
fn spm_merges_through_characters_that_are_not_tokens() {
    let t = tiny_spm();
    let le = id_of(&t, " \u{2264}");
    assert_eq!(t.encode("\u{2264}", false, false).unwrap(), vec![le]);
    // Without the space before it, '≤' stays alone and falls back to its bytes.
    let ids = t.encode("h\u{2264}", false, false).unwrap();
    assert_eq!(ids, vec![id_of(&t, " h"), 3 + 0xE2, 3 + 0x89, 3 + 0xA4]);
    assert_eq!(t.decode(&ids, false).unwrap(), "h\u{2264}");
}
