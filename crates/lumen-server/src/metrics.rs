//! `/metrics` in the Prometheus text format, written by hand (no client crate needed).
//!
//! Gauges and token counters are read from each engine's [`EngineStats`] atomics at scrape
//! time, so they cannot drift from what the engine did. Latency histograms (time to first
//! token, inter-token latency, end-to-end) are recorded by the handlers, which see the
//! request arrive and each token leave. Names follow vLLM's with the `lumen:` prefix, so
//! dashboards and the Gateway API Inference Extension can read them the same way (see
//! `docs/metrics.md`). Every series carries a `model_name` label.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;

use lumen_engine::{EmbedStats, EngineStats};

use crate::state::{AppState, ServedModel};

/// Buckets for time to first token, seconds.
const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Buckets for the time between two tokens of a choice, seconds.
const ITL_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
    10.0, 20.0, 80.0,
];
/// Buckets for a whole request, seconds.
const E2E_BUCKETS: &[f64] = &[
    0.1, 0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0,
    240.0, 480.0, 960.0, 1920.0,
];

#[derive(Default)]
struct HistData {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

/// A fixed-bucket histogram.
pub struct Histogram {
    bounds: &'static [f64],
    data: Mutex<HistData>,
}

impl Histogram {
    /// An empty histogram with these bucket bounds (seconds).
    pub fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            data: Mutex::new(HistData {
                counts: vec![0; bounds.len()],
                ..HistData::default()
            }),
        }
    }

    /// Records one observation in seconds.
    pub fn observe(&self, v: f64) {
        let mut d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            d.counts[i] += 1;
        }
        d.sum += v;
        d.count += 1;
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.data.lock().unwrap_or_else(|p| p.into_inner()).count
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let d = self.data.lock().unwrap_or_else(|p| p.into_inner());
        let mut cum = 0;
        for (b, c) in self.bounds.iter().zip(&d.counts) {
            cum += c;
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{b}\"}} {cum}");
        }
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {}", d.count);
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", d.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", d.count);
    }
}

/// Latency histograms of one model.
pub struct ModelMetrics {
    /// Request arrival to first token.
    pub ttft: Histogram,
    /// Between consecutive tokens of one choice.
    pub itl: Histogram,
    /// Request arrival to its last byte.
    pub e2e: Histogram,
}

