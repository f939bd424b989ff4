//! The embedding engine on all-MiniLM-L6-v2: tokenization as sentence-transformers does it,
//! concurrent requests sharing forward passes with bit-identical results, back-pressure, and
//! input validation. Skips with a note when the model is not installed (fails under `CI`).

use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use lumen_engine::registry::{resolve, EmbeddingModel};
use lumen_engine::{
    EmbedConfig, EmbedEngine, EmbedHandle, EmbedInput, EngineError, MAX_EMBED_INPUTS,
};

fn model() -> Option<&'static EmbeddingModel> {
    static MODEL: OnceLock<Option<EmbeddingModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            lumen_testkit::embedding_dir()?;
            let loc = resolve(lumen_testkit::EMBED_MODEL, &lumen_testkit::lumen_home())
                .expect("resolve all-minilm-l6-v2");
            Some(EmbeddingModel::load(&loc).expect("load all-minilm-l6-v2"))
        })
        .as_ref()
}

fn engine(config: EmbedConfig) -> Option<EmbedEngine> {
    let m = model()?;
    Some(EmbedEngine::start(m.model.clone(), m.tokenizer.clone(), config).expect("start"))
}

struct Reference {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../lumen-models/tests/fixtures/minilm_reference.json"
    );
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let nums = |v: &serde_json::Value| -> Vec<f64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect()
    };
    doc["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Reference {
            text: s["text"].as_str().unwrap().to_string(),
            ids: nums(&s["ids"]).into_iter().map(|x| x as u32).collect(),
            embedding: nums(&s["embedding"])
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        })
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn text(s: &str) -> EmbedInput {
    EmbedInput::Text(s.to_string())
}

fn param_of(r: Result<Vec<Vec<u32>>, EngineError>) -> &'static str {
    match r {
        Err(EngineError::InvalidRequest { param, .. }) => param,
        other => panic!("expected an invalid request, got {other:?}"),
    }
}

#[test]
fn tokenizes_and_truncates_like_sentence_transformers() {
    let Some(e) = engine(EmbedConfig::default()) else {
        return;
    };
    let h = e.handle();
    assert_eq!(h.info().max_seq_len, 256);
    assert_eq!(h.info().suffix, vec![102]);
    for r in references() {
        let alone = h.prepare(vec![text(&r.text)], None);
        if r.ids.len() < h.info().max_seq_len {
            assert_eq!(alone.unwrap(), vec![r.ids.clone()], "{}", r.text);
        } else {
            // Over-long: refused unless asked to truncate; then exactly sentence-transformers' ids.
            assert_eq!(param_of(alone), "input");
            let cut = h.prepare(vec![text(&r.text)], Some(256)).unwrap();
            assert_eq!(cut, vec![r.ids.clone()], "{}", &r.text[..40]);
        }
    }
    let cut = h
        .prepare(
            vec![text("The quick brown fox jumps over the lazy dog.")],
            Some(4),
        )
        .unwrap();
    assert_eq!(cut[0].len(), 4);
    assert_eq!((cut[0][0], cut[0][3]), (101, 102));
}

