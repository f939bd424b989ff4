//! `keep_alive`: how long a model stays loaded after its last request, as Ollama takes it.
//!
//! A number is seconds; a string is a number of seconds or a Go-style duration (`"5m"`,
//! `"1h30m"`, `"250ms"`). A negative value keeps the model loaded for good, zero unloads it
//! as soon as its last request ends. The latest request's value applies to the model.

use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::error::ServerError;

/// Longest finite keep-alive accepted (a year; anything longer is "forever" in practice).
const MAX_SECS: f64 = 365.0 * 24.0 * 3600.0;

/// How long a model stays loaded once idle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepAlive {
    /// Unload after this much idle time (zero: at once).
    For(Duration),
    /// Never unload for idleness.
    Forever,
}

impl KeepAlive {
    /// Reads a seconds count: negative means forever.
    pub fn from_secs(secs: f64) -> Result<KeepAlive, String> {
        if !secs.is_finite() {
            return Err(format!("keep_alive must be finite, got {secs}"));
        }
        if secs < 0.0 {
            return Ok(KeepAlive::Forever);
        }
        if secs > MAX_SECS {
            return Err(format!("keep_alive must be at most {MAX_SECS} seconds (or negative for forever), got {secs}"));
        }
        Ok(KeepAlive::For(Duration::from_secs_f64(secs)))
    }

    /// Parses `"300"`, `"-1"`, `"5m"`, `"1h30m"`, `"1.5s"`, `"250ms"`.
    pub fn parse(text: &str) -> Result<KeepAlive, String> {
        let t = text.trim();
        if let Ok(secs) = t.parse::<f64>() {
            return Self::from_secs(secs);
        }
        let (negative, mut rest) = match t.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, t),
        };
        if rest.is_empty() {
            return Err(format!("keep_alive '{text}' is not a duration"));
        }
        let mut secs = 0.0;
        while !rest.is_empty() {
            let num_end = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .unwrap_or(rest.len());
            let unit_end = rest[num_end..]
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .map_or(rest.len(), |i| num_end + i);
            let n: f64 = rest[..num_end]
                .parse()
                .map_err(|_| format!("keep_alive '{text}' is not a duration like '5m' or '300'"))?;
            let scale = match &rest[num_end..unit_end] {
                "h" => 3600.0,
                "m" => 60.0,
                "s" => 1.0,
                "ms" => 1e-3,
                unit => {
                    return Err(format!(
                        "keep_alive '{text}' has unknown unit '{unit}' (use h, m, s or ms)"
                    ))
                }
            };
            secs += n * scale;
            rest = &rest[unit_end..];
        }
        Self::from_secs(if negative { -secs } else { secs })
    }

    /// Reads the JSON value of a `keep_alive` field.
    pub fn from_json(v: &Value) -> Result<KeepAlive, String> {
        match v {
            Value::Number(n) => Self::from_secs(n.as_f64().unwrap_or(f64::NAN)),
            Value::String(s) => Self::parse(s),
            other => Err(format!(
                "keep_alive must be a number of seconds or a duration string, not {other}"
            )),
        }
    }

    /// Whether a model idle for `idle` should be unloaded now.
    pub fn expired(&self, idle: Duration) -> bool {
        match self {
            KeepAlive::For(d) => idle >= *d,
            KeepAlive::Forever => false,
        }
    }
}

impl std::fmt::Display for KeepAlive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeepAlive::For(d) => write!(f, "{}s", d.as_secs_f64()),
            KeepAlive::Forever => write!(f, "forever"),
        }
    }
}

#[derive(Deserialize)]
struct Field {
    #[serde(default)]
    keep_alive: Option<Value>,
}

/// The `keep_alive` field of a JSON request body, if present (a 400 naming it if invalid).
pub fn from_body(body: &[u8]) -> Result<Option<KeepAlive>, ServerError> {
    let field: Field = crate::extract::parse_json(body)?;
    match field.keep_alive {
        None | Some(Value::Null) => Ok(None),
        Some(v) => KeepAlive::from_json(&v)
            .map(Some)
            .map_err(|m| ServerError::param("keep_alive", m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_ollama_forms() {
        let s = |n: u64| Ok(KeepAlive::For(Duration::from_secs(n)));
        assert_eq!(KeepAlive::parse("5m"), s(300));
        assert_eq!(KeepAlive::parse("1h30m"), s(5400));
        assert_eq!(KeepAlive::parse("300"), s(300));
        assert_eq!(KeepAlive::parse("0"), s(0));
        assert_eq!(KeepAlive::parse("-1"), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::parse("-1m"), Ok(KeepAlive::Forever));
        assert_eq!(
            KeepAlive::parse("250ms"),
            Ok(KeepAlive::For(Duration::from_millis(250)))
        );
        assert_eq!(KeepAlive::from_json(&json!(1)), s(1));
        assert_eq!(KeepAlive::from_json(&json!(-1)), Ok(KeepAlive::Forever));
        assert_eq!(KeepAlive::from_json(&json!("10s")), s(10));
    }

    #[test]
    fn refuses_the_rest() {
        for bad in ["", "-", "5x", "m", "abc", "1e400", "5m3", "99999999999"] {
            assert!(KeepAlive::parse(bad).is_err(), "{bad}");
        }
        for bad in [json!(true), json!([1]), json!({})] {
            assert!(KeepAlive::from_json(&bad).is_err(), "{bad}");
        }
        let e = from_body(br#"{"keep_alive": "soon"}"#).unwrap_err();
        assert_eq!(e.body()["error"]["param"], "keep_alive");
        assert_eq!(from_body(br#"{"model": "m"}"#).unwrap(), None);
    }

    #[test]
    fn expiry() {
        assert!(KeepAlive::For(Duration::ZERO).expired(Duration::ZERO));
        assert!(!KeepAlive::For(Duration::from_secs(2)).expired(Duration::from_secs(1)));
        assert!(!KeepAlive::Forever.expired(Duration::MAX));
    }
}
