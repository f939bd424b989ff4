//! The persistent worker pool: `n - 1` OS threads plus the caller, woken per job through an
//! epoch counter they spin on (then park on, once idle for a while).
//!
//! A job has `n` parts. Every thread (the caller included) claims part indices from one atomic
//! word that holds `(epoch << 32) | next_part`, so a claim is only valid for the job it was
//! made for, and a worker that is slow to wake (or descheduled on a busy machine) simply finds
//! its part already taken by the caller or another worker. A warm dispatch costs a pointer
//! store, a few atomic operations and cache-line transfers, no syscall: workers are unparked
//! only if they actually parked, and the caller parks only if it waits unusually long.

use std::cell::UnsafeCell;
use std::ops::Range;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const DEFAULT_SPIN: Duration = Duration::from_micros(500);
/// How long the caller spins waiting for the last part before parking.
const CALLER_SPIN: Duration = Duration::from_micros(100);

/// Keeps a hot atomic on its own cache lines.
#[repr(align(128))]
struct Padded<T>(T);

type Job = *const (dyn Fn(usize, usize) + Sync + 'static);

thread_local! {
    /// The pool (its `Shared` address) whose job part this thread is running, or 0: a `run`
    /// on that pool from inside a part is nested and runs inline.
    static IN_PART: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    /// The pool whose turn this thread holds, or 0: its `run` calls need no turn of their own.
    static HOLDS_TURN: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Runs `f` marked as a part of pool `id`'s job (restoring the previous mark after).
fn as_part<R>(id: usize, f: impl FnOnce() -> R) -> R {
    let prev = IN_PART.with(|c| c.replace(id));
    let r = f();
    IN_PART.with(|c| c.set(prev));
    r
}

struct Shared {
    /// `(epoch << 32) | next unclaimed part`.
    state: Padded<AtomicU64>,
    /// Parts of the current job finished.
    done: Padded<AtomicUsize>,
    /// Per worker: set while it is (about to be) parked.
    sleeping: Vec<Padded<AtomicBool>>,
    /// Set while the caller is (about to be) parked waiting for the last part.
    caller_waiting: AtomicBool,
    caller: Mutex<Option<Thread>>,
    job: UnsafeCell<Option<Job>>,
    panicked: AtomicBool,
    shutdown: AtomicBool,
    n_threads: usize,
    spin: Duration,
}

// SAFETY: `job` is written only by the dispatcher while `busy` is held and no part of the
// previous job is claimed or running; it is read only by a thread holding a claim on a part
// of the current job, which keeps the job from completing. The closure it points to is Sync.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

impl Shared {
    /// Claims the next part of the job of `epoch`, if that job still has unclaimed parts.
    fn claim(&self, epoch: u32) -> Option<usize> {
        let mut s = self.state.0.load(Ordering::Acquire);
        loop {
            if (s >> 32) as u32 != epoch || (s as u32 as usize) >= self.n_threads {
                return None;
            }
            match self
                .state
                .0
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(s as u32 as usize),
                Err(now) => s = now,
            }
        }
    }

    /// Runs claimed part `t` (worker side) and counts it done, waking a parked caller after the last.
    fn run_part(&self, t: usize) {
        // SAFETY: this thread holds a claim on part `t` of the current job, so the job cannot
        // complete (and its closure cannot be dropped) before `done` is incremented below.
        let job = unsafe { *self.job.get() };
        if let Some(job) = job {
            // The same address as `ThreadPool::id` (`Arc::as_ptr` of this `Shared`).
            let id = self as *const Shared as usize;
            let r = catch_unwind(AssertUnwindSafe(|| {
                as_part(id, || {
                    // SAFETY: as above; the closure is Sync, so calling it from any thread is
                    // sound.
                    unsafe { (*job)(t, self.n_threads) }
                })
            }));
            if r.is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
        }
        if self.done.0.fetch_add(1, Ordering::SeqCst) + 1 == self.n_threads
            && self.caller_waiting.load(Ordering::SeqCst)
        {
            if let Some(c) = self
                .caller
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .as_ref()
            {
                c.unpark();
            }
        }
    }
}

/// Persistent worker pool: `n_threads - 1` OS threads plus the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    busy: AtomicBool,
    /// Taken by [`ThreadPool::turn`]: engines sharing one pool run one step at a time.
    turns: TicketLock,
}

/// A first-come, first-served lock: tickets are served in the order they were drawn, so two
/// engines that both always have work alternate step by step instead of one starving the
/// other (a plain mutex lets the thread that just released it take it straight back).
#[derive(Default)]
struct TicketLock {
    /// (next ticket to hand out, ticket now served).
    state: Mutex<(u64, u64)>,
    served: std::sync::Condvar,
}

/// A turn on a [`ThreadPool`]: the pool is this holder's until the guard drops.
pub struct Turn<'a> {
    lock: &'a TicketLock,
    prev: usize,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        HOLDS_TURN.with(|c| c.set(self.prev));
        let mut s = self
            .lock
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.1 += 1;
        drop(s);
        self.lock.served.notify_all();
    }
}

