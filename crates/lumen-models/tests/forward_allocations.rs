//! A warm forward pass allocates nothing: decode steps (one sequence, and a batch of several)
//! reuse the workspace's buffers, counted by a global allocator that tallies every call.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use lumen_kernels::ThreadPool;
use lumen_models::{ForwardWorkspace, KvStorage, LlamaModel, LogitsWanted, SeqChunk, WeightLayout};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts them.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's obligations for `alloc` are passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's obligations for `dealloc` are passed on unchanged.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's obligations for `realloc` are passed on unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn warm_decode_steps_do_not_allocate() {
    // One test, not two: the counter is global, and tests of one binary run in parallel.
    for layout in [WeightLayout::Exact, WeightLayout::Packed] {
        warm_decode_steps_do_not_allocate_in(layout);
    }
}

fn warm_decode_steps_do_not_allocate_in(layout: WeightLayout) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/llama/tiny_llama_q4_1.gguf");
    let model = LlamaModel::open_with(&path, layout).unwrap();
    let geo = model.kv_geometry(16);
    let (n_seqs, prompt, steps) = (4usize, 20usize, 12usize);
    let blocks_per_seq = (prompt + steps + 8).div_ceil(16);
    let mut kv = KvStorage::new(geo, model.config().n_layers, n_seqs * blocks_per_seq);
    let tables: Vec<Vec<u32>> = (0..n_seqs)
        .map(|s| {
            (0..blocks_per_seq as u32)
                .map(|b| (s * blocks_per_seq) as u32 + b)
                .collect()
        })
        .collect();
    // Three worker threads, so the pool's dispatch is exercised too.
    let pool = ThreadPool::new(3);
    let mut ws = ForwardWorkspace::new();
    let tokens: Vec<u32> = (0..prompt as u32).map(|i| (i * 37) % 200 + 3).collect();
    let chunk =
        |s: usize, toks: &'static [u32], start: usize, tables: &'static [Vec<u32>]| SeqChunk {
            tokens: toks,
            start_pos: start,
            block_table: &tables[s],
            logits: LogitsWanted::Last,
            prompt_len: prompt,
        };
    let tokens: &'static [u32] = tokens.leak();
    let tables: &'static [Vec<u32>] = tables.leak();
    let prefill: Vec<SeqChunk> = (0..n_seqs).map(|s| chunk(s, tokens, 0, tables)).collect();
    model.forward(&pool, &prefill, &mut kv, &mut ws).unwrap();
    // Let the workers go idle and park once: the first park of a thread makes std set up that
    // thread's handle lazily (a one-time allocation that is not the forward pass's).
    std::thread::sleep(std::time::Duration::from_millis(200));
    let mut batch: Vec<SeqChunk> = Vec::with_capacity(n_seqs);
    for step in 0..steps {
        // One warm-up step for each batch shape, then every step is counted.
        for width in [1, n_seqs] {
            batch.clear();
            for s in 0..width {
                batch.push(chunk(
                    s,
                    &tokens[step % prompt..step % prompt + 1],
                    prompt + 2 * step + (width > 1) as usize,
                    tables,
                ));
            }
            let before = ALLOCATIONS.load(Ordering::Relaxed);
            model.forward(&pool, &batch, &mut kv, &mut ws).unwrap();
            let made = ALLOCATIONS.load(Ordering::Relaxed) - before;
            if step > 0 {
                assert_eq!(
                    made, 0,
                    "{layout}: step {step}, {width} sequence(s): {made} allocations"
                );
            }
        }
    }
}
