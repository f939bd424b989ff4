//! The budget a chat template renders under.
//!
//! A model file's chat template is code from the model's author, so one render may do a
//! bounded amount of work: a number of VM instructions (minijinja's fuel), a call depth,
//! a size for the prompt and for any single string, a total of bytes produced by string
//! operations and printing, a number of items in a sequence built by `+`/`*`, and a wall
//! clock deadline. The limits of the render in progress live in a thread-local, because
//! the VM calls Lumen's checked functions (module `checked`) without any context
//! of ours; rendering is synchronous, so the thread is the render.

use std::cell::RefCell;
use std::fmt;
use std::time::{Duration, Instant};

use minijinja::{Error, ErrorKind};

/// VM instructions one render may execute (minijinja's `fuel`).
pub const MAX_FUEL: u64 = 2_000_000;
/// Nesting of macro calls, recursive loops and includes (minijinja's recursion limit).
pub const MAX_RECURSION: usize = 100;
/// Size of the rendered prompt, and of any one string, beyond the conversation's own size.
pub const MAX_OUTPUT_BASE: usize = 1 << 20;
/// Items in one sequence built by `+`, `*`, `batch` or `slice` (Jinja2's sandbox `MAX_RANGE`).
pub const MAX_ITEMS: usize = 100_000;
/// Widths in `format`, `indent` and `tojson(indent=...)`.
pub const MAX_WIDTH: usize = 4096;
/// Wall-clock time for one render, checked whenever the template produces text.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Stack of the thread a template renders on (address space; only what is used is
/// touched). Values nested as deep as [`MAX_FUEL`] allows must drop without overflowing it:
/// in a release build that needs between 8 and 24 MiB (measured with the deepest nesting
/// the fuel permits); 128 MiB leaves room for debug builds, and keeps the address space a
/// burst of concurrent renders reserves small enough for a process under `ulimit -v`.
pub const RENDER_STACK: usize = 128 << 20;
/// Prefix of the messages of minijinja errors raised for a budget.
pub(crate) const BUDGET: &str = "template budget: ";

/// The limits of one render.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest prompt and largest single string, in bytes.
    pub max_string: usize,
    /// Bytes all string operations and printing together may produce.
    pub max_produced: usize,
    /// When the render must have finished.
    pub deadline: Option<Instant>,
}

impl Limits {
    /// Limits for a conversation whose messages and tools take `input_bytes`.
    pub(crate) fn for_input(input_bytes: usize) -> Limits {
        let max_string = MAX_OUTPUT_BASE.saturating_add(input_bytes.saturating_mul(2));
        Limits {
            max_string,
            max_produced: max_string.saturating_mul(16),
            deadline: Some(Instant::now() + DEADLINE),
        }
    }
}

struct Tracker {
    limits: Limits,
    produced: usize,
    /// The first limit that was exceeded, to tell budget errors from others.
    exceeded: Option<String>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Tracker>> = const { RefCell::new(None) };
}

/// Makes `limits` the budget of this thread until dropped.
pub(crate) struct Guard(());

impl Guard {
    pub(crate) fn enter(limits: Limits) -> Guard {
        ACTIVE.with(|a| {
            *a.borrow_mut() = Some(Tracker {
                limits,
                produced: 0,
                exceeded: None,
            })
        });
        Guard(())
    }

    /// The limit that stopped the render, if one did.
    pub(crate) fn exceeded(&self) -> Option<String> {
        ACTIVE.with(|a| a.borrow().as_ref().and_then(|t| t.exceeded.clone()))
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        ACTIVE.with(|a| *a.borrow_mut() = None);
    }
}

/// The limits in force (defaults without a deadline outside a render).
pub(crate) fn limits() -> Limits {
    ACTIVE
        .with(|a| a.borrow().as_ref().map(|t| t.limits))
        .unwrap_or(Limits {
            deadline: None,
            ..Limits::for_input(0)
        })
}

