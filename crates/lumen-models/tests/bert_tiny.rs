//! `BertModel` on tiny random-weight checkpoints written by the test itself: loading and its
//! errors, pooling modes, normalization, tensor-name prefixes, half-precision weights and batch
//! invariance. Runs everywhere; the real-model comparison is in `bert_reference.rs`.

use lumen_kernels::ThreadPool;
use lumen_models::bert::{BertModel, PoolingMode};
use lumen_models::ModelError;
use lumen_testkit::ScratchDir;
use rand::{rngs::StdRng, Rng, SeedableRng};

const VOCAB: usize = 40;
const HIDDEN: usize = 8;
const HEADS: usize = 2;
const LAYERS: usize = 2;
const INTER: usize = 16;
const POSITIONS: usize = 24;

/// What to vary in a generated checkpoint.
#[derive(Clone)]
struct Spec {
    prefix: &'static str,
    dtype: &'static str,
    pooling: Option<&'static str>,
    normalize: bool,
    /// Replace this tensor's shape with `[3]`.
    bad_shape: Option<&'static str>,
    /// Leave this tensor out.
    missing: Option<&'static str>,
}

impl Default for Spec {
    fn default() -> Spec {
        Spec {
            prefix: "",
            dtype: "F32",
            pooling: None,
            normalize: false,
            bad_shape: None,
            missing: None,
        }
    }
}

fn tensor_list() -> Vec<(String, Vec<usize>)> {
    let mut t = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![VOCAB, HIDDEN],
        ),
        (
            "embeddings.position_embeddings.weight".to_string(),
            vec![POSITIONS, HIDDEN],
        ),
        (
            "embeddings.token_type_embeddings.weight".to_string(),
            vec![2, HIDDEN],
        ),
        ("embeddings.LayerNorm.weight".to_string(), vec![HIDDEN]),
        ("embeddings.LayerNorm.bias".to_string(), vec![HIDDEN]),
    ];
    for i in 0..LAYERS {
        let p = format!("encoder.layer.{i}");
        for name in [
            "attention.self.query",
            "attention.self.key",
            "attention.self.value",
            "attention.output.dense",
        ] {
            t.push((format!("{p}.{name}.weight"), vec![HIDDEN, HIDDEN]));
            t.push((format!("{p}.{name}.bias"), vec![HIDDEN]));
        }
        t.push((
            format!("{p}.intermediate.dense.weight"),
            vec![INTER, HIDDEN],
        ));
        t.push((format!("{p}.intermediate.dense.bias"), vec![INTER]));
        t.push((format!("{p}.output.dense.weight"), vec![HIDDEN, INTER]));
        t.push((format!("{p}.output.dense.bias"), vec![HIDDEN]));
        for norm in ["attention.output.LayerNorm", "output.LayerNorm"] {
            t.push((format!("{p}.{norm}.weight"), vec![HIDDEN]));
            t.push((format!("{p}.{norm}.bias"), vec![HIDDEN]));
        }
    }
    t
}

