//! Timing shared by the kernel micro-benchmarks (included with `#[path]`).

use std::time::{Duration, Instant};

/// Mean seconds per call of `f`: calls are timed in ~2 ms windows for about `budget`, and the
/// fastest window counts, so that preemption on a busy machine does not skew the result.
pub fn time_it(budget: Duration, mut f: impl FnMut()) -> f64 {
    f();
    let t = Instant::now();
    f();
    let one = t.elapsed().as_secs_f64().max(1e-8);
    let per_window = ((2e-3 / one) as u64).max(1);
    let start = Instant::now();
    let mut best = f64::MAX;
    while start.elapsed() < budget {
        let t = Instant::now();
        for _ in 0..per_window {
            f();
        }
        best = best.min(t.elapsed().as_secs_f64() / per_window as f64);
    }
    best
}
