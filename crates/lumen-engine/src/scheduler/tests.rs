//! The scheduler without a model: sequences are token lists, a step is `schedule` then
//! `complete`, and "sampling" appends one made-up token to every sequence whose pending tokens
//! were all computed, as the engine loop does with real logits.

use super::*;
use crate::kv::root_hash;

/// Block size in these tests (small, so a few tokens fill a block).
const BS: usize = 4;

/// What a test sequence carries: its id and how many tokens it generates before it finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Job {
    id: u64,
    max_new: usize,
}

/// A sequence with a prompt of `len` tokens that no other test sequence shares (ids start at
/// `1000 * arrival`, so prefix-cache hits only happen where a test builds them on purpose).
fn seq(priority: Priority, arrival: u64, len: usize) -> Sequence<Job> {
    let tokens: Vec<u32> = (0..len as u32).map(|t| 1000 * arrival as u32 + t).collect();
    with_tokens(priority, arrival, tokens)
}

fn with_tokens(priority: Priority, arrival: u64, tokens: Vec<u32>) -> Sequence<Job> {
    Sequence {
        priority,
        arrival,
        prompt_len: tokens.len(),
        tokens,
        num_computed: 0,
        block_table: Vec::new(),
        root: root_hash("test", None),
        hashes: Vec::new(),
        use_prefix_cache: true,
        preemptions: 0,
        draft: 0,
        data: Job {
            id: arrival,
            max_new: usize::MAX,
        },
    }
}

/// A scheduler without the grace after interactive work (these tests run no clock; the
/// grace has its own test).
fn sched(max_num_batched_tokens: usize, max_num_seqs: usize) -> Scheduler<Job> {
    Scheduler::new(SchedulerConfig {
        max_num_batched_tokens,
        max_num_seqs,
        busy_grace: Duration::ZERO,
        busy_batch_tokens: 2,
        ..SchedulerConfig::default()
    })
}

/// Ids of the running sequences, in `running()` order.
fn running(s: &Scheduler<Job>) -> Vec<u64> {
    s.running().iter().map(|q| q.data.id).collect()
}

/// Ids of the waiting sequences, in queue order.
fn waiting(s: &Scheduler<Job>) -> Vec<u64> {
    s.waiting().map(|q| q.data.id).collect()
}

/// `(id, start, len)` of each chunk of a plan, resolved against `running()`.
fn chunks(s: &Scheduler<Job>, plan: &[Chunk]) -> Vec<(u64, usize, usize)> {
    plan.iter()
        .map(|c| (s.running()[c.index].data.id, c.start, c.len))
        .collect()
}

/// One engine step: plan, "compute", and sample one token for every sequence that caught up.
/// Returns the plan as `(id, start, len)`.
fn step(s: &mut Scheduler<Job>, pool: &mut BlockPool) -> Vec<(u64, usize, usize)> {
    let plan = s.schedule(pool);
    let out = chunks(s, &plan);
    s.complete(&plan, pool);
    for c in &plan {
        let q = &mut s.running_mut()[c.index];
        if q.pending() == 0 {
            let next = 900_000 + q.tokens.len() as u32;
            q.tokens.push(next);
        }
    }
    out
}

#[test]
fn waiting_requests_are_admitted_in_arrival_order() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(256, 2);
    for arrival in [3, 1, 2] {
        s.add(seq(Priority::Interactive, arrival, 5));
    }
    assert_eq!(waiting(&s), [1, 2, 3]);
    let plan = step(&mut s, &mut pool);
    assert_eq!(plan, [(1, 0, 5), (2, 0, 5)]);
    assert_eq!(running(&s), [1, 2]);
    assert_eq!(waiting(&s), [3]);
}

#[test]
fn interactive_requests_go_before_older_batch_requests() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(256, 1);
    s.add(seq(Priority::Batch, 1, 5));
    s.add(seq(Priority::Batch, 2, 5));
    s.add(seq(Priority::Interactive, 3, 5));
    assert_eq!(waiting(&s), [3, 1, 2]);
    assert_eq!(step(&mut s, &mut pool), [(3, 0, 5)]);
    assert_eq!(waiting(&s), [1, 2]);
}

