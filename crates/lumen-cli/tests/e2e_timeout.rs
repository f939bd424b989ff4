//! `--request-timeout` end to end: a generation running past it ends with
//! `finish_reason: "cancelled"` and what it had, an embedding request gets a 504 and the
//! embedding model stops working on it (`tests/e2e/test_timeout.py`).

mod common;

use std::time::Duration;

#[test]
fn request_timeout_cancels_generations_and_embeddings() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let server = common::Server::start(&["--request-timeout", "1"]);
    server.pytest(&python, "test_timeout.py", Duration::from_secs(300));
}
