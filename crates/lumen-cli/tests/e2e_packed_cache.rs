//! The packed cache end to end: the first server to load a model in the packed layout
//! rewrites it and stores the packed copy, a second one maps that copy without rewriting
//! anything, and both serve from its pages, shared (each is charged about half of them).
//! `LUMEN_PACKED_CACHE=always` so the small test model gets a copy (by default only files
//! from 1 GiB on do). Then a server whose `LUMEN_PACKED_CACHE_MAX` is below the model's size
//! stores no copy and still serves.
//!
//! One test in its own binary: it sets the variables for the servers it starts.

mod common;

use common::{answers, temp_dir, Server};
use lumen_testkit::smaps::file_mapping;

/// The server's log without terminal colours.
fn plain_log(server: &Server) -> String {
    let log = server.log();
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // An escape sequence runs to its final letter.
            for e in chars.by_ref() {
                if e.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(target_os = "linux")]
#[test]
fn a_second_server_maps_the_first_ones_packed_copy() {
    if common::prerequisites().is_none() {
        return;
    }
    let cache = temp_dir("e2e-packed-cache");
    std::env::set_var("LUMEN_WEIGHTS_MEMORY", "mapped");
    std::env::set_var("LUMEN_PACKED_CACHE", "always");
    std::env::set_var("LUMEN_PACKED_CACHE_DIR", &cache);

    let first = Server::start(&[]);
    answers(&first);
    let log = plain_log(&first);
    assert!(log.contains("packed_cache=stored"), "{log}");
    let copy = std::fs::read_dir(&cache)
        .expect("cache directory")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|e| e == "gguf"))
        .expect("a packed copy");
    let size_kib = std::fs::metadata(&copy).expect("copy").len() / 1024;

    let second = Server::start(&[]);
    answers(&second);
    let log = plain_log(&second);
    assert!(log.contains("packed_cache=hit"), "{log}");
    answers(&first);
    for s in [&first, &second] {
        let m = file_mapping(&s.pid().to_string(), &copy);
        assert!(m.rss + 8 >= size_kib, "{} of {size_kib} KiB mapped", m.rss);
        assert_eq!(m.anonymous, 0, "pages of the copy became the process's own");
        assert!(
            m.pss <= m.rss / 2 + m.rss / 20,
            "pss {} KiB of rss {} KiB: the pages are not shared",
            m.pss,
            m.rss
        );
    }
    // The model itself is not mapped by either: both compute from the copy.
    let model = lumen_testkit::chat_gguf().expect("chat model");
    for s in [&first, &second] {
        assert_eq!(file_mapping(&s.pid().to_string(), &model).rss, 0);
    }
    drop((first, second));
    let _ = std::fs::remove_dir_all(&cache);

    // A cache bounded below the model's size stores nothing, and the server still serves
    // (rewriting at load, as without a cache).
    let small = temp_dir("e2e-packed-cache-small");
    std::env::set_var("LUMEN_PACKED_CACHE_DIR", &small);
    std::env::set_var("LUMEN_PACKED_CACHE_MAX", format!("{}KiB", size_kib / 2));
    let bounded = Server::start(&[]);
    answers(&bounded);
    let log = plain_log(&bounded);
    assert!(log.contains("packed_cache=not stored"), "{log}");
    assert!(log.contains("limit"), "{log}");
    let copies = std::fs::read_dir(&small).map_or(0, |d| d.count());
    assert_eq!(copies, 0, "a copy over the limit was stored");
    drop(bounded);
    let _ = std::fs::remove_dir_all(&small);
}