#[test]
fn running_sequences_are_planned_by_priority_then_arrival() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(256, 8);
    // The batch job arrives (and starts) first; the interactive one joins a step later.
    s.add(seq(Priority::Batch, 1, 3));
    step(&mut s, &mut pool);
    s.add(seq(Priority::Interactive, 2, 3));
    step(&mut s, &mut pool);
    // Both decode now; the interactive sequence is first in the running set and the plan.
    let plan = step(&mut s, &mut pool);
    assert_eq!(running(&s), [2, 1]);
    assert_eq!(plan, [(2, 3, 1), (1, 4, 1)]);
}

#[test]
fn a_long_prompt_is_prefilled_in_chunks_of_the_token_budget() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(10, 8);
    s.add(seq(Priority::Interactive, 1, 25));
    assert_eq!(step(&mut s, &mut pool), [(1, 0, 10)]);
    assert_eq!(step(&mut s, &mut pool), [(1, 10, 10)]);
    assert_eq!(step(&mut s, &mut pool), [(1, 20, 5)]);
    // Prompt done, one token sampled: the next step is a single-token decode.
    assert_eq!(step(&mut s, &mut pool), [(1, 25, 1)]);
    // Blocks cover exactly what was computed (26 positions, 4 per block).
    assert_eq!(s.running()[0].block_table.len(), 26usize.div_ceil(BS));
}

#[test]
fn admission_shares_what_is_left_of_the_budget() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(10, 8);
    s.add(seq(Priority::Interactive, 1, 8));
    s.add(seq(Priority::Interactive, 2, 8));
    s.add(seq(Priority::Interactive, 3, 8));
    // The first takes 8, the second gets the 2 tokens left, the third waits for budget.
    assert_eq!(step(&mut s, &mut pool), [(1, 0, 8), (2, 0, 2)]);
    assert_eq!(waiting(&s), [3]);
    // Then: 1 decodes (1 token), 2 continues its prefill (6), 3 gets the remaining 3.
    assert_eq!(step(&mut s, &mut pool), [(1, 8, 1), (2, 2, 6), (3, 0, 3)]);
}

#[test]
fn running_decodes_are_planned_before_an_older_prefill() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(8, 8);
    // A newer sequence is already decoding...
    s.add(seq(Priority::Interactive, 5, 3));
    assert_eq!(step(&mut s, &mut pool), [(5, 0, 3)]);
    // ...when an older one with a long prompt is admitted next to it.
    s.add(seq(Priority::Interactive, 1, 20));
    assert_eq!(step(&mut s, &mut pool), [(5, 3, 1), (1, 0, 7)]);
    // The older prefill sorts first among running sequences, but the decode still gets its
    // token before the prefill takes the rest of the budget: streams never stall behind a
    // long prompt.
    let plan = step(&mut s, &mut pool);
    assert_eq!(running(&s), [1, 5]);
    assert_eq!(plan, [(5, 4, 1), (1, 7, 7)]);
}

#[test]
fn max_num_seqs_caps_the_running_set() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(256, 2);
    for arrival in 1..=4 {
        s.add(seq(Priority::Interactive, arrival, 3));
    }
    step(&mut s, &mut pool);
    assert_eq!(running(&s), [1, 2]);
    // Budget is left, but no third sequence starts while two run.
    assert_eq!(step(&mut s, &mut pool), [(1, 3, 1), (2, 3, 1)]);
    assert_eq!(waiting(&s), [3, 4]);
    // One finishes: exactly one more is admitted.
    s.finish_running(0, &mut pool);
    assert_eq!(step(&mut s, &mut pool), [(2, 4, 1), (3, 0, 3)]);
    assert_eq!(waiting(&s), [4]);
}

/// Three sequences of 8 prompt tokens (2 blocks each) fill a 6-block pool; after one sampled
/// token each needs a third block, so the next step must preempt.
fn full_pool(priorities: [Priority; 3]) -> (Scheduler<Job>, BlockPool) {
    let mut pool = BlockPool::new(6, BS);
    let mut s = sched(256, 8);
    for (arrival, p) in (1..).zip(priorities) {
        s.add(seq(p, arrival, 8));
    }
    step(&mut s, &mut pool);
    assert_eq!(pool.available(), 0);
    (s, pool)
}

