//! The engine thread's loop: commands in, one scheduled step at a time, events out.

mod drafts;
mod explain;
mod sampling;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};

use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, KvStorage, LlamaModel, LogitsWanted, SeqChunk};
use tokio::sync::mpsc as tmpsc;

use super::spec::{SpecConfig, SpecState};

use super::compute::{attribute, ComputeTime};
use super::{Command, EngineConfig, EngineStats, BLOCK_SIZE};
use crate::constraint::{GrammarFailure, SeqConstraint};
use crate::kv::{root_hash, BlockPool};
use crate::request::{Event, FinishReason, GenerateRequest, TokenLogprob, Usage};
use crate::sampler::Sampler;
use crate::scheduler::{Chunk, Scheduler, SchedulerConfig, Sequence};
use crate::stop::ChoiceOutput;
use crate::tokenizer::Tokenizer;
use sampling::{collect_prompt_logprobs, sample_into, samples_now, verify_draft};

/// Per-sequence state the scheduler carries for the engine.
pub(crate) struct SeqData {
    req_id: u64,
    choice: usize,
    prompt_len: usize,
    sampler: Sampler,
    output: ChoiceOutput,
    /// Choices still to fork from this one once its prompt is computed.
    pending_forks: usize,
    /// Prompt logprobs being collected (when asked for).
    prompt_lp: Option<Vec<Option<TokenLogprob>>>,
    /// Prompt tokens that came from the prefix cache on first admission.
    cached: Option<usize>,
    /// Where the choice is in its grammar (constrained requests only).
    constraint: Option<SeqConstraint>,
    /// Speculative decoding's back-off.
    spec: SpecState,
}

struct RequestState {
    request: Arc<GenerateRequest>,
    events: tmpsc::UnboundedSender<Event>,
    live_choices: usize,
    usage: Usage,
    /// Engine time attributed to it.
    compute: ComputeTime,
}

pub(crate) struct Worker {
    model: Arc<LlamaModel>,
    tokenizer: Arc<Tokenizer>,
    threads: Arc<ThreadPool>,
    kv: KvStorage,
    ws: ForwardWorkspace,
    pool: BlockPool,
    sched: Scheduler<SeqData>,
    requests: HashMap<u64, RequestState>,
    stats: Arc<EngineStats>,
    in_flight: Arc<AtomicU64>,
    model_key: String,
    eog_ids: Vec<u32>,
    arrivals: u64,
    row: Vec<f32>,
    /// Speculation settings; `tokens` is 0 where the model's arithmetic would make it inexact.
    spec: SpecConfig,
    /// Explanations waiting or under way, and their own activation buffers.
    explains: explain::ExplainQueue,
}

impl Worker {
    pub fn new(
        model: Arc<LlamaModel>,
        tokenizer: Arc<Tokenizer>,
        config: &EngineConfig,
        kv_blocks: usize,
        stats: Arc<EngineStats>,
        in_flight: Arc<AtomicU64>,
        explains: Arc<AtomicUsize>,
    ) -> Self {
        let kv = KvStorage::new(
            model.kv_geometry(BLOCK_SIZE),
            model.config().n_layers,
            kv_blocks,
        );
        stats.total_blocks.store(kv_blocks as u64, Relaxed);
        let eog_ids = (0..tokenizer.vocab_size() as u32)
            .filter(|&t| tokenizer.is_eog(t))
            .collect();
        Worker {
            threads: config
                .pool
                .clone()
                .unwrap_or_else(|| Arc::new(ThreadPool::new(config.threads))),
            kv,
            ws: ForwardWorkspace::new(),
            pool: BlockPool::new(kv_blocks, BLOCK_SIZE),
            sched: Scheduler::new(SchedulerConfig {
                cache_generated: model.kv_is_path_independent(),
                ..config.scheduler
            }),
            requests: HashMap::new(),
            stats: stats.clone(),
            in_flight,
            model_key: config.model_name.clone(),
            eog_ids,
            arrivals: 0,
            row: Vec::new(),
            spec: SpecConfig {
                tokens: if model.kv_is_path_independent() {
                    config.speculative.tokens
                } else {
                    0
                },
                ..config.speculative
            },
            explains: explain::ExplainQueue::new(explains, stats.clone()),
            model,
            tokenizer,
        }
    }

