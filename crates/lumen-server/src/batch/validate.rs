//! Checks a batch's input file line by line: each line must be a JSON object with a unique
//! `custom_id`, `method` `POST`, the batch's `url` and a `body` object, and there may be at
//! most [`MAX_LINES`] lines. Any of these failing rejects the whole batch (status `failed`,
//! `errors.data[]` naming the lines), as OpenAI does. A body that the endpoint itself would
//! refuse is not checked here: the line runs and its error goes to the error file, exactly
//! as the live endpoint words it.

use std::collections::HashSet;
use std::io::BufRead;
use std::path::Path;

use lumen_store::batches::MAX_LINES;
use lumen_store::NewItem;
use serde::Serialize;
use serde_json::Value;

/// Errors reported at most (the rest are counted in the last message).
const MAX_ERRORS: usize = 100;

/// One reason a batch was rejected (OpenAI's `errors.data[]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LineError {
    /// Machine-readable reason.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// The 1-based input line, when one is to blame.
    pub line: Option<u64>,
    /// The field, when one is to blame.
    pub param: Option<&'static str>,
}

fn err(code: &'static str, line: u64, param: Option<&'static str>, message: String) -> LineError {
    LineError {
        code,
        message,
        line: Some(line),
        param,
    }
}

/// The items of the file at `path` for `endpoint`, or why the batch is refused. Lines longer
/// than `max_line_bytes` are refused (the live endpoint's body limit).
pub fn validate(
    path: &Path,
    endpoint: &str,
    max_line_bytes: usize,
) -> Result<Vec<NewItem>, Vec<LineError>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Err(vec![LineError {
                code: "file_unreadable",
                message: format!("the input file cannot be read: {e}"),
                line: None,
                param: Some("input_file_id"),
            }])
        }
    };
    validate_reader(std::io::BufReader::new(file), endpoint, max_line_bytes)
}

/// [`validate`] over any reader (tests).
pub fn validate_reader(
    mut reader: impl BufRead,
    endpoint: &str,
    max_line_bytes: usize,
) -> Result<Vec<NewItem>, Vec<LineError>> {
    let mut items = Vec::new();
    let mut errors = Vec::new();
    let mut seen = HashSet::new();
    let mut buf = Vec::new();
    let mut line_no = 0u64;
    let mut requests = 0usize;
    let mut dropped = 0usize;
    let mut push = |errors: &mut Vec<LineError>, e: LineError| {
        if errors.len() < MAX_ERRORS {
            errors.push(e);
        } else {
            dropped += 1;
        }
    };
    loop {
        buf.clear();
        // A line is read at most one byte past the limit, so a huge line costs no memory.
        let mut limited = std::io::Read::take(&mut reader, max_line_bytes as u64 + 1);
        let n = match limited.read_until(b'\n', &mut buf) {
            Ok(n) => n,
            Err(e) => {
                push(
                    &mut errors,
                    err("file_unreadable", line_no + 1, None, e.to_string()),
                );
                break;
            }
        };
        if n == 0 {
            break;
        }
        line_no += 1;
        if buf.len() > max_line_bytes && buf.last() != Some(&b'\n') {
            push(
                &mut errors,
                err(
                    "line_too_large",
                    line_no,
                    None,
                    format!("line {line_no} is longer than {max_line_bytes} bytes"),
                ),
            );
            // Skip the rest of the line.
            let mut rest = Vec::new();
            let _ = reader.read_until(b'\n', &mut rest);
            continue;
        }
        let text = String::from_utf8_lossy(&buf);
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        requests += 1;
        if requests > MAX_LINES {
            push(
                &mut errors,
                LineError {
                    code: "too_many_lines",
                    message: format!("a batch may have at most {MAX_LINES} lines"),
                    line: Some(line_no),
                    param: Some("input_file_id"),
                },
            );
            break;
        }
        match check_line(text, endpoint, line_no, &mut seen) {
            Ok(item) => items.push(item),
            Err(e) => push(&mut errors, e),
        }
    }
    if items.is_empty() && errors.is_empty() {
        errors.push(LineError {
            code: "empty_file",
            message: "the input file has no requests".into(),
            line: None,
            param: Some("input_file_id"),
        });
    }
    if dropped > 0 {
        errors.push(LineError {
            code: "too_many_errors",
            message: format!("{dropped} more errors not listed"),
            line: None,
            param: None,
        });
    }
    if errors.is_empty() {
        Ok(items)
    } else {
        Err(errors)
    }
}

