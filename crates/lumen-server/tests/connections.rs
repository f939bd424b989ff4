//! The accept loop against real sockets: slow or silent clients are cut at their limit,
//! a slow server is not, one address cannot take every connection, and a drain drops
//! half-sent requests at once while running ones finish.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use axum::routing::{get, post};
use axum::Router;
use lumen_server::conn::{ConnLimits, Connections, Timeouts};

const LIMIT: Duration = Duration::from_millis(400);

fn app() -> Router {
    Router::new()
        .route("/fast", get(|| async { "fast" }))
        .route(
            "/slow",
            get(|| async {
                // Longer than every read limit: the server is the slow one here.
                tokio::time::sleep(LIMIT * 3).await;
                "slow"
            }),
        )
        .route("/echo", post(|body: String| async move { body }))
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    conns: Option<Connections>,
    addr: SocketAddr,
}

fn start(max_per_ip: usize) -> Fixture {
    start_with(max_per_ip, 1)
}

/// `min_body_rate` in bytes per second (1: practically only the idle limit).
fn start_with(max_per_ip: usize, min_body_rate: u32) -> Fixture {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (conns, addr) = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let limits = ConnLimits {
            timeouts: Timeouts {
                header: LIMIT,
                body_idle: LIMIT,
                keep_alive: LIMIT * 2,
                min_body_rate,
            },
            max_per_ip,
        };
        (Connections::start(listener, app(), limits), addr)
    });
    Fixture {
        rt,
        conns: Some(conns),
        addr,
    }
}

impl Fixture {
    fn conns(&self) -> &Connections {
        self.conns.as_ref().expect("running")
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }
}

/// Reads until the server closes; returns what came and how long it took.
fn read_to_close(s: &mut TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

/// Reads one response with `Content-Length` (enough for these small bodies).
fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&out).contains("\r\n\r\n") || !body_complete(&out) {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn body_complete(raw: &[u8]) -> bool {
    let text = String::from_utf8_lossy(raw);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    body.len() >= len
}

#[test]
fn a_silent_connection_is_closed_at_the_header_limit() {
    let f = start(64);
    let mut s = f.connect();
    let (got, took) = read_to_close(&mut s);
    assert!(got.is_empty(), "{got}");
    assert!(
        took >= LIMIT - Duration::from_millis(50) && took < LIMIT * 4,
        "closed after {took:?}"
    );
}

#[test]
fn headers_sent_a_byte_at_a_time_are_cut_off() {
    let f = start(64);
    let mut s = f.connect();
    let t = Instant::now();
    let head =
        b"GET /fast HTTP/1.1\r\nHost: x\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    for b in head {
        if s.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(30));
    }
    let (got, _) = read_to_close(&mut s);
    assert!(
        !got.contains("200 OK"),
        "a trickled head must not be served: {got}"
    );
    assert!(t.elapsed() < LIMIT * 6, "took {:?}", t.elapsed());
}

#[test]
fn a_stalled_body_is_cut_and_a_steady_one_is_not() {
    let f = start(64);
    // Stalls after half the body: closed one idle limit later.
    let mut s = f.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nhello")
        .expect("write");
    let (got, took) = read_to_close(&mut s);
    assert!(!got.contains("200 OK"), "{got}");
    assert!(took < LIMIT * 4, "closed after {took:?}");
    // A body that keeps moving (each gap below the idle limit) is served even though it
    // takes longer than the limit in total.
    let mut s = f.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        .expect("write");
    for chunk in [b"ab", b"cd", b"ef"] {
        std::thread::sleep(LIMIT / 2);
        s.write_all(chunk).expect("write");
    }
    let resp = read_response(&mut s);
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("abcdef"),
        "{resp}"
    );
}

#[test]
fn a_trickled_body_is_cut_by_the_rate_floor() {
    // Each byte comes well within the idle limit, but 10 bytes a second earn 20 ms each at
    // 500 B/s: the body is cut soon after its first idle period.
    let f = start_with(64, 500);
    let mut s = f.connect();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .expect("write");
    let t = Instant::now();
    while t.elapsed() < LIMIT * 5 {
        if s.write_all(b"a").is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).expect("nonblocking");
        let closed = matches!(s.read(&mut probe), Ok(0));
        s.set_nonblocking(false).expect("blocking");
        if closed {
            break;
        }
    }
    let took = t.elapsed();
    assert!(
        took < LIMIT * 2,
        "a trickled body held the connection {took:?}"
    );
    assert!(
        took >= LIMIT - Duration::from_millis(50),
        "cut before the idle period: {took:?}"
    );
}

#[test]
fn a_slow_handler_is_not_cut_and_keep_alive_idles_out() {
    let f = start(64);
    let mut s = f.connect();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let resp = read_response(&mut s);
    assert!(
        resp.starts_with("HTTP/1.1 200") && resp.ends_with("slow"),
        "{resp}"
    );
    // The same connection serves a second request after a pause below the keep-alive limit
    // (which is longer than the header limit)...
    std::thread::sleep(LIMIT + LIMIT / 2);
    s.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(read_response(&mut s).ends_with("fast"));
    // ...and is closed once idle past it.
    let (_, took) = read_to_close(&mut s);
    assert!(
        took >= LIMIT * 2 - Duration::from_millis(50) && took < LIMIT * 6,
        "idle close after {took:?}"
    );
}

#[test]
fn one_address_cannot_take_every_connection() {
    let f = start(3);
    let held: Vec<TcpStream> = (0..3).map(|_| f.connect()).collect();
    std::thread::sleep(Duration::from_millis(100));
    let mut extra = f.connect();
    let (got, took) = read_to_close(&mut extra);
    assert!(
        got.is_empty() && took < LIMIT,
        "the fourth connection must be closed at once ({took:?})"
    );
    drop(held);
    // Places are given back when connections close.
    std::thread::sleep(Duration::from_millis(200));
    let mut s = f.connect();
    s.write_all(b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    assert!(read_response(&mut s).ends_with("fast"));
}

#[test]
fn drain_drops_half_sent_requests_and_waits_for_running_ones() {
    let mut f = start(64);
    let mut half = f.connect();
    half.write_all(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly part")
        .expect("write");
    let mut running = f.connect();
    running
        .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(f.conns().running(), 1);
    let t = Instant::now();
    assert_eq!(f.conns().drop_half_sent(), 1);
    let (got, took) = read_to_close(&mut half);
    assert!(
        got.is_empty() && took < Duration::from_millis(200),
        "half-sent dropped at once ({took:?})"
    );
    let left =
        f.rt.block_on(f.conns().wait_running(Duration::from_secs(5)));
    assert_eq!(left, 0);
    assert!(
        t.elapsed() < LIMIT * 3 + Duration::from_millis(300),
        "waited only for the running request"
    );
    let resp = read_response(&mut running);
    assert!(
        resp.ends_with("slow"),
        "the running request finished: {resp}"
    );
    f.conns.take().expect("running").close_all();
}
