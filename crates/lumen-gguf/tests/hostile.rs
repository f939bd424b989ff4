//! Handcrafted bad files: each hostile-file rule rejects its file with a typed error.

mod common;

use common::{f32_bytes, pattern, put_u32, put_u64, raw_entry, sample_builder, Builder, Tensor};
use lumen_gguf::{GgufError, GgufFile, Value, MAX_NESTING};

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

fn parse_builder(mut b: Builder) -> GgufError {
    parse(b.build()).expect_err("file should be rejected")
}

/// A file whose only content is one tensor built from `t`.
fn one_tensor(t: Tensor) -> GgufError {
    parse_builder(Builder::new().tensor(t))
}

#[test]
fn bad_magic() {
    let mut bytes = sample_builder(3).build();
    bytes[0] = b'g';
    assert!(matches!(parse(bytes), Err(GgufError::BadMagic)));
    assert!(matches!(
        parse(b"GGML\x03\0\0\0".to_vec()),
        Err(GgufError::BadMagic)
    ));
}

#[test]
fn unsupported_versions() {
    for v in [0, 1, 4, u32::MAX, 3 << 24] {
        let err = parse_builder(Builder::version(v));
        assert!(
            matches!(err, GgufError::UnsupportedVersion(got) if got == v),
            "{v}: {err:?}"
        );
    }
}

#[test]
fn truncated_header() {
    let bytes = Builder::new().build();
    let err = parse(bytes[..10].to_vec()).unwrap_err();
    assert!(
        matches!(
            err,
            GgufError::Truncated {
                what: "tensor count",
                offset: 8
            }
        ),
        "{err:?}"
    );
    assert!(matches!(
        parse(vec![]),
        Err(GgufError::Truncated {
            what: "magic",
            offset: 0
        })
    ));
}

#[test]
fn every_strict_prefix_of_a_valid_file_is_rejected() {
    let bytes = sample_builder(3).build();
    for len in 0..bytes.len() {
        assert!(
            parse(bytes[..len].to_vec()).is_err(),
            "prefix of {len} bytes accepted"
        );
    }
}

#[test]
fn tensor_count_beyond_file() {
    let mut b = Builder::new();
    b.tensor_count = Some(u64::MAX);
    let err = parse_builder(b);
    assert!(matches!(
        err,
        GgufError::CountTooLarge {
            what: "tensor count",
            count: u64::MAX,
            ..
        }
    ));
    // Small enough not to overflow, still more descriptors than bytes allow.
    let mut b = sample_builder(3);
    b.tensor_count = Some(1000);
    assert!(matches!(
        parse_builder(b),
        GgufError::CountTooLarge {
            what: "tensor count",
            ..
        }
    ));
}

#[test]
fn metadata_count_beyond_file() {
    let mut b = Builder::new().kv("a", Value::U8(1));
    b.kv_count = Some(1 << 40);
    let err = parse_builder(b);
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                what: "metadata count",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn key_length_beyond_file() {
    let mut entry = Vec::new();
    put_u64(&mut entry, u64::MAX);
    entry.extend_from_slice(b"key and then some");
    let err = parse_builder(Builder::new().raw_kv(entry));
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                what: "metadata key",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn string_value_length_beyond_file() {
    let mut payload = Vec::new();
    put_u64(&mut payload, 1 << 62);
    payload.extend_from_slice(b"short");
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 8, &payload)));
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                what: "string value",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn array_length_beyond_file() {
    let mut payload = Vec::new();
    put_u32(&mut payload, 0); // u8 items
    put_u64(&mut payload, u64::MAX);
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)));
    assert!(
        matches!(
            err,
            GgufError::CountTooLarge {
                what: "array length",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn array_length_times_item_size_overflowing_is_rejected() {
    let mut payload = Vec::new();
    put_u32(&mut payload, 10); // u64 items: count * 8 overflows
    put_u64(&mut payload, u64::MAX / 4);
    payload.extend_from_slice(&[0; 64]);
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)));
    assert!(matches!(err, GgufError::CountTooLarge { .. }), "{err:?}");
}

