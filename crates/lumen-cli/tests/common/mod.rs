//! End-to-end harness: starts the real `lumen serve` on a free loopback port with the real
//! default models (the chat model and the embedding model), and runs the Python test scripts (official `openai` client, pytest) from
//! `tests/e2e/` against it.
//!
//! Prerequisites are the Makefile's `models` and `venv` targets. When one is missing the test
//! fails under CI (`CI` set) and otherwise prints a note and passes, so `cargo test` on a
//! fresh checkout stays green while `make test` always runs everything.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The API key every e2e server is started with.
pub const API_KEY: &str = "e2e-test-key";
/// The admin key every e2e server is started with (`/admin/*` needs it).
pub const ADMIN_KEY: &str = "e2e-admin-key";
/// The chat model the tests use.
pub const MODEL: &str = "smollm2";
/// The embedding model the tests use.
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The venv's Python, if `make venv` ran.
pub fn venv_python() -> Option<PathBuf> {
    let p = workspace_root().join("target/venv/bin/python");
    p.is_file().then_some(p)
}

/// Skips (or fails under CI) when a model or the venv is missing; see `lumen_testkit`.
pub fn prerequisites() -> Option<PathBuf> {
    lumen_testkit::chat_gguf()?;
    lumen_testkit::embedding_dir()?;
    match venv_python() {
        Some(python) => Some(python),
        None => lumen_testkit::missing(workspace_root().join("target/venv").display(), "make venv"),
    }
}

/// How [`Server::start_with`] starts the process, beyond its flags.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Run the server under `ulimit -v` of this many KiB (its address space, as `VmSize`).
    pub ulimit_kib: Option<u64>,
    /// Serve this `LUMEN_HOME` with no `--model`/`--preload` flags (every model installed
    /// there, each loaded on demand) instead of the default models preloaded.
    pub home: Option<PathBuf>,
    /// Use this database (default: a fresh one in a temporary folder, removed on drop).
    pub database: Option<PathBuf>,
    /// Start with no `--api-key` and no `--admin-key` (an open server).
    pub open: bool,
}

/// A running `lumen serve`.
pub struct Server {
    child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// Port.
    pub port: u16,
    log: Arc<Mutex<String>>,
    /// The temporary folder of the server's own database, removed on drop.
    db_dir: Option<PathBuf>,
    /// The database file.
    pub database: PathBuf,
}

/// A fresh, empty folder under the system's temporary directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let dir = std::env::temp_dir().join(format!(
        "lumen-{tag}-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a temporary folder");
    dir
}

impl Server {
    /// Starts the server with `--port 0 --threads 2 --api-key API_KEY` plus `extra`, and
    /// waits until `/ready` answers 200.
    pub fn start(extra: &[&str]) -> Server {
        Server::start_with(extra, &StartOptions::default())
    }

