//! A tiny test-only GGUF writer: well-formed files by default, with hooks to corrupt
//! any field.

#![allow(dead_code)]

use lumen_gguf::Value;

/// Appends a little-endian `u32`.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a little-endian `u64`.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// Appends a GGUF string (u64 length + raw bytes, which need not be UTF-8).
pub fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_u64(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Appends a value's payload (no type tag). Arrays take their item type from the first
/// item; an empty array is written as an array of `u8`.
pub fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(b) => out.push(u8::from(*b)),
        Value::String(s) => put_str(out, s.as_bytes()),
        Value::Array(items) => {
            put_u32(out, items.first().map_or(0, Value::type_id));
            put_u64(out, items.len() as u64);
            for item in items {
                put_value(out, item);
            }
        }
    }
}

/// One metadata entry: a typed value, or raw bytes written verbatim (key included).
pub enum Kv {
    /// Key and value, encoded normally.
    Val(String, Value),
    /// A fully hand-encoded entry.
    Raw(Vec<u8>),
}

/// One tensor to write.
pub struct Tensor {
    /// Name bytes (need not be UTF-8).
    pub name: Vec<u8>,
    /// Dims as written (`n_dims` is `dims.len()`).
    pub dims: Vec<u64>,
    /// ggml type id as written.
    pub type_id: u32,
    /// Data bytes, placed at the next aligned position of the data section.
    pub data: Vec<u8>,
    /// Relative offset to write instead of the real one.
    pub offset_override: Option<u64>,
}

impl Tensor {
    /// A tensor with the given shape, type and data.
    pub fn new(name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> Self {
        Tensor {
            name: name.as_bytes().to_vec(),
            dims: dims.to_vec(),
            type_id,
            data,
            offset_override: None,
        }
    }
}

/// Builds a GGUF file in memory.
pub struct Builder {
    /// Header version.
    pub version: u32,
    /// Metadata entries in order.
    pub kvs: Vec<Kv>,
    /// Tensors in order.
    pub tensors: Vec<Tensor>,
    /// Alignment used to lay out the data section (does not write `general.alignment`).
    pub alignment: u64,
    /// Tensor count to write instead of `tensors.len()`.
    pub tensor_count: Option<u64>,
    /// Metadata count to write instead of `kvs.len()`.
    pub kv_count: Option<u64>,
    /// Offsets of every length/count (u64) field written, for targeted corruption.
    pub length_fields: Vec<usize>,
}

impl Builder {
    /// An empty v3 file.
    pub fn new() -> Self {
        Builder::version(3)
    }

    /// An empty file of the given version.
    pub fn version(version: u32) -> Self {
        Builder {
            version,
            kvs: Vec::new(),
            tensors: Vec::new(),
            alignment: 32,
            tensor_count: None,
            kv_count: None,
            length_fields: Vec::new(),
        }
    }

    /// Adds a typed metadata entry.
    pub fn kv(mut self, key: &str, v: Value) -> Self {
        self.kvs.push(Kv::Val(key.to_owned(), v));
        self
    }

    /// Adds a hand-encoded metadata entry.
    pub fn raw_kv(mut self, bytes: Vec<u8>) -> Self {
        self.kvs.push(Kv::Raw(bytes));
        self
    }

    /// Adds a tensor.
    pub fn tensor(mut self, t: Tensor) -> Self {
        self.tensors.push(t);
        self
    }