#[test]
fn when_blocks_run_out_the_newest_sequence_is_preempted() {
    let (mut s, mut pool) = full_pool([Priority::Interactive; 3]);
    let plan = step(&mut s, &mut pool);
    assert_eq!(plan, [(1, 8, 1), (2, 8, 1)]);
    assert_eq!(running(&s), [1, 2]);
    assert_eq!(waiting(&s), [3]);
    assert_eq!(s.preemptions(), 1);
    let victim = s.waiting().next().unwrap();
    assert_eq!(victim.preemptions, 1);
    assert_eq!((victim.num_computed, victim.block_table.len()), (0, 0));
    assert_eq!(pool.stats().blocks_in_use, 6);
}

#[test]
fn when_blocks_run_out_the_lowest_priority_sequence_is_preempted_first() {
    // A batch line started on an idle engine (2 blocks of a 5-block pool); an interactive
    // request joins and takes the rest. When the interactive sequence needs one more block,
    // the batch line is the victim although it is older.
    let mut pool = BlockPool::new(5, BS);
    let mut s = sched(256, 8);
    s.add(seq(Priority::Batch, 1, 8));
    assert_eq!(step(&mut s, &mut pool), [(1, 0, 8)]);
    s.add(seq(Priority::Interactive, 2, 8));
    assert_eq!(step(&mut s, &mut pool), [(1, 8, 1), (2, 0, 8)]);
    assert_eq!(pool.available(), 0);
    assert_eq!(step(&mut s, &mut pool), [(2, 8, 1)]);
    assert_eq!(waiting(&s), [1]);
    assert_eq!(s.waiting().next().unwrap().priority, Priority::Batch);
}

#[test]
fn a_preempted_sequence_is_recomputed_once_blocks_are_free() {
    let (mut s, mut pool) = full_pool([Priority::Interactive; 3]);
    step(&mut s, &mut pool);
    assert_eq!(waiting(&s), [3]);
    // Its cached prefix was evicted to make room, so nothing is reusable yet.
    assert_eq!(step(&mut s, &mut pool), [(1, 9, 1), (2, 9, 1)]);
    assert_eq!(waiting(&s), [3]);
    // When the first sequence finishes, the victim comes back and recomputes its prompt and
    // the token it had generated (9 tokens) from position 0.
    s.finish_running(0, &mut pool);
    let plan = step(&mut s, &mut pool);
    assert_eq!(plan, [(2, 10, 1), (3, 0, 9)]);
    assert_eq!(s.running()[1].preemptions, 1);
}

#[test]
fn a_sequence_that_is_itself_last_in_line_is_preempted_instead_of_an_older_one() {
    let mut pool = BlockPool::new(4, BS);
    let mut s = sched(256, 8);
    // 1's next position (7) fits its second block; 2's (8) needs a third block.
    s.add(seq(Priority::Interactive, 1, 7));
    s.add(seq(Priority::Interactive, 2, 8));
    step(&mut s, &mut pool);
    assert_eq!(pool.available(), 0);
    assert_eq!(step(&mut s, &mut pool), [(1, 7, 1)]);
    assert_eq!(running(&s), [1]);
    assert_eq!(waiting(&s), [2]);
}

#[test]
fn a_sequence_planned_this_step_is_never_the_victim_and_the_plan_stays_consistent() {
    let mut pool = BlockPool::new(3, BS);
    let mut s = sched(8, 8);
    // A batch job starts first and decodes with room left in its only block...
    s.add(seq(Priority::Batch, 1, 2));
    step(&mut s, &mut pool);
    // ...an interactive prompt takes the other two blocks (the batch row rides beside the
    // interactive budget)...
    s.add(seq(Priority::Interactive, 2, 16));
    assert_eq!(step(&mut s, &mut pool), [(1, 2, 1), (2, 0, 8)]);
    // ...and needs two more for its next chunk. The batch decode was planned first, so the
    // prefill is the one preempted, and the decode's chunk index follows it down to 0.
    let plan = s.schedule(&mut pool);
    assert_eq!(running(&s), [1]);
    assert_eq!(
        plan,
        [Chunk {
            index: 0,
            start: 3,
            len: 1
        }]
    );
    assert_eq!(waiting(&s), [2]);
    assert_eq!(pool.stats().blocks_in_use, 1);
}

