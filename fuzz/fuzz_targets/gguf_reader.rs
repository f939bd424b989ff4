//! Fuzzes the GGUF reader: any input must parse or fail with an error, never panic,
//! and everything a parsed file hands out must be readable.
//!
//! Run with `cargo fuzz run gguf_reader` from the repository root.

#![no_main]

use libfuzzer_sys::fuzz_target;
use lumen_gguf::{GgufFile, Value};

/// Visits every value, nested arrays included.
fn walk(v: &Value) -> u64 {
    match v {
        Value::Array(items) => items.iter().map(walk).fold(1, u64::wrapping_add),
        Value::String(s) => s.len() as u64,
        other => other
            .as_f64()
            .map_or(u64::from(other.as_bool() == Some(true)), f64::to_bits),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(file) = GgufFile::from_bytes(data.to_vec()) else {
        return;
    };
    let mut acc = 0u64;
    for (key, value) in file.metadata().iter() {
        acc = acc.wrapping_add(key.len() as u64).wrapping_add(walk(value));
    }
    for t in file.tensors() {
        let bytes = file.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.n_bytes);
        assert!(file.tensor(&t.name).is_some());
        acc = bytes.iter().fold(acc, |a, &b| a.wrapping_add(u64::from(b)));
    }
    std::hint::black_box(acc);
});
