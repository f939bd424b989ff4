//! Interpretability end to end: `lumen_uncertainty` on the generation endpoints, checked
//! with the official client against the logprobs the same server returns, and
//! `POST /v1/explain` checked against the numbers the generation endpoints serve.

mod common;

use std::time::Duration;

#[test]
fn interpretability_end_to_end() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let server = common::Server::start(&["--enable-explain"]);
    server.pytest(&python, "test_uncertainty.py", Duration::from_secs(300));
    server.pytest(&python, "test_explain.py", Duration::from_secs(600));
}
