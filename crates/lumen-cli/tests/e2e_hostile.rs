//! Hostile input end to end: model files that must be refused at load time with a clear
//! error, and a server that must keep serving through slowloris, slow bodies, idle
//! connections, a storm of abandoned streams and malformed or oversized requests
//! (`tests/e2e/test_hostile*.py`), first as started normally, then under a memory ceiling of
//! twice its idle address space (`ulimit -v`); it must exit cleanly on SIGTERM each time.
//!
//! The tests share the machine's cores and measure latency, so they run one at a time.

mod common;

use std::sync::Mutex;
use std::time::Duration;

use common::{Server, StartOptions};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const HEADER_TIMEOUT: &str = "2";
const BODY_TIMEOUT: &str = "2";
const KEEP_ALIVE_TIMEOUT: &str = "2";
const MAX_PER_IP: &str = "512";
/// Large enough for a million `logit_bias` entries.
const MAX_BODY: &str = "16777216";

fn flags() -> Vec<&'static str> {
    vec![
        "--header-timeout",
        HEADER_TIMEOUT,
        "--body-timeout",
        BODY_TIMEOUT,
        "--keep-alive-timeout",
        KEEP_ALIVE_TIMEOUT,
        "--max-connections-per-ip",
        MAX_PER_IP,
        "--max-body-bytes",
        MAX_BODY,
        "--shutdown-grace",
        "10",
    ]
}

fn env(under_ceiling: bool) -> Vec<(&'static str, String)> {
    let flag = |on: bool| if on { "1" } else { "0" }.to_string();
    vec![
        ("HOSTILE_HEADER_TIMEOUT", HEADER_TIMEOUT.into()),
        ("HOSTILE_BODY_TIMEOUT", BODY_TIMEOUT.into()),
        ("HOSTILE_KEEP_ALIVE_TIMEOUT", KEEP_ALIVE_TIMEOUT.into()),
        ("HOSTILE_MAX_CONNECTIONS_PER_IP", MAX_PER_IP.into()),
        ("HOSTILE_MAX_BODY_BYTES", MAX_BODY.into()),
        // The latency comparison is the first run's; the second one is about survival.
        ("HOSTILE_CHECK_LATENCY", flag(!under_ceiling)),
        ("HOSTILE_UNDER_CEILING", flag(under_ceiling)),
    ]
}

/// SIGTERM, then a clean exit within the grace period.
fn stop_cleanly(mut server: Server, what: &str) {
    server.sigterm();
    let status = server
        .wait_exit(Duration::from_secs(30))
        .unwrap_or_else(|| panic!("{what}: no exit 30s after SIGTERM\n{}", server.log()));
    assert!(
        status.success(),
        "{what}: exit status {status}\n{}",
        server.log()
    );
    let log = server.log();
    assert!(
        !log.contains("panicked"),
        "{what}: a panic in the log\n{log}"
    );
}

#[test]
fn hostile_model_files_are_refused_cleanly() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(python) = common::prerequisites() else {
        return;
    };
    common::pytest_alone(
        &python,
        "test_hostile_models.py",
        &[],
        Duration::from_secs(300),
    );
}

#[test]
fn hostile_clients_and_requests() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(python) = common::prerequisites() else {
        return;
    };
    let server = Server::start(&flags());
    server.pytest_with(
        &python,
        "test_hostile.py",
        &[],
        &env(false),
        Duration::from_secs(600),
    );
    stop_cleanly(server, "hostile suite");
}

#[test]
fn hostile_requests_under_a_memory_ceiling() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let Some(python) = common::prerequisites() else {
        return;
    };
    // The idle footprint with the default models, then the ceiling at twice that.
    let idle = Server::start(&flags());
    std::thread::sleep(Duration::from_millis(500));
    let vm_size = idle
        .proc_status_kib("VmSize")
        .expect("VmSize of the idle server");
    let rss = idle.proc_status_kib("VmRSS").unwrap_or(0);
    stop_cleanly(idle, "idle server");
    let ceiling = 2 * vm_size;
    eprintln!(
        "idle server: VmSize {} MiB, VmRSS {} MiB; ceiling {} MiB",
        vm_size / 1024,
        rss / 1024,
        ceiling / 1024
    );

    let server = Server::start_with(
        &flags(),
        &StartOptions {
            ulimit_kib: Some(ceiling),
            ..StartOptions::default()
        },
    );
    // Everything but the latency comparison (the first test's) and the requests known to
    // kill it there (skipped with the reason; see CEILING_BUG in test_hostile.py).
    server.pytest_with(
        &python,
        "test_hostile.py",
        &[],
        &env(true),
        Duration::from_secs(600),
    );
    let peak = server.proc_status_kib("VmPeak").unwrap_or(0);
    let hwm = server.proc_status_kib("VmHWM").unwrap_or(0);
    eprintln!(
        "under the ceiling: VmPeak {} MiB of {} MiB, VmHWM {} MiB",
        peak / 1024,
        ceiling / 1024,
        hwm / 1024
    );
    stop_cleanly(server, "server under a memory ceiling");
}
