//! Continuous batching: which sequences run in the next step, and how many tokens each.
//!
//! Every step has a token budget (`max_num_batched_tokens`) and a sequence cap
//! (`max_num_seqs`). Running decodes go first (one token each, so streams keep flowing), then
//! running prefills continue in chunks, then waiting requests are admitted by priority and
//! arrival, reusing the longest cached prefix. When the pool runs out of blocks for a running
//! sequence, the lowest-priority, newest running sequence is preempted: its blocks are released
//! (full ones stay in the prefix cache) and it waits to be recomputed. A sequence already
//! planned in this step is never the victim; when only planned sequences rank below the one
//! that needs blocks, that sequence is preempted itself. Sequences carry an opaque payload `T`
//! (the engine's sampler, channels…) so this module stays pure scheduling, and its tests
//! (`tests.rs`) drive it with a bare [`BlockPool`] and no model.
//!
//! **Batch work yields.** While any interactive sequence runs or waits, batch-priority
//! sequences get only an allowance of `busy_batch_tokens` beside the step's interactive
//! budget, decode rows and prompt tokens alike: the oldest batch sequences decode first, what
//! is left prefills (or admits) the next one a few tokens at a time, and the others keep
//! their blocks and sit out the step. On a CPU every row of a step costs time (about three
//! quarters of a millisecond per row for SmolLM2-135M on two cores, prompt token or decode
//! row), so this, not the admission order alone, is what keeps a batch job from slowing the
//! streams people watch; and because new lines still start within the allowance, a batch
//! keeps moving under steady interactive traffic instead of stalling once the lines it had
//! begun are done. (An allowance in proportion to the step's interactive tokens was tried:
//! it more than doubled the streams' time to first token.) When the interactive
//! work is done, every batch sequence runs again, after a short grace (`busy_grace`): a
//! client sends its next request a moment after the last answer ended, and a batch-only step
//! begun in that moment (the whole token budget of batch prefills, and every batch row)
//! would hold that request's first token back.
//!
//! **Draft tokens.** A decoding sequence may carry unverified proposals at the end of its
//! tokens ([`Sequence::draft`], speculative decoding): its decode chunk then covers them too,
//! so one forward pass scores them all. Drafts are a bonus, never a cost to others: they are
//! dropped when the step's budget or the free blocks do not cover them, when the sequence is
//! preempted, and their blocks never enter the prefix cache until the engine has verified
//! them ([`Scheduler::verified`]).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::kv::{block_hash, chain, BlockHash, BlockPool};
use crate::request::Priority;

/// Limits for one step.
#[derive(Clone, Copy, Debug)]
pub struct SchedulerConfig {
    /// Most tokens (prefill and decode) computed in one step.
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once.
    pub max_num_seqs: usize,
    /// Publish full blocks of generated tokens to the prefix cache too, so that the next
    /// turn of a conversation, whose prompt holds this turn's answer, finds them. Only sound
    /// when decoding computes the same KV a prefill would (the engine sets it from the model).
    pub cache_generated: bool,
    /// Tokens (decode rows and prompt tokens alike) that batch-priority sequences may have in
    /// a step while any interactive sequence runs or waits (see the module docs: batch work
    /// yields to interactive work).
    pub busy_batch_tokens: usize,
    /// How long batch work keeps yielding after the last interactive sequence left.
    pub busy_grace: Duration,
}

impl Default for SchedulerConfig {
    /// 256 tokens a step: on a 2-core CPU a 512-token step takes most of a second, during
    /// which every stream stalls and new requests wait. With 16 streaming clients 256 gave a
    /// lower median time to first token (826 vs 988 ms, 739 vs 942 ms) and a lower p99
    /// inter-token latency (381 vs 578 ms) at the same output rate (`lumen bench serve -c 16`).
    fn default() -> Self {
        SchedulerConfig {
            max_num_batched_tokens: 256,
            max_num_seqs: 64,
            cache_generated: false,
            busy_batch_tokens: 1,
            busy_grace: Duration::from_millis(50),
        }
    }
}