fn write_model(tag: &str, spec: &Spec) -> ScratchDir {
    let scratch = ScratchDir::new(&format!("bert-tiny-{tag}"));
    let dir = scratch.path();
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    let config = serde_json::json!({
        "architectures": ["BertModel"], "model_type": "bert", "hidden_act": "gelu",
        "hidden_size": HIDDEN, "intermediate_size": INTER, "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS, "max_position_embeddings": POSITIONS, "type_vocab_size": 2,
        "vocab_size": VOCAB, "layer_norm_eps": 1e-12, "position_embedding_type": "absolute"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();

    // Same seed for every spec, so checkpoints differing only in layout hold the same values.
    let mut rng = StdRng::seed_from_u64(7);
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, mut shape) in tensor_list() {
        let n: usize = shape.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                if name.contains("LayerNorm.weight") {
                    1.0 + rng.gen_range(-0.1..0.1)
                } else {
                    rng.gen_range(-0.5..0.5)
                }
            })
            .collect();
        if spec.missing == Some(name.as_str()) {
            continue;
        }
        if spec.bad_shape == Some(name.as_str()) {
            shape = vec![3];
        }
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = match spec.dtype {
            "F16" => values
                .iter()
                .take(n)
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            "BF16" => values
                .iter()
                .take(n)
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            _ => values
                .iter()
                .take(n)
                .flat_map(|x| x.to_le_bytes())
                .collect(),
        };
        let full = format!("{}{name}", spec.prefix);
        header.insert(
            full,
            serde_json::json!({"dtype": spec.dtype, "shape": shape, "data_offsets": [data.len(), data.len() + bytes.len()]}),
        );
        data.extend_from_slice(&bytes);
    }
    let header = serde_json::Value::Object(header).to_string();
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header.as_bytes());
    file.extend_from_slice(&data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();

    if let Some(pooling) = spec.pooling {
        let mut modules = vec![
            serde_json::json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
            serde_json::json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
        ];
        if spec.normalize {
            modules.push(serde_json::json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
        }
        std::fs::write(
            dir.join("modules.json"),
            serde_json::Value::Array(modules).to_string(),
        )
        .unwrap();
        std::fs::write(dir.join("1_Pooling/config.json"), pooling).unwrap();
        std::fs::write(
            dir.join("sentence_bert_config.json"),
            r#"{"max_seq_length": 16}"#,
        )
        .unwrap();
    }
    scratch
}

fn load(tag: &str, spec: &Spec) -> Result<BertModel, ModelError> {
    let dir = write_model(tag, spec);
    BertModel::load(dir.path())
}

const SEQS: [&[u32]; 4] = [
    &[1, 5, 9, 2],
    &[1, 2],
    &[1, 30, 31, 32, 33, 34, 35, 2],
    &[3],
];

fn embed(model: &BertModel, batch: &[&[u32]]) -> Vec<Vec<f32>> {
    model.embed_batch(&ThreadPool::new(2), batch).unwrap()
}

#[test]
fn defaults_without_sentence_transformers_files() {
    let m = load("defaults", &Spec::default()).unwrap();
    assert_eq!(m.dims(), HIDDEN);
    assert_eq!(m.max_seq_len(), POSITIONS);
    assert!(!m.normalize());
    assert_eq!(m.pooling().modes(), &[PoolingMode::Mean]);
    let out = embed(&m, &SEQS);
    assert_eq!(out.len(), SEQS.len());
    assert!(out
        .iter()
        .all(|v| v.len() == HIDDEN && v.iter().all(|x| x.is_finite())));
}

#[test]
fn pooling_modes_and_normalization() {
    let json = |cls: bool, max: bool, mean: bool| -> &'static str {
        let s = format!(
            r#"{{"word_embedding_dimension": {HIDDEN}, "pooling_mode_cls_token": {cls},
                "pooling_mode_max_tokens": {max}, "pooling_mode_mean_tokens": {mean}}}"#
        );
        Box::leak(s.into_boxed_str())
    };
    let spec = |pooling, normalize| Spec {
        pooling: Some(pooling),
        normalize,
        ..Spec::default()
    };
    let cls = embed(
        &load("cls", &spec(json(true, false, false), false)).unwrap(),
        &SEQS,
    );
    let max = embed(
        &load("max", &spec(json(false, true, false), false)).unwrap(),
        &SEQS,
    );
    let mean = embed(
        &load("mean", &spec(json(false, false, true), false)).unwrap(),
        &SEQS,
    );
    let all_model = load("all", &spec(json(true, true, true), false)).unwrap();
    assert_eq!(all_model.dims(), 3 * HIDDEN);
    assert_eq!(all_model.max_seq_len(), 16);
    let all = embed(&all_model, &SEQS);
    for i in 0..SEQS.len() {
        assert_eq!(
            all[i],
            [cls[i].clone(), max[i].clone(), mean[i].clone()].concat()
        );
        for d in 0..HIDDEN {
            assert!(max[i][d] >= mean[i][d] - 1e-6);
        }
    }
    // One token: every mode gives that token's vector.
    assert_eq!(cls[3], max[3]);
    assert!(cls[3]
        .iter()
        .zip(&mean[3])
        .all(|(a, b)| (a - b).abs() < 1e-6));

    let normed = embed(
        &load("norm", &spec(json(false, false, true), true)).unwrap(),
        &SEQS,
    );
    for (n, m) in normed.iter().zip(&mean) {
        let len = m.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(n.iter().zip(m).all(|(a, b)| (a - b / len).abs() < 1e-6));
    }
}

