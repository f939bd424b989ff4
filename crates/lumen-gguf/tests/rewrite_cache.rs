//! The rewrite cache: a file is rewritten once, its copy stored, and the next load (mapped or
//! read in) uses the copy without calling the rewriter; a changed source, another tag or a
//! damaged `.id` is a miss that stores the copy again; a copy that cannot be stored leaves
//! the load as it was.

mod common;

use std::cell::Cell;
use std::path::{Path, PathBuf};

use common::{f32_bytes, Builder, Tensor};
use lumen_gguf::{CacheOutcome, GgufError, GgufFile, Residency, RewriteCache};
use lumen_testkit::ScratchDir;

/// A file with a tensor the rewriter keeps and one it reverses; `seed` varies the values.
fn sample(path: &Path, seed: usize) {
    let values = |n: usize| {
        let mut b = f32_bytes(n);
        b.iter_mut().for_each(|x| *x = x.wrapping_add(seed as u8));
        b
    };
    let file = Builder::version(3)
        .kv(
            "general.architecture",
            lumen_gguf::Value::String("llama".into()),
        )
        .tensor(Tensor::new("kept", &[256, 64], 0, values(256 * 64)))
        .tensor(Tensor::new("rewritten", &[256, 16], 0, values(256 * 16)))
        .build();
    std::fs::write(path, file).unwrap();
}

/// A scratch directory named after `name` holding `sample`'s file, and a cache in it.
fn setup(name: &str) -> (ScratchDir, PathBuf, RewriteCache) {
    let dir = ScratchDir::new(&format!("gguf-{name}"));
    let model = dir.path().join("model.gguf");
    sample(&model, 0);
    let cache = RewriteCache::new(dir.path().join("cache"), "test-1");
    (dir, model, cache)
}

/// Loads `path` through `cache`, counting the rewriter's calls in `calls`.
fn load(
    path: &Path,
    residency: Residency,
    cache: Option<&RewriteCache>,
    calls: &Cell<usize>,
) -> GgufFile {
    GgufFile::load_rewriting_cached(
        path,
        residency,
        cache,
        |_| true,
        |t, data| -> Result<bool, GgufError> {
            calls.set(calls.get() + 1);
            if t.name == "rewritten" {
                data.reverse();
                return Ok(true);
            }
            Ok(false)
        },
    )
    .unwrap()
}

/// The cache's file names, without their source hash, sorted.
fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.split_once('-').unwrap().1.to_string()
        })
        .collect();
    names.sort();
    names
}

/// Every tensor's bytes and rewritten flag.
fn contents(f: &GgufFile) -> Vec<(String, Vec<u8>, bool)> {
    f.tensors()
        .iter()
        .map(|t| (t.name.clone(), f.tensor_data(t).to_vec(), f.is_rewritten(t)))
        .collect()
}

#[test]
fn a_stored_copy_is_used_instead_of_rewriting() {
    let (_dir, model, cache) = setup("cache-hit");
    let calls = Cell::new(0);
    let plain = contents(&load(&model, Residency::Resident, None, &calls));

    for residency in [Residency::Mapped, Residency::Resident] {
        let _ = std::fs::remove_dir_all(cache.dir());
        let first = load(&model, residency, Some(&cache), &calls);
        assert_eq!(first.cache_outcome(), &CacheOutcome::Stored);
        assert_eq!(contents(&first), plain);
        calls.set(0);
        let second = load(&model, residency, Some(&cache), &calls);
        assert_eq!(second.cache_outcome(), &CacheOutcome::Hit, "{residency:?}");
        assert_eq!(calls.get(), 0, "the rewriter ran on a hit");
        assert_eq!(contents(&second), plain, "{residency:?}");
    }
    // One entry: the copy and its `.id`, nothing temporary left.
    assert_eq!(entries(cache.dir()), ["test-1.gguf", "test-1.id"]);
}

