//! Tiny random-weight models (written by `scripts/make_llama_fixtures.py` with the `gguf`
//! package and quantized by llama.cpp) against llama.cpp's logits for a fixed input.
//!
//! They cover what SmolLM2 does not: Qwen2 (NeoX RoPE, Q/K/V biases, separate head, F16),
//! Qwen3 (per-head Q/K norm, F32), and Q4_K, Q5_K, Q6_K, Q4_0, Q8_0 and BF16 weights, and
//! the formats added for llama.cpp's presets: Q5_0, Q5_1, Q2_K, Q3_K, IQ4_NL, IQ4_XS.
//!
//! Tolerance, per weight format. Lumen reproduces llama.cpp's CPU arithmetic bit for bit for
//! Q4_0, Q4_1 and Q8_0 weights and for everything around the matmuls (RMSNorm, RoPE, SwiGLU,
//! attention), so those models must match to the fixture's rounding (logits are written with 6
//! decimals). F32 weights are summed in another order than llama.cpp's, but with no quantized
//! activations to amplify it that stays at float rounding, so Qwen3/F32 is held to the same
//! bound. For the others llama.cpp's own kernels differ from ours
//! in summation order (it repacks Q4_K/Q6_K into interleaved 8-row blocks, and rounds
//! activations to f16/bf16 for F16/BF16 weights where Lumen keeps them in f32), and one
//! flipped 8-bit activation rounding moves a logit by up to ~1e-2 of its range: 2% there is
//! still far below what a real bug (a wrong RoPE pair, a missing bias, a mis-decoded scale)
//! does, which moves logits by tens of percent. The packed weight layout sums each block's
//! integer dot before scaling it (not llama.cpp's order), so its Q4_0/Q4_1/Q8_0 models are held
//! to that same 2%.

mod common;

use common::{fixtures, Runner};
use lumen_gguf::GgmlType;
use lumen_models::weights::load_gguf;
use lumen_models::{LlamaModel, LogitsWanted, WeightLayout};
use serde_json::Value;

/// Bit-exact formats: the fixture writes logits with 6 decimals.
const EXACT: f32 = 1e-5;
/// Formats whose llama.cpp kernels sum in another order than ours (see the module docs).
const APPROX: f32 = 0.02;

fn check(name: &str, tolerance: f32) {
    check_layout(name, tolerance, WeightLayout::Exact);
}

fn check_layout(name: &str, tolerance: f32, layout: WeightLayout) {
    let dir = fixtures();
    let reference: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap())
            .unwrap();
    let ids: Vec<u32> = reference["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want: Vec<Vec<f32>> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() as f32)
                .collect()
        })
        .collect();
    let model = LlamaModel::open_with(&dir.join(format!("{name}.gguf")), layout).unwrap();
    let vocab = model.config().vocab_size;
    let mut runner = Runner::new(model, 2, ids.len());
    // llama.cpp evaluated the whole input as one batch: every token is a prompt token.
    runner.prompt_len = ids.len();
    let got = runner.step(&ids, LogitsWanted::All);
    assert_eq!(got.len(), ids.len() * vocab);
    let mut worst = 0.0f32;
    for (t, want_row) in want.iter().enumerate() {
        let got_row = &got[t * vocab..(t + 1) * vocab];
        let range = want_row.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1.0);
        for (g, w) in got_row.iter().zip(want_row) {
            let err = (g - w).abs() / range;
            worst = worst.max(err);
        }
    }
    eprintln!("{name} ({layout}): worst relative logit error {worst:.5}");
    assert!(worst <= tolerance, "{name} ({layout}): logits differ from llama.cpp by {worst} of the range (allowed {tolerance})");

    // Same input token by token (prefill of 5, then decode steps) gives the same bits:
    // chunking must not change any row (batch invariance of kernels and attention).
    let model = LlamaModel::open_with(&dir.join(format!("{name}.gguf")), layout).unwrap();
    let mut stepwise = Runner::new(model, 3, ids.len());
    stepwise.prompt_len = ids.len();
    let mut rows = stepwise.step(&ids[..5], LogitsWanted::All);
    for &t in &ids[5..] {
        rows.extend(stepwise.step(&[t], LogitsWanted::Last));
    }
    assert!(
        rows == got,
        "{name}: token-by-token logits differ from the one-shot prefill"
    );
}

#[test]
fn qwen2_f16_with_biases() {
    check("tiny_qwen2_f16", APPROX);
}

