//! The real SmolLM2-135M-Instruct Q4_1 file, when it has been fetched into
//! `$LUMEN_HOME/models/smollm2/` (`LUMEN_HOME` defaults to `~/.lumen`). Skipped, with a
//! note, when the file is absent; a failure under `CI` (see `lumen_testkit`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use lumen_gguf::{GgmlType, GgufFile};

/// Where the model file lives, if it is there (a failure under `CI` when it is not).
fn model_path() -> Option<PathBuf> {
    lumen_testkit::chat_gguf()
}

#[test]
fn smollm2_q4_1_header_metadata_and_tensors() {
    let Some(path) = model_path() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), 32);

    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(md.get_u32("llama.block_count").unwrap(), 30);
    assert_eq!(md.get_u32("llama.embedding_length").unwrap(), 576);
    assert_eq!(md.get_u32("llama.attention.head_count").unwrap(), 9);
    assert_eq!(md.get_u32("llama.attention.head_count_kv").unwrap(), 3);
    assert_eq!(md.get_f32("llama.rope.freq_base").unwrap(), 100_000.0);
    assert_eq!(md.get_str("tokenizer.ggml.model").unwrap(), "gpt2");
    let tokens = md.get_str_array("tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens.len(), 49_152);
    assert_eq!(tokens[0], "<|endoftext|>");
    assert_eq!(
        md.get_i32_array("tokenizer.ggml.token_type").unwrap().len(),
        49_152
    );
    assert!(md
        .get_str("tokenizer.chat_template")
        .unwrap()
        .contains("im_start"));

    // 30 layers x 9 tensors, plus the embedding and the final norm; the output
    // projection is tied to the Q8_0 embedding.
    assert_eq!(f.tensors().len(), 272);
    let mut by_type = BTreeMap::new();
    for t in f.tensors() {
        *by_type.entry(t.ggml_type.name()).or_insert(0) += 1;
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
    }
    assert_eq!(
        by_type,
        BTreeMap::from([("F32", 61), ("Q4_1", 210), ("Q8_0", 1)])
    );
    assert!(f.tensor("output.weight").is_none());

    let embd = f.tensor("token_embd.weight").unwrap();
    assert_eq!(embd.ggml_type, GgmlType::Q8_0);
    assert_eq!(embd.dims, vec![576, 49_152]);
    assert_eq!(embd.n_bytes, 576 / 32 * 34 * 49_152);
    let down = f.tensor("blk.29.ffn_down.weight").unwrap();
    assert_eq!(
        (down.ggml_type, down.dims.as_slice()),
        (GgmlType::Q4_1, &[1536, 576][..])
    );

    // Norm weights are real, finite, mostly non-zero floats: the offsets point at data.
    let norm = f.tensor("output_norm.weight").unwrap();
    let values: Vec<f32> = f
        .tensor_data(norm)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(values.len(), 576);
    assert!(values.iter().all(|v| v.is_finite()));
    assert!(values.iter().filter(|v| **v != 0.0).count() > 500);

    // The data section is packed: the last tensor ends at the end of the file.
    let end = f
        .tensors()
        .iter()
        .map(|t| t.offset + t.n_bytes)
        .max()
        .unwrap();
    assert_eq!(end, f.file_len());
}
