//! Test-only helpers shared by every crate's integration tests: where the default models are,
//! and what a test does when one is missing.
//!
//! # Why this crate exists
//!
//! Tests that need a real model (the SmolLM2 chat model, the all-MiniLM-L6-v2 embedding model)
//! cannot assume `make models` ran: `cargo test` on a fresh checkout should stay green. So they
//! skip with a note when the model is absent. A skip that nobody sees is a test that does not
//! run, though, and a CI job whose model fetch broke would pass by skipping everything. The
//! rule, kept in one place so that no test can drift from it:
//!
//! - outside CI, a missing model prints a note on stderr and the locator returns `None`; the
//!   test returns early and passes;
//! - under CI (the `CI` environment variable set, to anything), a missing model panics with
//!   the path it looked for and the fix (`run \`make models\``).
//!
//! The paths are resolved here, from `$LUMEN_HOME` (default `~/.lumen`) and
//! `models/<name>/...`, without depending on `lumen-engine`: `lumen-gguf` and `lumen-models`
//! test against the same files and sit below the engine in the dependency order. The layout is
//! the one `lumen pull` writes and `lumen_engine::registry` reads.
//!
//! The same rule covers PostgreSQL: [`pg::PgCluster`] starts a throwaway cluster for tests
//! that need a real server, and skips or fails the same way when it is not installed.
//!
//! This crate is a dev-dependency only (`publish = false`); nothing in the request path uses it.

pub mod pg;
mod scratch;
pub mod smaps;

use std::fmt::Display;
use std::path::{Path, PathBuf};

pub use scratch::ScratchDir;

/// Name of the default chat model under `$LUMEN_HOME/models`.
pub const CHAT_MODEL: &str = "smollm2";
/// File name of the default chat model's GGUF weights inside its folder.
pub const CHAT_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// Name of the default embedding model under `$LUMEN_HOME/models`.
pub const EMBED_MODEL: &str = "all-minilm-l6-v2";
/// Name of the second embedding model (MPNet) under `$LUMEN_HOME/models`.
pub const MPNET_MODEL: &str = "all-mpnet-base-v2";
/// Files the embedding model's folder must hold.
pub const EMBED_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// `$LUMEN_HOME` when set and non-empty, else `$HOME/.lumen` (`./.lumen` without a `HOME`).
pub fn lumen_home() -> PathBuf {
    match std::env::var_os("LUMEN_HOME") {
        Some(h) if !h.is_empty() => PathBuf::from(h),
        _ => std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("."))
            .join(".lumen"),
    }
}

/// Whether the tests run under CI (`CI` set to anything), where a missing model is a failure.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Reports a missing prerequisite: panics under CI, otherwise prints a note and returns `None`.
///
/// `what` names the missing thing (a path, a model); `fix` is the command that provides it.
pub fn missing<T>(what: impl Display, fix: &str) -> Option<T> {
    if in_ci() {
        panic!("{what} is missing (CI is set, so tests may not skip): run `{fix}`");
    }
    eprintln!("note: {what} is missing; skipping (run `{fix}`)");
    None
}

/// `$LUMEN_HOME/models/<name>` when it is a folder; otherwise see [`missing`].
pub fn model_dir(name: &str) -> Option<PathBuf> {
    let dir = lumen_home().join("models").join(name);
    if dir.is_dir() {
        Some(dir)
    } else {
        missing(dir.display(), "make models")
    }
}

/// `$LUMEN_HOME/models/<name>/<file>` when it is a file; otherwise see [`missing`].
pub fn model_file(name: &str, file: impl AsRef<Path>) -> Option<PathBuf> {
    let path = lumen_home().join("models").join(name).join(file);
    if path.is_file() {
        Some(path)
    } else {
        missing(path.display(), "make models")
    }
}

/// The default chat model's GGUF file (SmolLM2-135M-Instruct, Q4_1).
pub fn chat_gguf() -> Option<PathBuf> {
    model_file(CHAT_MODEL, CHAT_GGUF)
}

/// The default embedding model's folder (all-MiniLM-L6-v2), when every file it needs is there.
pub fn embedding_dir() -> Option<PathBuf> {
    sentence_model_dir(EMBED_MODEL)
}

/// The MPNet embedding model's folder (all-mpnet-base-v2), when every file it needs is there.
pub fn mpnet_dir() -> Option<PathBuf> {
    sentence_model_dir(MPNET_MODEL)
}

/// `$LUMEN_HOME/models/<name>` when it holds every file an embedding model needs.
fn sentence_model_dir(name: &str) -> Option<PathBuf> {
    let dir = lumen_home().join("models").join(name);
    match EMBED_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| !p.is_file())
    {
        None => Some(dir),
        Some(absent) => missing(absent.display(), "make models"),
    }
}

/// A file inside the embedding model's folder (for example `tokenizer.json`).
pub fn embedding_file(file: impl AsRef<Path>) -> Option<PathBuf> {
    model_file(EMBED_MODEL, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the environment so that no two threads race on it.
    #[test]
    fn resolves_under_lumen_home_and_skips_or_fails_by_ci() {
        let tmp = std::env::temp_dir().join(format!("lumen-testkit-{}", std::process::id()));
        let chat = tmp.join("models").join(CHAT_MODEL);
        std::fs::create_dir_all(&chat).unwrap();
        let ci = std::env::var_os("CI");
        let home = std::env::var_os("LUMEN_HOME");
        std::env::set_var("LUMEN_HOME", &tmp);
        std::env::remove_var("CI");

        assert_eq!(lumen_home(), tmp);
        assert_eq!(model_dir(CHAT_MODEL), Some(chat.clone()));
        assert_eq!(chat_gguf(), None, "no file yet: a note, not a panic");
        std::fs::write(chat.join(CHAT_GGUF), b"").unwrap();
        assert_eq!(chat_gguf(), Some(chat.join(CHAT_GGUF)));
        assert_eq!(embedding_dir(), None);

        std::env::set_var("CI", "true");
        let panicked =
            std::panic::catch_unwind(embedding_dir).expect_err("CI: a missing model fails");
        let msg = panicked
            .downcast_ref::<String>()
            .cloned()
            .unwrap_or_default();
        assert!(
            msg.contains("make models") && msg.contains(EMBED_MODEL),
            "{msg}"
        );
        assert!(
            chat_gguf().is_some(),
            "a present model is found under CI too"
        );

        match ci {
            Some(v) => std::env::set_var("CI", v),
            None => std::env::remove_var("CI"),
        }
        match home {
            Some(v) => std::env::set_var("LUMEN_HOME", v),
            None => std::env::remove_var("LUMEN_HOME"),
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
