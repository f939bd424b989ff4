//! `lumen bench bandwidth`: the machine's stream-read bandwidth, the bound on decode speed.
//!
//! Single-stream decode of a quantized model reads every weight once per token, so tokens/s
//! can never beat bandwidth / bytes read per token. `make bench-compare` reports each
//! engine's share of that bound, and the bound has to be measured on the machine it runs on
//! (a cloud VM's share of a socket's bandwidth varies). This is a STREAM-like read: each
//! thread sums its own contiguous part of a buffer much larger than the caches, with eight
//! independent accumulators so the adds vectorize and never wait on each other; the best of
//! the repetitions is the figure, as STREAM reports it, because slower ones only measure
//! interference from other processes.

use serde::Serialize;
use std::time::Instant;

/// What one bandwidth measurement found.
#[derive(Debug, Clone, Serialize)]
pub struct BandwidthReport {
    /// Bytes of the buffer read each repetition.
    pub bytes: u64,
    /// Reading threads.
    pub threads: usize,
    /// Timed repetitions (after one warm-up pass that also faults the pages in).
    pub reps: usize,
    /// Best repetition, in GB/s (10^9 bytes per second).
    pub best_gb_per_s: f64,
    /// Median repetition, in GB/s.
    pub median_gb_per_s: f64,
}

/// Reads a `mib`-MiB buffer `reps` times with `threads` threads and reports the read rate.
pub fn measure_read_bandwidth(mib: usize, threads: usize, reps: usize) -> BandwidthReport {
    let threads = threads.max(1);
    let words = (mib.max(1) << 20) / 8;
    // Distinct values so no page is a shared zero page: the read must come from memory.
    let buf: Vec<u64> = (0..words as u64).collect();
    let mut secs = Vec::with_capacity(reps);
    let mut sink = 0u64;
    for rep in 0..=reps {
        let start = Instant::now();
        sink = sink.wrapping_add(parallel_sum(&buf, threads));
        if rep > 0 {
            secs.push(start.elapsed().as_secs_f64());
        }
    }
    std::hint::black_box(sink);
    secs.sort_by(f64::total_cmp);
    let bytes = (words * 8) as u64;
    let gbps = |s: f64| bytes as f64 / s / 1e9;
    BandwidthReport {
        bytes,
        threads,
        reps,
        best_gb_per_s: secs.first().map_or(0.0, |&s| gbps(s)),
        median_gb_per_s: secs.get(secs.len() / 2).map_or(0.0, |&s| gbps(s)),
    }
}

/// Sum of `buf`, each of `threads` scoped threads taking one contiguous part.
fn parallel_sum(buf: &[u64], threads: usize) -> u64 {
    let part = buf.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = buf
            .chunks(part.max(1))
            .map(|c| s.spawn(move || sum(c)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(0))
            .fold(0, u64::wrapping_add)
    })
}

/// Eight independent lanes, so the compiler vectorizes the loop and the adds pipeline.
fn sum(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let chunks = words.chunks_exact(8);
    let tail = chunks.remainder();
    for c in chunks {
        for (a, w) in acc.iter_mut().zip(c) {
            *a = a.wrapping_add(*w);
        }
    }
    acc.iter().chain(tail).fold(0, |a, &b| a.wrapping_add(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_every_word_once_across_threads() {
        let buf: Vec<u64> = (0..1001).collect();
        let want = 1000 * 1001 / 2;
        for t in 1..=4 {
            assert_eq!(parallel_sum(&buf, t), want);
        }
    }

    #[test]
    fn reports_a_positive_rate() {
        let r = measure_read_bandwidth(1, 2, 2);
        assert_eq!(r.bytes, 1 << 20);
        assert!(r.best_gb_per_s > 0.0 && r.best_gb_per_s >= r.median_gb_per_s);
    }
}
