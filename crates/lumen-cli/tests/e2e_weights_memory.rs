//! Two servers on one model file share its pages when the weights are mapped
//! (`LUMEN_WEIGHTS_MEMORY=mapped`, what `auto` picks for files from 1 GiB on): each one's
//! proportional share of the file's mapping is half of what it has mapped, and both answer.
//! Read in (`resident`) there is no mapping of the file at all. The exact layout rewrites no
//! tensor, so the whole file stays the page cache's.
//!
//! One test in its own binary: it sets the variable for the servers it starts.

mod common;

use std::path::Path;

use common::{answers, Server};
use lumen_testkit::smaps::file_mapping;

/// `(rss, pss)` in KiB over process `pid`'s mappings of `path`.
fn file_mapping_kib(pid: u32, path: &Path) -> (u64, u64) {
    let m = file_mapping(&pid.to_string(), path);
    (m.rss, m.pss)
}

#[cfg(target_os = "linux")]
#[test]
fn two_servers_share_a_mapped_model_file() {
    if common::prerequisites().is_none() {
        return;
    }
    let model = lumen_testkit::chat_gguf().expect("chat model");
    let size_kib = std::fs::metadata(&model).expect("model").len() / 1024;

    std::env::set_var("LUMEN_WEIGHTS_MEMORY", "resident");
    let resident = Server::start(&["--weight-layout", "exact"]);
    answers(&resident);
    assert_eq!(file_mapping_kib(resident.pid(), &model), (0, 0));
    assert!(resident.log().contains("resident"), "{}", resident.log());
    drop(resident);

    std::env::set_var("LUMEN_WEIGHTS_MEMORY", "mapped");
    let first = Server::start(&["--weight-layout", "exact"]);
    let (rss_alone, pss_alone) = file_mapping_kib(first.pid(), &model);
    // Every page is mapped at load, and this process alone holds them.
    assert!(
        rss_alone + 8 >= size_kib,
        "{rss_alone} of {size_kib} KiB mapped"
    );
    assert!(
        pss_alone + 8 >= rss_alone,
        "pss {pss_alone}, rss {rss_alone}"
    );

    let second = Server::start(&["--weight-layout", "exact"]);
    answers(&first);
    answers(&second);
    for s in [&first, &second] {
        let (rss, pss) = file_mapping_kib(s.pid(), &model);
        assert!(rss + 8 >= size_kib, "{rss} of {size_kib} KiB mapped");
        // Shared by two: each is charged half (a few pages may be private to one).
        assert!(
            pss <= rss / 2 + rss / 20,
            "pss {pss} KiB of rss {rss} KiB: the pages are not shared"
        );
    }
}