#[test]
fn array_length_is_bounded_by_the_item_size() {
    // 64 bytes follow the count: room for 64 u8 items but only 8 u64 items.
    let mut payload = Vec::new();
    put_u32(&mut payload, 10);
    put_u64(&mut payload, 9);
    payload.extend_from_slice(&[0; 64]);
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)));
    assert!(
        matches!(err, GgufError::CountTooLarge { count: 9, .. }),
        "{err:?}"
    );
    payload[..4].copy_from_slice(&0u32.to_le_bytes()); // the same count of u8 items fits
    assert!(parse(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)).build()).is_ok());
}

#[test]
fn too_many_dims() {
    let err = one_tensor(Tensor::new("t5", &[1, 1, 1, 1, 1], 0, f32_bytes(1)));
    assert!(
        matches!(&err, GgufError::TooManyDims { tensor, n_dims: 5 } if tensor == "t5"),
        "{err:?}"
    );
    assert!(err.to_string().contains("t5"));
}

#[test]
fn zero_dim() {
    let err = one_tensor(Tensor::new("z", &[4, 0], 0, vec![]));
    assert!(matches!(err, GgufError::ZeroDim), "{err:?}");
}

#[test]
fn element_count_overflow() {
    let err = one_tensor(Tensor::new("big", &[1 << 32, 1 << 32, 1 << 32], 0, vec![]));
    assert!(
        matches!(&err, GgufError::ElementOverflow { tensor } if tensor == "big"),
        "{err:?}"
    );
}

#[test]
fn byte_count_overflow() {
    // 2^62 elements fit in u64; 2^62 * 4 bytes do not.
    let err = one_tensor(Tensor::new("wide", &[1 << 62, 1], 0, vec![]));
    assert!(matches!(err, GgufError::ElementOverflow { .. }), "{err:?}");
}

#[test]
fn row_not_block_aligned() {
    let err = one_tensor(Tensor::new("q", &[33, 2], 8, pattern(68, 0)));
    assert!(
        matches!(&err, GgufError::RowNotBlockAligned { tensor, row_len: 33, block_size: 32, .. } if tensor == "q"),
        "{err:?}"
    );
}

#[test]
fn tensor_data_past_end_of_file() {
    let mut t = Tensor::new("far", &[8], 0, f32_bytes(8));
    t.offset_override = Some(1 << 20);
    let err = one_tensor(t);
    assert!(
        matches!(&err, GgufError::TensorOutOfBounds { tensor, .. } if tensor == "far"),
        "{err:?}"
    );
}

#[test]
fn tensor_data_one_byte_short() {
    let mut bytes = Builder::new()
        .tensor(Tensor::new("t", &[8], 0, f32_bytes(8)))
        .build();
    assert!(parse(bytes.clone()).is_ok());
    bytes.pop();
    let err = parse(bytes).unwrap_err();
    assert!(
        matches!(err, GgufError::TensorOutOfBounds { n_bytes: 32, .. }),
        "{err:?}"
    );
}

#[test]
fn tensor_offset_overflowing_u64() {
    let mut t = Tensor::new("wrap", &[8], 0, f32_bytes(8));
    t.offset_override = Some(u64::MAX - 31); // aligned to 32, but data_start + it overflows
    let err = one_tensor(t);
    assert!(
        matches!(err, GgufError::TensorOutOfBounds { .. }),
        "{err:?}"
    );
}

#[test]
fn tensor_misaligned() {
    let mut t = Tensor::new("odd", &[8], 0, f32_bytes(8));
    t.offset_override = Some(4);
    let err = one_tensor(t);
    assert!(
        matches!(&err, GgufError::TensorMisaligned { tensor, offset: 4 } if tensor == "odd"),
        "{err:?}"
    );
}

#[test]
fn alignment_zero_or_not_power_of_two() {
    for a in [0u32, 3, 48] {
        let err = parse_builder(Builder::new().kv("general.alignment", Value::U32(a)));
        assert!(
            matches!(err, GgufError::BadAlignment(got) if got == u64::from(a)),
            "{a}: {err:?}"
        );
    }
}

#[test]
fn alignment_of_a_non_unsigned_type() {
    for v in [Value::I32(32), Value::String("32".into()), Value::F32(32.0)] {
        let err = parse_builder(Builder::new().kv("general.alignment", v));
        assert!(
            matches!(
                err,
                GgufError::WrongType {
                    expected: "unsigned integer",
                    ..
                }
            ),
            "{err:?}"
        );
    }
}