#[test]
fn cancelling_frees_the_blocks_of_running_and_waiting_sequences() {
    let mut pool = BlockPool::new(8, BS);
    let mut s = sched(256, 8);
    s.add(seq(Priority::Interactive, 1, 10));
    s.add(seq(Priority::Interactive, 2, 10));
    s.add(seq(Priority::Interactive, 3, 10));
    step(&mut s, &mut pool);
    assert_eq!(running(&s), [1, 2]);
    assert_eq!(waiting(&s), [3]);
    assert_eq!(pool.stats().blocks_in_use, 6);

    let gone = s.remove_where(&mut pool, |job| job.id != 2);
    let mut ids: Vec<u64> = gone.iter().map(|q| q.data.id).collect();
    ids.sort();
    assert_eq!(ids, [1, 3]);
    assert_eq!(running(&s), [2]);
    assert_eq!(s.num_waiting(), 0);
    assert_eq!(pool.stats().blocks_in_use, 3);

    let last = s.finish_running(0, &mut pool);
    assert_eq!(last.data.id, 2);
    assert!(s.is_idle());
    assert_eq!(pool.stats().blocks_in_use, 0);
    assert_eq!(pool.available(), 8);
}

#[test]
fn removing_a_running_sequence_lets_a_waiting_one_start_next_step() {
    let mut pool = BlockPool::new(3, BS);
    let mut s = sched(256, 8);
    s.add(seq(Priority::Interactive, 1, 10));
    s.add(seq(Priority::Interactive, 2, 10));
    step(&mut s, &mut pool);
    assert_eq!(waiting(&s), [2], "3 blocks hold one 10-token prompt");
    s.remove_where(&mut pool, |job| job.id == 1);
    assert_eq!(step(&mut s, &mut pool), [(2, 0, 10)]);
}

#[test]
fn admission_reuses_cached_prompt_blocks_but_recomputes_the_last_token() {
    let mut pool = BlockPool::new(16, BS);
    let mut s = sched(256, 8);
    let prompt: Vec<u32> = (0..9).collect();
    s.add(with_tokens(Priority::Interactive, 1, prompt.clone()));
    step(&mut s, &mut pool);
    s.finish_running(0, &mut pool);

    // Same 9-token prompt: both full blocks are reused, only the last token runs.
    s.add(with_tokens(Priority::Interactive, 2, prompt.clone()));
    assert_eq!(step(&mut s, &mut pool), [(2, 8, 1)]);
    assert_eq!(pool.stats().hit_tokens, 8);
    s.finish_running(0, &mut pool);

    // An 8-token prompt is two full blocks, but its last token must run to give logits: one
    // block is reused.
    s.add(with_tokens(Priority::Interactive, 3, prompt[..8].to_vec()));
    assert_eq!(step(&mut s, &mut pool), [(3, 4, 4)]);
    s.finish_running(0, &mut pool);

    // Prompt logprobs need every position computed: no reuse.
    let mut no_cache = with_tokens(Priority::Interactive, 4, prompt.clone());
    no_cache.use_prefix_cache = false;
    s.add(no_cache);
    assert_eq!(step(&mut s, &mut pool), [(4, 0, 9)]);
}

#[test]
fn generated_tokens_never_enter_the_prefix_cache() {
    let mut pool = BlockPool::new(16, BS);
    let mut s = sched(256, 8);
    // A 2-token prompt generates 7 more: blocks 0 and 1 fill with generated tokens.
    s.add(with_tokens(Priority::Interactive, 1, vec![7, 8]));
    for _ in 0..8 {
        step(&mut s, &mut pool);
    }
    let tokens = s.running()[0].tokens.clone();
    assert!(tokens.len() >= 9);
    s.finish_running(0, &mut pool);
    // A prompt equal to that whole text finds nothing cached.
    s.add(with_tokens(Priority::Interactive, 2, tokens[..9].to_vec()));
    assert_eq!(step(&mut s, &mut pool), [(2, 0, 9)]);
    assert_eq!(pool.stats().hit_tokens, 0);
}

