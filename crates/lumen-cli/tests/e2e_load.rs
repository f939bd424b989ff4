//! Load and disconnects end to end: 64 concurrent streaming clients whose usage adds up to
//! the metrics, then 16 streams dropped mid-way that must stop costing compute at once.

mod common;

use std::time::Duration;

#[test]
fn concurrent_streams_and_disconnects() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let server = common::Server::start(&[]);
    server.pytest(&python, "test_load.py", Duration::from_secs(900));
}
