//! The engine thread's explanation queue: jobs run one forward pass at a time, below
//! generation (when no sequence is scheduled, or one pass every [`EVERY_STEPS`] steps so a
//! busy engine still finishes them), each pass in a KV cache of its own.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::Arc;

use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, LlamaModel};
use tokio::sync::oneshot;

use super::EngineStats;
use crate::explain::{ExplainJob, ExplainOutput};
use crate::EngineError;

/// Generation steps between two explanation passes while generation is busy.
const EVERY_STEPS: usize = 8;

type Reply = oneshot::Sender<Result<ExplainOutput, EngineError>>;

/// Explanations in arrival order.
pub(super) struct ExplainQueue {
    jobs: VecDeque<(Box<ExplainJob>, Reply)>,
    /// Shared with the handle, which refuses jobs past the limit.
    count: Arc<AtomicUsize>,
    /// Activation buffers of explanation passes, apart from generation's.
    ws: ForwardWorkspace,
    steps: usize,
    stats: Arc<EngineStats>,
}

impl ExplainQueue {
    pub fn new(count: Arc<AtomicUsize>, stats: Arc<EngineStats>) -> Self {
        ExplainQueue {
            jobs: VecDeque::new(),
            count,
            ws: ForwardWorkspace::new(),
            steps: 0,
            stats,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    pub fn push(&mut self, job: Box<ExplainJob>, reply: Reply) {
        self.jobs.push_back((job, reply));
    }

    /// Whether a pass runs now, given whether generation has nothing scheduled.
    pub fn due(&self, generation_idle: bool) -> bool {
        !self.jobs.is_empty() && (generation_idle || self.steps >= EVERY_STEPS)
    }

    /// A generation step ran.
    pub fn stepped(&mut self) {
        self.steps += 1;
    }

    fn done(&self) {
        self.count.fetch_sub(1, SeqCst);
    }

    /// Runs the first job's next pass; answers it when it ends or fails. A job whose caller
    /// went away is dropped without running.
    pub fn run_one(&mut self, model: &LlamaModel, pool: &ThreadPool) {
        self.steps = 0;
        let Some((mut job, reply)) = self.jobs.pop_front() else {
            return;
        };
        if reply.is_closed() {
            self.done();
            return;
        }
        let before = job.forward_tokens();
        let result = job.step(model, pool, &mut self.ws);
        self.stats.explain_passes.fetch_add(1, Relaxed);
        self.stats
            .explain_tokens
            .fetch_add((job.forward_tokens() - before) as u64, Relaxed);
        if let Err(e) = result {
            tracing::error!(error = %e, "explanation pass failed");
            let _ = reply.send(Err(e));
            self.done();
            return;
        }
        if job.is_done() {
            let _ = reply.send(Ok(job.finish()));
            self.done();
        } else {
            self.jobs.push_front((job, reply));
        }
    }
}

impl Drop for ExplainQueue {
    fn drop(&mut self) {
        // Callers see their reply channel close (the engine stopped).
        for _ in self.jobs.drain(..) {
            self.count.fetch_sub(1, SeqCst);
        }
    }
}
