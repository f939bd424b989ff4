//! The memory budget: which idle models to unload so another fits under `--max-memory`.
//!
//! Kept free of locks and engines so the rule is tested on its own: a model holding memory
//! is a [`Holder`]; loading `need` bytes evicts idle holders, least recently used first,
//! until it fits, and fails naming every holder when evicting all idle ones would not do.

use std::time::Instant;

/// A model that holds memory now (loaded, loading or unloading).
#[derive(Clone, Debug)]
pub struct Holder {
    /// Its name.
    pub name: String,
    /// Bytes it holds (weights and KV cache).
    pub bytes: u64,
    /// Whether it may be unloaded now (loaded, no request running or waiting).
    pub idle: bool,
    /// When it last served a request.
    pub last_used: Instant,
}

/// Why a model cannot be loaded within the budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoRoom(pub String);

/// `1234567890` bytes as `1177.4 MiB`.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// The holders to unload (least recently used first) so that `need` more bytes fit in
/// `budget`, or why that is impossible.
pub fn victims(
    model: &str,
    need: u64,
    budget: u64,
    holders: &[Holder],
) -> Result<Vec<String>, NoRoom> {
    if need > budget {
        return Err(NoRoom(format!(
            "The model '{model}' needs about {} but --max-memory is {}.",
            mib(need),
            mib(budget)
        )));
    }
    let mut used: u64 = holders.iter().map(|h| h.bytes).sum();
    let mut idle: Vec<&Holder> = holders.iter().filter(|h| h.idle).collect();
    idle.sort_by_key(|h| h.last_used);
    let mut out = Vec::new();
    let mut idle = idle.into_iter();
    while used.saturating_add(need) > budget {
        match idle.next() {
            Some(h) => {
                used = used.saturating_sub(h.bytes);
                out.push(h.name.clone());
            }
            None => {
                let held: Vec<String> = holders
                    .iter()
                    .map(|h| {
                        format!(
                            "{} ({}{})",
                            h.name,
                            mib(h.bytes),
                            if h.idle { "" } else { ", busy" }
                        )
                    })
                    .collect();
                return Err(NoRoom(format!(
                    "Not enough memory to load '{model}' (about {}): --max-memory is {} and it is held by {}, none of them idle; retry when a request finishes.",
                    mib(need),
                    mib(budget),
                    held.join(", ")
                )));
            }
        }
    }
    Ok(out)
}

/// The default `--max-memory`: 75 % of the machine's RAM (`MemTotal`), or 4 GiB when it
/// cannot be read.
pub fn default_max_memory() -> u64 {
    let total = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map(|kib| kib * 1024)
    });
    total.map_or(4 << 30, |t| t / 4 * 3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn h(name: &str, bytes: u64, idle: bool, age_s: u64) -> Holder {
        Holder {
            name: name.into(),
            bytes,
            idle,
            last_used: Instant::now() - Duration::from_secs(age_s),
        }
    }

    #[test]
    fn evicts_least_recently_used_idle_first() {
        let hs = [
            h("a", 40, true, 5),
            h("b", 40, true, 50),
            h("c", 10, false, 100),
        ];
        assert_eq!(victims("x", 10, 100, &hs), Ok(vec![]));
        assert_eq!(victims("x", 30, 100, &hs), Ok(vec!["b".to_string()]));
        assert_eq!(
            victims("x", 80, 100, &hs),
            Ok(vec!["b".to_string(), "a".to_string()])
        );
    }

    #[test]
    fn says_who_holds_the_memory() {
        let hs = [h("a", 60, false, 1), h("b", 30, true, 1)];
        let err = victims("x", 50, 100, &hs).unwrap_err().0;
        assert!(
            err.contains("a (") && err.contains("busy") && err.contains("b ("),
            "{err}"
        );
        let err = victims("x", 200, 100, &[]).unwrap_err().0;
        assert!(err.contains("needs about"), "{err}");
        assert!(default_max_memory() > 0);
    }
}
