//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary folder, `pg_ctl start`
//! on a free loopback port, databases made on demand, everything stopped and deleted on drop.
//!
//! - **Where PostgreSQL comes from.** `initdb` on `PATH`, else the newest Debian install under
//!   `/usr/lib/postgresql/<version>/bin` (Debian's `postgresql` package keeps its binaries
//!   there; the Makefile installs it when `initdb` is missing). Absent, the usual rule
//!   applies: a note and a skip locally, a failure under `CI` (see [`crate::missing`]).
//! - **Root.** `initdb` and `postgres` refuse to run as root, and CI runs as root: then every
//!   server command runs as the `postgres` user (`runuser -u postgres`, the account Debian's
//!   package creates) in a folder handed to that user.
//! - **Fast and disposable.** Trust authentication on 127.0.0.1 only, `fsync` off: nothing
//!   here must survive a crash, and tests must not wait on the disk.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// The superuser every cluster is created with.
const USER: &str = "lumen";

/// A running cluster (stopped and deleted on drop).
#[derive(Debug)]
pub struct PgCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    run_as: Option<&'static str>,
}

/// The folder holding `initdb`, `pg_ctl` and `createdb`, if PostgreSQL is installed.
pub fn find_bin() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let initdb = dir.join("initdb");
            if initdb.is_file() {
                // Debian links /usr/bin tools to a wrapper; use the real folder when linked.
                let real = std::fs::canonicalize(&initdb).unwrap_or(initdb);
                return real.parent().map(Path::to_path_buf);
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

impl PgCluster {
    /// Starts a fresh cluster; `None` (with a note) when PostgreSQL is not installed and the
    /// tests are not under `CI`. Panics when the cluster cannot start.
    pub fn start() -> Option<PgCluster> {
        let Some(bin) = find_bin() else {
            return crate::missing(
                "PostgreSQL (initdb)",
                "apt-get install -y postgresql (make test does this)",
            );
        };
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "lumen-pg-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("cluster folder");
        let run_as = is_root().then_some("postgres");
        let mut c = PgCluster {
            dir,
            bin,
            port: 0,
            run_as,
        };
        if let Some(user) = run_as {
            let ok = Command::new("chown")
                .arg(format!("{user}:"))
                .arg(&c.dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                ok,
                "cannot hand {} to the '{user}' user (running as root, PostgreSQL needs another account)",
                c.dir.display()
            );
        }
        let data = c.dir.join("data");
        c.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                USER.as_ref(),
                "-A".as_ref(),
                "trust".as_ref(),
                "-E".as_ref(),
                "UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--no-sync".as_ref(),
            ],
        );
        // A port can be taken between choosing and binding it: try a few.
        for attempt in 0..5 {
            c.port = free_port();
            let opts = format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                c.port,
                c.dir.display()
            );
            let log = c.dir.join("server.log");
            let out = c.output(
                "pg_ctl",
                &[
                    "-D".as_ref(),
                    data.as_os_str(),
                    "-l".as_ref(),
                    log.as_os_str(),
                    "-o".as_ref(),
                    opts.as_ref(),
                    "-w".as_ref(),
                    "-t".as_ref(),
                    "60".as_ref(),
                    "start".as_ref(),
                ],
            );
            if out.status.success() {
                return Some(c);
            }
            let log = std::fs::read_to_string(c.dir.join("server.log")).unwrap_or_default();
            if attempt == 4 {
                panic!(
                    "pg_ctl start failed: {}{}\n{log}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        None
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> String {
        let port = self.port.to_string();
        self.run(
            "createdb",
            &[
                "-h".as_ref(),
                "127.0.0.1".as_ref(),
                "-p".as_ref(),
                port.as_ref(),
                "-U".as_ref(),
                USER.as_ref(),
                name.as_ref(),
            ],
        );
        self.url(name)
    }

    /// The URL of database `name` (which must exist).
    pub fn url(&self, name: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    fn command(&self, tool: &str) -> Command {
        let exe = self.bin.join(tool);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(exe);
                c
            }
            None => Command::new(exe),
        };
        // The user's own PG* settings must not redirect the cluster's tools.
        for var in ["PGHOST", "PGPORT", "PGUSER", "PGDATABASE", "PGDATA"] {
            cmd.env_remove(var);
        }
        cmd.current_dir(&self.dir);
        cmd
    }

    fn output(&self, tool: &str, args: &[&std::ffi::OsStr]) -> Output {
        self.command(tool)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"))
    }

    fn run(&self, tool: &str, args: &[&std::ffi::OsStr]) {
        let out = self.output(tool, args);
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = self
            .command("pg_ctl")
            .args(["-D".as_ref(), data.as_os_str()])
            .args(["-m", "immediate", "-w", "stop"])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
