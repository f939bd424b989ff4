//! all-mpnet-base-v2 through the embedding engine: the registry finds and loads it (the
//! `model_type: mpnet` in its `config.json` picks the MPNet encoder), its `tokenizer.json`
//! (WordPiece, `<s> … </s>`) gives sentence-transformers' ids, truncation keeps `</s>` the way
//! sentence-transformers does at 384 tokens, and the engine's embeddings match the reference.
//! Skips with a note when the model is not installed (fails under `CI`).

use lumen_engine::registry::{resolve, EmbeddingModel, ModelKind};
use lumen_engine::{EmbedConfig, EmbedEngine, EmbedInput, EngineError};

struct Reference {
    text: String,
    ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn references() -> Vec<Reference> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../lumen-models/tests/fixtures/mpnet_reference.json"
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

#[test]
fn tokenizes_truncates_and_embeds_like_sentence_transformers() {
    if lumen_testkit::mpnet_dir().is_none() {
        return;
    }
    let loc = resolve(lumen_testkit::MPNET_MODEL, &lumen_testkit::lumen_home()).unwrap();
    assert_eq!(loc.kind, ModelKind::Embedding);
    let m = EmbeddingModel::load(&loc).expect("load all-mpnet-base-v2");
    let e = EmbedEngine::start(m.model.clone(), m.tokenizer.clone(), EmbedConfig::default())
        .expect("start");
    let h = e.handle();
    let info = h.info();
    assert_eq!(
        (info.dims, info.max_seq_len, info.max_positions),
        (768, 384, 512)
    );
    assert_eq!(info.suffix, vec![2], "</s> closes a text");

    let refs = references();
    let mut ids = Vec::new();
    for r in &refs {
        let text = || vec![EmbedInput::Text(r.text.clone())];
        let mut got = if r.ids.len() < info.max_seq_len {
            h.prepare(text(), None).unwrap()
        } else {
            // Over-long: refused unless asked to truncate; then exactly sentence-transformers'.
            assert!(matches!(
                h.prepare(text(), None),
                Err(EngineError::InvalidRequest { param: "input", .. })
            ));
            h.prepare(text(), Some(384)).unwrap()
        };
        let head: String = r.text.chars().take(40).collect();
        assert_eq!(got, vec![r.ids.clone()], "{head:?}");
        assert_eq!((got[0][0], *got[0].last().unwrap()), (0, 2), "<s> … </s>");
        ids.push(got.remove(0));
    }
    assert!(ids.iter().any(|i| i.len() == 384));

    let out = h.embed_blocking(ids).unwrap();
    for (r, v) in refs.iter().zip(&out) {
        assert_eq!(v.len(), 768);
        let c = cosine(v, &r.embedding);
        let head: String = r.text.chars().take(40).collect();
        assert!(c >= 0.9999, "{c} for {head:?}");
    }
}
