//! The render threads: a small, long-lived pool with large stacks that every chat template
//! renders on.
//!
//! A template can build values nested as deep as its instruction budget allows, and dropping
//! them recurses, so renders need a deeper stack than the blocking pool's threads have. A
//! thread per render would reserve that stack's address space again for every concurrent
//! request, which a process under `ulimit -v` cannot afford; these threads reserve it once,
//! when the first template loads, so it is part of the idle footprint.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use super::budget::RENDER_STACK;
use crate::error::EngineError;

/// Render threads: two keep both cores busy with templates when several requests arrive at
/// once; a render takes well under a millisecond for real templates.
const THREADS: usize = 2;

type Job = Box<dyn FnOnce() + Send>;

fn pool() -> Result<&'static Mutex<Sender<Job>>, EngineError> {
    static POOL: OnceLock<Result<Mutex<Sender<Job>>, String>> = OnceLock::new();
    POOL.get_or_init(start)
        .as_ref()
        .map_err(|e| EngineError::TemplateRender(format!("cannot start the renderer: {e}")))
}

fn start() -> Result<Mutex<Sender<Job>>, String> {
    let (tx, rx) = mpsc::channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    for i in 0..THREADS {
        let rx = rx.clone();
        std::thread::Builder::new()
            .name(format!("chat-template-{i}"))
            .stack_size(RENDER_STACK)
            .spawn(move || work(&rx))
            .map_err(|e| e.to_string())?;
    }
    Ok(Mutex::new(tx))
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        // The lock is held only to take one job; a poisoned lock still holds a receiver.
        let job = match rx
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .recv()
        {
            Ok(job) => job,
            Err(_) => return,
        };
        // A panicking render must not take the thread with it; its caller sees the
        // dropped reply channel.
        let _ = catch_unwind(AssertUnwindSafe(job));
    }
}

/// Runs `f` on a render thread and waits for its result.
pub(super) fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    let (reply, result) = mpsc::sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = reply.send(f());
    });
    pool()?
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .send(job)
        .map_err(|_| EngineError::TemplateRender("the renderer has stopped".into()))?;
    result
        .recv()
        .map_err(|_| EngineError::TemplateRender("the renderer panicked".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_run_and_a_panic_leaves_the_pool_working() {
        assert_eq!(run(|| 6 * 7).unwrap(), 42);
        let err = run(|| -> u8 { panic!("a template bug") }).unwrap_err();
        assert!(err.to_string().contains("panicked"), "{err}");
        let results: Vec<usize> = (0..8).map(|i| run(move || i * 2).unwrap()).collect();
        assert_eq!(results, (0..8).map(|i| i * 2).collect::<Vec<_>>());
    }
}