impl Default for ModelMetrics {
    fn default() -> Self {
        ModelMetrics {
            ttft: Histogram::new(TTFT_BUCKETS),
            itl: Histogram::new(ITL_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

type Reader = fn(&EngineStats) -> f64;

const GAUGES: &[(&str, &str, Reader)] = &[
    (
        "lumen:num_requests_running",
        "Sequences being computed by the engine.",
        |s| s.running.load(Relaxed) as f64,
    ),
    (
        "lumen:num_requests_waiting",
        "Requests accepted and not yet running: queued in the engine or on their way to it.",
        |s| s.requests_waiting() as f64,
    ),
    (
        "lumen:kv_cache_usage_perc",
        "Fraction of KV-cache blocks in use (0..1).",
        |s| s.kv_usage(),
    ),
];

const COUNTERS: &[(&str, &str, Reader)] = &[
    (
        "lumen:prompt_tokens_total",
        "Prompt tokens of finished requests.",
        |s| s.prompt_tokens.load(Relaxed) as f64,
    ),
    ("lumen:generation_tokens_total", "Tokens generated.", |s| {
        s.generation_tokens.load(Relaxed) as f64
    }),
    (
        "lumen:prefix_cache_queries_total",
        "Prompt tokens looked up in the prefix cache.",
        |s| s.prefix_queries.load(Relaxed) as f64,
    ),
    (
        "lumen:prefix_cache_hits_total",
        "Prompt tokens found in the prefix cache.",
        |s| s.prefix_hits.load(Relaxed) as f64,
    ),
    (
        "lumen:num_preemptions_total",
        "Sequences preempted for lack of KV blocks.",
        |s| s.preemptions.load(Relaxed) as f64,
    ),
    (
        "lumen:spec_decode_draft_tokens_total",
        "Draft tokens proposed by speculative decoding (prompt lookup).",
        |s| s.spec_draft_tokens.load(Relaxed) as f64,
    ),
    (
        "lumen:spec_decode_accepted_tokens_total",
        "Draft tokens the model confirmed, each emitted without a step of its own.",
        |s| s.spec_accepted_tokens.load(Relaxed) as f64,
    ),
    (
        "lumen:explain_forward_passes_total",
        "Forward passes run for /v1/explain.",
        |s| s.explain_passes.load(Relaxed) as f64,
    ),
    (
        "lumen:explain_forward_tokens_total",
        "Tokens run by /v1/explain's forward passes.",
        |s| s.explain_tokens.load(Relaxed) as f64,
    ),
];

type EmbedReader = fn(&EmbedStats) -> u64;

const EMBED_COUNTERS: &[(&str, &str, EmbedReader)] = &[
    (
        "lumen:embedding_requests_total",
        "Embedding requests answered.",
        |s| s.requests.load(Relaxed),
    ),
    ("lumen:embedding_inputs_total", "Inputs embedded.", |s| {
        s.inputs.load(Relaxed)
    }),
    (
        "lumen:embedding_tokens_total",
        "Tokens embedded (special tokens included).",
        |s| s.tokens.load(Relaxed),
    ),
    (
        "lumen:embedding_batches_total",
        "Embedding forward passes run (requests share passes).",
        |s| s.batches.load(Relaxed),
    ),
    (
        "lumen:embedding_cancelled_total",
        "Embedding requests dropped before they finished (client gone or --request-timeout).",
        |s| s.cancelled.load(Relaxed),
    ),
];

/// The embedding models' series.
fn render_embeddings(out: &mut String, models: &[std::sync::Arc<crate::state::EmbeddingServed>]) {
    let name = "lumen:embedding_requests_in_flight";
    family(out, name, "gauge", "Embedding requests queued or running.");
    for e in models {
        let _ = writeln!(
            out,
            "{name}{{model_name=\"{}\"}} {}",
            label(&e.name),
            e.handle.in_flight()
        );
    }
    for &(name, help, read) in EMBED_COUNTERS {
        family(out, name, "counter", help);
        for e in models {
            let _ = writeln!(
                out,
                "{name}{{model_name=\"{}\"}} {}",
                label(&e.name),
                read(e.handle.stats())
            );
        }
    }
}

/// One family per table entry, one series per chat model.
fn per_model(
    out: &mut String,
    table: &[(&str, &str, Reader)],
    kind: &str,
    chats: &[std::sync::Arc<crate::state::ChatServed>],
) {
    for &(name, help, read) in table {
        family(out, name, kind, help);
        for c in chats {
            let _ = writeln!(
                out,
                "{name}{{model_name=\"{}\"}} {}",
                label(&c.name),
                read(c.handle.stats())
            );
        }
    }
}

/// The whole exposition for every served model.
pub fn render(state: &AppState) -> String {
    let models = state.models();
    let chats: Vec<_> = models
        .iter()
        .filter_map(|m| match m {
            ServedModel::Chat(c) => Some(c.clone()),
            ServedModel::Embedding(_) => None,
        })
        .collect();
    let embedders: Vec<_> = models
        .iter()
        .filter_map(|m| match m {
            ServedModel::Embedding(e) => Some(e.clone()),
            ServedModel::Chat(_) => None,
        })
        .collect();
    let mut out = String::new();
    render_embeddings(&mut out, &embedders);
    per_model(&mut out, GAUGES, "gauge", &chats);
    family(
        &mut out,
        "lumen:cache_config_info",
        "gauge",
        "KV cache configuration.",
    );
    for c in &chats {
        let blocks = c.handle.info().kv_blocks;
        let _ = writeln!(out, "lumen:cache_config_info{{model_name=\"{}\",block_size=\"{}\",num_gpu_blocks=\"{blocks}\"}} 1", label(&c.name), lumen_engine::BLOCK_SIZE);
    }
    per_model(&mut out, COUNTERS, "counter", &chats);
    family(
        &mut out,
        "lumen:request_success_total",
        "counter",
        "Finished choices by finish reason.",
    );
    for c in &chats {
        let s = c.handle.stats();
        for (reason, v) in [
            ("stop", &s.finished_stop),
            ("length", &s.finished_length),
            ("cancelled", &s.finished_cancelled),
        ] {
            let _ = writeln!(
                out,
                "lumen:request_success_total{{model_name=\"{}\",finished_reason=\"{reason}\"}} {}",
                label(&c.name),
                v.load(Relaxed)
            );
        }
    }
    type Pick = fn(&ModelMetrics) -> &Histogram;
    let hists: [(&str, &str, Pick); 3] = [
        (
            "lumen:time_to_first_token_seconds",
            "Time from request arrival to its first token.",
            |m| &m.ttft,
        ),
        (
            "lumen:inter_token_latency_seconds",
            "Time between consecutive tokens of a choice.",
            |m| &m.itl,
        ),
        (
            "lumen:e2e_request_latency_seconds",
            "Time from request arrival to its end.",
            |m| &m.e2e,
        ),
    ];
    render_model_states(&mut out, state);
    render_tenancy(&mut out, state);
    for (name, help, pick) in hists {
        family(&mut out, name, "histogram", help);
        for c in &chats {
            pick(&c.metrics).write(
                &mut out,
                name,
                &format!("model_name=\"{}\"", label(&c.name)),
            );
        }
    }
    out
}

/// Admission refusals and the usage ledger's queue (server-wide: no `model_name`).
fn render_tenancy(out: &mut String, state: &AppState) {
    let t = state.tenancy();
    family(
        out,
        "lumen:admission_refused_total",
        "counter",
        "Requests refused by a key's or tenant's limits, by reason.",
    );
    for (reason, n) in crate::admission::REFUSALS.iter().zip(t.admission.refused()) {
        let _ = writeln!(
            out,
            "lumen:admission_refused_total{{reason=\"{reason}\"}} {n}"
        );
    }
    if let Some(l) = &t.ledger {
        family(
            out,
            "lumen:ledger_queued_events",
            "gauge",
            "Usage events waiting for the ledger writer.",
        );
        let _ = writeln!(out, "lumen:ledger_queued_events {}", l.queued());
        family(
            out,
            "lumen:ledger_written_events_total",
            "counter",
            "Usage events committed to the database.",
        );
        let _ = writeln!(out, "lumen:ledger_written_events_total {}", l.written());
        family(
            out,
            "lumen:ledger_dropped_events_total",
            "counter",
            "Usage events lost because the queue was full (should stay 0).",
        );
        let _ = writeln!(out, "lumen:ledger_dropped_events_total {}", l.dropped());
    }
}

/// Per model, loaded or not: whether it is loaded, the memory it holds or will hold, and how
/// long its loads took.
fn render_model_states(out: &mut String, state: &AppState) {
    let statuses = state.manager().statuses();
    family(
        out,
        "lumen:model_loaded",
        "gauge",
        "1 while the model is loaded, else 0.",
    );
    for s in &statuses {
        let loaded = u8::from(s.state == "loaded");
        let _ = writeln!(
            out,
            "lumen:model_loaded{{model_name=\"{}\"}} {loaded}",
            label(&s.name)
        );
    }
    family(
        out,
        "lumen:model_memory_bytes",
        "gauge",
        "Bytes the model holds when loaded (weights and KV cache, estimated).",
    );
    for s in &statuses {
        let _ = writeln!(
            out,
            "lumen:model_memory_bytes{{model_name=\"{}\"}} {}",
            label(&s.name),
            s.memory_bytes
        );
    }
    family(
        out,
        "lumen:model_load_duration_seconds",
        "histogram",
        "Time to load and warm up a model.",
    );
    for s in &statuses {
        s.load_seconds.write(
            out,
            "lumen:model_load_duration_seconds",
            &format!("model_name=\"{}\"", label(&s.name)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative() {
        let h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.5);
        h.observe(5.0);
        let mut s = String::new();
        h.write(&mut s, "x", "m=\"a\"");
        assert!(s.contains("x_bucket{m=\"a\",le=\"0.1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{m=\"a\",le=\"1\"} 2\n"), "{s}");
        assert!(s.contains("x_bucket{m=\"a\",le=\"+Inf\"} 3\n"), "{s}");
        assert!(s.contains("x_count{m=\"a\"} 3\n"), "{s}");
    }

    #[test]
    fn labels_are_escaped() {
        assert_eq!(label("a\"b\\c"), "a\\\"b\\\\c");
    }
}
