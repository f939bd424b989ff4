//! The two ways a model's bytes are held while it runs: read into the process's own memory
//! (`Resident`), or mapped copy-on-write from the page cache (`Mapped`). Both give the loader
//! the same bytes to rewrite and the model the same bytes to compute with; the mapped one never
//! writes the file, and keeps the pages the loader leaves alone in the page cache, where other
//! processes serving the same file share them.

mod common;

use common::{f32_bytes, Builder, Tensor};
use lumen_gguf::{GgufError, GgufFile, Residency};
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
    GgufFile::load_rewriting(path, residency, |t, data| -> Result<bool, GgufError> {
        if t.name == "rewritten" {
            data.reverse();
            return Ok(true);
        }
        Ok(false)
    })
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
