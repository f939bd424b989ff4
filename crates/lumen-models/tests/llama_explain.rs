//! The explain pass measures the served model: observing a forward pass changes nothing, the
//! lens's last layer is the served logits, logit attribution adds up, attention rows are
//! distributions over the past, and the scores move when the weights are randomised.

mod common;

use common::{fixtures, Runner};
use lumen_kernels::ThreadPool;
use lumen_models::{
    DlaPart, DlaProbe, ForwardWorkspace, LlamaModel, LogitsWanted, PassOutput, Probe,
    TeacherForced, WeightLayout,
};

const TOKENS: [u32; 20] = [
    250, 12, 252, 97, 43, 236, 26, 66, 35, 81, 137, 30, 203, 61, 201, 81, 203, 246, 245, 67,
];
const PROMPT: usize = 14;

fn open(path: &std::path::Path) -> LlamaModel {
    LlamaModel::open_with(path, WeightLayout::Packed).expect("fixture loads")
}

/// Baseline pass with every probe, plus one masked and one deleted variant of tokens 3..6.
fn explain(model: &LlamaModel, pool: &ThreadPool) -> (PassOutput, PassOutput) {
    let probe = Probe {
        lens: vec![PROMPT - 1, PROMPT + 2],
        dla: Some(DlaProbe {
            position: PROMPT - 1,
            target: Some(TOKENS[PROMPT]),
        }),
        attention: vec![PROMPT - 1, 5],
    };
    let mut ws = ForwardWorkspace::new();
    let base = model
        .explain_pass(
            pool,
            &[TeacherForced {
                tokens: &TOKENS,
                rope_positions: None,
                prompt_len: PROMPT,
                logits_from: PROMPT - 1,
            }],
            &probe,
            &mut ws,
        )
        .expect("baseline pass");
    let kept: Vec<usize> = (0..TOKENS.len()).filter(|i| !(3..6).contains(i)).collect();
    let toks: Vec<u32> = kept.iter().map(|&i| TOKENS[i]).collect();
    let variants = [
        TeacherForced {
            tokens: &toks,
            rope_positions: Some(&kept),
            prompt_len: PROMPT - 3,
            logits_from: PROMPT - 4,
        },
        TeacherForced {
            tokens: &toks,
            rope_positions: None,
            prompt_len: PROMPT - 3,
            logits_from: PROMPT - 4,
        },
    ];
    let occluded = model
        .explain_pass(pool, &variants, &Probe::default(), &mut ws)
        .expect("variant pass");
    (base, occluded)
}

#[test]
fn explain_pass_is_the_served_forward_pass() {
    let path = fixtures().join("tiny_llama_q8_0.gguf");
    let pool = ThreadPool::new(2);
    let model = open(&path);
    let vocab = model.config().vocab_size;
    let n_layers = model.config().n_layers;
    let (base, occluded) = explain(&model, &pool);

    // The ordinary forward pass, one token at a time after the prompt, as the engine serves.
    let mut runner = Runner::new(open(&path), 2, 64);
    runner.prompt_len = PROMPT;
    let mut served = runner.step(&TOKENS[..PROMPT], LogitsWanted::All);
    for &t in &TOKENS[PROMPT..] {
        served.extend(runner.step(&[t], LogitsWanted::Last));
    }
    let served = &served[(PROMPT - 1) * vocab..];
    assert_eq!(base.logits.len(), served.len());
    assert_eq!(
        base.logits, served,
        "observing a pass must not change its logits"
    );

    // Lens: the last layer of each probed position is that row of the served logits.
    for (i, &p) in [PROMPT - 1, PROMPT + 2].iter().enumerate() {
        let cells = &base.lens[i];
        assert_eq!(cells.len(), (n_layers + 1) * vocab);
        let last = &cells[n_layers * vocab..];
        let row = &served[(p - (PROMPT - 1)) * vocab..(p - PROMPT + 2) * vocab];
        assert_eq!(last, row);
    }

    // DLA: the terms add up to the linearised logit, which is close to the served one.
    let dla = base.dla.as_ref().expect("dla");
    let sum: f64 = dla.terms.iter().map(|t| t.value).sum();
    assert!(
        (sum - dla.final_logit).abs() < 1e-3,
        "{sum} vs {}",
        dla.final_logit
    );
    let served_logit = served[TOKENS[PROMPT] as usize];
    assert_eq!(dla.served_logit, served_logit);
    assert!((dla.final_logit - f64::from(served_logit)).abs() < 0.05);
    let heads = dla.terms.iter().filter(|t| t.head.is_some()).count();
    assert_eq!(heads, n_layers * model.config().n_heads);
    assert!(dla.terms.iter().any(|t| t.part == DlaPart::Mlp));

    // Attention: per head, a distribution over positions 0..=target and nothing later.
    for (i, &target) in [PROMPT - 1, 5].iter().enumerate() {
        assert_eq!(base.attention[i].len(), n_layers);
        for row in &base.attention[i] {
            for head in &row.probs {
                assert_eq!(head.len(), target + 1);
                let total: f32 = head.iter().sum();
                assert!((total - 1.0).abs() < 1e-5);
            }
        }
    }

    // Masking keeps positions, deleting shifts them: both drop the span, and they differ.
    let rows = TOKENS.len() - PROMPT + 1;
    assert_eq!(occluded.logits.len(), 2 * rows * vocab);
    let (masked, deleted) = occluded.logits.split_at(rows * vocab);
    assert_ne!(masked, deleted);
    assert_ne!(masked, &base.logits[..rows * vocab]);
}

