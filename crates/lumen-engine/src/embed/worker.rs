//! The embedding thread's loop: drain the queue, pack a pass under the token budget, run it,
//! answer the requests it finished.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{mpsc, Arc};

use lumen_kernels::ThreadPool;
use lumen_models::bert::BertModel;

use super::{Command, EmbedConfig, EmbedStats, Job, Reply};
use crate::engine::compute::{attribute, ComputeTime};
use crate::EngineError;

/// A request being worked on: its inputs, the vectors computed so far, and where to reply.
struct Pending {
    job: Job,
    /// Vectors of `job.inputs[..out.len()]`.
    out: Vec<Vec<f32>>,
    /// Tokens of the inputs not embedded yet.
    remaining: usize,
}

impl Pending {
    fn new(job: Job) -> Pending {
        let remaining = job.inputs.iter().map(Vec::len).sum();
        let out = Vec::with_capacity(job.inputs.len());
        Pending {
            job,
            out,
            remaining,
        }
    }

    fn next(&self) -> usize {
        self.out.len()
    }
}

pub(super) struct Worker {
    model: Arc<BertModel>,
    pool: Arc<ThreadPool>,
    budget: usize,
    stats: Arc<EmbedStats>,
    in_flight: Arc<AtomicU64>,
}

impl Worker {
    pub fn new(
        model: Arc<BertModel>,
        config: &EmbedConfig,
        stats: Arc<EmbedStats>,
        in_flight: Arc<AtomicU64>,
    ) -> Worker {
        Worker {
            model,
            pool: config
                .pool
                .clone()
                .unwrap_or_else(|| Arc::new(ThreadPool::new(config.threads.max(1)))),
            budget: config.max_batch_tokens.max(1),
            stats,
            in_flight,
        }
    }

    pub fn run(self, commands: mpsc::Receiver<Command>, alive: Arc<AtomicBool>) {
        // Cleared however the loop ends, a panic included, so readiness checks see it.
        struct Alive(Arc<AtomicBool>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.store(false, SeqCst);
            }
        }
        let _alive = Alive(alive);
        let mut queue: VecDeque<Pending> = VecDeque::new();
        loop {
            if queue.is_empty() {
                match commands.recv() {
                    Ok(Command::Embed(job)) => queue.push_back(Pending::new(job)),
                    Ok(Command::Shutdown) | Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(Command::Embed(job)) => queue.push_back(Pending::new(job)),
                    // Dropping the queue drops the reply senders: callers see `Stopped`.
                    Ok(Command::Shutdown) => return,
                    Err(mpsc::TryRecvError::Empty | mpsc::TryRecvError::Disconnected) => break,
                }
            }
            queue.retain(|p| {
                let gone = p.job.reply.is_closed();
                if gone {
                    self.stats.cancelled.fetch_add(1, Relaxed);
                    self.in_flight.fetch_sub(1, SeqCst);
                }
                !gone
            });
            let pass = plan(&mut queue, self.budget);
            if !pass.is_empty() {
                self.run_pass(pass, &mut queue);
            }
        }
    }

    /// Runs one pass and answers the requests it completes; the rest go back in the queue.
    fn run_pass(&self, pass: Vec<(Pending, Range<usize>)>, queue: &mut VecDeque<Pending>) {
        let seqs: Vec<&[u32]> = pass
            .iter()
            .flat_map(|(p, r)| p.job.inputs[r.clone()].iter().map(Vec::as_slice))
            .collect();
        self.stats.batches.fetch_add(1, Relaxed);
        let started = std::time::Instant::now();
        let result = self.model.embed_batch(&self.pool, &seqs);
        drop(seqs);
        let rows: Vec<(ComputeTime, usize)> = pass
            .iter()
            .map(|(p, r)| {
                let tokens = p.job.inputs[r.clone()].iter().map(Vec::len).sum();
                (p.job.compute.clone(), tokens)
            })
            .collect();
        attribute(started.elapsed().as_nanos() as u64, &rows);
        match result {
            Ok(vectors) if vectors.len() == pass.iter().map(|(_, r)| r.len()).sum::<usize>() => {
                let mut vectors = vectors.into_iter();
                for (mut p, r) in pass {
                    p.remaining -= p.job.inputs[r.clone()].iter().map(Vec::len).sum::<usize>();
                    p.out.extend(vectors.by_ref().take(r.len()));
                    self.advance(p, queue);
                }
            }
            Ok(_) => {
                for (p, _) in pass {
                    let e = "the model returned the wrong number of vectors";
                    self.finish(p, Err(EngineError::Model(e.into())));
                }
            }
            // Validation makes this unexpected; run the requests one by one so that one bad
            // request fails alone.
            Err(e) if pass.len() > 1 => {
                tracing::warn!(error = %e, "embedding pass failed; retrying its requests one by one");
                for (p, r) in pass {
                    self.run_pass(vec![(p, r)], queue);
                }
            }
            Err(e) => {
                for (p, _) in pass {
                    self.finish(p, Err(EngineError::Model(e.to_string())));
                }
            }
        }
    }

    /// Answers a request whose inputs are all embedded, or queues it for its next piece.
    fn advance(&self, p: Pending, queue: &mut VecDeque<Pending>) {
        if p.next() < p.job.inputs.len() {
            queue.push_back(p);
            return;
        }
        let s = &self.stats;
        s.requests.fetch_add(1, Relaxed);
        s.inputs.fetch_add(p.job.inputs.len() as u64, Relaxed);
        s.tokens.fetch_add(
            p.job.inputs.iter().map(Vec::len).sum::<usize>() as u64,
            Relaxed,
        );
        let Pending { job, out, .. } = p;
        self.reply(job, Ok(out));
    }

    fn finish(&self, p: Pending, reply: Reply) {
        self.stats.failed.fetch_add(1, Relaxed);
        self.reply(p.job, reply);
    }

    fn reply(&self, job: Job, reply: Reply) {
        // Free the request's place before answering, so a caller that has its answer can
        // submit again at once. The caller may have gone; the place is freed all the same.
        self.in_flight.fetch_sub(1, SeqCst);
        let _ = job.reply.send(reply);
    }
}

