//! Live counters the engine thread publishes and the server's metrics read.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::request::FinishReason;

/// Counters and gauges of one engine. The engine thread refreshes the gauges after taking
/// new commands and after every step; [`EngineStats::submitted`] is counted by the
/// submitting side, so a request is visible from the moment it is accepted.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Sequences being computed.
    pub running: AtomicU64,
    /// Sequences queued in the scheduler.
    pub waiting: AtomicU64,
    /// Requests accepted by `submit` that the engine thread has not taken yet.
    pub submitted: AtomicU64,
    /// KV blocks referenced by a sequence.
    pub blocks_in_use: AtomicU64,
    /// KV blocks in the pool.
    pub total_blocks: AtomicU64,
    /// Prompt tokens of finished requests.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generation_tokens: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: AtomicU64,
    /// Prompt tokens found in the prefix cache.
    pub prefix_hits: AtomicU64,
    /// Sequences preempted.
    pub preemptions: AtomicU64,
    /// Requests finished with `stop`.
    pub finished_stop: AtomicU64,
    /// Requests finished with `length`.
    pub finished_length: AtomicU64,
    /// Requests finished with `cancelled`.
    pub finished_cancelled: AtomicU64,
    /// Forward steps run.
    pub steps: AtomicU64,
    /// Draft tokens proposed by speculative decoding.
    pub spec_draft_tokens: AtomicU64,
    /// Draft tokens the model confirmed (emitted without a step of their own).
    pub spec_accepted_tokens: AtomicU64,
    /// Forward passes run for explanations.
    pub explain_passes: AtomicU64,
    /// Tokens those passes ran.
    pub explain_tokens: AtomicU64,
}

impl EngineStats {
    /// Fraction of KV blocks in use, 0..=1.
    pub fn kv_usage(&self) -> f64 {
        let total = self.total_blocks.load(Relaxed);
        if total == 0 {
            0.0
        } else {
            self.blocks_in_use.load(Relaxed) as f64 / total as f64
        }
    }

    /// Everything accepted and not yet running: queued sequences plus requests still on
    /// their way to the engine thread (what a load balancer must see at once).
    pub fn requests_waiting(&self) -> u64 {
        self.waiting.load(Relaxed) + self.submitted.load(Relaxed)
    }

    /// Counts one finished choice.
    pub fn record_finish(&self, reason: FinishReason) {
        let c = match reason {
            FinishReason::Stop => &self.finished_stop,
            FinishReason::Length => &self.finished_length,
            FinishReason::Cancelled => &self.finished_cancelled,
        };
        c.fetch_add(1, Relaxed);
    }
}
