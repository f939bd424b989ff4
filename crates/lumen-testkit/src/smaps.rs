//! How much of a file a process has mapped, from Linux's `/proc/PID/smaps`: for the tests
//! that check model files are shared between processes (page cache) or copied into them.

use std::path::Path;

/// Totals, in KiB, over a process's mappings of one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileMapping {
    /// Resident pages of the mappings.
    pub rss: u64,
    /// The proportional share: pages shared with `n` processes count `1/n`.
    pub pss: u64,
    /// Pages that became the process's own (written copy-on-write).
    pub anonymous: u64,
}

/// Sums `Rss`, `Pss` and `Anonymous` over process `pid`'s mappings of `path` (`"self"` for
/// this process); all zero when it has none. Panics when smaps cannot be read.
pub fn file_mapping(pid: &str, path: &Path) -> FileMapping {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let name = path.canonicalize().expect("mapped file exists");
    let (mut inside, mut m) = (false, FileMapping::default());
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            // A mapping's header: address range, perms, offset, device, inode, path.
            inside = fields.nth(4).is_some_and(|p| Path::new(p) == name);
        } else if inside {
            let kib = fields
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
            match first {
                "Rss:" => m.rss += kib,
                "Pss:" => m.pss += kib,
                "Anonymous:" => m.anonymous += kib,
                _ => {}
            }
        }
    }
    m
}
