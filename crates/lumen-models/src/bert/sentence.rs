//! The sentence-transformers files around a BERT checkpoint: which modules follow the encoder.
//!
//! `modules.json` lists the pipeline (`Transformer`, then `Pooling`, then optionally
//! `Normalize`); the pooling module's folder holds its `config.json`, and
//! `sentence_bert_config.json` holds `max_seq_length`. A folder without these files is treated
//! as a plain Hugging Face checkpoint: mean pooling, no normalization, and the full position
//! table as the sequence limit. A pipeline module Lumen does not implement (a `Dense`
//! projection, say) is an error rather than silently skipped, since skipping it would return
//! wrong vectors.

use std::path::{Component, Path};

use serde::Deserialize;

use super::pooling::{PoolingConfig, PoolingMode};
use crate::error::ModelError;

/// What sentence-transformers does after the encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct SentenceConfig {
    /// How token vectors become a sentence vector.
    pub pooling: PoolingConfig,
    /// Whether the pooled vector is scaled to unit length.
    pub normalize: bool,
    /// Longest input sentence-transformers feeds the model (it truncates beyond).
    pub max_seq_len: usize,
}

#[derive(Debug, Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    ty: String,
}

#[derive(Debug, Deserialize)]
struct RawPooling {
    #[serde(default)]
    word_embedding_dimension: Option<usize>,
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_weightedmean_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Debug, Deserialize)]
struct RawSentenceBert {
    #[serde(default)]
    max_seq_length: Option<usize>,
}

impl SentenceConfig {
    /// Reads the sentence-transformers files in `dir` for an encoder of width `hidden` whose
    /// position table has `max_positions` rows.
    pub fn load(
        dir: &Path,
        hidden: usize,
        max_positions: usize,
    ) -> Result<SentenceConfig, ModelError> {
        let mut pooling = PoolingConfig::mean();
        let mut normalize = false;
        if let Some(modules) = read_json_opt::<Vec<ModuleEntry>>(&dir.join("modules.json"))? {
            let mut seen_pooling = false;
            for module in &modules {
                match module_kind(&module.ty) {
                    "Transformer" => {}
                    "Pooling" => {
                        if seen_pooling || normalize {
                            return Err(ModelError::BadConfig(
                                "unexpected Pooling module order".into(),
                            ));
                        }
                        seen_pooling = true;
                        let sub = safe_subdir(dir, &module.path)?;
                        if let Some(raw) = read_json_opt::<RawPooling>(&sub.join("config.json"))? {
                            pooling = pooling_from(&raw, hidden)?;
                        }
                    }
                    "Normalize" => normalize = true,
                    other => {
                        return Err(ModelError::BadConfig(format!(
                            "unsupported sentence-transformers module `{other}`"
                        )))
                    }
                }
            }
        }
        let mut max_seq_len = max_positions;
        let st_path = dir.join("sentence_bert_config.json");
        if let Some(raw) = read_json_opt::<RawSentenceBert>(&st_path)? {
            match raw.max_seq_length {
                Some(0) => {
                    return Err(ModelError::BadConfig(
                        "max_seq_length must be nonzero".into(),
                    ))
                }
                Some(n) if n > max_positions => {
                    tracing::warn!(
                        max_seq_length = n,
                        max_positions,
                        "max_seq_length clamped to the position table"
                    );
                }
                Some(n) => max_seq_len = n,
                None => {}
            }
        }
        Ok(SentenceConfig {
            pooling,
            normalize,
            max_seq_len,
        })
    }
}

/// The class name at the end of a module type such as `sentence_transformers.models.Pooling`.
fn module_kind(ty: &str) -> &str {
    ty.rsplit('.').next().unwrap_or(ty)
}

/// `dir/sub`, refusing a `sub` that would leave `dir`.
fn safe_subdir(dir: &Path, sub: &str) -> Result<std::path::PathBuf, ModelError> {
    let rel = Path::new(sub);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(ModelError::BadConfig(format!(
            "module path `{sub}` leaves the model folder"
        )));
    }
    Ok(dir.join(rel))
}