    /// [`Server::start`] with `options` (a memory ceiling, ...).
    pub fn start_with(extra: &[&str], options: &StartOptions) -> Server {
        let bin = env!("CARGO_BIN_EXE_lumen");
        let mut cmd = match options.ulimit_kib {
            // `exec` keeps the PID, so `pid()` and signals reach the server itself.
            Some(kib) => {
                let mut c = Command::new("bash");
                c.args([
                    "-c",
                    r#"ulimit -v "$1" || exit 97; shift; exec "$0" "$@""#,
                    bin,
                ])
                .arg(kib.to_string());
                c
            }
            None => Command::new(bin),
        };
        cmd.args([
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--threads",
            "2",
        ]);
        if !options.open {
            cmd.args(["--api-key", API_KEY, "--admin-key", ADMIN_KEY]);
        }
        // Each server gets its own database, so tests never share keys or usage.
        let (db_dir, database) = match &options.database {
            Some(db) => (None, db.clone()),
            None => {
                let dir = temp_dir("e2e-db");
                (Some(dir.clone()), dir.join("lumen.db"))
            }
        };
        cmd.arg("--database-url").arg(&database);
        match &options.home {
            Some(home) => {
                cmd.env("LUMEN_HOME", home);
            }
            None => {
                cmd.args([
                    "--model",
                    MODEL,
                    "--model",
                    EMBED_MODEL,
                    // Loaded before `/ready`, as before models loaded on demand: these
                    // tests time requests and must not pay for a first load.
                    "--preload",
                    MODEL,
                    "--preload",
                    EMBED_MODEL,
                ]);
            }
        }
        cmd.args(extra);
        cmd.env("LUMEN_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn lumen serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
                let mut g = l.lock().unwrap();
                g.push_str(&line);
                g.push('\n');
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start listening:\n{}", log.lock().unwrap());
            }
        };
        let port: u16 = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in log line");
        let mut server = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
            port,
            log,
            db_dir,
            database,
        };
        server.wait_ready(Duration::from_secs(120));
        server
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let start = Instant::now();
        loop {
            if let Ok((200, _)) = http_get(self.port, "/ready") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "server exited ({status}) before it was ready:\n{}",
                    self.log()
                );
            }
            if start.elapsed() > timeout {
                panic!("server not ready after {timeout:?}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A `kB` field of `/proc/PID/status` (`VmSize`, `VmRSS`, `VmHWM`, ...), in KiB.
    pub fn proc_status_kib(&self, field: &str) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.split_whitespace().next()?.parse().ok()
        })
    }

    /// Runs `tests/e2e/<script>` under pytest against this server; panics with the output
    /// on failure.
    pub fn pytest(&self, python: &PathBuf, script: &str, timeout: Duration) {
        self.pytest_with(python, script, &[], &[], timeout)
    }

    /// [`Server::pytest`] with extra pytest arguments (`-k EXPR`, ...) and environment.
    pub fn pytest_with(
        &self,
        python: &PathBuf,
        script: &str,
        args: &[&str],
        env: &[(&str, String)],
        timeout: Duration,
    ) {
        let server_env = [
            ("LUMEN_BASE_URL", self.base.clone()),
            ("LUMEN_API_KEY", API_KEY.to_string()),
            ("LUMEN_TEST_ADMIN_KEY", ADMIN_KEY.to_string()),
            (
                "LUMEN_TEST_DATABASE",
                self.database.to_string_lossy().into_owned(),
            ),
            ("LUMEN_MODEL", MODEL.to_string()),
            ("LUMEN_EMBED_MODEL", EMBED_MODEL.to_string()),
        ];
        let all: Vec<(&str, String)> = env.iter().cloned().chain(server_env).collect();
        run_pytest(python, script, args, &all, timeout, || self.log());
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -TERM failed");
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_with_timeout(&mut self.child, timeout)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(d) = &self.db_dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Runs `tests/e2e/<script>` under pytest with no server (its tests start what they need;
/// `LUMEN_BIN` is the binary under test); panics with the output on failure.
pub fn pytest_alone(python: &PathBuf, script: &str, env: &[(&str, String)], timeout: Duration) {
    let mut all = env.to_vec();
    all.push(("LUMEN_BIN", env!("CARGO_BIN_EXE_lumen").to_string()));
    run_pytest(python, script, &[], &all, timeout, String::new);
}

/// Runs `tests/e2e/<script>` under pytest with `args` and `env`; on failure panics with its
/// output and `server_log()` (empty when there is no server).
fn run_pytest(
    python: &PathBuf,
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
    timeout: Duration,
    server_log: impl Fn() -> String,
) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/e2e")
        .join(script);
    let started = Instant::now();
    let mut child = Command::new(python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"])
        .arg(&path)
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn pytest");
    let out = collect_output(&mut child);
    let status = wait_with_timeout(&mut child, timeout);
    let output = out.join().unwrap_or_default();
    eprintln!("{script}: {:.1}s", started.elapsed().as_secs_f32());
    let log = || {
        let l = server_log();
        if l.is_empty() {
            l
        } else {
            format!("\n--- server log ---\n{l}")
        }
    };
    match status {
        Some(s) if s.success() => eprintln!("{output}"),
        Some(s) => panic!("{script} failed ({s}):\n{output}{}", log()),
        None => panic!("{script} timed out after {timeout:?}:\n{output}{}", log()),
    }
}

pub fn collect_output(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut stdout = child.stdout.take().expect("stdout piped");
    let mut stderr = child.stderr.take().expect("stderr piped");
    std::thread::spawn(move || {
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s.push_str(&err.join().unwrap_or_default());
        s
    })
}

pub fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A minimal HTTP/1.1 GET: (status, body).
pub fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    read_response(s)
}

/// A minimal HTTP/1.1 POST of a JSON body with the test API key: (status, body).
pub fn http_post_json(port: u16, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    read_response(s)
}

/// Reads a `Connection: close` response to its end: (status, body).
fn read_response(mut s: TcpStream) -> std::io::Result<(u16, String)> {
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A `Connection: close` request with the test API key (the admin key for `/admin/*`); the
/// whole raw response (head and body), for checks on headers.
pub fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    let key = if path.starts_with("/admin") {
        ADMIN_KEY
    } else {
        API_KEY
    };
    http_with_key(port, key, method, path, body)
}

/// The status code of a raw response from [`http`] (0 when there is none).
pub fn status(raw: &str) -> u16 {
    raw.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw response from [`http`]; panics, showing the response, when it is
/// not JSON.
pub fn body(raw: &str) -> serde_json::Value {
    let json = raw.split_once("\r\n\r\n").map_or("", |x| x.1);
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"))
}

/// [`http`] with the bearer key `key`.
pub fn http_with_key(port: u16, key: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    raw
}

/// Asserts that `server` answers a four-token chat request to the default model.
pub fn answers(server: &Server) {
    let body = r#"{"model":"smollm2","messages":[{"role":"user","content":"Hi"}],"max_tokens":4}"#;
    let r = http_with_key(server.port, API_KEY, "POST", "/v1/chat/completions", body);
    assert_eq!(status(&r), 200, "{r}");
}
