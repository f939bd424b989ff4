//! Well-formed files read back exactly.

mod common;

use common::{every_value_type, f32_bytes, pattern, sample_builder, Builder, Tensor};
use lumen_gguf::{GgmlType, GgufError, GgufFile, Residency, Value};

fn check_sample(version: u32) {
    let bytes = sample_builder(version).build();
    let f = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(f.version(), version);
    assert_eq!(f.alignment(), 32);
    assert_eq!(f.data_offset() % 32, 0);

    // Metadata: every value, in file order.
    let expected = every_value_type();
    let md = f.metadata();
    assert_eq!(md.len(), expected.len());
    for ((k, v), (ek, ev)) in md.iter().zip(&expected) {
        assert_eq!(k, *ek);
        assert_eq!(v, ev, "{k}");
        assert_eq!(md.get(k), Some(ev));
    }
    assert_eq!(md.get("missing"), None);

    // Tensors, in file order, with data where the descriptors say.
    let ts = f.tensors();
    assert_eq!(ts.len(), 2);
    let a = &ts[0];
    assert_eq!(a.name, "a.f32");
    assert_eq!(a.dims, vec![4, 2]);
    assert_eq!(a.ggml_type, GgmlType::F32);
    assert_eq!((a.n_elements, a.n_bytes), (8, 32));
    assert_eq!((a.row_len(), a.n_rows()), (4, 2));
    assert_eq!(a.offset, f.data_offset());
    assert_eq!(f.tensor_data(a), &f32_bytes(8)[..]);
    assert_eq!(&bytes[a.offset as usize..][..32], f.tensor_data(a));

    let b = f.tensor("b.q8_0").unwrap();
    assert_eq!(b, &ts[1]);
    assert_eq!(b.ggml_type, GgmlType::Q8_0);
    assert_eq!(b.dims, vec![64, 3]);
    assert_eq!((b.n_elements, b.n_bytes), (192, 6 * 34));
    assert_eq!(b.offset % 32, 0);
    assert_eq!(b.offset, f.data_offset() + 32);
    assert_eq!(f.tensor_data(b), &pattern(6 * 34, 7)[..]);
    assert!(f.tensor("nope").is_none());
}

#[test]
fn v3_file_with_every_value_type_reads_back() {
    check_sample(3);
}

#[test]
fn v2_file_with_every_value_type_reads_back() {
    check_sample(2);
}

#[test]
fn typed_getters_convert_what_fits() {
    let f = GgufFile::from_bytes(sample_builder(3).build()).unwrap();
    let md = f.metadata();
    assert_eq!(md.get_str("general.architecture").unwrap(), "llama");
    assert_eq!(md.get_u32("t.u8").unwrap(), 200);
    assert_eq!(md.get_u32("t.u32").unwrap(), 4_000_000_000);
    assert_eq!(md.get_u64("t.u64").unwrap(), 1 << 40);
    assert_eq!(md.get_f32("t.f32").unwrap(), 1.5);
    assert_eq!(md.get_f32("t.f64").unwrap(), -2.25);
    assert_eq!(md.get_f32("t.u16").unwrap(), 60_000.0);
    assert!(md.get_bool("t.bool").unwrap());
    assert_eq!(md.get_array("t.u32s").unwrap().len(), 3);
    assert_eq!(md.get_str_array("t.strings").unwrap(), vec!["a", "<s>"]);
    assert_eq!(md.get_i32_array("t.i32s").unwrap(), vec![-1, 0, 9]);
    assert_eq!(md.get_i32_array("t.u32s").unwrap(), vec![1, 2, 3]);
    assert_eq!(md.get_f32_array("t.f32s").unwrap(), vec![0.5, -1.0]);
    assert_eq!(md.get_f32_array("t.u32s").unwrap(), vec![1.0, 2.0, 3.0]);
    assert!(md.get_str_array("t.empty").unwrap().is_empty());
    let nested = md.get_array("t.nested").unwrap();
    assert_eq!(nested[0].as_array().unwrap()[1].as_i64(), Some(2));
}

