//! Speculative decoding through the API: two servers, one with prompt lookup (the default) and
//! one with `--num-speculative-tokens 0`, answer copy-heavy and sampled requests with the same
//! text, logprobs and usage, and only the first reports accepted drafts in `/metrics`
//! (`tests/e2e/test_speculative.py`).

mod common;

use std::time::Duration;

#[test]
fn speculation_changes_nothing_a_client_sees_but_speed() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let on = common::Server::start(&[]);
    let off = common::Server::start(&["--num-speculative-tokens", "0"]);
    on.pytest_with(
        &python,
        "test_speculative.py",
        &[],
        &[("LUMEN_OFF_URL", off.base.clone())],
        Duration::from_secs(300),
    );
}
