//! Tool calls out of generated text, as it streams: text outside `<tool_call>` blocks is
//! content, each block becomes a call whose name is announced first and whose arguments
//! follow in pieces.
//!
//! The pieces of a call's arguments, concatenated, are exactly the JSON text of its
//! `arguments` value (as the model wrote it), which is also what a non-streamed answer
//! carries, so the two forms agree. Text that might still turn out to be the start of a tag
//! is held back, so no partial tag ever reaches `content`.

use serde::Deserialize;
use serde_json::value::RawValue;

use super::tools::{CALL_CLOSE, CALL_OPEN};

/// Bytes of a call held back until it is known they are not the call's closing: the
/// grammar bounds JSON whitespace to 16 characters, so `ws } ws \n</tool_call>` fits.
const HOLD: usize = 64;

/// What a piece of generated text turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolEvent {
    /// Ordinary text.
    Content(String),
    /// Call `index` to the function `name` begins.
    CallStart {
        /// Position among this answer's calls.
        index: usize,
        /// The function.
        name: String,
    },
    /// More of call `index`'s arguments (JSON text).
    CallArgs {
        /// Position among this answer's calls.
        index: usize,
        /// The text added.
        piece: String,
    },
}

#[derive(Debug)]
enum State {
    /// Outside a call; `buf` may end with a partial opening tag.
    Text,
    /// Inside a call, before its name is known; `buf` holds the call so far.
    Head,
    /// Inside a call with a name; `buf` holds the arguments from their first character,
    /// of which `sent` bytes went out.
    Args { sent: usize },
}

/// Splits one choice's text into content and tool calls.
#[derive(Debug)]
pub struct ToolCallParser {
    state: State,
    buf: String,
    calls: usize,
    /// After a call, whitespace before further content is dropped (it separates blocks).
    trim_next: bool,
}

impl Default for ToolCallParser {
    fn default() -> Self {
        Self::new()
    }
}

impl ToolCallParser {
    /// A parser at the start of an answer.
    pub fn new() -> Self {
        ToolCallParser {
            state: State::Text,
            buf: String::new(),
            calls: 0,
            trim_next: false,
        }
    }

    /// Calls started so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// Feeds newly generated text.
    pub fn push(&mut self, text: &str) -> Vec<ToolEvent> {
        self.buf.push_str(text);
        let mut out = Vec::new();
        loop {
            let progressed = match self.state {
                State::Text => self.step_text(&mut out, false),
                State::Head => self.step_head(&mut out),
                State::Args { sent } => self.step_args(sent, &mut out, false),
            };
            if !progressed {
                return out;
            }
        }
    }

    /// The answer ended: releases whatever is held back.
    pub fn finish(&mut self) -> Vec<ToolEvent> {
        let mut out = Vec::new();
        match self.state {
            State::Text => {
                self.step_text(&mut out, true);
            }
            State::Head => {
                // A call that never got a name is not a call: it stays text.
                let text = format!("{CALL_OPEN}{}", std::mem::take(&mut self.buf));
                self.content(text, &mut out);
                self.state = State::Text;
            }
            State::Args { sent } => {
                self.step_args(sent, &mut out, true);
            }
        }
        out
    }

    fn content(&mut self, mut text: String, out: &mut Vec<ToolEvent>) {
        if self.trim_next {
            let kept = text.trim_start().len();
            text.drain(..text.len() - kept);
            if text.is_empty() {
                return;
            }
            self.trim_next = false;
        }
        if !text.is_empty() {
            out.push(ToolEvent::Content(text));
        }
    }

    /// Outside a call: content up to a tag (or up to what may be a partial tag).
    fn step_text(&mut self, out: &mut Vec<ToolEvent>, at_end: bool) -> bool {
        if let Some(pos) = self.buf.find(CALL_OPEN) {
            let before: String = self.buf[..pos].to_string();
            self.buf.drain(..pos + CALL_OPEN.len());
            self.content(before, out);
            self.state = State::Head;
            return true;
        }
        let keep = if at_end {
            0
        } else {
            partial_suffix(&self.buf, CALL_OPEN)
        };
        let emit = self.buf.len() - keep;
        if emit > 0 {
            let text: String = self.buf.drain(..emit).collect();
            self.content(text, out);
        }
        false
    }