/// Storing a copy removes the copies of model files that are gone.
#[test]
fn copies_of_deleted_models_are_removed() {
    let dir = ScratchDir::new("gguf-cache-prune");
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    sample(&a, 0);
    sample(&b, 1);
    let cache = RewriteCache::new(dir.path().join("cache"), "test-1");
    let calls = Cell::new(0);
    drop(load(&a, Residency::Mapped, Some(&cache), &calls));
    assert_eq!(entries(cache.dir()).len(), 2);
    std::fs::remove_file(&a).unwrap();
    drop(load(&b, Residency::Mapped, Some(&cache), &calls));
    let left: Vec<PathBuf> = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    let id = left
        .iter()
        .find(|p| p.extension().unwrap() == "id")
        .unwrap();
    assert!(std::fs::read_to_string(id).unwrap().contains("b.gguf"));
}

#[test]
fn a_changed_source_another_tag_or_a_damaged_id_is_a_miss() {
    let (_dir, model, cache) = setup("cache-miss");
    let calls = Cell::new(0);
    let stored = load(&model, Residency::Mapped, Some(&cache), &calls);
    assert_eq!(stored.cache_outcome(), &CacheOutcome::Stored);
    drop(stored);

    // Another tag (a new rewriting) never uses the old copy, and replaces it.
    let other = RewriteCache::new(cache.dir(), "test-2");
    let f = load(&model, Residency::Mapped, Some(&other), &calls);
    assert_eq!(f.cache_outcome(), &CacheOutcome::Stored);
    assert_eq!(entries(cache.dir()), ["test-2.gguf", "test-2.id"]);

    // The source replaced by new contents: rewritten again, with the new values.
    std::fs::remove_file(&model).unwrap();
    sample(&model, 7);
    let f = load(&model, Residency::Mapped, Some(&cache), &calls);
    assert_eq!(f.cache_outcome(), &CacheOutcome::Stored);
    assert_eq!(
        contents(&f),
        contents(&load(&model, Residency::Resident, None, &calls))
    );
    assert_eq!(
        load(&model, Residency::Mapped, Some(&cache), &calls).cache_outcome(),
        &CacheOutcome::Hit
    );

    // A damaged `.id` (here: a flag that is not 0 or 1) is a miss that writes a good one.
    let id = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with("-test-1.id"))
        .unwrap();
    let text = std::fs::read_to_string(&id).unwrap();
    std::fs::write(&id, text.replace("rewritten 01", "rewritten 0x")).unwrap();
    assert_eq!(
        load(&model, Residency::Mapped, Some(&cache), &calls).cache_outcome(),
        &CacheOutcome::Stored
    );
    // A copy replaced behind the cache's back (another inode) is not used either.
    let copy = id.with_extension("gguf");
    let bytes = std::fs::read(&copy).unwrap();
    std::fs::remove_file(&copy).unwrap();
    std::fs::write(&copy, bytes).unwrap();
    assert_eq!(
        load(&model, Residency::Mapped, Some(&cache), &calls).cache_outcome(),
        &CacheOutcome::Stored
    );
}

#[test]
fn nothing_rewritten_stores_nothing_and_an_unwritable_cache_still_loads() {
    let (_dir, model, cache) = setup("cache-none");
    let f = GgufFile::load_rewriting_cached(
        &model,
        Residency::Mapped,
        Some(&cache),
        |_| true,
        |_, _| -> Result<bool, GgufError> { Ok(false) },
    )
    .unwrap();
    assert_eq!(f.cache_outcome(), &CacheOutcome::NothingRewritten);
    assert!(!cache.dir().exists());

    // A "directory" that is a file: the copy is not stored, the model loads rewritten.
    let blocked = RewriteCache::new(&model, "test-1");
    let calls = Cell::new(0);
    let f = load(&model, Residency::Mapped, Some(&blocked), &calls);
    let CacheOutcome::NotStored(why) = f.cache_outcome() else {
        panic!("{:?}", f.cache_outcome());
    };
    assert!(why.contains("model.gguf"), "{why}");
    assert!(f.is_rewritten(f.tensor("rewritten").unwrap()));
}