    /// Serializes the file.
    pub fn build(&mut self) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        let mut lens = Vec::new();
        put_u32(&mut out, self.version);
        lens.push(out.len());
        put_u64(
            &mut out,
            self.tensor_count.unwrap_or(self.tensors.len() as u64),
        );
        lens.push(out.len());
        put_u64(&mut out, self.kv_count.unwrap_or(self.kvs.len() as u64));
        for kv in &self.kvs {
            match kv {
                Kv::Val(k, v) => {
                    lens.push(out.len());
                    put_str(&mut out, k.as_bytes());
                    put_u32(&mut out, v.type_id());
                    if let Value::String(_) | Value::Array(_) = v {
                        lens.push(out.len() + if v.as_array().is_some() { 4 } else { 0 });
                    }
                    put_value(&mut out, v);
                }
                Kv::Raw(bytes) => out.extend_from_slice(bytes),
            }
        }
        // Lay the data section out first so descriptors can carry real offsets.
        let align = self.alignment as usize;
        let mut rel = Vec::new();
        let mut data_len = 0usize;
        for t in &self.tensors {
            data_len = data_len.div_ceil(align) * align;
            rel.push(data_len);
            data_len += t.data.len();
        }
        for (t, &r) in self.tensors.iter().zip(&rel) {
            lens.push(out.len());
            put_str(&mut out, &t.name);
            put_u32(&mut out, t.dims.len() as u32);
            for &d in &t.dims {
                put_u64(&mut out, d);
            }
            put_u32(&mut out, t.type_id);
            lens.push(out.len());
            put_u64(&mut out, t.offset_override.unwrap_or(r as u64));
        }
        if !self.tensors.is_empty() {
            out.resize(out.len().div_ceil(align) * align, 0);
            let start = out.len();
            for (t, &r) in self.tensors.iter().zip(&rel) {
                out.resize(start + r, 0);
                out.extend_from_slice(&t.data);
            }
        }
        self.length_fields = lens;
        out
    }
}

/// A hand-encoded metadata entry: key bytes, type id, payload bytes.
pub fn raw_entry(key: &[u8], type_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_str(&mut out, key);
    put_u32(&mut out, type_id);
    out.extend_from_slice(payload);
    out
}

/// `n` little-endian f32s `0.0, 1.0, 2.0, ...` as bytes.
pub fn f32_bytes(n: usize) -> Vec<u8> {
    (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect()
}

/// `n` bytes of a recognisable pattern.
pub fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

/// Every metadata value type once, plus nested and empty arrays.
pub fn every_value_type() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("t.u8", Value::U8(200)),
        ("t.i8", Value::I8(-5)),
        ("t.u16", Value::U16(60_000)),
        ("t.i16", Value::I16(-300)),
        ("t.u32", Value::U32(4_000_000_000)),
        ("t.i32", Value::I32(-7)),
        ("t.u64", Value::U64(1 << 40)),
        ("t.i64", Value::I64(-(1 << 40))),
        ("t.f32", Value::F32(1.5)),
        ("t.f64", Value::F64(-2.25)),
        ("t.bool", Value::Bool(true)),
        ("t.string", Value::String("héllo, wörld".into())),
        ("t.empty_string", Value::String(String::new())),
        (
            "t.u32s",
            Value::Array(vec![Value::U32(1), Value::U32(2), Value::U32(3)]),
        ),
        (
            "t.i32s",
            Value::Array(vec![Value::I32(-1), Value::I32(0), Value::I32(9)]),
        ),
        (
            "t.f32s",
            Value::Array(vec![Value::F32(0.5), Value::F32(-1.0)]),
        ),
        (
            "t.strings",
            Value::Array(vec![Value::String("a".into()), Value::String("<s>".into())]),
        ),
        ("t.empty", Value::Array(vec![])),
        (
            "t.nested",
            Value::Array(vec![
                Value::Array(vec![Value::I64(1), Value::I64(2)]),
                Value::Array(vec![Value::I64(3)]),
            ]),
        ),
        (
            "t.deep",
            Value::Array(vec![Value::Array(vec![Value::Array(vec![Value::Bool(
                false,
            )])])]),
        ),
    ]
}

/// A valid file: every value type, an F32 tensor and a Q8_0 tensor.
pub fn sample_builder(version: u32) -> Builder {
    let mut b = Builder::version(version);
    for (k, v) in every_value_type() {
        b = b.kv(k, v);
    }
    b.tensor(Tensor::new("a.f32", &[4, 2], 0, f32_bytes(8)))
        .tensor(Tensor::new("b.q8_0", &[64, 3], 8, pattern(2 * 3 * 34, 7)))
}
