//! The two ways a model's bytes are held while it runs: read into the process's own memory
//! (`Resident`), or mapped copy-on-write from the page cache (`Mapped`). Both give the loader
//! the same bytes to rewrite and the model the same bytes to compute with; the mapped one never
//! writes the file, and keeps the pages the loader leaves alone in the page cache, where other
//! processes serving the same file share them.

mod common;

use common::{f32_bytes, Builder, Tensor};
use lumen_gguf::{GgufError, GgufFile, Residency, TensorInfo};
use lumen_testkit::smaps::{file_mapping, FileMapping};

/// A file with a 1 MiB tensor the loader keeps and a 64 KiB one it rewrites.
fn sample(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("model.gguf");
    let file = Builder::version(3)
        .kv(
            "general.architecture",
            lumen_gguf::Value::String("llama".into()),
        )
        .tensor(Tensor::new("kept", &[1024, 256], 0, f32_bytes(1024 * 256)))
        .tensor(Tensor::new(
            "rewritten",
            &[1024, 16],
            0,
            f32_bytes(1024 * 16),
        ))
        .build();
    std::fs::write(&path, file).unwrap();
    path
}

fn load(path: &std::path::Path, residency: Residency) -> GgufFile {
    GgufFile::load_rewriting(
        path,
        residency,
        |_| true,
        |t, data| -> Result<bool, GgufError> {
            if t.name == "rewritten" {
                data.reverse();
                return Ok(true);
            }
            Ok(false)
        },
    )
    .unwrap()
}

