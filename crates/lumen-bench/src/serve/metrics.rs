//! Per-request measurements and what a load test reports from them.

use serde::Serialize;

use crate::stats::Percentiles;

/// What one request measured. Times are seconds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RequestRecord {
    /// Why the request failed, if it did.
    pub error: Option<String>,
    /// From sending the request to the first chunk with text.
    pub ttft: Option<f64>,
    /// Gaps between successive chunks with text.
    pub itl: Vec<f64>,
    /// From sending the request to the end of the stream.
    pub e2e: f64,
    /// Output tokens: the server's `usage.completion_tokens` when given, else chunks with text.
    pub output_tokens: u64,
    /// Chunks that carried text.
    pub text_chunks: u64,
    /// When the request finished, seconds after the test began.
    pub finished_at: f64,
}

impl RequestRecord {
    /// Mean time per output token after the first, if there was more than one.
    pub fn tpot(&self) -> Option<f64> {
        match (self.ttft, self.output_tokens) {
            (Some(t), n) if n > 1 => Some((self.e2e - t) / (n - 1) as f64),
            _ => None,
        }
    }
}

/// Service-level objectives for goodput; a request is good when it succeeded and meets each
/// one that is set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Slo {
    /// Most time to first token, ms.
    pub ttft_ms: Option<f64>,
    /// Most mean inter-token latency (time per output token after the first), ms.
    pub itl_ms: Option<f64>,
    /// Most end-to-end latency, ms.
    pub e2e_ms: Option<f64>,
}

impl Slo {
    /// Whether a successful request meets every set objective.
    pub fn met_by(&self, r: &RequestRecord) -> bool {
        if r.error.is_some() {
            return false;
        }
        let within = |limit: Option<f64>, value: Option<f64>| match (limit, value) {
            (None, _) => true,
            (Some(l), Some(v)) => v * 1000.0 <= l,
            (Some(_), None) => false,
        };
        // A one-token reply has no inter-token latency to miss.
        let itl_ok = self.itl_ms.is_none() || r.output_tokens <= 1 || within(self.itl_ms, r.tpot());
        within(self.ttft_ms, r.ttft) && itl_ok && within(self.e2e_ms, Some(r.e2e))
    }
}

/// What a load test measured, ready for a table or JSON.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ServeReport {
    /// The server's base URL.
    pub url: String,
    /// The route that was called.
    pub endpoint: String,
    /// The model name sent (empty when none).
    pub model: String,
    /// Concurrent clients.
    pub concurrency: usize,
    /// Requests sent (after warm-up).
    pub requests: usize,
    /// Requests that finished without error.
    pub completed: usize,
    /// Requests that failed.
    pub errors: usize,
    /// Up to five distinct error messages.
    pub error_samples: Vec<String>,
    /// `max_tokens` asked for.
    pub max_tokens: usize,
    /// Seconds from the first request to the last response's end.
    pub duration_s: f64,
    /// Completed requests per second.
    pub request_throughput: f64,
    /// Output tokens per second, over all completed requests.
    pub output_tokens_per_s: f64,
    /// Output tokens of all completed requests.
    pub total_output_tokens: u64,
    /// Mean output tokens per completed request.
    pub mean_output_tokens: f64,
    /// Time to first token, ms.
    pub ttft_ms: Percentiles,
    /// Inter-token latency (every gap between chunks), ms.
    pub itl_ms: Percentiles,
    /// Time per output token after the first, per request, ms.
    pub tpot_ms: Percentiles,
    /// End-to-end latency, ms.
    pub e2e_ms: Percentiles,
    /// The objectives goodput counts against.
    pub slo: Slo,
    /// Requests per second that met the objectives.
    pub goodput: f64,
    /// Fraction of requests sent that met the objectives.
    pub good_fraction: f64,
}