    /// Inside a call, before the name: waits for `{"name": "...", "arguments":`.
    fn step_head(&mut self, out: &mut Vec<ToolEvent>) -> bool {
        match parse_head(&self.buf) {
            Head::Incomplete => false,
            Head::Named { name, args_at } => {
                let index = self.calls;
                self.calls += 1;
                out.push(ToolEvent::CallStart { index, name });
                self.buf.drain(..args_at);
                self.state = State::Args { sent: 0 };
                true
            }
            // Another layout (arguments first, say): parse the whole call once it closes.
            Head::Other => match self.buf.find(CALL_CLOSE) {
                None => false,
                Some(end) => {
                    let body: String = self.buf[..end].to_string();
                    self.buf.drain(..end + CALL_CLOSE.len());
                    self.state = State::Text;
                    self.trim_next = true;
                    match serde_json::from_str::<Call>(body.trim()) {
                        Ok(call) => {
                            let index = self.calls;
                            self.calls += 1;
                            out.push(ToolEvent::CallStart {
                                index,
                                name: call.name,
                            });
                            out.push(ToolEvent::CallArgs {
                                index,
                                piece: call.arguments.get().to_string(),
                            });
                        }
                        Err(_) => {
                            self.trim_next = false;
                            self.content(format!("{CALL_OPEN}{body}{CALL_CLOSE}"), out);
                        }
                    }
                    true
                }
            },
        }
    }

    /// Inside a call's arguments: sends all but what may be the call's closing.
    fn step_args(&mut self, sent: usize, out: &mut Vec<ToolEvent>, at_end: bool) -> bool {
        let index = self.calls - 1;
        let close = self.buf.find(CALL_CLOSE);
        let end = match close {
            Some(c) => arguments_end(&self.buf[..c]),
            None if at_end => self.buf.len(),
            None => floor_char_boundary(&self.buf, self.buf.len().saturating_sub(HOLD)),
        };
        if end > sent {
            out.push(ToolEvent::CallArgs {
                index,
                piece: self.buf[sent..end].to_string(),
            });
        }
        match close {
            Some(c) => {
                self.buf.drain(..c + CALL_CLOSE.len());
                self.state = State::Text;
                self.trim_next = true;
                true
            }
            None => {
                if at_end {
                    self.buf.clear();
                    self.state = State::Text;
                } else {
                    self.state = State::Args {
                        sent: end.max(sent),
                    };
                }
                false
            }
        }
    }
}

#[derive(Deserialize)]
struct Call {
    name: String,
    arguments: Box<RawValue>,
}

enum Head {
    Incomplete,
    Named { name: String, args_at: usize },
    Other,
}

/// Reads `ws { ws "name" ws : ws "<string>" ws , ws "arguments" ws : ws` and says where
/// the arguments value starts (it must have begun).
fn parse_head(s: &str) -> Head {
    let b = s.as_bytes();
    let mut i = 0;
    let ws = |i: &mut usize| {
        while *i < b.len() && b[*i].is_ascii_whitespace() {
            *i += 1;
        }
    };
    // Each step: Some(true) matched, Some(false) mismatch, None need more bytes.
    let lit = |i: &mut usize, l: &str| -> Option<bool> {
        let l = l.as_bytes();
        let n = l.len().min(b.len() - *i);
        if b[*i..*i + n] != l[..n] {
            return Some(false);
        }
        if n < l.len() {
            return None;
        }
        *i += l.len();
        Some(true)
    };
    macro_rules! expect {
        ($l:expr) => {
            ws(&mut i);
            match lit(&mut i, $l) {
                Some(true) => {}
                Some(false) => return Head::Other,
                None => return Head::Incomplete,
            }
        };
    }
    expect!("{");
    expect!("\"name\"");
    expect!(":");
    ws(&mut i);
    if i >= b.len() {
        return Head::Incomplete;
    }
    if b[i] != b'"' {
        return Head::Other;
    }
    let start = i;
    i += 1;
    while i < b.len() && b[i] != b'"' {
        i += if b[i] == b'\\' { 2 } else { 1 };
    }
    if i >= b.len() {
        return Head::Incomplete;
    }
    i += 1;
    let Ok(name) = serde_json::from_str::<String>(&s[start..i]) else {
        return Head::Other;
    };
    expect!(",");
    expect!("\"arguments\"");
    expect!(":");
    ws(&mut i);
    if i >= b.len() {
        return Head::Incomplete;
    }
    Head::Named { name, args_at: i }
}