/// Takes the next pass off the front of `queue`: whole requests in arrival order while their
/// tokens fit `budget`; a front request that alone is over the budget contributes as many of
/// its inputs as fit (at least one), and the rest of it waits its turn at the back.
fn plan(queue: &mut VecDeque<Pending>, budget: usize) -> Vec<(Pending, Range<usize>)> {
    let mut pass = Vec::new();
    let mut used = 0;
    while let Some(front) = queue.front() {
        let start = front.next();
        if used + front.remaining <= budget {
            used += front.remaining;
            let end = front.job.inputs.len();
            if let Some(p) = queue.pop_front() {
                pass.push((p, start..end));
            }
            continue;
        }
        if pass.is_empty() {
            let inputs = &front.job.inputs;
            let mut end = start;
            let mut tokens = 0;
            while end < inputs.len() && (end == start || tokens + inputs[end].len() <= budget) {
                tokens += inputs[end].len();
                end += 1;
            }
            if let Some(p) = queue.pop_front() {
                pass.push((p, start..end));
            }
        }
        break;
    }
    pass
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::oneshot;

    fn pending(lens: &[usize]) -> (Pending, oneshot::Receiver<Reply>) {
        let (tx, rx) = oneshot::channel();
        let inputs = lens.iter().map(|&n| vec![1u32; n]).collect();
        let compute = ComputeTime::default();
        (
            Pending::new(Job {
                inputs,
                reply: tx,
                compute,
            }),
            rx,
        )
    }

    fn ranges(pass: &[(Pending, Range<usize>)]) -> Vec<Range<usize>> {
        pass.iter().map(|(_, r)| r.clone()).collect()
    }

    #[test]
    fn packs_whole_requests_under_the_budget() {
        let mut q = VecDeque::new();
        let mut keep = Vec::new();
        for lens in [&[10usize, 10][..], &[30], &[50], &[5]] {
            let (p, rx) = pending(lens);
            q.push_back(p);
            keep.push(rx);
        }
        // 20 + 30 fit in 60; the 50-token request would not, and is not skipped over.
        let pass = plan(&mut q, 60);
        assert_eq!(ranges(&pass), vec![0..2, 0..1]);
        assert_eq!(q.len(), 2);
        let pass = plan(&mut q, 60);
        assert_eq!(ranges(&pass), vec![0..1, 0..1]);
        assert!(q.is_empty());
    }

    #[test]
    fn cuts_only_a_request_over_the_budget() {
        let mut q = VecDeque::new();
        let (p, _rx) = pending(&[40, 40, 40, 100]);
        q.push_back(p);
        let (small, _rx2) = pending(&[5]);
        q.push_back(small);
        let pass = plan(&mut q, 90);
        assert_eq!(ranges(&pass), vec![0..2]);
        // The cut request would go to the back after its piece; here it is just not requeued.
        assert_eq!(q.len(), 1);
        // One input longer than the budget still runs, alone.
        let mut q = VecDeque::new();
        let (p, _rx3) = pending(&[100, 1]);
        q.push_back(p);
        assert_eq!(ranges(&plan(&mut q, 10)), vec![0..1]);
    }
}
