//! Seeded mutations of valid files (bit flips, truncations, corrupted length and type
//! fields, inserted and deleted bytes) must never make the parser panic. The fuzz target
//! in `fuzz/` explores further; this runs in every `cargo test`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};

use common::{f32_bytes, pattern, sample_builder, Builder, Tensor};
use lumen_gguf::{GgmlType, GgufFile, Value};

/// Mutations per base file (`LUMEN_GGUF_MUTATION_ROUNDS` raises it for a longer soak).
fn rounds() -> usize {
    std::env::var("LUMEN_GGUF_MUTATION_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1500)
}

/// xorshift64*: small, seeded, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Valid files to start from, with the offsets of their length/count fields.
fn bases() -> Vec<(Vec<u8>, Vec<usize>)> {
    let mut builders = vec![sample_builder(3), sample_builder(2)];
    let mut aligned = Builder::new()
        .kv("general.alignment", Value::U32(64))
        .kv(
            "tokens",
            Value::Array((0..40).map(|i| Value::String(format!("t{i}"))).collect()),
        )
        .tensor(Tensor::new("x", &[3, 1, 1, 2], 0, f32_bytes(6)))
        .tensor(Tensor::new(
            "y",
            &[256],
            GgmlType::Q4_K.id(),
            pattern(144, 3),
        ));
    aligned.alignment = 64;
    builders.push(aligned);
    let mut deep = Value::U16(7);
    for _ in 0..7 {
        deep = Value::Array(vec![deep.clone(), deep]);
    }
    builders.push(Builder::version(2).kv("deep", deep));
    builders
        .into_iter()
        .map(|mut b| {
            let bytes = b.build();
            (bytes, b.length_fields)
        })
        .collect()
}

/// Interesting values for a corrupted u64 length field.
fn evil_u64(rng: &mut Rng, remaining: usize) -> u64 {
    let r = remaining as u64;
    let choices = [
        0,
        1,
        2,
        7,
        255,
        1 << 31,
        1 << 32,
        u64::MAX,
        u64::MAX / 2,
        u64::MAX / 4 + 1,
        u64::MAX / 8 + 1,
        r,
        r + 1,
        r.saturating_sub(1),
        r / 8 + 1,
        rng.next(),
    ];
    choices[rng.below(choices.len())]
}

/// Applies one random mutation.
fn mutate(rng: &mut Rng, bytes: &mut Vec<u8>, fields: &[usize]) {
    let len = bytes.len();
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                if let Some(b) = bytes.get_mut(i) {
                    *b ^= 1 << rng.below(8);
                }
            }
        }
        1 => bytes.truncate(rng.below(len)),
        2 if !fields.is_empty() => {
            let at = fields[rng.below(fields.len())];
            if at + 8 <= bytes.len() {
                let v = evil_u64(rng, bytes.len() - at - 8);
                bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        3 => {
            let at = rng.below(len.saturating_sub(4));
            let v = [0u32, 1, 4, 5, 8, 9, 10, 12, 13, 39, 99, u32::MAX][rng.below(12)];
            if at + 4 <= bytes.len() {
                bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
        }
        4 => {
            let at = rng.below(len);
            for _ in 0..1 + rng.below(16) {
                bytes.insert(at.min(bytes.len()), rng.next() as u8);
            }
        }
        _ => {
            let at = rng.below(len);
            let n = (1 + rng.below(16)).min(bytes.len().saturating_sub(at));
            bytes.drain(at..at + n);
        }
    }
}

/// Reads everything a caller could read from a successfully parsed file.
fn touch_everything(f: &GgufFile) -> u64 {
    fn walk(v: &Value) -> u64 {
        match v {
            Value::Array(items) => items.iter().map(walk).sum::<u64>() + 1,
            Value::String(s) => s.len() as u64,
            other => {
                other.as_f64().map_or(0, |x| x.to_bits() & 1)
                    + u64::from(other.as_bool() == Some(true))
            }
        }
    }
    let mut acc = 0u64;
    for (k, v) in f.metadata().iter() {
        acc = acc.wrapping_add(k.len() as u64).wrapping_add(walk(v));
        assert!(f.metadata().get(k).is_some());
    }
    for t in f.tensors() {
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes, "{}", t.name);
        assert_eq!(t.offset % f.alignment(), 0);
        assert!(f.tensor(&t.name).is_some());
        acc = acc.wrapping_add(data.iter().map(|&b| u64::from(b)).sum::<u64>());
    }
    acc
}

#[test]
fn seeded_mutations_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let rounds = rounds();
    let (mut accepted, mut rejected) = (0, 0);
    for (base_idx, (base, fields)) in bases().into_iter().enumerate() {
        assert!(
            GgufFile::from_bytes(base.clone()).is_ok(),
            "base {base_idx} must be valid"
        );
        for round in 0..rounds {
            let mut bytes = base.clone();
            for _ in 0..1 + rng.below(3) {
                mutate(&mut rng, &mut bytes, &fields);
            }
            let input = bytes.clone();
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                GgufFile::from_bytes(input).map(|f| touch_everything(&f))
            }));
            match outcome {
                Ok(Ok(_)) => accepted += 1,
                Ok(Err(e)) => {
                    let _ = e.to_string();
                    rejected += 1;
                }
                Err(_) => panic!("panic on base {base_idx}, round {round}: {bytes:02x?}"),
            }
        }
    }
    println!("{accepted} mutated files accepted, {rejected} rejected");
    assert!(rejected > rounds, "mutations should mostly break files");
}