/// Where the arguments value ends in `body` (the call up to its closing tag, from the
/// arguments' first character): before the object's closing brace and the whitespace
/// around it.
fn arguments_end(body: &str) -> usize {
    let t = body.trim_end();
    let t = t.strip_suffix('}').unwrap_or(t);
    t.trim_end().len()
}

/// Length of the longest suffix of `s` that is a proper prefix of `tag`.
fn partial_suffix(s: &str, tag: &str) -> usize {
    (1..tag.len().min(s.len() + 1))
        .rev()
        .find(|&n| s.is_char_boundary(s.len() - n) && tag.starts_with(&s[s.len() - n..]))
        .unwrap_or(0)
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `text` in pieces of `step` bytes (at char boundaries) and collects
    /// (content, [(name, arguments)]).
    fn run(text: &str, step: usize) -> (String, Vec<(String, String)>) {
        let mut p = ToolCallParser::new();
        let mut events = Vec::new();
        let mut i = 0;
        while i < text.len() {
            let mut j = (i + step).min(text.len());
            while !text.is_char_boundary(j) {
                j += 1;
            }
            events.extend(p.push(&text[i..j]));
            i = j;
        }
        events.extend(p.finish());
        let mut content = String::new();
        let mut calls: Vec<(String, String)> = Vec::new();
        for e in events {
            match e {
                ToolEvent::Content(t) => content.push_str(&t),
                ToolEvent::CallStart { index, name } => {
                    assert_eq!(index, calls.len());
                    calls.push((name, String::new()));
                }
                ToolEvent::CallArgs { index, piece } => calls[index].1.push_str(&piece),
            }
        }
        (content, calls)
    }

    #[test]
    fn calls_split_from_content_at_any_chunking() {
        let text = "Let me check.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris \\\"FR\\\"\", \"days\": [1, 2]}}\n</tool_call>\n<tool_call>\n{\"name\": \"time\", \"arguments\": {}}\n</tool_call>";
        for step in [1, 2, 3, 7, 64, 1000] {
            let (content, calls) = run(text, step);
            assert_eq!(content, "Let me check.", "step {step}");
            assert_eq!(
                calls,
                vec![
                    (
                        "get_weather".to_string(),
                        "{\"city\": \"Paris \\\"FR\\\"\", \"days\": [1, 2]}".to_string()
                    ),
                    ("time".to_string(), "{}".to_string())
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn partial_tags_are_never_content() {
        let mut p = ToolCallParser::new();
        let ev = p.push("Hello <tool_");
        assert_eq!(ev, vec![ToolEvent::Content("Hello ".into())]);
        let ev = p.push("x> not a tag");
        assert_eq!(ev, vec![ToolEvent::Content("<tool_x> not a tag".into())]);
        assert_eq!(p.calls(), 0);
    }

    #[test]
    fn other_layouts_and_unterminated_calls() {
        let (content, calls) = run(
            "<tool_call>{\"arguments\": {\"a\": 1}, \"name\": \"f\"}</tool_call>",
            5,
        );
        assert_eq!(content, "");
        assert_eq!(calls, vec![("f".to_string(), "{\"a\": 1}".to_string())]);
        // Cut by max_tokens inside the arguments: what came is still the call's.
        let (_, calls) = run(
            "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": [1, 2",
            4,
        );
        assert_eq!(calls, vec![("f".to_string(), "{\"a\": [1, 2".to_string())]);
        // No name yet: text.
        let (content, calls) = run("<tool_call>\n{\"na", 3);
        assert!(calls.is_empty());
        assert_eq!(content, "<tool_call>\n{\"na");
    }

    #[test]
    fn unicode_content_is_not_split() {
        let (content, calls) = run("héllo wörld ✓ <tool", 1);
        assert_eq!(content, "héllo wörld ✓ <tool");
        assert!(calls.is_empty());
    }
}
