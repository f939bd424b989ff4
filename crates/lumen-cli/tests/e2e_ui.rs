//! Issue 18 end to end: the playground in headless Debian `chromium`, driven by
//! `playwright-core` (`tests/browser/playground.mjs`, installed by `make browser`), against
//! the real binary and models. The script compares what the page shows with the API's own
//! answers to the same requests, checks keys, rate limits, the phone layout, console errors
//! and that no request leaves 127.0.0.1, and saves screenshots under
//! `target/playground/` for a person to look at.
//!
//! A missing browser, node or npm package skips with a note locally and fails under `CI`,
//! like a missing model.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, ADMIN_KEY, API_KEY};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Node, chromium and playwright-core, or a skip (a failure under CI).
fn browser_prerequisites() -> Option<PathBuf> {
    if !PathBuf::from("/usr/bin/chromium").is_file() {
        return lumen_testkit::missing("/usr/bin/chromium", "make browser");
    }
    if !root()
        .join("tests/browser/node_modules/playwright-core/package.json")
        .is_file()
    {
        return lumen_testkit::missing(
            "tests/browser/node_modules/playwright-core",
            "make browser",
        );
    }
    let node = ["/usr/bin/node", "/usr/local/bin/node"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    match node {
        Some(n) => Some(n),
        None => lumen_testkit::missing("node", "make browser"),
    }
}

#[test]
fn the_playground_in_a_real_browser() {
    // The models (not the Python venv: node is this test's client).
    if lumen_testkit::chat_gguf().is_none() || lumen_testkit::embedding_dir().is_none() {
        return;
    }
    let Some(node) = browser_prerequisites() else {
        return;
    };
    let server = Server::start(&["--enable-explain"]);
    let shots = root().join("target/playground");
    let started = Instant::now();
    let mut child = Command::new(node)
        .arg(root().join("tests/browser/playground.mjs"))
        .current_dir(root().join("tests/browser"))
        .env("LUMEN_BASE", &server.base)
        .env("LUMEN_API_KEY", API_KEY)
        .env("LUMEN_ADMIN_KEY", ADMIN_KEY)
        .env("LUMEN_SHOTS", &shots)
        .env("LUMEN_EXPLAIN", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn node");
    let out = common::collect_output(&mut child);
    let status = common::wait_with_timeout(&mut child, Duration::from_secs(300));
    let output = out.join().unwrap_or_default();
    eprintln!(
        "playground.mjs: {:.1}s, screenshots in {}",
        started.elapsed().as_secs_f32(),
        shots.display()
    );
    match status {
        Some(s) if s.success() => eprintln!("{output}"),
        Some(s) => panic!(
            "playground.mjs failed ({s}):\n{output}\n--- server log ---\n{}",
            server.log()
        ),
        None => panic!(
            "playground.mjs timed out:\n{output}\n--- server log ---\n{}",
            server.log()
        ),
    }
}
