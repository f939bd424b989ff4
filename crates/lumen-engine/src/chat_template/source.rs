//! Template source fix-ups for the few places minijinja reads Jinja2 syntax differently.
//!
//! Jinja2 decodes string literals with Python's escape rules, where a backslash before a
//! line break continues the string on the next line (both characters vanish). minijinja
//! keeps them, so Mistral's templates, which wrap their long default system prompt this
//! way, would print stray backslashes. Only string literals inside `{{ }}` and `{% %}`
//! are touched; template text, comments and everything else pass through unchanged.

use std::borrow::Cow;

/// Removes backslash-newline pairs inside string literals of template tags.
pub(crate) fn normalize(source: &str) -> Cow<'_, str> {
    if !source.contains("\\\n") {
        return Cow::Borrowed(source);
    }
    let b = source.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    // Closing delimiter of the tag we are in, and the open quote inside it.
    let mut close: Option<&[u8]> = None;
    let mut quote: Option<u8> = None;
    while i < b.len() {
        let rest = &b[i..];
        match (close, quote) {
            (None, _) => {
                let tag: Option<&[u8]> = if rest.starts_with(b"{{") {
                    Some(b"}}")
                } else if rest.starts_with(b"{%") {
                    Some(b"%}")
                } else if rest.starts_with(b"{#") {
                    Some(b"#}")
                } else {
                    None
                };
                match tag {
                    Some(t) => {
                        out.extend_from_slice(&rest[..2]);
                        i += 2;
                        if t == b"#}" {
                            // Copy a comment through unchanged.
                            let end = find(&b[i..], t).map_or(b.len(), |p| i + p + 2);
                            out.extend_from_slice(&b[i..end]);
                            i = end;
                        } else {
                            close = Some(t);
                        }
                    }
                    None => {
                        out.push(b[i]);
                        i += 1;
                    }
                }
            }
            (Some(c), None) => {
                if rest.starts_with(c) {
                    out.extend_from_slice(c);
                    i += 2;
                    close = None;
                } else {
                    if matches!(b[i], b'"' | b'\'') {
                        quote = Some(b[i]);
                    }
                    out.push(b[i]);
                    i += 1;
                }
            }
            (Some(_), Some(q)) => {
                if b[i] == b'\\' {
                    match b.get(i + 1) {
                        Some(b'\n') => {}
                        Some(&next) => out.extend_from_slice(&[b'\\', next]),
                        None => out.push(b'\\'),
                    }
                    i += 2;
                } else {
                    if b[i] == q {
                        quote = None;
                    }
                    out.push(b[i]);
                    i += 1;
                }
            }
        }
    }
    // Only ASCII bytes were removed, so the result is still UTF-8.
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(source),
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn continuation_inside_strings_only() {
        let src =
            "a\\\nb{{ \"x\\\ny\" + 'p\\\nq\\'r' }}c\\\nd{# \"k\\\nl\" #}{% set s = \"\\\"\\\n\" %}";
        assert_eq!(
            normalize(src),
            "a\\\nb{{ \"xy\" + 'pq\\'r' }}c\\\nd{# \"k\\\nl\" #}{% set s = \"\\\"\" %}"
        );
        assert!(matches!(normalize("{{ 'plain' }}"), Cow::Borrowed(_)));
    }
}