/// Scheduling state of one sequence.
pub struct Sequence<T> {
    /// Interactive before batch.
    pub priority: Priority,
    /// Arrival order (smaller is older).
    pub arrival: u64,
    /// Every known token: prompt, then generated.
    pub tokens: Vec<u32>,
    /// How many of `tokens` are the prompt. Only blocks made entirely of prompt tokens go into
    /// the prefix cache: generated tokens are computed with llama.cpp's single-token arithmetic
    /// and prompt tokens with its batched one (see `SeqChunk::prompt_len`), so a later request
    /// that has those tokens in its prompt must compute them itself to get the same bits as a
    /// cold run.
    pub prompt_len: usize,
    /// Tokens whose keys and values are in the cache.
    pub num_computed: usize,
    /// KV blocks in order.
    pub block_table: Vec<u32>,
    /// Chain root (model and tenant salt).
    pub root: BlockHash,
    /// Hashes of the full blocks computed so far.
    pub hashes: Vec<BlockHash>,
    /// Whether this sequence may reuse cached blocks on admission (not when prompt logprobs
    /// are wanted: cached positions have no logits).
    pub use_prefix_cache: bool,
    /// How many times it was preempted.
    pub preemptions: u32,
    /// How many of the last `tokens` are unverified draft tokens (speculative decoding).
    pub draft: usize,
    /// The engine's per-sequence state.
    pub data: T,
}

impl<T> Sequence<T> {
    /// Tokens still to compute before the next sample.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.num_computed
    }

    /// Forgets the draft tokens.
    pub fn drop_draft(&mut self) {
        let keep = self.tokens.len() - self.draft;
        self.tokens.truncate(keep);
        self.draft = 0;
    }
}

/// One sequence's work in a step: `len` tokens from position `start`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// Index into [`Scheduler::running`].
    pub index: usize,
    /// First position computed.
    pub start: usize,
    /// Tokens computed.
    pub len: usize,
}

/// Waiting and running sequences.
pub struct Scheduler<T> {
    config: SchedulerConfig,
    waiting: VecDeque<Sequence<T>>,
    running: Vec<Sequence<T>>,
    preemptions: u64,
    /// When a step last held an interactive sequence (the start of `busy_grace`).
    interactive_at: Option<Instant>,
}

/// Tokens a step may still take, per class: the step's budget for interactive work, and the
/// batch allowance beside it while batch work yields (without interactive work, the batch
/// gets the budget).
struct StepBudget {
    interactive: usize,
    batch: usize,
}

impl StepBudget {
    fn of(&self, class: Priority) -> usize {
        match class {
            Priority::Interactive => self.interactive,
            Priority::Batch => self.batch,
        }
    }

    fn take(&mut self, class: Priority, len: usize) {
        match class {
            Priority::Interactive => self.interactive -= len,
            Priority::Batch => self.batch -= len,
        }
    }

    fn any(&self) -> bool {
        self.interactive > 0 || self.batch > 0
    }
}

fn order_key<T>(s: &Sequence<T>) -> (Priority, u64) {
    (s.priority, s.arrival)
}

impl<T> Scheduler<T> {
    /// An empty scheduler.
    pub fn new(config: SchedulerConfig) -> Self {
        Scheduler {
            config,
            waiting: VecDeque::new(),
            running: Vec::new(),
            preemptions: 0,
            interactive_at: None,
        }
    }

    /// Queues a sequence, keeping the waiting list in (priority, arrival) order.
    pub fn add(&mut self, seq: Sequence<T>) {
        let key = order_key(&seq);
        let at = self
            .waiting
            .iter()
            .position(|s| order_key(s) > key)
            .unwrap_or(self.waiting.len());
        self.waiting.insert(at, seq);
    }

    /// Sequences being computed.
    pub fn running(&self) -> &[Sequence<T>] {
        &self.running
    }

    /// Sequences being computed, mutably.
    pub fn running_mut(&mut self) -> &mut [Sequence<T>] {
        &mut self.running
    }

    /// Sequences queued (never started or preempted).
    pub fn waiting(&self) -> impl Iterator<Item = &Sequence<T>> {
        self.waiting.iter()
    }