/// Many sequences of mixed priority and length through a small pool: every step stays within
/// its limits, no block is in two tables, every sequence finishes, and every block comes back.
#[test]
fn a_busy_workload_respects_every_limit_and_returns_every_block() {
    let (budget, max_seqs, blocks) = (24, 5, 14);
    let mut pool = BlockPool::new(blocks, BS);
    let mut s = sched(budget, max_seqs);
    let mut x = 12345u64;
    let mut rand = |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let total = 40;
    let mut added = 0u64;
    let mut finished = Vec::new();
    for _ in 0..10_000 {
        if added < total && rand(3) == 0 {
            added += 1;
            let p = if rand(2) == 0 {
                Priority::Interactive
            } else {
                Priority::Batch
            };
            let mut q = seq(p, added, 1 + rand(30) as usize);
            q.data.max_new = 1 + rand(12) as usize;
            s.add(q);
        }
        let plan = s.schedule(&mut pool);
        let tokens = |p: Priority| -> usize {
            plan.iter()
                .filter(|c| s.running()[c.index].priority == p)
                .map(|c| c.len)
                .sum()
        };
        let (interactive, batch) = (tokens(Priority::Interactive), tokens(Priority::Batch));
        assert!(interactive <= budget);
        // Beside interactive work the batch gets its allowance of 2 tokens.
        let allowance = if interactive > 0 { 2 } else { budget };
        assert!(
            batch <= allowance,
            "{batch} batch tokens beside {interactive}"
        );
        assert!(s.running().len() <= max_seqs);
        let mut seen = std::collections::HashSet::new();
        for q in s.running() {
            for &b in &q.block_table {
                assert!(seen.insert(b), "block {b} is in two tables");
            }
        }
        for c in &plan {
            let q = &s.running()[c.index];
            assert_eq!(c.start, q.num_computed);
            assert!(
                q.block_table.len() * BS >= c.start + c.len,
                "a chunk without room"
            );
        }
        s.complete(&plan, &mut pool);
        let mut done = Vec::new();
        for c in &plan {
            let q = &mut s.running_mut()[c.index];
            if q.pending() == 0 {
                if q.tokens.len() - q.prompt_len == q.data.max_new {
                    done.push(c.index);
                } else {
                    q.tokens.push(900_000 + q.tokens.len() as u32);
                }
            }
        }
        done.sort_by(|a, b| b.cmp(a));
        for i in done {
            finished.push(s.finish_running(i, &mut pool).data.id);
        }
        if added == total && s.is_idle() {
            break;
        }
    }
    assert!(s.is_idle(), "work left after the loop");
    finished.sort();
    assert_eq!(finished, (1..=total).collect::<Vec<_>>());
    assert_eq!(pool.stats().blocks_in_use, 0);
    assert_eq!(pool.available(), blocks);
    assert!(
        s.preemptions() > 0,
        "the pool was meant to be tight enough to preempt"
    );
}

/// Appends `draft` unverified tokens to running sequence `index`, as the engine's prompt
/// lookup does before a step.
fn add_draft(s: &mut Scheduler<Job>, index: usize, draft: &[u32]) {
    let q = &mut s.running_mut()[index];
    q.tokens.extend_from_slice(draft);
    q.draft = draft.len();
}