fn check_line(
    text: &str,
    endpoint: &str,
    line: u64,
    seen: &mut HashSet<String>,
) -> Result<NewItem, LineError> {
    let v: Value = serde_json::from_str(text).map_err(|e| {
        err(
            "invalid_json_line",
            line,
            None,
            format!("line {line} is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(mut obj) = v else {
        return Err(err(
            "invalid_json_line",
            line,
            None,
            format!("line {line} is not a JSON object"),
        ));
    };
    let custom_id = match obj.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 => s.clone(),
        _ => {
            return Err(err(
                "missing_custom_id",
                line,
                Some("custom_id"),
                format!("line {line} needs a custom_id: a string of 1 to 512 characters"),
            ))
        }
    };
    match obj.get("method") {
        Some(Value::String(m)) if m == "POST" => {}
        _ => {
            return Err(err(
                "invalid_method",
                line,
                Some("method"),
                format!("line {line}: method must be \"POST\""),
            ))
        }
    }
    match obj.get("url") {
        Some(Value::String(u)) if u == endpoint => {}
        Some(Value::String(u)) => {
            return Err(err(
                "mismatched_url",
                line,
                Some("url"),
                format!("line {line}: url '{u}' differs from the batch's endpoint '{endpoint}'"),
            ))
        }
        _ => {
            return Err(err(
                "invalid_url",
                line,
                Some("url"),
                format!("line {line} needs a url (the batch's endpoint, '{endpoint}')"),
            ))
        }
    }
    let body = match obj.remove("body") {
        Some(b @ Value::Object(_)) => b,
        _ => {
            return Err(err(
                "missing_body",
                line,
                Some("body"),
                format!("line {line} needs a body object"),
            ))
        }
    };
    if !seen.insert(custom_id.clone()) {
        return Err(err(
            "duplicate_custom_id",
            line,
            Some("custom_id"),
            format!("line {line}: custom_id '{custom_id}' appears more than once"),
        ));
    }
    Ok(NewItem {
        line,
        custom_id,
        body: body.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EP: &str = "/v1/chat/completions";

    fn line(id: &str, url: &str) -> String {
        format!(r#"{{"custom_id":"{id}","method":"POST","url":"{url}","body":{{"model":"m"}}}}"#)
    }

    fn run(text: &str) -> Result<Vec<NewItem>, Vec<LineError>> {
        validate_reader(std::io::Cursor::new(text.as_bytes()), EP, 1000)
    }

    #[test]
    fn good_lines_become_items_with_their_line_numbers() {
        let text = format!("{}\n\n{}\n", line("a", EP), line("b", EP));
        let items = run(&text).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].line, items[1].line), (1, 3));
        assert_eq!(items[1].custom_id, "b");
        assert_eq!(items[0].body, r#"{"model":"m"}"#);
    }

    #[test]
    fn each_refusal_names_its_line_and_code() {
        let text = format!(
            "{}\nnot json\n{}\n{}\n",
            line("a", EP),
            line("a", EP),
            line("c", "/v1/embeddings")
        );
        let errs = run(&text).unwrap_err();
        let got: Vec<_> = errs.iter().map(|e| (e.code, e.line)).collect();
        assert_eq!(
            got,
            vec![
                ("invalid_json_line", Some(2)),
                ("duplicate_custom_id", Some(3)),
                ("mismatched_url", Some(4)),
            ]
        );
    }

    #[test]
    fn more_than_fifty_thousand_lines_are_refused() {
        let mut text = String::new();
        for i in 0..MAX_LINES {
            text.push_str(&line(&i.to_string(), EP));
            text.push('\n');
        }
        assert_eq!(run(&text).unwrap().len(), MAX_LINES);
        text.push_str(&line("one-more", EP));
        let errs = run(&text).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(
            (errs[0].code, errs[0].line),
            ("too_many_lines", Some(MAX_LINES as u64 + 1))
        );
    }

    #[test]
    fn a_line_over_the_limit_is_refused_without_reading_it_whole() {
        let big = format!("{}\n", "x".repeat(5000));
        let errs = run(&format!("{}\n{big}", line("a", EP))).unwrap_err();
        assert_eq!(errs[0].code, "line_too_large");
        assert_eq!(errs[0].line, Some(2));
        assert!(run("").unwrap_err()[0].code == "empty_file");
    }
}