    /// Number of queued sequences.
    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }

    /// The class that runs unhindered now: interactive while any interactive sequence runs
    /// or waits (batch work then yields, see the module docs), batch otherwise.
    pub fn foreground(&self) -> Priority {
        self.running
            .iter()
            .chain(&self.waiting)
            .map(|s| s.priority)
            .min()
            .unwrap_or_default()
    }

    /// Whether nothing is queued or running.
    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    /// Preemptions so far.
    pub fn preemptions(&self) -> u64 {
        self.preemptions
    }

    /// Removes running sequence `index`, releasing its blocks.
    pub fn finish_running(&mut self, index: usize, pool: &mut BlockPool) -> Sequence<T> {
        let seq = self.running.remove(index);
        pool.release_all(&seq.block_table);
        seq
    }

    /// Removes every sequence (running or waiting) for which `pred` holds, releasing blocks.
    pub fn remove_where(
        &mut self,
        pool: &mut BlockPool,
        mut pred: impl FnMut(&T) -> bool,
    ) -> Vec<Sequence<T>> {
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.running.len() {
            if pred(&self.running[i].data) {
                out.push(self.finish_running(i, pool));
            } else {
                i += 1;
            }
        }
        let (gone, keep): (Vec<_>, Vec<_>) = self.waiting.drain(..).partition(|s| pred(&s.data));
        self.waiting = keep.into();
        for s in gone {
            pool.release_all(&s.block_table);
            out.push(s);
        }
        out
    }

    /// Starts an already computed sequence directly in the running set (a fork for `n > 1`).
    pub fn push_running(&mut self, seq: Sequence<T>) {
        self.running.push(seq);
    }

    fn preempt(&mut self, index: usize, pool: &mut BlockPool) {
        let mut seq = self.running.remove(index);
        // Recomputing unverified tokens as if they were the sequence's own would be wrong.
        seq.drop_draft();
        pool.release_all(&seq.block_table);
        seq.block_table.clear();
        seq.num_computed = 0;
        seq.preemptions += 1;
        self.preemptions += 1;
        tracing::debug!(
            arrival = seq.arrival,
            tokens = seq.tokens.len(),
            "preempted"
        );
        self.add(seq);
    }

    /// Grows `running[index]`'s block table to hold `upto` positions, preempting later
    /// (lower-priority, newer) unscheduled sequences if needed. Returns false if the sequence
    /// itself had to be preempted.
    fn reserve(
        &mut self,
        index: usize,
        upto: usize,
        plan: &mut [Chunk],
        pool: &mut BlockPool,
    ) -> bool {
        let bs = pool.block_size();
        let needed = upto
            .div_ceil(bs)
            .saturating_sub(self.running[index].block_table.len());
        // Everything already planned is off limits as a victim.
        let scheduled = plan.iter().map(|c| c.index + 1).max().unwrap_or(0);
        while pool.available() < needed {
            let victim = self.running.len() - 1;
            if victim <= index || victim < scheduled {
                self.preempt(index, pool);
                for c in plan.iter_mut().filter(|c| c.index > index) {
                    c.index -= 1;
                }
                return false;
            }
            self.preempt(victim, pool);
        }
        for _ in 0..needed {
            let Some(b) = pool.allocate() else {
                return false;
            };
            self.running[index].block_table.push(b);
        }
        true
    }

    /// Whether batch work yields now: an interactive sequence runs or waits, or the last one
    /// left less than `busy_grace` ago.
    fn yields_to_interactive(&mut self) -> bool {
        let now = Instant::now();
        if self.foreground() == Priority::Interactive {
            self.interactive_at = Some(now);
            return true;
        }
        self.yield_left(now).is_some()
    }

    /// What is left of the grace in which batch work still yields, if any.
    fn yield_left(&self, now: Instant) -> Option<Duration> {
        let since = now.duration_since(self.interactive_at?);
        self.config
            .busy_grace
            .checked_sub(since)
            .filter(|d| !d.is_zero())
    }

    /// How long the engine may sleep when a plan came back empty because batch work is
    /// yielding: until the grace ends (a new request wakes it sooner).
    pub fn held_back_for(&self) -> Option<Duration> {
        self.yield_left(Instant::now())
    }

    /// Plans the next step. Chunks refer to `running()` indices as they are after this call.
    pub fn schedule(&mut self, pool: &mut BlockPool) -> Vec<Chunk> {
        self.running.sort_by_key(order_key);
        let mut plan = Vec::new();
        // Without interactive work only batch sequences exist, and they get the whole step.
        let mut left = StepBudget {
            interactive: self.config.max_num_batched_tokens,
            batch: if self.yields_to_interactive() {
                self.config.busy_batch_tokens
            } else {
                self.config.max_num_batched_tokens
            },
        };
        // Decodes first, then continuing prefills, each in priority order.
        for pass_decode in [true, false] {
            let mut i = 0;
            while i < self.running.len() && left.any() {
                let draft = self.running[i].draft;
                let pending = self.running[i].pending();
                let is_decode = pending == 1 + draft;
                let already = plan.iter().any(|c: &Chunk| c.index == i);
                let class = self.running[i].priority;
                if is_decode != pass_decode || already || pending == 0 || left.of(class) == 0 {
                    i += 1;
                    continue;
                }
                let start = self.running[i].num_computed;
                if draft > 0 {
                    let blocks = (start + pending).div_ceil(pool.block_size());
                    let more = blocks.saturating_sub(self.running[i].block_table.len());
                    if pending > left.of(class) || more > pool.available() {
                        self.running[i].drop_draft();
                    }
                }
                let len = self.running[i].pending().min(left.of(class));
                if self.reserve(i, start + len, &mut plan, pool) {
                    plan.push(Chunk {
                        index: i,
                        start,
                        len,
                    });
                    left.take(class, len);
                    i += 1;
                }
            }
        }
        while left.any() && self.running.len() < self.config.max_num_seqs {
            let Some(mut seq) = self.waiting.pop_front() else {
                break;
            };
            let class = seq.priority;
            if left.of(class) == 0 {
                // Waiting is in priority order: nothing behind it may jump the queue.
                self.waiting.push_front(seq);
                break;
            }
            if seq.block_table.is_empty() && seq.use_prefix_cache {
                // Never reuse the whole prompt: the last token must run to give logits.
                let bs = pool.block_size();
                let reusable = (seq.tokens.len() - 1) / bs;
                let hashes = chain(&seq.root, &seq.tokens[..reusable * bs], bs);
                let hits = pool.lookup(&hashes, seq.tokens.len());
                seq.num_computed = hits.len() * bs;
                seq.hashes = hashes[..hits.len()].to_vec();
                seq.block_table = hits;
            }
            let len = seq.pending().min(left.of(class));
            let needed = (seq.num_computed + len)
                .div_ceil(pool.block_size())
                .saturating_sub(seq.block_table.len());
            if pool.available() < needed {
                // Not enough memory to admit now; give back what the lookup took and wait.
                pool.release_all(&seq.block_table);
                seq.block_table.clear();
                seq.hashes.clear();
                seq.num_computed = 0;
                self.waiting.push_front(seq);
                break;
            }
            for _ in 0..needed {
                if let Some(b) = pool.allocate() {
                    seq.block_table.push(b);
                }
            }
            plan.push(Chunk {
                index: self.running.len(),
                start: seq.num_computed,
                len,
            });
            left.take(class, len);
            self.running.push(seq);
        }
        plan
    }

    /// After a step: marks chunks computed and publishes newly full blocks in the prefix cache.
    pub fn complete(&mut self, plan: &[Chunk], pool: &mut BlockPool) {
        for c in plan {
            self.running[c.index].num_computed = c.start + c.len;
            self.publish(c.index, pool);
        }
    }

    /// After the engine checked `running[index]`'s draft: the draft is gone from its tokens,
    /// the accepted part is computed, and the blocks that filled up go to the prefix cache.
    pub fn verified(&mut self, index: usize, num_computed: usize, pool: &mut BlockPool) {
        let seq = &mut self.running[index];
        seq.draft = 0;
        seq.num_computed = num_computed.min(seq.tokens.len());
        self.publish(index, pool);
    }

    /// Hashes the full blocks of verified, computed tokens and, where allowed, registers them.
    fn publish(&mut self, index: usize, pool: &mut BlockPool) {
        let bs = pool.block_size();
        let seq = &mut self.running[index];
        let verified = seq.num_computed.min(seq.tokens.len() - seq.draft);
        let full = verified / bs;
        while seq.hashes.len() < full {
            let b = seq.hashes.len();
            let parent = seq.hashes.last().copied().unwrap_or(seq.root);
            let h = block_hash(&parent, &seq.tokens[b * bs..(b + 1) * bs]);
            if (b + 1) * bs <= seq.prompt_len || self.config.cache_generated {
                pool.register(seq.block_table[b], h);
            }
            seq.hashes.push(h);
        }
    }
}

#[cfg(test)]
mod tests;
