//! Giving freed heap memory back to the operating system.
//!
//! When a model is unloaded, its engine's buffers are freed, but glibc's allocator keeps
//! freed chunks in its per-thread arenas (and, after large blocks were freed once, serves
//! later large blocks from them instead of fresh mappings). A server that loads and
//! unloads models all day would then hold the high-water mark of every arena. Trimming
//! after an unload returns those free pages, so RSS follows the loaded models; fewer arenas
//! ([`limit_allocator_arenas`]) leave less free space scattered where trimming cannot reach.

/// Returns free heap pages to the OS (glibc's `malloc_trim`); a no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks; it
    // takes no pointers from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Caps glibc's malloc arenas at one per CPU (its default is eight per CPU), unless the
/// environment already sets a cap (`MALLOC_ARENA_MAX`, or `arena_max` in `GLIBC_TUNABLES`).
/// Call it first thing in `main`, before any thread starts.
///
/// Why: a model load or unload allocates and frees hundreds of MB from whichever threads run
/// it, and under CPU contention glibc spreads threads over more arenas. Freed space spread
/// over many arenas is only partly returned by trimming, so RSS with the same models loaded
/// drifted by 5–10 % over 200 load/unload cycles on a busy 2-core machine, against 1–2 % with
/// one arena per CPU. No more than one thread per CPU allocates at a time anyway, and the
/// hot path (the compute threads) hardly allocates.
pub fn limit_allocator_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let set_by_user = std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var("GLIBC_TUNABLES").is_ok_and(|t| t.contains("arena_max"));
        if set_by_user {
            return;
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let arenas = libc::c_int::try_from(cpus).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter under the allocator's own lock;
        // it takes no pointers from us.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