fn pooling_from(raw: &RawPooling, hidden: usize) -> Result<PoolingConfig, ModelError> {
    if let Some(dim) = raw.word_embedding_dimension {
        if dim != hidden {
            return Err(ModelError::BadConfig(format!(
                "pooling word_embedding_dimension {dim} differs from hidden_size {hidden}"
            )));
        }
    }
    if raw.pooling_mode_weightedmean_tokens || raw.pooling_mode_lasttoken {
        return Err(ModelError::BadConfig(
            "weighted-mean and last-token pooling are not supported".into(),
        ));
    }
    let flags = [
        (raw.pooling_mode_cls_token, PoolingMode::Cls),
        (raw.pooling_mode_max_tokens, PoolingMode::Max),
        (raw.pooling_mode_mean_tokens, PoolingMode::Mean),
        (
            raw.pooling_mode_mean_sqrt_len_tokens,
            PoolingMode::MeanSqrtLen,
        ),
    ];
    let modes: Vec<PoolingMode> = flags
        .iter()
        .filter(|(on, _)| *on)
        .map(|&(_, m)| m)
        .collect();
    PoolingConfig::new(&modes)
        .ok_or_else(|| ModelError::BadConfig("no pooling mode is enabled".into()))
}

/// Parses the JSON file at `path`, or `None` when it does not exist.
fn read_json_opt<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, ModelError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(ModelError::Io {
                path: path.display().to_string(),
                source,
            })
        }
    };
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| ModelError::BadJson {
            path: path.display().to_string(),
            message: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use lumen_testkit::ScratchDir;

    /// Writes `text` to `rel` under `d`, making its folders.
    fn write(d: &ScratchDir, rel: &str, text: &str) {
        let p = d.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    const MODULES: &str = r#"[
        {"idx":0,"name":"0","path":"","type":"sentence_transformers.models.Transformer"},
        {"idx":1,"name":"1","path":"1_Pooling","type":"sentence_transformers.models.Pooling"},
        {"idx":2,"name":"2","path":"2_Normalize","type":"sentence_transformers.models.Normalize"}]"#;

    #[test]
    fn defaults_without_files() {
        let d = ScratchDir::new("st-empty");
        let c = SentenceConfig::load(d.path(), 8, 64).unwrap();
        assert_eq!(
            c,
            SentenceConfig {
                pooling: PoolingConfig::mean(),
                normalize: false,
                max_seq_len: 64
            }
        );
    }

    #[test]
    fn reads_minilm_style_files() {
        let d = ScratchDir::new("st-minilm");
        write(&d, "modules.json", MODULES);
        write(
            &d,
            "1_Pooling/config.json",
            r#"{"word_embedding_dimension": 8, "pooling_mode_cls_token": true,
                "pooling_mode_mean_tokens": false}"#,
        );
        write(
            &d,
            "sentence_bert_config.json",
            r#"{"max_seq_length": 32, "do_lower_case": false}"#,
        );
        let c = SentenceConfig::load(d.path(), 8, 64).unwrap();
        assert_eq!(c.pooling.modes(), &[PoolingMode::Cls]);
        assert!(c.normalize);
        assert_eq!(c.max_seq_len, 32);
    }

    #[test]
    fn clamps_max_seq_len_to_positions() {
        let d = ScratchDir::new("st-clamp");
        write(
            &d,
            "sentence_bert_config.json",
            r#"{"max_seq_length": 4096}"#,
        );
        assert_eq!(
            SentenceConfig::load(d.path(), 8, 64).unwrap().max_seq_len,
            64
        );
    }

    #[test]
    fn rejects_bad_pipelines() {
        let cases: [(&str, &str, &str); 5] = [
            (
                "dense",
                r#"[{"path":"2_Dense","type":"sentence_transformers.models.Dense"}]"#,
                "",
            ),
            (
                "escape",
                r#"[{"path":"../x","type":"sentence_transformers.models.Pooling"}]"#,
                "",
            ),
            ("nomode", MODULES, r#"{"pooling_mode_mean_tokens": false}"#),
            (
                "width",
                MODULES,
                r#"{"word_embedding_dimension": 9, "pooling_mode_mean_tokens": true}"#,
            ),
            ("lasttok", MODULES, r#"{"pooling_mode_lasttoken": true}"#),
        ];
        for (tag, modules, pooling) in cases {
            let d = ScratchDir::new(&format!("st-{tag}"));
            write(&d, "modules.json", modules);
            if !pooling.is_empty() {
                write(&d, "1_Pooling/config.json", pooling);
            }
            let err = SentenceConfig::load(d.path(), 8, 64).unwrap_err();
            assert!(matches!(err, ModelError::BadConfig(_)), "{tag}: {err}");
        }
        let d = ScratchDir::new("st-badjson");
        write(&d, "modules.json", "{not json");
        assert!(matches!(
            SentenceConfig::load(d.path(), 8, 64),
            Err(ModelError::BadJson { .. })
        ));
    }
}