/// Aggregates records into a report (the caller fills in the identifying fields).
pub fn summarise(records: &[RequestRecord], slo: Slo) -> ServeReport {
    let ok: Vec<&RequestRecord> = records.iter().filter(|r| r.error.is_none()).collect();
    let duration_s = records.iter().map(|r| r.finished_at).fold(0.0, f64::max);
    let per_s = |x: f64| {
        if duration_s > 0.0 {
            x / duration_s
        } else {
            0.0
        }
    };
    let total_output_tokens: u64 = ok.iter().map(|r| r.output_tokens).sum();
    let ms = |v: Vec<f64>| Percentiles::of(&v.into_iter().map(|x| x * 1000.0).collect::<Vec<_>>());
    let mut error_samples: Vec<String> = Vec::new();
    for e in records.iter().filter_map(|r| r.error.as_ref()) {
        if error_samples.len() < 5 && !error_samples.contains(e) {
            error_samples.push(e.clone());
        }
    }
    let good = records.iter().filter(|r| slo.met_by(r)).count();
    ServeReport {
        requests: records.len(),
        completed: ok.len(),
        errors: records.len() - ok.len(),
        error_samples,
        duration_s,
        request_throughput: per_s(ok.len() as f64),
        output_tokens_per_s: per_s(total_output_tokens as f64),
        total_output_tokens,
        mean_output_tokens: if ok.is_empty() {
            0.0
        } else {
            total_output_tokens as f64 / ok.len() as f64
        },
        ttft_ms: ms(ok.iter().filter_map(|r| r.ttft).collect()),
        itl_ms: ms(ok.iter().flat_map(|r| r.itl.iter().copied()).collect()),
        tpot_ms: ms(ok.iter().filter_map(|r| r.tpot()).collect()),
        e2e_ms: ms(ok.iter().map(|r| r.e2e).collect()),
        slo,
        goodput: per_s(good as f64),
        good_fraction: if records.is_empty() {
            0.0
        } else {
            good as f64 / records.len() as f64
        },
        ..ServeReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ttft: f64, e2e: f64, tokens: u64, at: f64) -> RequestRecord {
        RequestRecord {
            ttft: Some(ttft),
            e2e,
            output_tokens: tokens,
            text_chunks: tokens,
            itl: vec![(e2e - ttft) / (tokens.max(2) - 1) as f64; tokens.saturating_sub(1) as usize],
            finished_at: at,
            error: None,
        }
    }

    #[test]
    fn throughput_and_latency() {
        let records = vec![
            rec(0.1, 1.1, 11, 1.5),
            rec(0.3, 2.3, 11, 2.0),
            RequestRecord {
                error: Some("boom".into()),
                finished_at: 0.5,
                ..Default::default()
            },
        ];
        let r = summarise(&records, Slo::default());
        assert_eq!((r.requests, r.completed, r.errors), (3, 2, 1));
        assert_eq!(r.error_samples, vec!["boom".to_string()]);
        assert_eq!(r.duration_s, 2.0);
        assert_eq!(r.request_throughput, 1.0);
        assert_eq!(r.output_tokens_per_s, 11.0);
        assert_eq!(r.mean_output_tokens, 11.0);
        assert!((r.ttft_ms.p50 - 200.0).abs() < 1e-9);
        assert!((r.tpot_ms.max - 200.0).abs() < 1e-9); // (2.3 - 0.3) / 10
        assert_eq!(r.itl_ms.n, 20);
        // No objectives: every successful request is good.
        assert_eq!(r.goodput, 1.0);
        assert!((r.good_fraction - 2.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn goodput_counts_objectives() {
        let fast = rec(0.05, 0.55, 11, 1.0); // tpot 50 ms
        let slow_start = rec(0.5, 1.0, 11, 1.0);
        let slow_tokens = rec(0.05, 2.05, 11, 1.0); // tpot 200 ms
        let slo = Slo {
            ttft_ms: Some(100.0),
            itl_ms: Some(100.0),
            e2e_ms: None,
        };
        assert!(slo.met_by(&fast));
        assert!(!slo.met_by(&slow_start));
        assert!(!slo.met_by(&slow_tokens));
        assert!(Slo {
            e2e_ms: Some(1000.0),
            ..Slo::default()
        }
        .met_by(&slow_start));
        assert!(!Slo {
            e2e_ms: Some(999.0),
            ..Slo::default()
        }
        .met_by(&slow_start));
        let no_first = RequestRecord {
            ttft: None,
            ..fast.clone()
        };
        assert!(!slo.met_by(&no_first));
        let r = summarise(&[fast, slow_start, slow_tokens], slo);
        assert_eq!(r.goodput, 1.0);
    }

    #[test]
    fn empty_run() {
        let r = summarise(&[], Slo::default());
        assert_eq!(
            (
                r.requests,
                r.goodput,
                r.output_tokens_per_s,
                r.good_fraction
            ),
            (0, 0.0, 0.0, 0.0)
        );
    }
}