#[test]
fn both_residencies_give_the_same_bytes_and_the_map_never_writes_the_file() {
    let dir = std::env::temp_dir().join(format!("lumen-gguf-residency-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = sample(&dir);
    let on_disk = std::fs::read(&path).unwrap();

    let resident = load(&path, Residency::Resident);
    let mapped = load(&path, Residency::Mapped);
    for name in ["kept", "rewritten"] {
        let (a, b) = (resident.tensor(name).unwrap(), mapped.tensor(name).unwrap());
        assert_eq!(resident.tensor_data(a), mapped.tensor_data(b), "{name}");
        assert_eq!(resident.is_rewritten(a), mapped.is_rewritten(b));
    }
    let mut want = f32_bytes(1024 * 16);
    want.reverse();
    assert_eq!(
        mapped.tensor_data(mapped.tensor("rewritten").unwrap()),
        &want[..]
    );
    drop(mapped);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        on_disk,
        "the file was written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_mapped_load_keeps_the_untouched_pages_in_the_page_cache() {
    let dir = std::env::temp_dir().join(format!("lumen-gguf-shared-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = sample(&dir);
    let (kept, rewritten) = (1024 * 256 * 4u64, 1024 * 16 * 4u64);
    let page = 4096;

    let resident = load(&path, Residency::Resident);
    // Read into anonymous memory: no mapping of the file is left.
    assert_eq!(file_mapping("self", &path), FileMapping::default());
    drop(resident);

    let mapped = load(&path, Residency::Mapped);
    let m = file_mapping("self", &path);
    let (rss, anon) = (m.rss * 1024, m.anonymous * 1024);
    // Every page is mapped at load (populated); only the rewritten tensor's pages (and at
    // most the page it shares with its neighbour on each side) became the process's own.
    assert!(rss >= kept + rewritten, "rss {rss}");
    assert!(
        anon >= rewritten && anon <= rewritten + 2 * page,
        "anonymous {anon}"
    );
    assert!(rss - anon >= kept, "file-backed {}", rss - anon);
    drop(mapped);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_environment_names_the_residency_or_is_refused() {
    assert_eq!("mapped".parse::<Residency>(), Ok(Residency::Mapped));
    assert_eq!(" Resident ".parse::<Residency>(), Ok(Residency::Resident));
    assert_eq!("".parse::<Residency>(), Ok(Residency::Auto));
    assert_eq!("auto".parse::<Residency>(), Ok(Residency::Auto));
    // Auto reads a small file in and maps a big one; the others are what they say.
    let big = lumen_gguf::MAP_FROM_BYTES;
    assert_eq!(Residency::Auto.resolve(big - 1), Residency::Resident);
    assert_eq!(Residency::Auto.resolve(big), Residency::Mapped);
    assert_eq!(Residency::Resident.resolve(big), Residency::Resident);
    assert_eq!(Residency::Mapped.resolve(1), Residency::Mapped);
    let err = "huge".parse::<Residency>().unwrap_err();
    assert!(
        err.contains("auto") && err.contains("resident") && err.contains("mapped"),
        "{err}"
    );
}

/// The path of the mapping holding `addr` in this process (empty for anonymous memory).
#[cfg(target_os = "linux")]
fn mapping_of(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let range = fields.next().unwrap();
        let (lo, hi) = range.split_once('-').unwrap();
        let (lo, hi) = (
            usize::from_str_radix(lo, 16).unwrap(),
            usize::from_str_radix(hi, 16).unwrap(),
        );
        if (lo..hi).contains(&addr) {
            return fields.nth(4).unwrap_or("").to_string();
        }
    }
    panic!("{addr:#x} is not mapped")
}

/// Rewritten tensors of a huge page or more get memory of the process's own (in huge pages
/// where the kernel gives them) instead of 4 KiB copy-on-write copies of the file's pages; a
/// big tensor the loader offered back stays the page cache's; every byte is the same as a
/// resident load's, and the file is never written.
#[cfg(target_os = "linux")]
#[test]
fn big_rewritten_tensors_leave_the_file_map() {
    let dir = std::env::temp_dir().join(format!("lumen-gguf-own-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.gguf");
    // 3.1 MiB rewritten, 2.5 MiB offered but left alone, a small one between them, and 2.5
    // MiB the loader says up front it will not rewrite.
    let (big, declined, small) = (1024 * 797, 1024 * 640, 1024 * 3);
    let file = Builder::version(3)
        .kv(
            "general.architecture",
            lumen_gguf::Value::String("llama".into()),
        )
        .tensor(Tensor::new("small", &[1024, 3], 0, f32_bytes(small)))
        .tensor(Tensor::new("big", &[1024, 797], 0, f32_bytes(big)))
        .tensor(Tensor::new(
            "declined",
            &[1024, 640],
            0,
            f32_bytes(declined),
        ))
        .tensor(Tensor::new(
            "untouchable",
            &[1024, 640],
            0,
            f32_bytes(declined),
        ))
        .build();
    std::fs::write(&path, &file).unwrap();
    let canonical = path.canonicalize().unwrap();
    let name = canonical.to_str().unwrap();
    let load = |residency| {
        let may = |t: &TensorInfo| t.name != "untouchable";
        GgufFile::load_rewriting(
            &path,
            residency,
            may,
            |t, data| -> Result<bool, GgufError> {
                if residency == Residency::Mapped && t.name == "untouchable" {
                    // Never read into memory of its own, not even for a moment.
                    let middle = data.as_ptr() as usize + data.len() / 2;
                    assert_eq!(mapping_of(middle), name, "a tensor never offered");
                }
                if t.name == "big" || t.name == "small" {
                    data.reverse();
                    data[0] ^= 0x5a;
                    return Ok(true);
                }
                Ok(false)
            },
        )
        .unwrap()
    };
    let resident = load(Residency::Resident);
    let mapped = load(Residency::Mapped);
    for name in ["small", "big", "declined", "untouchable"] {
        let (a, b) = (resident.tensor(name).unwrap(), mapped.tensor(name).unwrap());
        assert!(
            resident.tensor_data(a) == mapped.tensor_data(b),
            "{name}: the bytes differ"
        );
    }
    let at = |t: &str, frac: usize| {
        let d = mapped.tensor_data(mapped.tensor(t).unwrap());
        d.as_ptr() as usize + d.len() * frac / 4
    };
    // The middle of the big tensor is anonymous memory; the declined one is the file's.
    assert_eq!(mapping_of(at("big", 2)), "", "big tensor");
    assert_eq!(mapping_of(at("declined", 2)), name, "declined tensor");
    assert_eq!(
        mapping_of(at("untouchable", 2)),
        name,
        "a tensor never offered"
    );
    // The small one is a copy-on-write copy inside the file map, as before.
    assert_eq!(mapping_of(at("small", 2)), name, "small tensor");
    let m = file_mapping("self", &path);
    let page = 4096;
    assert!(
        m.anonymous * 1024 <= small as u64 * 4 + 4 * page,
        "the file map holds {} KiB of copies",
        m.anonymous
    );
    drop((resident, mapped));
    assert!(
        std::fs::read(&path).unwrap() == file,
        "the file was written"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