    pub fn run(mut self, commands: mpsc::Receiver<Command>, alive: Arc<AtomicBool>) {
        // Cleared however the loop ends, a panic included, so readiness checks see it.
        struct Alive(Arc<AtomicBool>);
        impl Drop for Alive {
            fn drop(&mut self) {
                self.0.store(false, SeqCst);
            }
        }
        let _alive = Alive(alive);
        loop {
            if self.sched.is_idle() && self.explains.is_empty() {
                match commands.recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
            loop {
                match commands.try_recv() {
                    Ok(cmd) => {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                    Err(mpsc::TryRecvError::Empty) => break,
                    Err(mpsc::TryRecvError::Disconnected) => {
                        if self.sched.is_idle() {
                            return;
                        }
                        break;
                    }
                }
            }
            // New and cancelled requests show in the gauges before the step, which may be long.
            self.publish_stats();
            // Explanations run below generation: when nothing is scheduled, or one pass
            // every few steps so that a busy engine still finishes them.
            if self.explains.due(self.sched.is_idle()) {
                self.explains.run_one(&self.model, &self.threads);
            }
            if !self.sched.is_idle() {
                if self.step() {
                    self.explains.stepped();
                } else if let Some(wait) = self.sched.held_back_for() {
                    // Only yielding batch work is left: sleep out the grace, unless a
                    // request comes first.
                    if let Ok(cmd) = commands.recv_timeout(wait) {
                        if !self.handle(cmd) {
                            return;
                        }
                    }
                }
            }
            self.publish_stats();
        }
    }

    /// Applies one command; false means shut down.
    fn handle(&mut self, cmd: Command) -> bool {
        match cmd {
            Command::Submit {
                id,
                request,
                events,
                compute,
            } => {
                self.admit(id, *request, events, compute);
                // Count it as waiting before it stops counting as submitted, so a reader of
                // the gauges never misses it; the next publish makes `waiting` exact again.
                self.stats.waiting.fetch_add(1, SeqCst);
                self.stats.submitted.fetch_sub(1, SeqCst);
            }
            Command::Cancel(id) => self.cancel(id),
            Command::Explain { job, reply } => self.explains.push(job, reply),
            Command::Shutdown => {
                let ids: Vec<u64> = self.requests.keys().copied().collect();
                for id in ids {
                    self.cancel(id);
                }
                return false;
            }
        }
        true
    }

    fn new_sampler(&self, request: &GenerateRequest, choice: usize) -> Result<Sampler, String> {
        let mut params = request.sampling.clone();
        params.seed = params.seed.map(|s| s.wrapping_add(choice as u64));
        let mut sampler =
            Sampler::new(params, self.model.config().vocab_size).map_err(|e| e.to_string())?;
        sampler.set_prompt_len(request.prompt.len());
        Ok(sampler)
    }

    fn admit(
        &mut self,
        id: u64,
        request: GenerateRequest,
        events: tmpsc::UnboundedSender<Event>,
        compute: ComputeTime,
    ) {
        let request = Arc::new(request);
        let root = root_hash(&self.model_key, request.cache_salt.as_deref());
        let sampler = match self.new_sampler(&request, 0) {
            Ok(s) => s,
            Err(message) => {
                // Validated at submit; reaching this means the request changed meaning.
                let _ = events.send(Event::Error(message));
                self.in_flight.fetch_sub(1, SeqCst);
                return;
            }
        };
        let data = SeqData {
            req_id: id,
            choice: 0,
            prompt_len: request.prompt.len(),
            sampler,
            output: ChoiceOutput::new(request.clone(), self.tokenizer.clone()),
            pending_forks: request.n - 1,
            prompt_lp: request.prompt_logprobs.map(|_| vec![None]),
            cached: None,
            constraint: request.constraint.as_ref().map(SeqConstraint::new),
            spec: SpecState::default(),
        };
        self.arrivals += 1;
        self.sched.add(Sequence {
            priority: request.priority,
            arrival: self.arrivals,
            tokens: request.prompt.clone(),
            prompt_len: request.prompt.len(),
            num_computed: 0,
            block_table: Vec::new(),
            root,
            hashes: Vec::new(),
            use_prefix_cache: request.prompt_logprobs.is_none(),
            preemptions: 0,
            draft: 0,
            data,
        });
        self.stats
            .prompt_tokens
            .fetch_add(request.prompt.len() as u64, Relaxed);
        let usage = Usage {
            prompt_tokens: request.prompt.len(),
            ..Usage::default()
        };
        self.requests.insert(
            id,
            RequestState {
                request,
                events,
                live_choices: 1,
                usage,
                compute,
            },
        );
    }

    fn cancel(&mut self, id: u64) {
        let gone = self.sched.remove_where(&mut self.pool, |d| d.req_id == id);
        // Choices not forked yet count as cancelled too.
        let unforked: usize = gone.iter().map(|s| s.data.pending_forks).sum();
        for _ in 0..gone.len() + unforked {
            self.stats.record_finish(FinishReason::Cancelled);
        }
        if self.requests.remove(&id).is_some() {
            self.in_flight.fetch_sub(1, SeqCst);
        }
    }

    fn publish_stats(&self) {
        let ps = self.pool.stats();
        let s = &self.stats;
        s.running.store(self.sched.running().len() as u64, Relaxed);
        s.waiting.store(self.sched.num_waiting() as u64, Relaxed);
        s.blocks_in_use.store(ps.blocks_in_use as u64, Relaxed);
        s.prefix_queries.store(ps.query_tokens, Relaxed);
        s.prefix_hits.store(ps.hit_tokens, Relaxed);
        s.preemptions.store(self.sched.preemptions(), Relaxed);
    }

    /// Plans and computes one step; false when nothing could be scheduled.
    fn step(&mut self) -> bool {
        self.propose_drafts();
        let plan = self.sched.schedule(&mut self.pool);
        if plan.is_empty() {
            return false;
        }
        let running = self.sched.running();
        let mut kinds = Vec::with_capacity(plan.len());
        let chunks: Vec<SeqChunk<'_>> = plan
            .iter()
            .map(|c| {
                let s = &running[c.index];
                let end = c.start + c.len;
                let logits =
                    if s.draft > 0 || (s.data.prompt_lp.is_some() && c.start < s.data.prompt_len) {
                        LogitsWanted::All
                    } else if end == s.tokens.len() {
                        LogitsWanted::Last
                    } else {
                        LogitsWanted::None
                    };
                kinds.push(logits);
                SeqChunk {
                    tokens: &s.tokens[c.start..end],
                    start_pos: c.start,
                    block_table: &s.block_table,
                    logits,
                    prompt_len: s.data.prompt_len,
                }
            })
            .collect();
        let started = std::time::Instant::now();
        let result = self
            .model
            .forward(&self.threads, &chunks, &mut self.kv, &mut self.ws);
        drop(chunks);
        // The step's time goes to its requests by rows, before any of them can finish.
        let step_ns = started.elapsed().as_nanos() as u64;
        self.stats.busy_ns.fetch_add(step_ns, Relaxed);
        let running = self.sched.running();
        let rows: Vec<(ComputeTime, usize)> = plan
            .iter()
            .filter_map(|c| {
                let r = self.requests.get(&running[c.index].data.req_id)?;
                Some((r.compute.clone(), c.len))
            })
            .collect();
        attribute(step_ns, &rows);
        let logits = match result {
            Ok(l) => l.to_vec(),
            Err(e) => {
                tracing::error!(error = %e, "forward pass failed");
                let ids: Vec<u64> = plan
                    .iter()
                    .map(|c| self.sched.running()[c.index].data.req_id)
                    .collect();
                for id in ids {
                    self.fail(id, e.to_string());
                }
                return true;
            }
        };
        self.stats.steps.fetch_add(1, Relaxed);
        self.sched.complete(&plan, &mut self.pool);
        self.consume(&plan, &kinds, &logits);
        true
    }

    fn fail(&mut self, id: u64, message: String) {
        self.end_with(id, Event::Error(message));
    }

    fn fail_grammar(&mut self, id: u64, f: GrammarFailure) {
        self.end_with(
            id,
            Event::GrammarError {
                param: f.param,
                message: f.message,
            },
        );
    }

    /// Removes request `id` and sends it `last`.
    fn end_with(&mut self, id: u64, last: Event) {
        self.sched.remove_where(&mut self.pool, |d| d.req_id == id);
        if let Some(state) = self.requests.remove(&id) {
            self.in_flight.fetch_sub(1, SeqCst);
            let _ = state.events.send(last);
        }
    }

    /// Computes the grammar masks of the constrained sequences that sample this step, in
    /// parallel on the worker pool (a mask takes 0.1 to 0.2 ms; 16 of them one after another
    /// would cost a decode step a tenth of its time).
    fn prepare_masks(&mut self, plan: &[Chunk], kinds: &[LogitsWanted]) {
        let mut samples = vec![false; self.sched.running().len()];
        for (c, &kind) in plan.iter().zip(kinds) {
            let s = &self.sched.running()[c.index];
            if samples_now(c, kind, s.tokens.len()) {
                samples[c.index] = true;
            }
        }
        let cells: Vec<Mutex<&mut SeqConstraint>> = self
            .sched
            .running_mut()
            .iter_mut()
            .zip(samples)
            .filter(|(_, samples)| *samples)
            .filter_map(|(s, _)| s.data.constraint.as_mut().map(Mutex::new))
            .collect();
        if cells.len() < 2 {
            return;
        }
        self.threads.run(|part, parts| {
            for cell in cells.iter().skip(part).step_by(parts) {
                cell.lock().unwrap_or_else(|p| p.into_inner()).prepare();
            }
        });
    }

    /// Samples, forks and finishes sequences from one step's logits.
    fn consume(&mut self, plan: &[Chunk], kinds: &[LogitsWanted], logits: &[f32]) {
        self.prepare_masks(plan, kinds);
        let vocab = self.model.config().vocab_size;
        let ctx = self.model.config().context_len;
        let mut row = 0usize;
        let mut finished: Vec<(usize, FinishReason)> = Vec::new();
        let mut forks: Vec<(usize, usize)> = Vec::new();
        let mut failed: Vec<(u64, GrammarFailure)> = Vec::new();
        for (c, &kind) in plan.iter().zip(kinds) {
            let n_rows = match kind {
                LogitsWanted::None => 0,
                LogitsWanted::Last => 1,
                LogitsWanted::All => c.len,
            };
            let rows = &logits[row * vocab..(row + n_rows) * vocab];
            row += n_rows;
            let seq = &mut self.sched.running_mut()[c.index];
            if seq.data.cached.is_none() {
                seq.data.cached = Some(c.start);
            }
            if seq.draft > 0 {
                let Some(state) = self.requests.get_mut(&seq.data.req_id) else {
                    continue;
                };
                let max_draft = self.spec.tokens;
                let v = verify_draft(
                    seq,
                    rows.chunks_exact(vocab),
                    &mut self.row,
                    &self.eog_ids,
                    ctx,
                    max_draft,
                    state,
                );
                self.stats
                    .spec_draft_tokens
                    .fetch_add(v.drafted as u64, Relaxed);
                self.stats
                    .spec_accepted_tokens
                    .fetch_add(v.accepted as u64, Relaxed);
                self.stats
                    .generation_tokens
                    .fetch_add(v.sampled as u64, Relaxed);
                self.sched.verified(c.index, v.computed, &mut self.pool);
                match v.end {
                    Ok(Some(reason)) => finished.push((c.index, reason)),
                    Ok(None) => {}
                    Err(failure) => {
                        failed.push((self.sched.running()[c.index].data.req_id, failure))
                    }
                }
                continue;
            }
            if kind == LogitsWanted::All {
                let top_n = self
                    .requests
                    .get(&seq.data.req_id)
                    .and_then(|r| r.request.prompt_logprobs)
                    .unwrap_or(0);
                collect_prompt_logprobs(seq, c, rows, vocab, top_n);
            }
            if !samples_now(c, kind, seq.tokens.len()) {
                continue;
            }
            let last = &rows[(n_rows - 1) * vocab..n_rows * vocab];
            if seq.data.pending_forks > 0 {
                forks.push((c.index, row - 1));
            }
            let Some(state) = self.requests.get_mut(&seq.data.req_id) else {
                continue;
            };
            if let Some(lp) = seq.data.prompt_lp.take() {
                let _ = state.events.send(Event::PromptLogprobs(lp));
            }
            match sample_into(seq, last, &mut self.row, &self.eog_ids, ctx, state) {
                Ok(finish) => {
                    self.stats.generation_tokens.fetch_add(1, Relaxed);
                    if let Some(reason) = finish {
                        finished.push((c.index, reason));
                    }
                }
                Err(failure) => failed.push((seq.data.req_id, failure)),
            }
        }
        for (id, failure) in failed {
            self.fail_grammar(id, failure);
        }
        for (index, logits_row) in forks {
            self.fork(index, &logits[logits_row * vocab..(logits_row + 1) * vocab]);
        }
        finished.sort_by_key(|&(index, _)| std::cmp::Reverse(index));
        for (index, reason) in finished {
            let seq = self.sched.finish_running(index, &mut self.pool);
            self.finish_choice(seq, reason);
        }
    }

    /// Starts the other `n - 1` choices of a request from its leader's computed prompt.
    fn fork(&mut self, leader: usize, last_logits: &[f32]) {
        let ctx = self.model.config().context_len;
        let (req_id, n_forks) = {
            let seq = &mut self.sched.running_mut()[leader];
            let n = seq.data.pending_forks;
            seq.data.pending_forks = 0;
            (seq.data.req_id, n)
        };
        let Some(request) = self.requests.get(&req_id).map(|s| s.request.clone()) else {
            return;
        };
        for choice in 1..=n_forks {
            let Ok(sampler) = self.new_sampler(&request, choice) else {
                continue;
            };
            let (prompt_len, root, hashes, table, cached) = {
                let l = &self.sched.running()[leader];
                (
                    l.data.prompt_len,
                    l.root,
                    l.hashes.clone(),
                    l.block_table.clone(),
                    l.data.cached,
                )
            };
            // Share full prompt blocks; copy the partial last block (copy-on-write, done now).
            let full = prompt_len / BLOCK_SIZE;
            let needs_copy = prompt_len % BLOCK_SIZE != 0;
            let copy_to = if needs_copy {
                self.pool.allocate()
            } else {
                None
            };
            let data = SeqData {
                req_id,
                choice,
                prompt_len,
                sampler,
                output: ChoiceOutput::new(request.clone(), self.tokenizer.clone()),
                pending_forks: 0,
                prompt_lp: None,
                cached,
                constraint: request.constraint.as_ref().map(SeqConstraint::new),
                spec: SpecState::default(),
            };
            let mut seq = Sequence {
                priority: request.priority,
                arrival: self.sched.running()[leader].arrival,
                tokens: request.prompt.clone(),
                prompt_len: request.prompt.len(),
                num_computed: 0,
                block_table: Vec::new(),
                root,
                hashes: Vec::new(),
                use_prefix_cache: true,
                preemptions: 0,
                draft: 0,
                data,
            };
            if !needs_copy || copy_to.is_some() {
                for &b in &table[..full] {
                    self.pool.share(b);
                }
                seq.block_table = table[..full].to_vec();
                if let Some(to) = copy_to {
                    self.kv.copy_block(table[full], to);
                    seq.block_table.push(to);
                }
                seq.hashes = hashes[..full.min(hashes.len())].to_vec();
                seq.num_computed = prompt_len;
            }
            let state = match self.requests.get_mut(&req_id) {
                Some(s) => s,
                None => return,
            };
            state.live_choices += 1;
            let finish = if seq.num_computed == prompt_len {
                self.stats.generation_tokens.fetch_add(1, Relaxed);
                sample_into(
                    &mut seq,
                    last_logits,
                    &mut self.row,
                    &self.eog_ids,
                    ctx,
                    state,
                )
            } else {
                // No block for the copy: recompute the prompt (full blocks hit the cache).
                Ok(None)
            };
            let finish = match finish {
                Ok(f) => f,
                Err(failure) => {
                    self.pool.release_all(&seq.block_table);
                    self.fail_grammar(req_id, failure);
                    return;
                }
            };
            match finish {
                Some(reason) => {
                    self.pool.release_all(&seq.block_table);
                    self.finish_choice(seq, reason);
                }
                None if seq.num_computed == prompt_len => self.sched.push_running(seq),
                None => self.sched.add(seq),
            }
        }
    }

    fn finish_choice(&mut self, seq: Sequence<SeqData>, reason: FinishReason) {
        self.stats.record_finish(reason);
        let id = seq.data.req_id;
        let Some(state) = self.requests.get_mut(&id) else {
            return;
        };
        state.usage.completion_tokens += seq.data.output.generated;
        if seq.data.choice == 0 {
            state.usage.cached_prompt_tokens = seq.data.cached.unwrap_or(0);
        }
        let mut out = seq.data.output;
        let text = out.final_text(reason);
        let _ = state.events.send(Event::Finished {
            choice: seq.data.choice,
            reason,
            text,
        });
        state.live_choices -= 1;
        if state.live_choices == 0 {
            // Free the queue place before the last event, so a caller that saw `Done` can
            // submit again without racing the counter.
            self.in_flight.fetch_sub(1, SeqCst);
            let _ = state.events.send(Event::Done(state.usage));
            self.requests.remove(&id);
        }
    }
}