#[test]
fn bert_prefix_and_half_types_load() {
    let base = embed(&load("plain", &Spec::default()).unwrap(), &SEQS);
    let prefixed = embed(
        &load(
            "prefix",
            &Spec {
                prefix: "bert.",
                ..Spec::default()
            },
        )
        .unwrap(),
        &SEQS,
    );
    assert_eq!(base, prefixed);
    for dtype in ["F16", "BF16"] {
        let half = embed(
            &load(
                dtype,
                &Spec {
                    dtype,
                    ..Spec::default()
                },
            )
            .unwrap(),
            &SEQS,
        );
        for (a, b) in half.iter().zip(&base) {
            let cos: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>()
                / (a.iter().map(|x| x * x).sum::<f32>().sqrt()
                    * b.iter().map(|x| x * x).sum::<f32>().sqrt());
            assert!(cos > 0.99, "{dtype}: cosine {cos}");
        }
    }
}

#[test]
fn batch_invariance_across_steps_and_threads() {
    let m = load("invariance", &Spec::default()).unwrap();
    let batch: Vec<&[u32]> = (0..64)
        .map(|i| SEQS[(i * 3 + i / 5) % SEQS.len()])
        .collect();
    let together = embed(&m, &batch);
    for (seq, got) in batch.iter().zip(&together) {
        let alone = m.embed_batch(&ThreadPool::new(1), &[seq]).unwrap();
        assert!(alone[0]
            .iter()
            .zip(got)
            .all(|(a, b)| a.to_bits() == b.to_bits()));
    }
}

#[test]
fn bad_checkpoints_are_errors() {
    let cases: [(&str, Spec); 3] = [
        (
            "badshape",
            Spec {
                bad_shape: Some("encoder.layer.1.intermediate.dense.weight"),
                ..Spec::default()
            },
        ),
        (
            "missing",
            Spec {
                missing: Some("encoder.layer.0.output.LayerNorm.bias"),
                ..Spec::default()
            },
        ),
        (
            "nopos",
            Spec {
                missing: Some("embeddings.position_embeddings.weight"),
                ..Spec::default()
            },
        ),
    ];
    for (tag, spec) in cases {
        let err = load(tag, &spec).unwrap_err();
        match tag {
            "badshape" => assert!(matches!(err, ModelError::BadShape { .. }), "{err}"),
            _ => assert!(matches!(err, ModelError::MissingTensor(_)), "{err}"),
        }
    }
    let dir = write_model("nofile", &Spec::default());
    std::fs::remove_file(dir.path().join("model.safetensors")).unwrap();
    assert!(matches!(
        BertModel::load(dir.path()),
        Err(ModelError::Io { .. })
    ));
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    assert!(matches!(
        BertModel::load(dir.path()),
        Err(ModelError::Safetensors(_))
    ));
    std::fs::write(dir.path().join("config.json"), r#"{"hidden_size": 8}"#).unwrap();
    assert!(matches!(
        BertModel::load(dir.path()),
        Err(ModelError::BadJson { .. })
    ));
}

#[test]
fn bad_batches_are_errors() {
    let m = load("badbatch", &Spec::default()).unwrap();
    let pool = ThreadPool::new(2);
    let long = vec![1u32; POSITIONS + 1];
    for bad in [&[1u32, VOCAB as u32][..], &long, &[]] {
        assert!(matches!(
            m.embed_batch(&pool, &[SEQS[0], bad]),
            Err(ModelError::BadBatch(_))
        ));
    }
    let full = vec![1u32; POSITIONS];
    assert_eq!(embed(&m, &[&full]).len(), 1);
}

#[test]
fn model_can_be_shared_between_threads() {
    fn check<T: Send + Sync>() {}
    check::<BertModel>();
}
