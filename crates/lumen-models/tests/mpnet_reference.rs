//! all-mpnet-base-v2 (MPNet) against sentence-transformers' own embeddings.
//!
//! The fixture (`tests/fixtures/mpnet_reference.json`, written by
//! `scripts/make_embedding_fixtures.py`) holds, per sentence, the token ids the model's
//! tokenizer produced (over-long ones truncated to 384, as sentence-transformers does) and the
//! embedding sentence-transformers computed. The tests feed the same ids to `BertModel` (which
//! reads `model_type: mpnet` and runs the MPNet family) and compare. They skip, with a note,
//! when the model is not installed (`make models` puts it in `$LUMEN_HOME/models`), and fail
//! instead under `CI` (see `lumen_testkit`). The tokenizer's side is checked in
//! `lumen-engine`'s `embed_mpnet` test against the same ids.

mod sentence_reference;

use std::sync::OnceLock;

use sentence_reference::{assert_matches, Reference};

use lumen_kernels::ThreadPool;
use lumen_models::bert::{BertModel, Family, PoolingMode};
use lumen_models::ModelError;

/// The model, loaded once for all tests; `None` (with a note) when it is not installed.
fn model() -> Option<&'static BertModel> {
    static MODEL: OnceLock<Option<BertModel>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let dir = lumen_testkit::mpnet_dir()?;
            Some(BertModel::load(&dir).expect("load all-mpnet-base-v2"))
        })
        .as_ref()
}

fn references() -> Vec<Reference> {
    sentence_reference::references("mpnet_reference.json")
}

#[test]
fn config_matches_sentence_transformers() {
    let Some(model) = model() else { return };
    let c = model.config();
    assert_eq!(c.family, Family::MpNet);
    assert_eq!((c.num_layers, c.hidden_size, c.num_heads), (12, 768, 12));
    assert_eq!(model.dims(), 768);
    assert_eq!(model.max_seq_len(), 384);
    // 514 position rows, the first two never a token's.
    assert_eq!(model.max_positions(), 512);
    assert!(model.normalize());
    assert_eq!(model.pooling().modes(), &[PoolingMode::Mean]);
}

#[test]
fn embeddings_match_sentence_transformers() {
    let Some(model) = model() else { return };
    let refs = references();
    assert!(refs.len() >= 24);
    // The over-length sentences reach the full 384 tokens, so the relative-position bias is
    // exercised out to its last bucket.
    assert!(refs.iter().any(|r| r.ids.len() == 384));
    let pool = ThreadPool::new(2);
    let batch: Vec<&[u32]> = refs.iter().map(|r| r.ids.as_slice()).collect();
    let got = model.embed_batch(&pool, &batch).unwrap();
    assert_matches(&refs, &got, 768);
}

#[test]
fn a_sentence_embeds_identically_alone_and_in_a_batch() {
    let Some(model) = model() else { return };
    let refs = references();
    let pool = ThreadPool::new(2);
    // Fixture sentences in a scrambled order, the 384-token ones included, so the batch spans
    // several forward steps.
    let order: Vec<usize> = (0..24).map(|i| (i * 11) % refs.len()).collect();
    let batch: Vec<&[u32]> = order.iter().map(|&i| refs[i].ids.as_slice()).collect();
    let together = model.embed_batch(&pool, &batch).unwrap();
    for (k, &i) in order.iter().enumerate().step_by(3) {
        let alone = model.embed_batch(&pool, &[refs[i].ids.as_slice()]).unwrap();
        assert!(
            alone[0]
                .iter()
                .zip(&together[k])
                .all(|(x, y)| x.to_bits() == y.to_bits()),
            "item {k} ({:?}) differs",
            refs[i].text
        );
    }
}

#[test]
fn the_whole_position_table_is_usable_and_bad_inputs_are_errors() {
    let Some(model) = model() else { return };
    let pool = ThreadPool::new(2);
    let longest = vec![1000u32; model.max_positions()];
    assert_eq!(model.embed_batch(&pool, &[&longest]).unwrap()[0].len(), 768);
    let too_long = vec![1000u32; model.max_positions() + 1];
    let vocab = model.config().vocab_size as u32;
    let good: &[u32] = &[0, 7596, 2092, 2];
    for bad in [&too_long[..], &[0, vocab, 2][..], &[][..]] {
        let err = model.embed_batch(&pool, &[good, bad]).unwrap_err();
        assert!(matches!(err, ModelError::BadBatch(_)), "{err}");
    }
    // The padding id is a valid input: it takes the padding position, as in transformers.
    let with_pad: &[u32] = &[0, 7596, 1, 2092, 2];
    assert_eq!(model.embed_batch(&pool, &[with_pad]).unwrap()[0].len(), 768);
}
