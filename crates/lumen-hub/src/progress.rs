//! A progress line on a terminal: bytes done of total, rate and time left.
//!
//! Drawn on stderr only when stderr is a terminal, at most ten times a second; in a pipe or a
//! log file it prints nothing, so scripted pulls stay quiet.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// One progress line for one task (`extracting`, `verifying`, ...).
pub struct Progress {
    label: String,
    total: u64,
    done: u64,
    started: Instant,
    drawn: Option<Instant>,
    tty: bool,
}

/// `1234567` as `1.2 MB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

impl Progress {
    /// A progress line for `total` bytes, shown only if stderr is a terminal.
    pub fn new(label: impl Into<String>, total: u64) -> Progress {
        Progress {
            label: label.into(),
            total,
            done: 0,
            started: Instant::now(),
            drawn: None,
            tty: std::io::stderr().is_terminal(),
        }
    }

    /// Counts `n` more bytes done and redraws if it is time to.
    pub fn add(&mut self, n: u64) {
        self.done = self.done.saturating_add(n);
        if !self.tty {
            return;
        }
        let now = Instant::now();
        if self
            .drawn
            .is_some_and(|t| now.duration_since(t) < Duration::from_millis(100))
        {
            return;
        }
        self.drawn = Some(now);
        self.draw();
    }

    /// The line as it would be drawn now.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = self.done as f64 / secs;
        let left = self.total.saturating_sub(self.done) as f64;
        let eta = if rate > 0.0 {
            format!("{:.0}s", left / rate)
        } else {
            "?".into()
        };
        let pct = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        format!(
            "{}: {:5.1}% {} / {}, {}/s, ETA {eta}",
            self.label,
            pct,
            human_bytes(self.done),
            human_bytes(self.total),
            human_bytes(rate as u64),
        )
    }

    fn draw(&self) {
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", self.line());
        let _ = err.flush();
    }

    /// Ends the line (a final redraw and a newline on a terminal).
    pub fn finish(self) {
        if self.tty {
            self.draw();
            let _ = writeln!(std::io::stderr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_read_as_people_write_them() {
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1_500_000), "1.5 MB");
        let mut p = Progress::new("x", 200);
        p.add(100);
        let line = p.line();
        assert!(line.contains(" 50.0%") && line.contains("ETA"), "{line}");
    }
}
