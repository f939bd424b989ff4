//! OpenAI's `x-ratelimit-*` response headers.
//!
//! `x-ratelimit-limit-requests`, `-remaining-requests`, `-reset-requests` and the same three
//! for tokens; resets are Go-style durations as OpenAI writes them (`6m0s`, `1s`, `12ms`,
//! `1.5s`), which the official SDKs parse.

use axum::http::{HeaderMap, HeaderValue};

use super::rate::LimitView;
use super::RateSnapshot;

/// A duration of `ns` nanoseconds written as Go's `time.Duration` does, rounded to the
/// millisecond: `0s`, `12ms`, `1s`, `1.5s`, `6m0s`, `1h0m0s`.
pub fn go_duration(ns: u64) -> String {
    let ms = ns.div_ceil(1_000_000);
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = ms / 60_000 % 60;
    let s_ms = ms % 60_000;
    let frac_ms = s_ms % 1000;
    let secs = if frac_ms == 0 {
        format!("{}s", s_ms / 1000)
    } else {
        let frac = format!("{frac_ms:03}");
        format!("{}.{}s", s_ms / 1000, frac.trim_end_matches('0'))
    };
    match (h, m) {
        (0, 0) => secs,
        (0, m) => format!("{m}m{secs}"),
        (h, m) => format!("{h}h{m}m{secs}"),
    }
}

fn put(h: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(v) = HeaderValue::from_str(&value) {
        h.insert(name, v);
    }
}

fn put_view(h: &mut HeaderMap, what: &str, v: &LimitView) {
    let (limit, remaining, reset) = match what {
        "requests" => (
            "x-ratelimit-limit-requests",
            "x-ratelimit-remaining-requests",
            "x-ratelimit-reset-requests",
        ),
        _ => (
            "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-tokens",
        ),
    };
    put(h, limit, v.limit.to_string());
    put(h, remaining, v.remaining.to_string());
    put(h, reset, go_duration(v.reset_ns));
}

/// Writes the headers of every limit `snap` holds.
pub fn apply(h: &mut HeaderMap, snap: &RateSnapshot) {
    if let Some(v) = &snap.requests {
        put_view(h, "requests", v);
    }
    if let Some(v) = &snap.tokens {
        put_view(h, "tokens", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_look_like_openais() {
        let ms = 1_000_000;
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(12 * ms), "12ms");
        assert_eq!(go_duration(1), "1ms", "rounded up, never 0 while waiting");
        assert_eq!(go_duration(1000 * ms), "1s");
        assert_eq!(go_duration(1500 * ms), "1.5s");
        assert_eq!(go_duration(6 * 60_000 * ms), "6m0s");
        assert_eq!(go_duration(61_250 * ms), "1m1.25s");
        assert_eq!(go_duration(3_600_000 * ms), "1h0m0s");
    }
}