#[test]
fn typed_getters_report_missing_wrong_type_and_range() {
    let f = GgufFile::from_bytes(sample_builder(3).build()).unwrap();
    let md = f.metadata();
    assert!(matches!(md.get_u32("nope"), Err(GgufError::MissingKey { key }) if key == "nope"));
    assert!(matches!(
        md.get_str("t.u32"),
        Err(GgufError::WrongType {
            expected: "string",
            found: "u32",
            ..
        })
    ));
    assert!(matches!(
        md.get_u32("t.u64"),
        Err(GgufError::OutOfRange {
            expected: "u32",
            ..
        })
    ));
    assert!(matches!(
        md.get_u64("t.i8"),
        Err(GgufError::OutOfRange { .. })
    ));
    assert!(matches!(
        md.get_u32("t.f32"),
        Err(GgufError::WrongType { found: "f32", .. })
    ));
    assert!(matches!(
        md.get_f32("t.string"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        md.get_bool("t.u8"),
        Err(GgufError::WrongType { .. })
    ));
    assert!(matches!(
        md.get_array("t.bool"),
        Err(GgufError::WrongType { .. })
    ));
    match md.get_str_array("t.u32s") {
        Err(GgufError::WrongType {
            key,
            expected: "string",
            found: "u32",
        }) => {
            assert_eq!(key, "t.u32s[0]")
        }
        other => panic!("{other:?}"),
    }
    match md.get_i32_array("t.nested") {
        Err(GgufError::WrongType {
            key,
            found: "array",
            ..
        }) => assert_eq!(key, "t.nested[0]"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        md.get_i32_array("t.strings"),
        Err(GgufError::WrongType { .. })
    ));
}

#[test]
fn i32_array_items_out_of_range_are_named() {
    let f = GgufFile::from_bytes(
        Builder::new()
            .kv(
                "big",
                Value::Array(vec![Value::U64(1), Value::U64(1 << 40)]),
            )
            .build(),
    )
    .unwrap();
    match f.metadata().get_i32_array("big") {
        Err(GgufError::OutOfRange { key, .. }) => assert_eq!(key, "big[1]"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn custom_alignment_lays_out_tensors_on_it() {
    let mut b = Builder::new()
        .kv("general.alignment", Value::U32(64))
        .tensor(Tensor::new("x", &[3], 0, f32_bytes(3)))
        .tensor(Tensor::new("y", &[5], 0, f32_bytes(5)));
    b.alignment = 64;
    let f = GgufFile::from_bytes(b.build()).unwrap();
    assert_eq!(f.alignment(), 64);
    assert_eq!(f.data_offset() % 64, 0);
    let y = f.tensor("y").unwrap();
    assert_eq!(y.offset, f.data_offset() + 64);
    assert_eq!(f.tensor_data(y), &f32_bytes(5)[..]);
}

#[test]
fn file_without_tensors_or_metadata_parses() {
    let f = GgufFile::from_bytes(Builder::new().build()).unwrap();
    assert!(f.metadata().is_empty());
    assert!(f.tensors().is_empty());
}

#[test]
fn scalar_tensor_with_no_dims_is_one_element() {
    let f = GgufFile::from_bytes(
        Builder::new()
            .tensor(Tensor::new("s", &[], 0, f32_bytes(1)))
            .build(),
    )
    .unwrap();
    let s = f.tensor("s").unwrap();
    assert_eq!((s.n_elements, s.n_bytes, s.row_len()), (1, 4, 1));
}

#[test]
fn every_known_type_sizes_a_one_block_tensor() {
    let mut b = Builder::new();
    for ty in GgmlType::ALL {
        let bs = ty.block_size();
        b = b.tensor(Tensor::new(
            ty.name(),
            &[bs, 2],
            ty.id(),
            pattern(2 * ty.type_size() as usize, 1),
        ));
    }
    let f = GgufFile::from_bytes(b.build()).unwrap();
    for (t, ty) in f.tensors().iter().zip(GgmlType::ALL) {
        assert_eq!(t.ggml_type, ty);
        assert_eq!(t.n_bytes, 2 * ty.type_size());
        assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
    }
}

#[test]
fn foreign_tensor_info_gives_an_empty_slice_not_a_panic() {
    let f = GgufFile::from_bytes(Builder::new().build()).unwrap();
    let other = GgufFile::from_bytes(sample_builder(3).build()).unwrap();
    let mut t = other.tensors()[1].clone();
    assert!(f.tensor_data(&t).is_empty());
    t.offset = u64::MAX;
    assert!(other.tensor_data(&t).is_empty());
}

#[test]
fn open_maps_a_file_from_disk() {
    let dir = std::env::temp_dir().join(format!("lumen-gguf-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    std::fs::write(&path, sample_builder(3).build()).unwrap();
    // `open` maps the file; `load` reads it into resident (huge-page) memory. Same contents.
    for f in [
        GgufFile::open(&path).unwrap(),
        GgufFile::load(&path).unwrap(),
    ] {
        let a = f.tensor("a.f32").unwrap();
        assert_eq!(f.tensor_data(a), &f32_bytes(8)[..]);
        // Maps are page-aligned, so aligned offsets give aligned addresses.
        assert_eq!(f.tensor_data(a).as_ptr() as usize % 32, 0);
    }

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    for r in [GgufFile::open(&empty), GgufFile::load(&empty)] {
        assert!(matches!(r, Err(GgufError::Truncated { what: "magic", .. })));
    }
    for r in [
        GgufFile::open(&dir.join("absent.gguf")),
        GgufFile::load(&dir.join("absent.gguf")),
    ] {
        assert!(matches!(r, Err(GgufError::Io(_))));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_rewriting_transforms_chosen_tensors_in_place() {
    let dir = std::env::temp_dir().join(format!("lumen-gguf-rewrite-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("sample.gguf");
    std::fs::write(&path, sample_builder(3).build()).unwrap();
    let plain = GgufFile::load(&path).unwrap();
    let original = plain.tensor_data(plain.tensor("b.q8_0").unwrap()).to_vec();

    // Reverse the Q8_0 tensor's bytes, leave the F32 one alone.
    let mut seen = Vec::new();
    let f = GgufFile::load_rewriting(
        &path,
        Residency::Resident,
        |_| true,
        |t, data| -> Result<bool, GgufError> {
            seen.push((t.name.clone(), data.len() as u64 == t.n_bytes));
            if t.name == "b.q8_0" {
                data.reverse();
                return Ok(true);
            }
            Ok(false)
        },
    )
    .unwrap();
    assert_eq!(
        seen,
        [("a.f32".to_string(), true), ("b.q8_0".to_string(), true)]
    );
    let (a, b) = (f.tensor("a.f32").unwrap(), f.tensor("b.q8_0").unwrap());
    assert!(!f.is_rewritten(a) && f.is_rewritten(b));
    assert!(!plain.is_rewritten(plain.tensor("b.q8_0").unwrap()));
    assert_eq!(f.tensor_data(a), &f32_bytes(8)[..]);
    let mut want = original;
    want.reverse();
    assert_eq!(f.tensor_data(b), &want[..]);

    // The rewriter's error stops the load and comes back as is.
    #[derive(Debug, PartialEq)]
    struct Refused;
    impl From<GgufError> for Refused {
        fn from(_: GgufError) -> Self {
            Refused
        }
    }
    let r = GgufFile::load_rewriting(
        &path,
        Residency::Mapped,
        |_| true,
        |_, _| -> Result<bool, Refused> { Err(Refused) },
    );
    assert_eq!(r.err(), Some(Refused));
    // A file that does not parse fails before any tensor is handed out.
    std::fs::write(dir.join("bad.gguf"), b"GGUF").unwrap();
    let r = GgufFile::load_rewriting(
        &dir.join("bad.gguf"),
        Residency::Mapped,
        |_| true,
        |_, _| -> Result<bool, GgufError> { panic!("no tensors to rewrite") },
    );
    assert!(matches!(r, Err(GgufError::Truncated { .. })));
    std::fs::remove_dir_all(&dir).unwrap();
}
