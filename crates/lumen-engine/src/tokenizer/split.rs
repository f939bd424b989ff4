//! Pre-tokenization: splitting text into the pieces BPE merges within.
//!
//! llama.cpp's GPT-2 and Llama 3 expressions end in `\s+(?!\S)` ("a run of whitespace,
//! less its last character when a word follows"). A lookahead needs a backtracking
//! engine, which made splitting the slowest part of encoding, so Lumen runs the
//! expressions without it on the `regex` crate (leftmost-first, same result as a
//! backtracking engine for lookaround-free patterns) and applies the lookahead's effect
//! to whitespace matches afterwards. `tests/tokenizer_fixture.rs` checks the result
//! against llama.cpp for each supported expression set.

use regex::Regex;

use crate::error::EngineError;

/// How a split expression's trailing whitespace alternative is completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WsRule {
    /// No whitespace lookahead in the original expression.
    Plain,
    /// The expression ended in `|\s+(?!\S)` and the rewrite ends in `|\s+`.
    Gpt2,
    /// The expression ended in `|\s*[\r\n]+|\s+(?!\S)|\s+` and the rewrite in
    /// `|\s*[\r\n]+|\s+`.
    Llama3,
}

/// One split expression as written for the `regex` crate, with its whitespace rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SplitExpr {
    /// The pattern, without lookarounds.
    pub pattern: &'static str,
    /// How to restore the original whitespace lookahead.
    pub ws: WsRule,
}

/// Compiled split expressions, applied in turn (each to the pieces of the previous).
#[derive(Debug, Clone)]
pub(crate) struct Splitter {
    steps: Vec<(Regex, WsRule)>,
}

impl Splitter {
    /// Compiles the expressions.
    pub(crate) fn new(exprs: &[SplitExpr]) -> Result<Splitter, EngineError> {
        let steps = exprs
            .iter()
            .map(|e| {
                Regex::new(e.pattern)
                    .map(|re| (re, e.ws))
                    .map_err(|err| EngineError::Tokenizer(format!("pre-tokenizer regex: {err}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Splitter { steps })
    }

    /// Splits `text` into pieces; both matches and the text between them are kept.
    pub(crate) fn split<'a>(&self, text: &'a str) -> Vec<&'a str> {
        let mut pieces = vec![text];
        let mut next = Vec::new();
        for (re, ws) in &self.steps {
            next.clear();
            for piece in &pieces {
                split_one(re, *ws, piece, &mut next);
            }
            std::mem::swap(&mut pieces, &mut next);
        }
        pieces.retain(|p| !p.is_empty());
        pieces
    }
}

/// Whether a match came from the whitespace alternative the lookahead belonged to.
fn from_ws_branch(m: &str, ws: WsRule) -> bool {
    match ws {
        WsRule::Plain => false,
        WsRule::Gpt2 => m.chars().all(char::is_whitespace),
        // `\s*[\r\n]+` comes first and wins whenever the run holds a line break, so a
        // pure-whitespace match ending without one is from `\s+`.
        WsRule::Llama3 => m.chars().all(char::is_whitespace) && !m.ends_with(['\r', '\n']),
    }
}

fn split_one<'a>(re: &Regex, ws: WsRule, piece: &'a str, out: &mut Vec<&'a str>) {
    let mut pos = 0;
    let mut last_end = 0;
    while pos < piece.len() {
        let Some(m) = re.find_at(piece, pos) else {
            break;
        };
        let (start, mut end) = (m.start(), m.end());
        if end == start {
            // Not produced by these expressions; step over a character to be safe.
            pos = end + piece[end..].chars().next().map_or(1, char::len_utf8);
            continue;
        }
        // `\s+` took the whole run; if a non-space follows, `\s+(?!\S)` would have
        // stopped one character short (and not matched at all for a single character).
        if end < piece.len() && from_ws_branch(&piece[start..end], ws) {
            let last = piece[start..end]
                .char_indices()
                .last()
                .map_or(start, |(i, _)| start + i);
            if last > start {
                end = last;
            } else if ws == WsRule::Gpt2 {
                // No alternative matches here: the character joins the gap.
                pos = end;
                continue;
            }
        }
        if start > last_end {
            out.push(&piece[last_end..start]);
        }
        out.push(&piece[start..end]);
        last_end = end;
        pos = end;
    }
    if last_end < piece.len() {
        out.push(&piece[last_end..]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::pretok::pre_config;
    use super::*;

    fn split(pre: &str, text: &str) -> Vec<String> {
        let cfg = pre_config(Some(pre)).expect("known pre");
        let s = Splitter::new(cfg.splits).expect("compiles");
        s.split(text).into_iter().map(str::to_owned).collect()
    }

    #[test]
    fn gpt2_whitespace_lookahead() {
        assert_eq!(split("gpt2", "a  b"), vec!["a", " ", " b"]);
        assert_eq!(split("gpt2", "a\n\nb"), vec!["a", "\n", "\n", "b"]);
        assert_eq!(split("gpt2", "a\tb  "), vec!["a", "\t", "b", "  "]);
        assert_eq!(
            split("gpt2", "it's 12 ok!!"),
            vec!["it", "'s", " 12", " ok", "!!"]
        );
    }

    #[test]
    fn smollm_splits_digits_first() {
        assert_eq!(split("smollm", "x 123"), vec!["x", " ", "1", "2", "3"]);
    }

    #[test]
    fn llama3_newlines_and_numbers() {
        assert_eq!(
            split("llama-bpe", "a  \n\n  b"),
            vec!["a", "  \n\n", " ", " b"]
        );
        assert_eq!(
            split("llama-bpe", "12345 I'M"),
            vec!["123", "45", " I", "'M"]
        );
        assert_eq!(split("llama-bpe", "x \ty"), vec!["x", " ", "\ty"]);
        assert_eq!(split("qwen2", "12345"), vec!["1", "2", "3", "4", "5"]);
    }
}
