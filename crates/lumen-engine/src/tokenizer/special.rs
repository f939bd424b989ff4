//! Special tokens: which ids end generation, and splitting text on special-token texts.
//!
//! Both follow llama.cpp (`llama-vocab.cpp`): GGUF files rarely list every end-of-turn
//! token, so llama.cpp also recognises them by their text, and Lumen must stop where
//! llama.cpp stops.

use super::vocab::TokenType;

/// Texts llama.cpp takes as an end-of-turn token when `eot_token_id` is absent.
const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "<end_of_utterance>",
];

/// Texts that end generation whatever the metadata says.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "<|end_of_text|>",
    "<end_of_utterance>",
];

/// Fill-in-the-middle pad / repository / file-separator texts, which llama.cpp also
/// treats as end of generation.
const FIM_EOG_TEXTS: &[&str] = &[
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Other fill-in-the-middle texts llama.cpp forces to control type.
const FIM_CONTROL_TEXTS: &[&str] = &[
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<PRE>",
    "\u{2581}<PRE>",
    "<|code_prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "<SUF>",
    "\u{2581}<SUF>",
    "<|code_suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<MID>",
    "\u{2581}<MID>",
    "<|code_middle|>",
];

/// Result of scanning the vocabulary for special tokens.
#[derive(Debug, Clone, Default)]
pub(crate) struct SpecialScan {
    /// End-of-turn id found by text, when the metadata had none.
    pub eot_id: Option<u32>,
    /// End-of-message id found by text, when the metadata had none.
    pub eom_id: Option<u32>,
    /// Every end-of-generation id, sorted.
    pub eog: Vec<u32>,
}

/// Finds end-of-generation tokens and forces the types llama.cpp forces: a token whose
/// text marks an end of turn (or a FIM role) becomes a control token.
pub(crate) fn scan_specials(
    texts: &[String],
    types: &mut [TokenType],
    known: &[Option<u32>],
    eot_id: Option<u32>,
    eom_id: Option<u32>,
) -> SpecialScan {
    let mut scan = SpecialScan {
        eot_id,
        eom_id,
        eog: Vec::new(),
    };
    for (i, text) in texts.iter().enumerate() {
        let Ok(id) = u32::try_from(i) else { break };
        let t = text.as_str();
        let is_eot = EOT_TEXTS.contains(&t);
        let is_eog = EOG_TEXTS.contains(&t) || FIM_EOG_TEXTS.contains(&t);
        if scan.eot_id.is_none() && is_eot {
            scan.eot_id = Some(id);
        }
        if scan.eom_id.is_none() && t == "<|eom_id|>" {
            scan.eom_id = Some(id);
        }
        if is_eot || is_eog || t == "<|eom_id|>" || FIM_CONTROL_TEXTS.contains(&t) {
            if let Some(ty) = types.get_mut(i) {
                *ty = TokenType::Control;
            }
        }
        if is_eog {
            scan.eog.push(id);
        }
    }
    for id in known.iter().chain([&scan.eot_id, &scan.eom_id]).flatten() {
        scan.eog.push(*id);
    }
    scan.eog.sort_unstable();
    scan.eog.dedup();
    scan
}

/// A token matched as a whole before the text is segmented.
#[derive(Debug, Clone)]
pub(crate) struct SpecialToken {
    /// Token id.
    pub id: u32,
    /// Text that stands for the token.
    pub text: String,
    /// User-defined tokens are matched even when special parsing is off.
    pub always: bool,
}

/// The special tokens in matching order: longest text first, then lowest id.
pub(crate) fn special_tokens(texts: &[String], types: &[TokenType]) -> Vec<SpecialToken> {
    let mut out: Vec<SpecialToken> = texts
        .iter()
        .zip(types)
        .enumerate()
        .filter_map(|(i, (text, ty))| {
            let id = u32::try_from(i).ok()?;
            let always = match ty {
                TokenType::UserDefined => true,
                TokenType::Control | TokenType::Unknown => false,
                _ => return None,
            };
            (!text.is_empty()).then(|| SpecialToken {
                id,
                text: text.clone(),
                always,
            })
        })
        .collect();
    out.sort_by(|a, b| b.text.len().cmp(&a.text.len()).then(a.id.cmp(&b.id)));
    out
}

/// A run of plain text or one special token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fragment<'a> {
    /// Text to segment.
    Text(&'a str),
    /// A special token matched whole.
    Token(u32),
}

/// Splits `text` on special-token texts, longest token first, as llama.cpp's
/// `tokenizer_st_partition` does. Control and unknown tokens are only matched when
/// `parse_special` is on; user-defined tokens always are.
pub(crate) fn partition<'a>(
    text: &'a str,
    specials: &[SpecialToken],
    parse_special: bool,
) -> Vec<Fragment<'a>> {
    let mut frags = vec![Fragment::Text(text)];
    if text.is_empty() {
        return Vec::new();
    }
    let mut next = Vec::new();
    for sp in specials.iter().filter(|s| parse_special || s.always) {
        if !frags
            .iter()
            .any(|f| matches!(f, Fragment::Text(t) if t.contains(sp.text.as_str())))
        {
            continue;
        }
        next.clear();
        for frag in &frags {
            let Fragment::Text(t) = *frag else {
                next.push(*frag);
                continue;
            };
            let mut last = 0;
            for (pos, m) in t.match_indices(sp.text.as_str()) {
                if pos > last {
                    next.push(Fragment::Text(&t[last..pos]));
                }
                next.push(Fragment::Token(sp.id));
                last = pos + m.len();
            }
            if last < t.len() {
                next.push(Fragment::Text(&t[last..]));
            }
        }
        std::mem::swap(&mut frags, &mut next);
    }
    frags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn partition_longest_first_and_respects_parse_special() {
        let texts = strings(&["<|a|>", "<|a|><|b|>", "x", "<u>"]);
        let types = [
            TokenType::Control,
            TokenType::Control,
            TokenType::Normal,
            TokenType::UserDefined,
        ];
        let sp = special_tokens(&texts, &types);
        assert_eq!(sp.iter().map(|s| s.id).collect::<Vec<_>>(), vec![1, 0, 3]);
        let f = partition("hi<|a|><|b|>yo<|a|><u>", &sp, true);
        assert_eq!(
            f,
            vec![
                Fragment::Text("hi"),
                Fragment::Token(1),
                Fragment::Text("yo"),
                Fragment::Token(0),
                Fragment::Token(3)
            ]
        );
        let f = partition("hi<|a|><u>", &sp, false);
        assert_eq!(f, vec![Fragment::Text("hi<|a|>"), Fragment::Token(3)]);
        assert!(partition("", &sp, true).is_empty());
    }

    #[test]
    fn scan_finds_eog_by_text_and_forces_control() {
        let texts = strings(&[
            "<|endoftext|>",
            "<|im_start|>",
            "<|im_end|>",
            "<reponame>",
            "hello",
        ]);
        let mut types = vec![
            TokenType::Control,
            TokenType::Control,
            TokenType::Normal,
            TokenType::Control,
            TokenType::Normal,
        ];
        let scan = scan_specials(&texts, &mut types, &[Some(2)], None, None);
        assert_eq!(scan.eog, vec![0, 2, 3]);
        assert_eq!(scan.eot_id, Some(0));
        assert_eq!(types[2], TokenType::Control);
        assert_eq!(types[4], TokenType::Normal);
    }
}