#[test]
fn qwen3_f32_with_qk_norm() {
    check("tiny_qwen3_f32", EXACT);
}

#[test]
fn llama_q4_k_m() {
    check("tiny_llama_q4_k_m", APPROX);
}

#[test]
fn llama_q5_k_m() {
    check("tiny_llama_q5_k_m", APPROX);
}

#[test]
fn llama_q4_0() {
    check("tiny_llama_q4_0", EXACT);
}

#[test]
fn llama_q8_0() {
    check("tiny_llama_q8_0", EXACT);
}

#[test]
fn llama_bf16() {
    check("tiny_llama_bf16", APPROX);
}

#[test]
fn llama_q4_1() {
    check("tiny_llama_q4_1", EXACT);
}

#[test]
fn packed_llama_q4_0() {
    check_layout("tiny_llama_q4_0", APPROX, WeightLayout::Packed);
}

#[test]
fn packed_llama_q4_1() {
    check_layout("tiny_llama_q4_1", APPROX, WeightLayout::Packed);
}

#[test]
fn packed_llama_q8_0() {
    check_layout("tiny_llama_q8_0", APPROX, WeightLayout::Packed);
}

/// Q4_K, Q5_K and Q6_K matrices are rewritten into their packed layout (whose sums equal the
/// ggml layout's bit for bit), and so are Q5_0 and Q5_1 ones (llama.cpp's fallbacks for rows
/// that are not whole super-blocks; the packed 32-value order of sums); attention takes the
/// fast arithmetic, hence the 2 % bound.
#[test]
fn packed_layouts_are_rewritten() {
    for (name, packed_types) in [
        ("tiny_llama_q4_k_m", &[GgmlType::Q4_K, GgmlType::Q6_K][..]),
        ("tiny_llama_q5_k_m", &[GgmlType::Q5_K, GgmlType::Q6_K][..]),
        ("tiny_llama_q5_0", &[GgmlType::Q5_0][..]),
        ("tiny_llama_q5_1", &[GgmlType::Q5_1][..]),
    ] {
        let path = fixtures().join(format!("{name}.gguf"));
        let file = load_gguf(&path, WeightLayout::Packed).unwrap();
        for ty in packed_types {
            let rewritten = file
                .tensors()
                .iter()
                .filter(|t| t.ggml_type == *ty && file.is_rewritten(t))
                .count();
            assert!(rewritten > 0, "{name}: no {ty:?} tensor was packed");
        }
        check_layout(name, APPROX, WeightLayout::Packed);
    }
}

// The formats llama.cpp's presets fall back to or mix in (issue 23). Q5_0, Q5_1 and IQ4_NL
// follow llama.cpp's AVX2 dot lane for lane (a Q6_K head, like the Q4_0 fixture's), and the
// Q2_K file (Q2_K and Q3_K) matches to the fixture's rounding as well. IQ4_XS and Q3_K_M
// match on all but one or two of the 24 rows, where an activation of the next layer rounds
// the other way after a float sum in another order (and Q3_K_M holds Q4_K, which llama.cpp
// repacks): one such flip moves a logit by ~6e-2, so they get the 2 % bound. Dropping one
// bit of a sub-block scale fails all three super-block tests.

#[test]
fn llama_q5_0() {
    check("tiny_llama_q5_0", EXACT);
}

#[test]
fn llama_q5_1() {
    check("tiny_llama_q5_1", EXACT);
}

#[test]
fn llama_iq4_nl() {
    check("tiny_llama_iq4_nl", EXACT);
}

#[test]
fn llama_q2_k() {
    check("tiny_llama_q2_k", EXACT);
}

#[test]
fn llama_q3_k_m() {
    check("tiny_llama_q3_k_m", APPROX);
}

#[test]
fn llama_iq4_xs() {
    check("tiny_llama_iq4_xs", APPROX);
}

/// The default (packed) layout loads the other formats too: they stay in ggml's layout (no
/// packed tiles for them) while attention takes the fast arithmetic, hence the 2 % bound.
#[test]
fn packed_layout_loads_the_issue_23_formats() {
    for name in [
        "tiny_llama_iq4_nl",
        "tiny_llama_q2_k",
        "tiny_llama_q3_k_m",
        "tiny_llama_iq4_xs",
    ] {
        check_layout(name, APPROX, WeightLayout::Packed);
    }
}