#[test]
fn a_draft_rides_in_the_decode_chunk_and_only_verified_blocks_are_published() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 256,
        max_num_seqs: 4,
        cache_generated: true,
        ..SchedulerConfig::default()
    });
    s.add(seq(Priority::Interactive, 1, 6));
    step(&mut s, &mut pool);
    // 6 prompt tokens computed, one sampled: decode from position 6, plus 5 draft tokens.
    add_draft(&mut s, 0, &[1, 2, 3, 4, 5]);
    let plan = s.schedule(&mut pool);
    assert_eq!(chunks(&s, &plan), [(1, 6, 6)]);
    s.complete(&plan, &mut pool);
    // Only the verified tokens (7: positions 0..7) count for blocks: one full block of 4.
    assert_eq!(s.running()[0].hashes.len(), 1);
    // The engine accepted 2 of the draft: it keeps them as tokens, samples one more, and
    // says positions 0..9 hold valid KV (the 7 verified tokens and the 2 accepted).
    let q = &mut s.running_mut()[0];
    let keep = q.tokens.len() - q.draft;
    q.tokens.truncate(keep);
    q.tokens.extend_from_slice(&[1, 2, 77]);
    s.verified(0, 9, &mut pool);
    let q = &s.running()[0];
    assert_eq!((q.draft, q.num_computed, q.pending()), (0, 9, 1));
    assert_eq!(q.hashes.len(), 2, "positions 0..8 fill two blocks");
    let plan = s.schedule(&mut pool);
    assert_eq!(chunks(&s, &plan), [(1, 9, 1)]);
}

#[test]
fn a_draft_the_step_cannot_afford_is_dropped_not_paid_for_by_others() {
    // Budget: two decodes and one draft token.
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(3, 4);
    s.add(seq(Priority::Interactive, 1, 1));
    s.add(seq(Priority::Interactive, 2, 1));
    step(&mut s, &mut pool);
    step(&mut s, &mut pool);
    add_draft(&mut s, 0, &[5, 6, 7]);
    let len = s.running()[0].tokens.len();
    let plan = s.schedule(&mut pool);
    assert_eq!(chunks(&s, &plan), [(1, len - 4, 1), (2, len - 4, 1)]);
    assert_eq!(s.running()[0].draft, 0);
    assert_eq!(s.running()[0].tokens.len(), len - 3);

    // Out of blocks: the draft goes, nobody is preempted for it.
    let mut pool = BlockPool::new(2, BS);
    let mut s = sched(256, 4);
    s.add(seq(Priority::Interactive, 1, 3));
    step(&mut s, &mut pool);
    add_draft(&mut s, 0, &[5, 6, 7, 8, 9, 10]);
    let plan = s.schedule(&mut pool);
    assert_eq!(chunks(&s, &plan), [(1, 3, 1)]);
    assert_eq!(s.preemptions(), 0);
}

#[test]
fn a_preempted_sequence_forgets_its_draft() {
    let mut pool = BlockPool::new(3, BS);
    let mut s = sched(256, 4);
    s.add(seq(Priority::Interactive, 1, 4));
    s.add(seq(Priority::Interactive, 2, 4));
    step(&mut s, &mut pool);
    // Both hold a full block and a fresh one is needed by each: the newer is preempted.
    add_draft(&mut s, 1, &[5]);
    let before = s.running()[1].tokens.len() - 1;
    s.schedule(&mut pool);
    let gone = s.waiting().next().expect("one preempted");
    assert_eq!(gone.data.id, 2);
    assert_eq!((gone.draft, gone.tokens.len()), (0, before));
}

#[test]
fn batch_sequences_yield_to_interactive_ones() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(256, 16);
    for a in 1..=4 {
        s.add(seq(Priority::Batch, a, 3));
    }
    // Alone, the batch runs whole: all four prefill, then all four decode.
    assert_eq!(step(&mut s, &mut pool).len(), 4);
    assert_eq!(step(&mut s, &mut pool).len(), 4);
    // An interactive request arrives, with one more batch line: the interactive prompt is
    // admitted, and the batch gets `busy_batch_tokens` (2) of the step: its two oldest lines
    // decode, and the new line waits.
    s.add(seq(Priority::Batch, 5, 3));
    s.add(seq(Priority::Interactive, 6, 3));
    assert_eq!(step(&mut s, &mut pool), [(1, 4, 1), (2, 4, 1), (6, 0, 3)]);
    assert_eq!(waiting(&s), [5]);
    assert_eq!(step(&mut s, &mut pool), [(6, 3, 1), (1, 5, 1), (2, 5, 1)]);
    // Batch lines 3 and 4 kept their blocks while they sat out.
    assert!(s.running().iter().all(|q| !q.block_table.is_empty()));
    // Once the interactive sequence is done, every batch line runs and line 5 is admitted.
    s.finish_running(0, &mut pool);
    let plan = step(&mut s, &mut pool);
    assert_eq!(plan.len(), 5, "{plan:?}");
    assert_eq!(plan[4], (5, 0, 3));
}

