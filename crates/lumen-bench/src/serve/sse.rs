//! Server-sent events, incrementally: bytes in as they arrive, whole events out, and what one
//! OpenAI streaming chunk says (text or not, usage, error, `[DONE]`).

use serde_json::Value;

/// Longest line the parser buffers before giving up on the stream.
const MAX_LINE: usize = 4 << 20;

/// One dispatched event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseMessage {
    /// The `event:` field, if any (`error` for llama-server's `error: {...}` lines too).
    pub event: Option<String>,
    /// The `data:` lines joined with `\n`.
    pub data: String,
}

/// An incremental SSE parser (`\n` or `\r\n` line ends).
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    data: Option<String>,
    event: Option<String>,
}

impl SseParser {
    /// A parser with nothing buffered.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds bytes; appends every event they complete to `out`. Fails on an over-long line.
    pub fn push(&mut self, bytes: &[u8], out: &mut Vec<SseMessage>) -> Result<(), String> {
        let mut rest = bytes;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..i]);
            rest = &rest[i + 1..];
            let mut line = std::mem::take(&mut self.line);
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            self.line_done(&line, out);
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > MAX_LINE {
            return Err(format!("an SSE line exceeds {MAX_LINE} bytes"));
        }
        Ok(())
    }

    /// Dispatches an event left open when the stream ended without a blank line.
    pub fn finish(&mut self, out: &mut Vec<SseMessage>) {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.line_done(&line, out);
        }
        self.dispatch(out);
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseMessage>) {
        if line.is_empty() {
            self.dispatch(out);
            return;
        }
        if line[0] == b':' {
            return; // comment / keep-alive
        }
        let text = String::from_utf8_lossy(line);
        let (field, value) = match text.find(':') {
            Some(i) => {
                let v = &text[i + 1..];
                (&text[..i], v.strip_prefix(' ').unwrap_or(v))
            }
            None => (text.as_ref(), ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "event" => self.event = Some(value.to_string()),
            // llama-server writes stream errors as `error: {json}`.
            "error" => {
                self.event = Some("error".into());
                self.data = Some(value.to_string());
            }
            _ => {} // id, retry and unknown fields
        }
    }

    fn dispatch(&mut self, out: &mut Vec<SseMessage>) {
        if let Some(data) = self.data.take() {
            out.push(SseMessage {
                event: self.event.take(),
                data,
            });
        }
        self.event = None;
    }
}

/// What one streamed chunk of `/v1/completions` or `/v1/chat/completions` carries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ChunkInfo {
    /// Choices in this chunk with non-empty text (each counts as one streamed token).
    pub text_choices: usize,
    /// `usage.completion_tokens`, when the server reports usage.
    pub completion_tokens: Option<u64>,
    /// The stream's end marker, `data: [DONE]`.
    pub done: bool,
    /// An error the server reported in the stream.
    pub error: Option<String>,
}