/// Mapped, both the load that stores the copy and a later hit serve from the copy: its pages
/// are the page cache's (shared with other processes), none the process's own, and the
/// source is not mapped at all.
#[cfg(target_os = "linux")]
#[test]
fn mapped_loads_serve_from_the_copy() {
    use lumen_testkit::smaps::file_mapping;
    let (_dir, model, cache) = setup("cache-shared");
    let calls = Cell::new(0);
    let stored = load(&model, Residency::Mapped, Some(&cache), &calls);
    let hit = load(&model, Residency::Mapped, Some(&cache), &calls);
    assert_eq!(stored.cache_outcome(), &CacheOutcome::Stored);
    assert_eq!(hit.cache_outcome(), &CacheOutcome::Hit);
    let copy = std::fs::read_dir(cache.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
        .unwrap();
    let m = file_mapping("self", &copy.canonicalize().unwrap());
    // Two maps of the copy, every page of each mapped at load.
    assert!(m.rss * 1024 >= 2 * (hit.file_len() - 4096), "{m:?}");
    assert_eq!(m.anonymous, 0, "{m:?}");
    assert_eq!(file_mapping("self", &model), Default::default());
}

/// A limited cache keeps the most recently used copies that fit: storing a third copy where
/// two fit removes the one used longest ago (a hit counts as a use), and a copy bigger than
/// the whole limit is not stored while the model still loads rewritten.
#[test]
fn a_limited_cache_evicts_the_least_recently_used_copy() {
    let dir = ScratchDir::new("gguf-cache-limit");
    let models: Vec<PathBuf> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let p = dir.path().join(format!("{n}.gguf"));
            sample(&p, i);
            p
        })
        .collect();
    let size = std::fs::metadata(&models[0]).unwrap().len();
    let cache =
        RewriteCache::new(dir.path().join("cache"), "test-1").with_limit(Some(2 * size + 1));
    let calls = Cell::new(0);
    let outcome = |m: &Path| {
        load(m, Residency::Mapped, Some(&cache), &calls)
            .cache_outcome()
            .clone()
    };
    // Modification times can be coarse: let each use be clearly later than the one before.
    let pause = || std::thread::sleep(std::time::Duration::from_millis(50));
    assert_eq!(outcome(&models[0]), CacheOutcome::Stored);
    pause();
    assert_eq!(outcome(&models[1]), CacheOutcome::Stored);
    pause();
    assert_eq!(outcome(&models[0]), CacheOutcome::Hit);
    pause();
    assert_eq!(outcome(&models[2]), CacheOutcome::Stored);
    assert_eq!(
        outcome(&models[0]),
        CacheOutcome::Hit,
        "the recently used copy went"
    );
    assert_eq!(outcome(&models[2]), CacheOutcome::Hit);
    assert_eq!(entries(cache.dir()).len(), 4, "more than two copies kept");
    assert_eq!(
        outcome(&models[1]),
        CacheOutcome::Stored,
        "b's copy was kept"
    );

    let small = RewriteCache::new(dir.path().join("small"), "test-1").with_limit(Some(size - 1));
    let f = load(&models[0], Residency::Mapped, Some(&small), &calls);
    let CacheOutcome::NotStored(why) = f.cache_outcome() else {
        panic!("{:?}", f.cache_outcome());
    };
    assert!(why.contains("limit"), "{why}");
    assert!(f.is_rewritten(f.tensor("rewritten").unwrap()));
}

/// A store clears what interrupted stores left: a temporary file of a writer that is gone and
/// an old copy without an `.id`; a recent copy without one (another store may be about to
/// write it) and a live writer's temporary file stay.
#[test]
fn a_store_removes_what_crashed_stores_left() {
    let (_dir, model, cache) = setup("cache-leftovers");
    std::fs::create_dir_all(cache.dir()).unwrap();
    let put = |name: &str, age_secs: u64| {
        let p = cache.dir().join(name);
        let f = std::fs::File::create(&p).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(age_secs);
        f.set_modified(t).unwrap();
        p
    };
    // No process has a pid above the kernel's limit (2^22).
    let dead_tmp = put("0123456789abcdef-test-1.gguf.tmp-99999999", 0);
    let live_tmp = put(
        &format!("1123456789abcdef-test-1.gguf.tmp-{}", std::process::id()),
        0,
    );
    let old_orphan = put("2123456789abcdef-test-1.gguf", 3600);
    let new_orphan = put("3123456789abcdef-test-1.gguf", 0);
    let calls = Cell::new(0);
    let f = load(&model, Residency::Mapped, Some(&cache), &calls);
    assert_eq!(f.cache_outcome(), &CacheOutcome::Stored);
    assert!(!dead_tmp.exists() && !old_orphan.exists());
    assert!(live_tmp.exists() && new_orphan.exists());
}