#[test]
fn embeddings_match_the_reference() {
    let Some(e) = engine(EmbedConfig::default()) else {
        return;
    };
    let h = e.handle();
    let refs = references();
    let ids: Vec<Vec<u32>> = refs.iter().map(|r| r.ids.clone()).collect();
    let out = h.embed_blocking(ids).unwrap();
    for (r, v) in refs.iter().zip(&out) {
        assert_eq!(v.len(), 384);
        let c = cosine(v, &r.embedding);
        assert!(c >= 0.9999, "{c} for {:?}", &r.text[..r.text.len().min(40)]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_forward_passes() {
    let Some(e) = engine(EmbedConfig::default()) else {
        return;
    };
    let h = e.handle();
    let refs = references();
    let sentences: Vec<Vec<u32>> = (0..100).map(|i| refs[i % 26].ids.clone()).collect();
    // Embedded one at a time first: the reference bits.
    let mut alone = Vec::new();
    for s in &sentences {
        alone.push(h.embed(vec![s.clone()]).await.unwrap().remove(0));
    }
    let before = h.stats().batches.load(std::sync::atomic::Ordering::Relaxed);
    let tasks: Vec<_> = sentences
        .iter()
        .map(|s| {
            let (h, s) = (h.clone(), s.clone());
            tokio::spawn(async move { h.embed(vec![s]).await })
        })
        .collect();
    let mut together = Vec::new();
    for t in tasks {
        together.push(t.await.unwrap().unwrap().remove(0));
    }
    let passes = h.stats().batches.load(std::sync::atomic::Ordering::Relaxed) - before;
    eprintln!("100 concurrent requests took {passes} forward passes");
    assert!(passes <= 20, "{passes} passes for 100 concurrent requests");
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert!(
            a == b,
            "request {i}: batched result differs from the same sentence alone"
        );
    }
    assert_eq!(h.in_flight(), 0);
}

#[test]
fn threads_blocked_on_one_engine_are_batched_too() {
    let Some(e) = engine(EmbedConfig::default()) else {
        return;
    };
    let h = e.handle();
    let refs = references();
    let n = 64;
    let barrier = Arc::new(Barrier::new(n));
    let before = h.stats().batches.load(std::sync::atomic::Ordering::Relaxed);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let (h, b, ids) = (h.clone(), barrier.clone(), refs[i % 26].ids.clone());
            std::thread::spawn(move || {
                b.wait();
                h.embed_blocking(vec![ids]).unwrap()
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap()[0].len(), 384);
    }
    let passes = h.stats().batches.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert!(passes < n as u64 / 2, "{passes} passes for {n} requests");
}

#[test]
fn a_request_over_the_budget_is_cut_into_pieces_with_the_same_bits() {
    let Some(big) = engine(EmbedConfig::default()) else {
        return;
    };
    let small = engine(EmbedConfig {
        max_batch_tokens: 64,
        ..EmbedConfig::default()
    })
    .unwrap();
    let ids: Vec<Vec<u32>> = references().into_iter().take(12).map(|r| r.ids).collect();
    let a = big.handle().embed_blocking(ids.clone()).unwrap();
    let b = small.handle().embed_blocking(ids).unwrap();
    assert!(a == b);
    assert_eq!(
        big.handle()
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(
        small
            .handle()
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
            > 1
    );
}

#[test]
fn a_full_queue_refuses_at_once() {
    let Some(e) = engine(EmbedConfig {
        max_queued: 1,
        ..EmbedConfig::default()
    }) else {
        return;
    };
    let h = e.handle();
    let long: Vec<u32> = references()
        .into_iter()
        .map(|r| r.ids)
        .max_by_key(Vec::len)
        .unwrap();
    let busy = {
        let h = h.clone();
        let work = vec![long; 16];
        std::thread::spawn(move || h.embed_blocking(work))
    };
    let start = Instant::now();
    while h.in_flight() == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::yield_now();
    }
    assert!(matches!(
        h.embed_blocking(vec![vec![101, 102]]),
        Err(EngineError::QueueFull)
    ));
    assert_eq!(busy.join().unwrap().unwrap().len(), 16);
    assert_eq!(h.embed_blocking(vec![vec![101, 102]]).unwrap().len(), 1);
}

#[test]
fn bad_inputs_name_their_parameter() {
    let Some(e) = engine(EmbedConfig::default()) else {
        return;
    };
    let h = e.handle();
    let invalid = |r: Result<Vec<Vec<f32>>, EngineError>| {
        matches!(r, Err(EngineError::InvalidRequest { param: "input", .. }))
    };
    assert!(invalid(h.embed_blocking(vec![vec![101, 30522, 102]])));
    assert!(invalid(h.embed_blocking(vec![])));
    assert!(invalid(h.embed_blocking(vec![vec![]])));
    assert!(invalid(h.embed_blocking(vec![vec![101; 513]])));
    assert_eq!(param_of(h.prepare(vec![text("")], None)), "input");
    assert_eq!(param_of(h.prepare(vec![], None)), "input");
    assert_eq!(
        param_of(h.prepare(vec![text("a"); MAX_EMBED_INPUTS + 1], None)),
        "input"
    );
    assert_eq!(
        param_of(h.prepare(vec![EmbedInput::Tokens(vec![])], None)),
        "input"
    );
    assert_eq!(
        param_of(h.prepare(vec![EmbedInput::Tokens(vec![99_999])], None)),
        "input"
    );
    assert_eq!(
        param_of(h.prepare(vec![EmbedInput::Tokens(vec![7; 300])], None)),
        "input"
    );
    assert_eq!(
        param_of(h.prepare(vec![text("a")], Some(0))),
        "truncate_prompt_tokens"
    );
    assert_eq!(
        param_of(h.prepare(vec![text("a")], Some(257))),
        "truncate_prompt_tokens"
    );
    // Token ids keep their first k; short inputs are left alone.
    let got = h
        .prepare(vec![EmbedInput::Tokens(vec![7; 300]), text("a")], Some(10))
        .unwrap();
    assert_eq!((got[0].len(), got[1].len()), (10, 3));
    assert_eq!(
        h.stats().failed.load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

#[test]
fn stopping_the_engine_answers_and_clears_running() {
    let Some(e) = engine(EmbedConfig::default()) else {
        return;
    };
    let h: EmbedHandle = e.handle();
    assert!(h.is_running());
    drop(e);
    assert!(!h.is_running());
    assert!(matches!(
        h.embed_blocking(vec![vec![101, 102]]),
        Err(EngineError::Stopped)
    ));
}
