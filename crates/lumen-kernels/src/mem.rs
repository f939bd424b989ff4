//! Giving freed heap memory back to the operating system.
//!
//! When a model is unloaded, its engine's buffers are freed, but glibc's allocator keeps
//! freed chunks in its per-thread arenas (and, after large blocks were freed once, serves
//! later large blocks from them instead of fresh mappings). A server that loads and
//! unloads models all day would then hold the high-water mark of every arena. Trimming
//! after an unload returns those free pages, so RSS follows the loaded models.

/// Returns free heap pages to the OS (glibc's `malloc_trim`); a no-op elsewhere.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists under its locks; it
    // takes no pointers from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}