/// Finishes the running sequence `id`, as the engine does when it is done.
fn finish(s: &mut Scheduler<Job>, pool: &mut BlockPool, id: u64) {
    let i = s
        .running()
        .iter()
        .position(|q| q.data.id == id)
        .expect("running");
    s.finish_running(i, pool);
}

#[test]
fn batch_work_keeps_yielding_for_the_grace_after_interactive_work_left() {
    let grace = Duration::from_millis(300);
    let mut pool = BlockPool::new(64, BS);
    // No batch share at all while busy (`--batch-concurrency-busy 0`): batch work pauses.
    let mut s = Scheduler::new(SchedulerConfig {
        max_num_batched_tokens: 256,
        max_num_seqs: 16,
        busy_grace: grace,
        busy_batch_tokens: 0,
        ..SchedulerConfig::default()
    });
    assert_eq!(s.held_back_for(), None, "no interactive work seen yet");
    for a in 1..=3 {
        s.add(seq(Priority::Batch, a, 3));
    }
    s.add(seq(Priority::Interactive, 9, 3));
    assert_eq!(step(&mut s, &mut pool), [(9, 0, 3)]);
    finish(&mut s, &mut pool, 9);
    // The interactive request is gone, but its client may send the next one any moment:
    // the batch lines still wait, and the engine is told how long to sleep.
    let started = Instant::now();
    assert!(step(&mut s, &mut pool).is_empty());
    let left = s.held_back_for().expect("within the grace");
    assert!(
        left <= grace && left + started.elapsed() >= grace / 2,
        "{left:?}"
    );
    // A new interactive request in the grace runs at once; the batch still waits.
    s.add(seq(Priority::Interactive, 10, 3));
    assert_eq!(step(&mut s, &mut pool), [(10, 0, 3)]);
    finish(&mut s, &mut pool, 10);
    // Past the grace the whole batch is admitted.
    std::thread::sleep(grace);
    assert_eq!(s.held_back_for(), None);
    assert_eq!(step(&mut s, &mut pool).len(), 3);
}

#[test]
fn under_steady_interactive_work_new_batch_lines_start_within_the_batch_share() {
    let mut pool = BlockPool::new(64, BS);
    let mut s = sched(256, 16);
    s.add(seq(Priority::Interactive, 1, 3));
    assert_eq!(step(&mut s, &mut pool), [(1, 0, 3)]);
    // Two batch lines arrive while the stream decodes: the first one prefills two prompt
    // tokens a step (the share), the second waits.
    s.add(seq(Priority::Batch, 2, 5));
    s.add(seq(Priority::Batch, 3, 5));
    assert_eq!(step(&mut s, &mut pool), [(1, 3, 1), (2, 0, 2)]);
    assert_eq!(waiting(&s), [3]);
    assert_eq!(step(&mut s, &mut pool), [(1, 4, 1), (2, 2, 2)]);
    // The last prompt token of line 2 leaves one token of the share: line 3 starts with it.
    assert_eq!(step(&mut s, &mut pool), [(1, 5, 1), (2, 4, 1), (3, 0, 1)]);
    // Line 2 decodes (one row), line 3 prefills with the rest.
    assert_eq!(step(&mut s, &mut pool), [(1, 6, 1), (2, 5, 1), (3, 1, 1)]);
    // The stream never waited, and no step gave the batch more than its share.
    assert!(waiting(&s).is_empty());
    // Without interactive work (no grace in these tests) the batch takes the whole step.
    finish(&mut s, &mut pool, 1);
    assert_eq!(step(&mut s, &mut pool), [(2, 6, 1), (3, 2, 3)]);
}