#[test]
fn huge_alignment_does_not_overflow() {
    let b = Builder::new()
        .kv("general.alignment", Value::U64(1 << 63))
        .tensor(Tensor::new("t", &[1], 0, f32_bytes(1)));
    let err = parse_builder(b);
    assert!(
        matches!(err, GgufError::TensorOutOfBounds { .. }),
        "{err:?}"
    );
}

#[test]
fn duplicate_key() {
    let err = parse_builder(Builder::new().kv("k", Value::U8(1)).kv("k", Value::U8(2)));
    assert!(
        matches!(&err, GgufError::DuplicateKey(k) if k == "k"),
        "{err:?}"
    );
}

#[test]
fn duplicate_tensor() {
    let b = Builder::new()
        .tensor(Tensor::new("w", &[1], 0, f32_bytes(1)))
        .tensor(Tensor::new("w", &[1], 0, f32_bytes(1)));
    let err = parse_builder(b);
    assert!(
        matches!(&err, GgufError::DuplicateTensor(n) if n == "w"),
        "{err:?}"
    );
}

#[test]
fn unknown_value_type() {
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 13, &[0; 8])));
    assert!(matches!(err, GgufError::UnknownValueType(13)), "{err:?}");
    assert!(err.to_string().contains("13"));
}

#[test]
fn unknown_array_item_type() {
    let mut payload = Vec::new();
    put_u32(&mut payload, 99);
    put_u64(&mut payload, 0);
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)));
    assert!(matches!(err, GgufError::UnknownValueType(99)), "{err:?}");
}

#[test]
fn unknown_tensor_type() {
    for id in [4u32, 33, 99] {
        let err = one_tensor(Tensor::new("mystery", &[32], id, pattern(64, 0)));
        assert!(
            matches!(&err, GgufError::UnknownTensorType { tensor, id: got } if tensor == "mystery" && *got == id),
            "{err:?}"
        );
        let msg = err.to_string();
        assert!(
            msg.contains("mystery") && msg.contains(&id.to_string()),
            "{msg}"
        );
    }
}

#[test]
fn invalid_utf8_in_key() {
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k\xff", 0, &[1])));
    assert!(
        matches!(
            err,
            GgufError::InvalidUtf8 {
                what: "metadata key"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn invalid_utf8_in_string_value() {
    let mut payload = Vec::new();
    common::put_str(&mut payload, b"\xc3\x28");
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 8, &payload)));
    assert!(
        matches!(
            err,
            GgufError::InvalidUtf8 {
                what: "string value"
            }
        ),
        "{err:?}"
    );
}

#[test]
fn invalid_utf8_in_string_array_item() {
    let mut payload = Vec::new();
    put_u32(&mut payload, 8);
    put_u64(&mut payload, 2);
    common::put_str(&mut payload, b"ok");
    common::put_str(&mut payload, b"\x80");
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)));
    assert!(matches!(err, GgufError::InvalidUtf8 { .. }), "{err:?}");
}

#[test]
fn invalid_utf8_in_tensor_name() {
    let mut t = Tensor::new("", &[1], 0, f32_bytes(1));
    t.name = b"w\xfe".to_vec();
    let err = one_tensor(t);
    assert!(
        matches!(
            err,
            GgufError::InvalidUtf8 {
                what: "tensor name"
            }
        ),
        "{err:?}"
    );
}

/// An array nested `depth` deep with a single `u8` at the bottom.
fn nested(depth: usize) -> Value {
    let mut v = Value::U8(1);
    for _ in 0..depth {
        v = Value::Array(vec![v]);
    }
    v
}

#[test]
fn nesting_up_to_the_limit_is_accepted() {
    let f = parse(Builder::new().kv("n", nested(MAX_NESTING)).build()).unwrap();
    assert_eq!(f.metadata().get("n"), Some(&nested(MAX_NESTING)));
}

#[test]
fn nesting_too_deep() {
    let err = parse_builder(Builder::new().kv("n", nested(MAX_NESTING + 1)));
    assert!(matches!(err, GgufError::NestingTooDeep), "{err:?}");
    // Far deeper than the stack could take if recursion were unbounded.
    let mut payload = Vec::new();
    for _ in 0..100_000 {
        put_u32(&mut payload, 9);
        put_u64(&mut payload, 1);
    }
    let err = parse_builder(Builder::new().raw_kv(raw_entry(b"k", 9, &payload)));
    assert!(matches!(err, GgufError::NestingTooDeep), "{err:?}");
}