impl ThreadPool {
    /// A pool of `n_threads` threads including the caller (0 is taken as 1).
    pub fn new(n_threads: usize) -> ThreadPool {
        Self::with_spin(n_threads, DEFAULT_SPIN)
    }

    /// Like [`ThreadPool::new`], with how long idle workers spin before parking.
    pub fn with_spin(n_threads: usize, spin: Duration) -> ThreadPool {
        let n = n_threads.clamp(1, u32::MAX as usize / 2);
        let shared = Arc::new(Shared {
            state: Padded(AtomicU64::new(n as u64)),
            done: Padded(AtomicUsize::new(0)),
            sleeping: (1..n).map(|_| Padded(AtomicBool::new(false))).collect(),
            caller_waiting: AtomicBool::new(false),
            caller: Mutex::new(None),
            job: UnsafeCell::new(None),
            panicked: AtomicBool::new(false),
            shutdown: AtomicBool::new(false),
            n_threads: n,
            spin,
        });
        let workers = (1..n)
            .map(|idx| {
                let sh = Arc::clone(&shared);
                thread::Builder::new()
                    .name(format!("lumen-worker-{idx}"))
                    .spawn(move || worker_loop(&sh, idx))
                    .expect("spawning a pool worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            busy: AtomicBool::new(false),
            turns: TicketLock::default(),
        }
    }

    /// Waits until no other holder of a turn is computing, then holds the pool until the
    /// guard drops; waiting callers are served in arrival order.
    ///
    /// Several engines (a chat model and an embedding model, say) share one pool so that
    /// together they never run more compute threads than the pool has. Every
    /// [`ThreadPool::run`] from outside the pool takes a turn for its one job, so two engines
    /// interleave kernel by kernel (neither stalls for the other's whole forward pass) and a
    /// waiting engine thread sleeps instead of computing beside the pool's workers. Holding a
    /// turn explicitly keeps the pool for a sequence of jobs; `run` calls made while holding it
    /// take no turn of their own.
    pub fn turn(&self) -> Turn<'_> {
        let lock = &self.turns;
        let mut s = lock.state.lock().unwrap_or_else(PoisonError::into_inner);
        let ticket = s.0;
        s.0 += 1;
        while s.1 != ticket {
            s = lock.served.wait(s).unwrap_or_else(PoisonError::into_inner);
        }
        let prev = HOLDS_TURN.with(|c| c.replace(self.id()));
        Turn { lock, prev }
    }

    fn id(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }

    /// Number of threads, the caller included.
    pub fn n_threads(&self) -> usize {
        self.shared.n_threads
    }

    /// Runs `f(part, n_threads)` once for every part in `0..n_threads`, in parallel, and returns
    /// when all are done. Each part runs on exactly one thread (not necessarily a distinct one:
    /// the caller takes over parts a slow worker has not started). A panic in any part is
    /// re-raised here after every part has finished.
    ///
    /// A nested call from inside `f` runs its parts one after another on the calling thread.
    /// A call from another thread while a job runs waits its turn (see [`ThreadPool::turn`]),
    /// first come, first served, so engines sharing the pool interleave job by job.
    pub fn run<F: Fn(usize, usize) + Sync>(&self, f: F) {
        let sh = &*self.shared;
        let n = sh.n_threads;
        let id = self.id();
        if n == 1 || IN_PART.with(|c| c.get()) == id {
            for t in 0..n {
                f(t, n);
            }
            return;
        }
        // A caller from outside waits its turn (first come, first served), so threads that
        // share the pool interleave job by job instead of running parts inline beside it.
        let _turn = (HOLDS_TURN.with(|c| c.get()) != id).then(|| self.turn());
        if self.busy.swap(true, Ordering::Acquire) {
            for t in 0..n {
                f(t, n);
            }
            return;
        }
        let job: &(dyn Fn(usize, usize) + Sync) = &f;
        // SAFETY: only the lifetime is erased. The pointer is dereferenced only by threads that
        // hold a claim on a part of this job, and this function does not return (nor unwind)
        // before every part is done, so `f` outlives every use.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync), Job>(job) };
        // SAFETY: `busy` is held and every part of the previous job is done, so no thread reads
        // the slot now.
        unsafe { *sh.job.get() = Some(job) };
        sh.done.0.store(0, Ordering::Relaxed);
        let epoch = ((sh.state.0.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
        sh.state.0.store((epoch as u64) << 32, Ordering::SeqCst);
        for (k, s) in sh.sleeping.iter().enumerate() {
            if s.0.load(Ordering::SeqCst) {
                self.workers[k].thread().unpark();
            }
        }
        let mut mine = None;
        while let Some(t) = sh.claim(epoch) {
            if let Err(p) = catch_unwind(AssertUnwindSafe(|| as_part(id, || f(t, n)))) {
                mine.get_or_insert(p);
            }
            sh.done.0.fetch_add(1, Ordering::SeqCst);
        }
        self.wait_done(n);
        // SAFETY: every part is done, so no thread reads the slot any more.
        unsafe { *sh.job.get() = None };
        let worker_panicked = sh.panicked.swap(false, Ordering::Relaxed);
        self.busy.store(false, Ordering::Release);
        if let Some(p) = mine {
            resume_unwind(p);
        }
        if worker_panicked {
            panic!("a ThreadPool worker panicked while running a job");
        }
    }

    /// Waits until all `n` parts are done: spins briefly, then parks until the last one ends.
    fn wait_done(&self, n: usize) {
        let sh = &*self.shared;
        let start = Instant::now();
        let mut spins = 0u32;
        while sh.done.0.load(Ordering::Acquire) != n {
            spins = spins.wrapping_add(1);
            if spins & 127 != 0 {
                std::hint::spin_loop();
                continue;
            }
            if start.elapsed() < CALLER_SPIN {
                continue;
            }
            *sh.caller.lock().unwrap_or_else(PoisonError::into_inner) = Some(thread::current());
            sh.caller_waiting.store(true, Ordering::SeqCst);
            while sh.done.0.load(Ordering::SeqCst) != n {
                thread::park();
            }
            sh.caller_waiting.store(false, Ordering::SeqCst);
            break;
        }
        // Pairs with the workers' SeqCst increments: their writes are visible from here on.
        std::sync::atomic::fence(Ordering::Acquire);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        let sh = &*self.shared;
        sh.shutdown.store(true, Ordering::SeqCst);
        let epoch = ((sh.state.0.load(Ordering::Relaxed) >> 32) as u32).wrapping_add(1);
        sh.state.0.store(
            ((epoch as u64) << 32) | sh.n_threads as u64,
            Ordering::SeqCst,
        );
        for w in &self.workers {
            w.thread().unpark();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool")
            .field("n_threads", &self.shared.n_threads)
            .finish()
    }
}

/// Waits until the epoch moves past `seen`: spins for `sh.spin`, then parks.
fn wait_epoch(sh: &Shared, idx: usize, seen: u32) -> u32 {
    let epoch = || (sh.state.0.load(Ordering::SeqCst) >> 32) as u32;
    let start = Instant::now();
    let mut spins = 0u32;
    loop {
        let e = (sh.state.0.load(Ordering::Acquire) >> 32) as u32;
        if e != seen {
            return e;
        }
        spins = spins.wrapping_add(1);
        if spins & 255 == 0 && start.elapsed() > sh.spin {
            break;
        }
        std::hint::spin_loop();
    }
    let flag = &sh.sleeping[idx - 1].0;
    loop {
        flag.store(true, Ordering::SeqCst);
        let e = epoch();
        if e != seen {
            flag.store(false, Ordering::Relaxed);
            return e;
        }
        thread::park();
        flag.store(false, Ordering::Relaxed);
    }
}

fn worker_loop(sh: &Shared, idx: usize) {
    let mut seen = 0u32;
    loop {
        seen = wait_epoch(sh, idx, seen);
        if sh.shutdown.load(Ordering::Acquire) {
            return;
        }
        while let Some(t) = sh.claim(seen) {
            sh.run_part(t);
        }
    }
}

/// A raw pointer the parts of one pool job share to write disjoint elements of one buffer.
///
/// Every user must make each part write only its own elements and let the pool join the
/// parts before the buffer's borrow ends (`ThreadPool::run` returns only then).
#[derive(Clone, Copy)]
pub(crate) struct PartsPtr<T>(pub(crate) *mut T);
// SAFETY: shared only by the parts of one job, which write disjoint elements (see above).
unsafe impl<T> Send for PartsPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for PartsPtr<T> {}

impl<T> PartsPtr<T> {
    /// The pointer. Going through a method makes closures capture the whole (Sync) wrapper,
    /// not the raw field.
    pub(crate) fn get(&self) -> *mut T {
        self.0
    }
}

/// Runs `f(row)` for every row of `0..m`, the rows cut into `parts` contiguous pieces run on
/// the pool's threads (`parts` at most its size), or all on the calling thread when there are
/// fewer than two rows per piece (waking the pool would cost more). Each row is visited
/// exactly once, whoever runs it: a row-wise pass gives the same bits however it is split.
pub(crate) fn for_rows_in_parts(
    pool: &ThreadPool,
    m: usize,
    parts: usize,
    f: impl Fn(usize) + Sync,
) {
    let parts = if m >= 2 * parts { parts } else { 1 };
    if parts <= 1 {
        (0..m).for_each(&f);
        return;
    }
    pool.run(|p, _| {
        if p < parts {
            split_range(m, parts, p).for_each(&f);
        }
    });
}

/// The `index`-th of `parts` even, contiguous pieces of `0..len` (earlier pieces get the extras).
pub fn split_range(len: usize, parts: usize, index: usize) -> Range<usize> {
    let parts = parts.max(1);
    let (base, rem) = (len / parts, len % parts);
    let start = index * base + index.min(rem);
    let end = start + base + usize::from(index < rem);
    start.min(len)..end.min(len)
}
