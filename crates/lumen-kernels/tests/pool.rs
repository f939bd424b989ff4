//! The worker pool: correctness under many tiny dispatches, panics, nesting.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};

use lumen_kernels::{split_range, ThreadPool};

fn assert_send_sync<T: Send + Sync>() {}

#[test]
fn pool_is_send_and_sync() {
    assert_send_sync::<ThreadPool>();
    assert_eq!(ThreadPool::new(0).n_threads(), 1);
}

#[test]
fn many_tiny_dispatches() {
    for n in [1, 2, 3] {
        let pool = ThreadPool::new(n);
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let total = AtomicUsize::new(0);
        for round in 0..100_000usize {
            pool.run(|t, nt| {
                assert_eq!(nt, n);
                hits[t].fetch_add(1, Ordering::Relaxed);
                total.fetch_add(round % 7 + t, Ordering::Relaxed);
            });
        }
        for h in &hits {
            assert_eq!(h.load(Ordering::Relaxed), 100_000);
        }
        let want: usize = (0..100_000usize)
            .map(|r| n * (r % 7) + n * (n - 1) / 2)
            .sum();
        assert_eq!(total.load(Ordering::Relaxed), want);
    }
}

#[test]
fn results_are_visible_after_run() {
    let pool = ThreadPool::new(3);
    let mut data = vec![0u64; 1000];
    for round in 1..200u64 {
        let cells: Vec<AtomicUsize> = (0..data.len()).map(|_| AtomicUsize::new(0)).collect();
        pool.run(|t, n| {
            for i in split_range(cells.len(), n, t) {
                cells[i].store(i * round as usize, Ordering::Relaxed);
            }
        });
        for (d, c) in data.iter_mut().zip(&cells) {
            *d = c.load(Ordering::Relaxed) as u64;
        }
        assert!(data.iter().enumerate().all(|(i, &v)| v == i as u64 * round));
    }
}

#[test]
fn worker_panic_propagates_and_pool_survives() {
    let pool = ThreadPool::new(3);
    for victim in [0, 1, 2] {
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(|t, _| {
                if t == victim {
                    panic!("boom in part {t}");
                }
            })
        }));
        assert!(r.is_err(), "panic in part {victim} was swallowed");
        let count = AtomicUsize::new(0);
        pool.run(|_, _| {
            count.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(count.load(Ordering::Relaxed), 3);
    }
}

#[test]
fn nested_run_does_not_deadlock() {
    let pool = ThreadPool::new(2);
    let count = AtomicUsize::new(0);
    pool.run(|_, _| {
        pool.run(|_, n| {
            assert_eq!(n, 2);
            count.fetch_add(1, Ordering::Relaxed);
        });
    });
    assert_eq!(count.load(Ordering::Relaxed), 4);
}

#[test]
fn concurrent_callers_each_run_every_part() {
    let pool = ThreadPool::new(2);
    let count = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                for _ in 0..2000 {
                    pool.run(|_, _| {
                        count.fetch_add(1, Ordering::Relaxed);
                    });
                }
            });
        }
    });
    assert_eq!(count.load(Ordering::Relaxed), 3 * 2000 * 2);
}

#[test]
fn split_range_is_even_and_covering() {
    for len in 0..50 {
        for parts in 1..9 {
            let mut next = 0;
            for i in 0..parts {
                let r = split_range(len, parts, i);
                assert_eq!(r.start, next);
                assert!(r.len() == len / parts || r.len() == len / parts + 1);
                next = r.end;
            }
            assert_eq!(next, len);
            assert!(split_range(len, parts, parts + 3).is_empty());
        }
    }
}

#[test]
fn turns_are_served_in_arrival_order() {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;
    let pool = Arc::new(ThreadPool::new(2));
    let order = Arc::new(Mutex::new(Vec::new()));
    let first = pool.turn();
    let waiters: Vec<_> = (0..3)
        .map(|i| {
            let (pool, order) = (pool.clone(), order.clone());
            let t = std::thread::spawn(move || {
                let _turn = pool.turn();
                order.lock().unwrap().push(i);
                // Work inside the turn runs on the pool as usual.
                pool.run(|_, _| {});
            });
            // Let each waiter draw its ticket before the next one starts.
            std::thread::sleep(Duration::from_millis(50));
            t
        })
        .collect();
    assert!(
        order.lock().unwrap().is_empty(),
        "a turn was granted while held"
    );
    drop(first);
    for w in waiters {
        w.join().unwrap();
    }
    assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
}