/// Interprets one SSE event from an OpenAI-compatible stream.
pub fn parse_chunk(msg: &SseMessage) -> ChunkInfo {
    let data = msg.data.trim();
    if data == "[DONE]" {
        return ChunkInfo {
            done: true,
            ..ChunkInfo::default()
        };
    }
    let v: Value = match serde_json::from_str(data) {
        Ok(v) => v,
        Err(e) => {
            return ChunkInfo {
                error: Some(format!("unparseable chunk ({e}): {}", clip(data))),
                ..ChunkInfo::default()
            }
        }
    };
    if msg.event.as_deref() == Some("error") || v.get("error").is_some() {
        let err = v.get("error").unwrap_or(&v);
        let text = err
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| clip(&err.to_string()));
        return ChunkInfo {
            error: Some(text),
            ..ChunkInfo::default()
        };
    }
    let text_choices = v
        .get("choices")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .filter(|c| {
                    let text = c
                        .get("text")
                        .or_else(|| c.get("delta").and_then(|d| d.get("content")))
                        .and_then(Value::as_str);
                    let reasoning = c
                        .get("delta")
                        .and_then(|d| d.get("reasoning_content"))
                        .and_then(Value::as_str);
                    text.is_some_and(|t| !t.is_empty()) || reasoning.is_some_and(|t| !t.is_empty())
                })
                .count()
        })
        .unwrap_or(0);
    let completion_tokens = v
        .get("usage")
        .and_then(|u| u.get("completion_tokens"))
        .and_then(Value::as_u64);
    ChunkInfo {
        text_choices,
        completion_tokens,
        done: false,
        error: None,
    }
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(200);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(pieces: &[&[u8]]) -> Vec<SseMessage> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for piece in pieces {
            p.push(piece, &mut out).unwrap();
        }
        p.finish(&mut out);
        out
    }

    fn data(s: &str) -> SseMessage {
        SseMessage {
            event: None,
            data: s.into(),
        }
    }

    #[test]
    fn events_split_across_reads() {
        let whole = b"data: {\"a\":1}\n\ndata: [DONE]\n\n";
        let expected = vec![data("{\"a\":1}"), data("[DONE]")];
        assert_eq!(parse_all(&[whole]), expected);
        // Every split point gives the same events.
        for cut in 0..whole.len() {
            assert_eq!(
                parse_all(&[&whole[..cut], &whole[cut..]]),
                expected,
                "cut at {cut}"
            );
        }
        // Byte by byte.
        let bytes: Vec<&[u8]> = whole.chunks(1).collect();
        assert_eq!(parse_all(&bytes), expected);
    }

    #[test]
    fn crlf_comments_multiline_and_fields() {
        let s = b": keep-alive\r\nevent: message\r\nid: 3\r\ndata: a\r\ndata:b\r\n\r\ndata: c";
        assert_eq!(
            parse_all(&[s]),
            vec![
                SseMessage {
                    event: Some("message".into()),
                    data: "a\nb".into()
                },
                data("c")
            ]
        );
        // A blank line with no data dispatches nothing.
        assert!(parse_all(&[b"\n\n: x\n\n"]).is_empty());
    }

    #[test]
    fn llama_server_error_line() {
        let msgs = parse_all(&[
            b"error: {\"code\":500,\"message\":\"boom\",\"type\":\"server_error\"}\n\n",
        ]);
        assert_eq!(msgs.len(), 1);
        assert_eq!(parse_chunk(&msgs[0]).error.as_deref(), Some("boom"));
    }

    #[test]
    fn over_long_line_is_refused() {
        let mut p = SseParser::new();
        let big = vec![b'x'; MAX_LINE + 1];
        assert!(p.push(&big, &mut Vec::new()).is_err());
    }

    #[test]
    fn completion_and_chat_chunks() {
        let c = parse_chunk(&data(
            r#"{"choices":[{"text":"Hi","index":0,"finish_reason":null}]}"#,
        ));
        assert_eq!(
            (c.text_choices, c.done, c.error.is_none()),
            (1, false, true)
        );
        let chat = parse_chunk(&data(
            r#"{"choices":[{"delta":{"content":" there"},"index":0}]}"#,
        ));
        assert_eq!(chat.text_choices, 1);
        // llama-server's first chat chunk carries only the role; the last carries no text.
        assert_eq!(
            parse_chunk(&data(
                r#"{"choices":[{"delta":{"role":"assistant","content":null}}]}"#
            ))
            .text_choices,
            0
        );
        assert_eq!(
            parse_chunk(&data(
                r#"{"choices":[{"text":"","finish_reason":"length"}]}"#
            ))
            .text_choices,
            0
        );
        let two = parse_chunk(&data(
            r#"{"choices":[{"text":"a","index":0},{"text":"b","index":1}]}"#,
        ));
        assert_eq!(two.text_choices, 2);
    }

    #[test]
    fn usage_done_and_errors() {
        let u = parse_chunk(&data(
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":128,"total_tokens":133}}"#,
        ));
        assert_eq!((u.text_choices, u.completion_tokens), (0, Some(128)));
        assert!(parse_chunk(&data("[DONE]")).done);
        assert!(parse_chunk(&data(" [DONE] ")).done);
        let e = parse_chunk(&data(
            r#"{"error":{"message":"model not found","type":"invalid_request_error"}}"#,
        ));
        assert_eq!(e.error.as_deref(), Some("model not found"));
        assert!(parse_chunk(&data("not json")).error.is_some());
    }
}
