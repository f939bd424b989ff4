//! Pre-tokenizer settings for byte-level BPE vocabularies, keyed by `tokenizer.ggml.pre`.
//!
//! The expressions and per-name flags are those llama.cpp uses (`llama-vocab.cpp`), so
//! that a GGUF file splits the same way in Lumen as in llama.cpp. Each expression is
//! applied in turn to the pieces the previous one produced, keeping both matches and the
//! text between them. Expressions that end in a whitespace lookahead are stored without
//! it, with a [`WsRule`] that restores its effect (see [`super::split`]).

use super::split::{SplitExpr, WsRule};

/// GPT-2's split (contractions, letters, numbers, other, whitespace); originally ending
/// in `\s+(?!\S)`.
const GPT2: SplitExpr = SplitExpr {
    pattern: r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+",
    ws: WsRule::Gpt2,
};

/// Llama 3's split: case-insensitive contractions, numbers in groups of up to three;
/// originally ending in `\s*[\r\n]+|\s+(?!\S)|\s+`.
const LLAMA3: SplitExpr = SplitExpr {
    pattern: r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+",
    ws: WsRule::Llama3,
};

/// Qwen 2's split: like Llama 3 but every digit on its own.
const QWEN2: SplitExpr = SplitExpr {
    pattern: r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+",
    ws: WsRule::Llama3,
};

/// An expression without lookarounds.
const fn plain(pattern: &'static str) -> SplitExpr {
    SplitExpr {
        pattern,
        ws: WsRule::Plain,
    }
}

/// How one `tokenizer.ggml.pre` value pre-tokenizes and detokenizes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PreConfig {
    /// Canonical name (the llama.cpp pre-type), for logs.
    pub name: &'static str,
    /// Split expressions, applied in order.
    pub splits: &'static [SplitExpr],
    /// Whether a pre-token that is itself in the vocabulary skips the merges.
    pub ignore_merges: bool,
    /// Default for `add_bos_token` when the file does not say.
    pub add_bos: bool,
    /// Whether detokenizing removes the space before `?!.,` and some contractions.
    pub clean_spaces: bool,
}

const fn cfg(
    name: &'static str,
    splits: &'static [SplitExpr],
    ignore_merges: bool,
    add_bos: bool,
    clean_spaces: bool,
) -> PreConfig {
    PreConfig {
        name,
        splits,
        ignore_merges,
        add_bos,
        clean_spaces,
    }
}

/// The configuration for a `tokenizer.ggml.pre` value; `None` when Lumen does not know
/// the name (the caller then falls back to `default`, as llama.cpp does).
pub(crate) fn pre_config(pre: Option<&str>) -> Option<PreConfig> {
    const SMOLLM: &[SplitExpr] = &[plain(r"\p{N}"), GPT2];
    const DEFAULT: &[SplitExpr] = &[
        plain(r"[\p{P}\$\+<=>\^~\|]+"),
        GPT2,
        plain(r"\p{N}+"),
        plain(r"[0-9][0-9][0-9]"),
    ];
    const FALCON: &[SplitExpr] = &[
        plain(r"[\p{P}\$\+<=>\^~\|`]+"),
        GPT2,
        plain(r"[0-9][0-9][0-9]"),
    ];
    let Some(pre) = pre else {
        return Some(default_config());
    };
    Some(match pre {
        "default" => cfg("default", DEFAULT, false, false, true),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" => cfg("llama3", &[LLAMA3], true, true, true),
        "dbrx" | "smaug-bpe" => cfg("llama3", &[LLAMA3], false, false, true),
        "glm4" | "chatglm-bpe" => cfg("chatglm4", &[LLAMA3], false, false, true),
        "smollm" | "command-r" => cfg("smollm", SMOLLM, false, false, false),
        "starcoder" | "refact" | "codeshell" | "exaone" | "minerva-7b" => {
            cfg("smollm", SMOLLM, false, false, true)
        }
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "hunyuan" => {
            cfg("qwen2", &[QWEN2], false, false, false)
        }
        "stablelm2" | "megrez" => cfg("qwen2", &[QWEN2], false, false, true),
        "gpt2" | "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
        | "jina-v2-de" | "a.x-4.0" | "mellum" | "jina-v1-en" | "jina-v2-code" | "roberta-bpe"
        | "mpt" | "olmo" | "jais" | "exaone4" => cfg("gpt2", &[GPT2], false, false, true),
        "trillion" | "granite-docling" => cfg("gpt2", &[GPT2], false, false, false),
        "falcon" => cfg("falcon", FALCON, false, false, true),
        _ => return None,
    })
}

/// llama.cpp's fallback for a missing or unknown pre-tokenizer name.
pub(crate) fn default_config() -> PreConfig {
    pre_config(Some("default")).unwrap_or(PreConfig {
        name: "default",
        splits: &[GPT2],
        ignore_merges: false,
        add_bos: false,
        clean_spaces: true,
    })
}

/// llama.cpp's `clean_spaces` pass: drops the space before `? ! . ,`, around a lone
/// apostrophe, and before `'s 'm 're 've`.
pub(crate) fn clean_up_spaces(text: &[u8]) -> Vec<u8> {
    // Pass 1: " ?", " !", " .", " ,".
    let mut a: Vec<u8> = Vec::with_capacity(text.len());
    for (i, &x) in text.iter().enumerate() {
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            a.pop();
        }
        a.push(x);
    }
    // Pass 2: " ' " becomes "'"; the consumed space is blanked, as llama.cpp does in place.
    let mut b: Vec<u8> = Vec::with_capacity(a.len());
    let mut i = 0;
    while i < a.len() {
        let x = a[i];
        if i > 0 && x == b'\'' && i + 1 < a.len() && a[i - 1] == b' ' && a[i + 1] == b' ' {
            b.pop();
            b.push(x);
            a[i + 1] = 0;
            i += 2;
            continue;
        }
        b.push(x);
        i += 1;
    }
    // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
    let mut c: Vec<u8> = Vec::with_capacity(b.len());
    for (i, &x) in b.iter().enumerate() {
        if i > 0 && b[i - 1] == b' ' && x == b'\'' && i + 1 < b.len() {
            let x1 = b[i + 1];
            let x2 = b.get(i + 2).copied();
            let drop = matches!(x1, b's' | b'm')
                || (x1 == b'r' && x2 == Some(b'e'))
                || (x1 == b'v' && x2 == Some(b'e'));
            if drop {
                c.pop();
            }
        }
        c.push(x);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_resolve() {
        assert_eq!(pre_config(Some("smollm")).map(|c| c.name), Some("smollm"));
        assert_eq!(
            pre_config(Some("llama-bpe")).map(|c| c.name),
            Some("llama3")
        );
        assert_eq!(pre_config(Some("qwen2")).map(|c| c.name), Some("qwen2"));
        assert_eq!(pre_config(Some("gpt2")).map(|c| c.name), Some("gpt2"));
        assert_eq!(pre_config(None).map(|c| c.name), Some("default"));
        assert!(pre_config(Some("no-such-pre")).is_none());
        assert!(pre_config(Some("llama-bpe")).is_some_and(|c| c.ignore_merges && c.add_bos));
    }

    #[test]
    fn clean_spaces_matches_llama_cpp() {
        let out = clean_up_spaces(b"Hello , world ! It 's a ' b ' test .");
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Hello, world! It's a'b'test."
        );
    }
}