/// A budget error, remembered so the render reports it as one.
pub(crate) fn exceeded(what: String) -> Error {
    ACTIVE.with(|a| {
        if let Some(t) = a.borrow_mut().as_mut() {
            t.exceeded.get_or_insert_with(|| what.clone());
        }
    });
    Error::new(ErrorKind::InvalidOperation, format!("{BUDGET}{what}"))
}

/// Counts `bytes` about to be produced against the render's total, and checks the clock.
pub(crate) fn charge(bytes: usize) -> Result<(), Error> {
    let over = ACTIVE.with(|a| {
        let mut a = a.borrow_mut();
        let t = a.as_mut()?;
        t.produced = t.produced.saturating_add(bytes);
        if t.produced > t.limits.max_produced {
            return Some(format!(
                "the template produced more than {} bytes of text",
                t.limits.max_produced
            ));
        }
        match t.limits.deadline {
            Some(d) if Instant::now() > d => Some(format!(
                "rendering took longer than {} s",
                DEADLINE.as_secs()
            )),
            _ => None,
        }
    });
    match over {
        Some(what) => Err(exceeded(what)),
        None => Ok(()),
    }
}

/// Checks that a string of `len` bytes may exist, and charges it.
pub(crate) fn string(len: usize) -> Result<(), Error> {
    let max = limits().max_string;
    if len > max {
        return Err(exceeded(format!(
            "a string of {len} bytes is over the limit of {max}"
        )));
    }
    charge(len)
}

/// Checks that a sequence of `len` items may exist.
pub(crate) fn items(len: usize) -> Result<(), Error> {
    if len > MAX_ITEMS {
        return Err(exceeded(format!(
            "a sequence of {len} items is over the limit of {MAX_ITEMS}"
        )));
    }
    charge(len.saturating_mul(16))
}

/// Checks a width or count argument.
pub(crate) fn width(what: &str, n: usize) -> Result<(), Error> {
    if n > MAX_WIDTH {
        return Err(exceeded(format!(
            "{what} {n} is over the limit of {MAX_WIDTH}"
        )));
    }
    Ok(())
}

/// A `fmt::Write` that fails once more than `max` bytes were written to it.
pub(crate) struct Bounded<W> {
    pub inner: W,
    pub written: usize,
    pub max: usize,
}

impl<W: fmt::Write> fmt::Write for Bounded<W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.written = self.written.saturating_add(s.len());
        if self.written > self.max {
            return Err(fmt::Error);
        }
        self.inner.write_str(s)
    }
}

/// Discards what is written (for measuring with [`Bounded`]).
pub(crate) struct Sink;

impl fmt::Write for Sink {
    fn write_str(&mut self, _: &str) -> fmt::Result {
        Ok(())
    }
}

/// How many bytes `v` prints as, or `None` when that is more than `max`.
pub(crate) fn display_len(v: &dyn fmt::Display, max: usize) -> Option<usize> {
    let mut w = Bounded {
        inner: Sink,
        written: 0,
        max,
    };
    fmt::write(&mut w, format_args!("{v}")).ok()?;
    Some(w.written)
}

/// Prints `v` into a new string of at most the render's string limit.
pub(crate) fn to_string(v: &dyn fmt::Display) -> Result<String, Error> {
    let max = limits().max_string;
    let mut w = Bounded {
        inner: String::new(),
        written: 0,
        max,
    };
    if fmt::write(&mut w, format_args!("{v}")).is_err() {
        return Err(exceeded(format!("a string of more than {max} bytes")));
    }
    charge(w.written)?;
    Ok(w.inner)
}

/// An `io::Write` for the rendered prompt that refuses to grow past `max` bytes.
pub(crate) struct BoundedBytes {
    pub bytes: Vec<u8>,
    pub max: usize,
    pub overflowed: bool,
}

impl BoundedBytes {
    pub(crate) fn new(max: usize) -> BoundedBytes {
        BoundedBytes {
            bytes: Vec::new(),
            max,
            overflowed: false,
        }
    }
}

impl std::io::Write for BoundedBytes {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes.len().saturating_add(buf.len()) > self.max {
            self.overflowed = true;
            return Err(std::io::Error::other("the prompt is over its size limit"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