#[test]
fn scores_change_when_weights_are_randomised() {
    // The model-randomisation check: the same explanation on a copy of the model whose block
    // weights are replaced by random quants must come out different.
    let path = fixtures().join("tiny_llama_q8_0.gguf");
    let mut bytes = std::fs::read(&path).expect("fixture");
    let file = lumen_gguf::GgufFile::open(&path).expect("gguf");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for t in file.tensors() {
        if !t.name.starts_with("blk.") || t.ggml_type != lumen_gguf::GgmlType::Q8_0 {
            continue;
        }
        // Q8_0 blocks: an f16 scale, then 32 signed quants; keep the scales.
        let start = t.offset as usize;
        for block in bytes[start..start + t.n_bytes as usize].chunks_exact_mut(34) {
            for q in &mut block[2..] {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                *q = (state >> 24) as u8;
            }
        }
    }
    let dir = std::env::temp_dir().join(format!("lumen-randomised-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let random_path = dir.join("tiny_llama_q8_0_randomised.gguf");
    std::fs::write(&random_path, &bytes).expect("write");
    let pool = ThreadPool::new(2);
    let (base, occluded) = explain(&open(&path), &pool);
    let (rbase, roccluded) = explain(&open(&random_path), &pool);
    let _ = std::fs::remove_dir_all(&dir);
    let max_diff = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0f32, f32::max)
    };
    assert!(max_diff(&base.lens[0], &rbase.lens[0]) > 0.1);
    assert!(max_diff(&occluded.logits, &roccluded.logits) > 0.1);
    let (d, rd) = (base.dla.unwrap(), rbase.dla.unwrap());
    let diff = d
        .terms
        .iter()
        .zip(&rd.terms)
        .map(|(a, b)| (a.value - b.value).abs())
        .fold(0.0f64, f64::max);
    assert!(diff > 0.01, "attribution unchanged by randomised weights");
    assert_ne!(base.attention[0][0].probs, rbase.attention[0][0].probs);
}

#[test]
fn variants_sharing_the_baseline_rows_score_as_if_run_whole() {
    // Occlusion's variants agree with the text up to their span; starting them from the
    // baseline pass's cache must give exactly the logits a pass from scratch gives, for masked
    // (positions kept) and deleted (positions shifted) spans, early and late in the prompt.
    let path = fixtures().join("tiny_llama_q8_0.gguf");
    let pool = ThreadPool::new(2);
    let model = open(&path);
    let text: Vec<u32> = (0..60u32).map(|i| (i * 37 + 11) % 250).collect();
    let prompt = 52;
    let mut ws = ForwardWorkspace::new();
    let mut base = model
        .explain_pass(
            &pool,
            &[TeacherForced {
                tokens: &text,
                rope_positions: None,
                prompt_len: prompt,
                logits_from: prompt - 1,
            }],
            &Probe::default(),
            &mut ws,
        )
        .expect("baseline pass");
    let cache = base.cache.take().expect("the baseline keeps its cache");
    let spans = [2..5, 17..20, 35..41, 49..52];
    let kept: Vec<Vec<usize>> = spans
        .iter()
        .map(|s| (0..text.len()).filter(|i| !s.contains(i)).collect())
        .collect();
    let toks: Vec<Vec<u32>> = kept
        .iter()
        .map(|k| k.iter().map(|&i| text[i]).collect())
        .collect();
    let mut variants = Vec::new();
    for mask in [true, false] {
        for ((k, t), s) in kept.iter().zip(&toks).zip(&spans) {
            let n_kept = prompt - s.len();
            variants.push(TeacherForced {
                tokens: t,
                rope_positions: mask.then_some(k.as_slice()),
                prompt_len: n_kept,
                logits_from: n_kept - 1,
            });
        }
    }
    let whole = model
        .explain_pass(&pool, &variants, &Probe::default(), &mut ws)
        .expect("variants from scratch");
    let shared = model
        .explain_pass_shared(&pool, &variants, &cache, &mut ws)
        .expect("variants from the baseline's rows");
    assert_eq!(shared.logits, whole.logits);
    assert!(shared.cache.is_none());
    // Whole blocks of the rows before each span are reused, never the span or what follows.
    let reused: Vec<usize> = variants.iter().map(|v| cache.reusable(v)).collect();
    assert_eq!(reused, [0, 16, 32, 48, 0, 16, 32, 48]);
    // A text that differs from the cached one reuses nothing.
    let other: Vec<u32> = text.iter().map(|t| (t + 1) % 250).collect();
    let stranger = TeacherForced {
        tokens: &other,
        rope_positions: None,
        prompt_len: prompt,
        logits_from: prompt - 1,
    };
    assert_eq!(cache.reusable(&stranger), 0);
}
