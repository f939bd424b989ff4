//! Overload and shutdown end to end: a full queue answers 429 with `Retry-After` and the
//! server serves normally right after; SIGTERM drops half-sent requests at once, answers 503
//! (with `/ready` observable) while a running stream finishes, and exits 0.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn queue_full_then_graceful_shutdown() {
    let Some(python) = common::prerequisites() else {
        return;
    };
    let mut server =
        common::Server::start(&["--max-queued-requests", "4", "--shutdown-grace", "30"]);
    server.pytest(&python, "test_queue.py", Duration::from_secs(600));

    // A streaming request is in flight when SIGTERM arrives: it must run to its end. It is
    // long enough (seconds even on a fast machine) that the drain checks below run while it
    // still holds the server open.
    let body = format!(
        r#"{{"model":"{}","prompt":"Once upon a time","max_tokens":1024,"ignore_eos":true,"stream":true,"temperature":0}}"#,
        common::MODEL
    );
    let mut s = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        common::API_KEY,
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 512];
    let n = s.read(&mut first).expect("first bytes of the stream");
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    // A half-sent request (headers, part of the body) and a silent connection are open too.
    let mut half = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
    half.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    write!(half, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\"", common::API_KEY).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let signalled = Instant::now();
    server.sigterm();
    // The half-sent request is dropped at once, not held for the grace period.
    let mut got = Vec::new();
    let _ = half.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "a half-sent request got an answer: {}",
        String::from_utf8_lossy(&got)
    );
    assert!(
        signalled.elapsed() < Duration::from_secs(3),
        "half-sent request held {:?}",
        signalled.elapsed()
    );
    // While draining, the server still accepts connections so that load balancers see it:
    // /ready is 503, API requests get 503 with Retry-After, /health stays 200.
    let ready = common::http(server.port, "GET", "/ready", "");
    assert!(ready.starts_with("HTTP/1.1 503"), "{ready}");
    let refused = common::http(
        server.port,
        "POST",
        "/v1/completions",
        &format!(r#"{{"model":"{}","prompt":"x"}}"#, common::MODEL),
    );
    assert!(
        refused.starts_with("HTTP/1.1 503")
            && refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    assert!(refused.contains("shutting_down"), "{refused}");
    assert!(common::http(server.port, "GET", "/health", "").starts_with("HTTP/1.1 200"));
    let mut rest = String::new();
    s.read_to_string(&mut rest).expect("rest of the stream");
    assert!(
        rest.contains("\"finish_reason\":\"length\""),
        "the in-flight stream must finish normally:\n{rest}"
    );
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("server exits after draining");
    assert!(status.success(), "exit status {status}\n{}", server.log());
    eprintln!(
        "drained and exited {:.2}s after SIGTERM",
        signalled.elapsed().as_secs_f32()
    );
}
