//! The sentence-transformers reference fixtures (`tests/fixtures/*_reference.json`, written by
//! `scripts/make_embedding_fixtures.py`) and how embeddings are compared with them.

/// One fixture sentence: its text, the ids its model's tokenizer gave, and the embedding
/// sentence-transformers computed from them.
pub struct Reference {
    pub text: String,
    pub ids: Vec<u32>,
    pub embedding: Vec<f32>,
}

/// The sentences of `tests/fixtures/{file}`.
pub fn references(file: &str) -> Vec<Reference> {
    let path = format!("{}/tests/fixtures/{file}", env!("CARGO_MANIFEST_DIR"));
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let floats = |v: &serde_json::Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    doc["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Reference {
            text: s["text"].as_str().unwrap().to_string(),
            ids: s["ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect(),
            embedding: floats(&s["embedding"]),
        })
        .collect()
}

/// Cosine similarity, in f64.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let na: f64 = a.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Asserts every embedding of `got` is unit length with cosine ≥ 0.9999 against its
/// reference, and prints the worst cosine and largest difference.
pub fn assert_matches(refs: &[Reference], got: &[Vec<f32>], dims: usize) {
    assert_eq!(got.len(), refs.len());
    let mut worst = (f64::INFINITY, "");
    let mut max_diff = 0.0f32;
    for (r, e) in refs.iter().zip(got) {
        assert_eq!(e.len(), dims);
        let norm: f32 = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm} for {:?}", r.text);
        let c = cosine(e, &r.embedding);
        if c < worst.0 {
            worst = (c, &r.text);
        }
        assert!(c >= 0.9999, "cosine {c} for {:?}", r.text);
        let diff = e
            .iter()
            .zip(&r.embedding)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        max_diff = max_diff.max(diff);
    }
    let head: String = worst.1.chars().take(40).collect();
    eprintln!(
        "min cosine vs sentence-transformers: {:.9} (1 - cos = {:.1e}, {head:?}); max |diff| {max_diff:.1e}",
        worst.0,
        1.0 - worst.0
    );
}
