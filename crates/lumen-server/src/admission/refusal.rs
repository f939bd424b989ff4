//! The errors admission answers with, worded once for the in-memory and the shared
//! admission: which limit, of the key or its tenant, and when to retry.

use super::{headers, Period, Subject};
use crate::error::ServerError;

/// A request larger than `s`'s tokens per minute.
pub(super) fn too_large(s: &Subject, cost: u64, tpm: u64) -> ServerError {
    ServerError::RequestTooLarge(format!(
        "Request too large: it may use {cost} tokens (prompt plus max_tokens), more than this {}'s limit of {tpm} tokens per minute. Send a shorter prompt or a smaller max_tokens.",
        s.what
    ))
}

/// `s`'s budget cannot cover `cost` more tokens.
pub(super) fn over_budget(
    s: &Subject,
    period: Period,
    (used, reserved, budget): (u64, u64, u64),
    cost: u64,
) -> ServerError {
    ServerError::QuotaExceeded(format!(
        "You exceeded this {}'s token budget: {used} of {budget} tokens used this {} and {reserved} reserved by requests in flight; this request may use {cost}.",
        s.what,
        period.as_str()
    ))
}

/// `s` has `max` requests in flight already.
pub(super) fn too_many_in_flight(s: &Subject, max: u64) -> ServerError {
    ServerError::RateLimited {
        kind: "requests",
        message: format!(
            "Too many requests in flight for this {}: limit {max}. Retry when one finishes.",
            s.what
        ),
        retry_after_ms: 1000,
    }
}

/// A per-minute limit was hit: which, and the error to answer with.
pub(super) fn limited(kind: &'static str, s: &Subject, limit: u64, wait_ns: u64) -> ServerError {
    let ms = wait_ns.div_ceil(1_000_000).max(1);
    ServerError::RateLimited {
        kind,
        message: format!(
            "Rate limit reached for {kind} per minute on this {}: limit {limit}. Please try again in {}.",
            s.what,
            headers::go_duration(ms * 1_000_000)
        ),
        retry_after_ms: ms,
    }
}
