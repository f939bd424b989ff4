//! all-MiniLM-L6-v2 against sentence-transformers' own embeddings.
//!
//! The fixture (`tests/fixtures/minilm_reference.json`, written by
//! `scripts/make_embedding_fixtures.py`) holds, per sentence, the token ids the model's
//! tokenizer produced and the embedding sentence-transformers computed. The tests feed the same
//! ids to `BertModel` and compare. They skip, with a note, when the model is not installed
//! (`make models` puts it in `$LUMEN_HOME/models`), and fail instead under `CI` (see
//! `lumen_testkit`).

mod sentence_reference;

use std::sync::OnceLock;

use sentence_reference::{assert_matches, Reference};

use lumen_kernels::ThreadPool;
use lumen_models::bert::{BertModel, EncoderPrecision, PoolingMode};
use lumen_models::ModelError;

/// The model, loaded once for all tests; `None` (with a note) when it is not installed.
fn model() -> Option<&'static BertModel> {
    static MODEL: OnceLock<Option<BertModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = lumen_testkit::embedding_dir()?;
            Some(BertModel::load(&dir).expect("load all-minilm-l6-v2"))
        })
        .as_ref()
}

fn references() -> Vec<Reference> {
    sentence_reference::references("minilm_reference.json")
}

#[test]
fn config_matches_sentence_transformers() {
    let Some(model) = model() else { return };
    assert_eq!(model.dims(), 384);
    assert_eq!(model.max_seq_len(), 256);
    assert_eq!(model.max_positions(), 512);
    assert!(model.normalize());
    assert_eq!(model.pooling().modes(), &[PoolingMode::Mean]);
    assert_eq!(model.config().num_layers, 6);
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(model) = model() else { return };
    let refs = references();
    assert!(refs.len() >= 24);
    let pool = ThreadPool::new(2);
    let batch: Vec<&[u32]> = refs.iter().map(|r| r.ids.as_slice()).collect();
    let got = model.embed_batch(&pool, &batch).unwrap();
    assert_matches(&refs, &got, 384);
}

#[test]
fn every_precision_matches_sentence_transformers() {
    // The default is bf16 where the CPU has AVX-512 BF16, 16-bit integers where it has AVX2,
    // f32 elsewhere; whichever this machine picked, every other one it can run must hold the
    // same bound.
    let Some(dir) = lumen_testkit::embedding_dir() else {
        return;
    };
    let refs = references();
    let batch: Vec<&[u32]> = refs.iter().map(|r| r.ids.as_slice()).collect();
    let pool = ThreadPool::new(2);
    let all = EncoderPrecision::ALL;
    for p in all.into_iter().filter(|p| p.supported()) {
        let model = BertModel::load_with(&dir, p).unwrap();
        assert_eq!(model.precision(), p);
        eprintln!("precision {p}:");
        assert_matches(&refs, &model.embed_batch(&pool, &batch).unwrap(), 384);
    }
    // Asking for a precision the CPU cannot run gives f32, never a failure.
    for p in all {
        let model = BertModel::load_with(&dir, p).unwrap();
        let want = if p.supported() {
            p
        } else {
            EncoderPrecision::F32
        };
        assert_eq!(model.precision(), want);
    }
    assert!(EncoderPrecision::auto().supported());
    assert_eq!(
        EncoderPrecision::parse("int16"),
        Some(EncoderPrecision::Int16)
    );
    assert_eq!(EncoderPrecision::parse("fp8"), None);
}

#[test]
fn a_sentence_embeds_identically_alone_and_in_a_batch_of_64() {
    let Some(model) = model() else { return };
    let refs = references();
    let pool = ThreadPool::new(2);
    // 64 items, fixture sentences repeated in a scrambled order (includes the 256-token ones,
    // so the batch also spans several forward steps).
    let order: Vec<usize> = (0..64)
        .map(|i| (i * 11 + i / refs.len()) % refs.len())
        .collect();
    let batch: Vec<&[u32]> = order.iter().map(|&i| refs[i].ids.as_slice()).collect();
    let together = model.embed_batch(&pool, &batch).unwrap();
    for (k, &i) in order.iter().enumerate() {
        let alone = model.embed_batch(&pool, &[refs[i].ids.as_slice()]).unwrap();
        let (a, b) = (&alone[0], &together[k]);
        assert!(
            a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()),
            "item {k} ({:?}) differs",
            refs[i].text
        );
    }
    // And with one thread instead of two.
    let single = ThreadPool::new(1);
    let again = model.embed_batch(&single, &batch[..8]).unwrap();
    for (a, b) in again.iter().zip(&together) {
        assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let Some(model) = model() else { return };
    let pool = ThreadPool::new(2);
    let good: &[u32] = &[101, 7592, 2088, 102];
    let vocab = model.config().vocab_size as u32;
    let out_of_range: &[u32] = &[101, vocab, 102];
    let huge_id: &[u32] = &[101, u32::MAX, 102];
    let too_long = vec![1000u32; model.max_positions() + 1];
    let empty: &[u32] = &[];
    for bad in [out_of_range, huge_id, &too_long, empty] {
        let err = model.embed_batch(&pool, &[good, bad]).unwrap_err();
        assert!(matches!(err, ModelError::BadBatch(_)), "{err}");
    }
    assert!(model.embed_batch(&pool, &[]).unwrap().is_empty());
    // The full position table is usable, beyond sentence-transformers' 256.
    let longest = vec![1000u32; model.max_positions()];
    assert_eq!(model.embed_batch(&pool, &[&longest]).unwrap()[0].len(), 384);
}
