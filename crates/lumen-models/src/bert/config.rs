//! `config.json` of a Hugging Face BERT or MPNet checkpoint, parsed and checked.
//!
//! `model_type` picks the [`Family`]: `bert` (or no `model_type`, as old checkpoints write)
//! or `mpnet`. The two share every shape this module checks; MPNet adds the size of its
//! relative-position bias table and has no token-type table.
//!
//! Every hyper-parameter is validated before any tensor is looked at, so a bad file fails with
//! a message naming the field instead of a shape mismatch (or a huge allocation) later on.

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

/// The feed-forward activation named by `hidden_act`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Exact GELU, `x/2 * (1 + erf(x/√2))` (`"gelu"`, PyTorch's default).
    Gelu,
    /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    GeluTanh,
    /// `max(0, x)` (`"relu"`).
    Relu,
}

impl Activation {
    /// Maps a `hidden_act` string to an activation, if Lumen implements it.
    pub fn from_name(name: &str) -> Option<Activation> {
        match name {
            "gelu" => Some(Activation::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Some(Activation::GeluTanh),
            "relu" => Some(Activation::Relu),
            _ => None,
        }
    }
}

/// Which encoder a checkpoint holds; they differ only in position handling and tensor names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BERT: absolute positions from 0, a token-type table.
    Bert,
    /// MPNet: absolute positions from the padding id + 1, no token-type table, and a learned
    /// relative-position bias (T5-style buckets) added to every layer's attention scores.
    MpNet,
}

/// The fields of `config.json` exactly as written; see [`BertConfig`] for the checked form.
#[derive(Debug, Deserialize)]
struct RawConfig {
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default)]
    position_embedding_type: Option<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    relative_attention_num_buckets: Option<usize>,
}

fn default_type_vocab() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

/// Validated hyper-parameters of a BERT-family encoder.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// BERT or MPNet.
    pub family: Family,
    /// Number of word-piece ids.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_layers: usize,
    /// Attention heads per layer.
    pub num_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Feed-forward activation.
    pub activation: Activation,
    /// Longest sequence the position table covers.
    pub max_position_embeddings: usize,
    /// Rows of the token-type (segment) table (BERT only).
    pub type_vocab_size: usize,
    /// Rows of the relative-position bias table (MPNet only, else 0).
    pub relative_buckets: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

impl BertConfig {
    /// Reads and validates `config.json` at `path`.
    pub fn load(path: &Path) -> Result<BertConfig, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        BertConfig::from_json(&text).map_err(|e| match e {
            ModelError::BadJson { message, .. } => ModelError::BadJson {
                path: path.display().to_string(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates the text of a `config.json`.
    pub fn from_json(text: &str) -> Result<BertConfig, ModelError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|e| ModelError::BadJson {
            path: "config.json".to_string(),
            message: e.to_string(),
        })?;
        BertConfig::validate(raw)
    }

    fn validate(raw: RawConfig) -> Result<BertConfig, ModelError> {
        let bad = |msg: String| Err(ModelError::BadConfig(msg));
        let family = match raw.model_type.as_deref() {
            None | Some("bert") => Family::Bert,
            Some("mpnet") => Family::MpNet,
            Some(ty) => return bad(format!("model_type `{ty}` is not `bert` or `mpnet`")),
        };
        let relative_buckets = match family {
            Family::Bert => 0,
            Family::MpNet => {
                // transformers computes MPNet's buckets with a fixed 32 whatever the config
                // says; a table of another size would be read differently, so refuse it.
                let n = raw
                    .relative_attention_num_buckets
                    .unwrap_or(super::mpnet::NUM_BUCKETS);
                if n != super::mpnet::NUM_BUCKETS {
                    return bad(format!(
                        "relative_attention_num_buckets {n} is not {}",
                        super::mpnet::NUM_BUCKETS
                    ));
                }
                if raw.max_position_embeddings <= super::mpnet::PADDING_IDX + 1 {
                    return bad(format!(
                        "max_position_embeddings {} leaves no position for a token",
                        raw.max_position_embeddings
                    ));
                }
                n
            }
        };
        let sizes = [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("intermediate_size", raw.intermediate_size),
            ("max_position_embeddings", raw.max_position_embeddings),
            ("type_vocab_size", raw.type_vocab_size),
        ];
        for (name, value) in sizes {
            if value == 0 {
                return bad(format!("{name} must be nonzero"));
            }
        }
        // Ids are u32 on the way in; a larger vocabulary could not be addressed.
        if raw.vocab_size > u32::MAX as usize {
            return bad(format!("vocab_size {} does not fit in u32", raw.vocab_size));
        }
        if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                raw.hidden_size, raw.num_attention_heads
            ));
        }
        let Some(activation) = Activation::from_name(&raw.hidden_act) else {
            return bad(format!("unsupported hidden_act `{}`", raw.hidden_act));
        };
        let pos_type = raw.position_embedding_type.as_deref().unwrap_or("absolute");
        if family == Family::Bert && pos_type != "absolute" {
            return bad(format!("unsupported position_embedding_type `{pos_type}`"));
        }
        let eps = raw.layer_norm_eps as f32;
        if !(eps.is_finite() && eps > 0.0) {
            return bad(format!(
                "layer_norm_eps {} must be positive",
                raw.layer_norm_eps
            ));
        }
        Ok(BertConfig {
            family,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            activation,
            max_position_embeddings: raw.max_position_embeddings,
            type_vocab_size: raw.type_vocab_size,
            relative_buckets,
            layer_norm_eps: eps,
        })
    }

    /// Longest token sequence the position table covers: all its rows for BERT, all but the
    /// first `padding id + 1` for MPNet (its positions start there).
    pub fn max_tokens(&self) -> usize {
        match self.family {
            Family::Bert => self.max_position_embeddings,
            Family::MpNet => self.max_position_embeddings - super::mpnet::PADDING_IDX - 1,
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINILM: &str = r#"{
        "architectures": ["BertModel"], "hidden_act": "gelu", "hidden_size": 384,
        "intermediate_size": 1536, "layer_norm_eps": 1e-12, "max_position_embeddings": 512,
        "model_type": "bert", "num_attention_heads": 12, "num_hidden_layers": 6,
        "pad_token_id": 0, "position_embedding_type": "absolute", "type_vocab_size": 2,
        "vocab_size": 30522
    }"#;

    fn with(field: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(MINILM).unwrap();
        v[field] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    fn without(field: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(MINILM).unwrap();
        v.as_object_mut().unwrap().remove(field);
        v.to_string()
    }

    const MPNET: &str = r#"{
        "architectures": ["MPNetForMaskedLM"], "bos_token_id": 0, "eos_token_id": 2,
        "hidden_act": "gelu", "hidden_size": 768, "intermediate_size": 3072,
        "layer_norm_eps": 1e-05, "max_position_embeddings": 514, "model_type": "mpnet",
        "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 1,
        "relative_attention_num_buckets": 32, "vocab_size": 30527
    }"#;

    #[test]
    fn parses_mpnet() {
        let c = BertConfig::from_json(MPNET).unwrap();
        assert_eq!(c.family, Family::MpNet);
        assert_eq!((c.hidden_size, c.num_layers, c.head_dim()), (768, 12, 64));
        assert_eq!((c.relative_buckets, c.max_tokens()), (32, 512));
        assert_eq!(c.layer_norm_eps, 1e-5);
        let mut v: serde_json::Value = serde_json::from_str(MPNET).unwrap();
        v["relative_attention_num_buckets"] = 64.into();
        assert!(matches!(
            BertConfig::from_json(&v.to_string()),
            Err(ModelError::BadConfig(ref m)) if m.contains("relative_attention_num_buckets")
        ));
        v["relative_attention_num_buckets"] = 32.into();
        v["max_position_embeddings"] = 2.into();
        assert!(BertConfig::from_json(&v.to_string()).is_err());
    }

    #[test]
    fn parses_minilm() {
        let c = BertConfig::from_json(MINILM).unwrap();
        assert_eq!(c.hidden_size, 384);
        assert_eq!(c.num_layers, 6);
        assert_eq!(c.head_dim(), 32);
        assert_eq!(c.activation, Activation::Gelu);
        assert_eq!(c.layer_norm_eps, 1e-12);
        assert_eq!(
            (c.family, c.relative_buckets, c.max_tokens()),
            (Family::Bert, 0, 512)
        );
    }

    #[test]
    fn rejects_zero_sizes() {
        for field in [
            "vocab_size",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "intermediate_size",
            "max_position_embeddings",
            "type_vocab_size",
        ] {
            let err = BertConfig::from_json(&with(field, "0")).unwrap_err();
            assert!(
                matches!(err, ModelError::BadConfig(ref m) if m.contains(field)),
                "{field}: {err}"
            );
        }
    }

    #[test]
    fn rejects_inconsistent_or_unsupported_fields() {
        let cases = [
            with("num_attention_heads", "7"),
            with("hidden_act", "\"swish\""),
            with("position_embedding_type", "\"relative_key\""),
            with("model_type", "\"roberta\""),
            with("layer_norm_eps", "-1.0"),
            with("layer_norm_eps", "0.0"),
        ];
        for text in cases {
            let err = BertConfig::from_json(&text).unwrap_err();
            assert!(matches!(err, ModelError::BadConfig(_)), "{text}: {err}");
        }
    }

    #[test]
    fn rejects_missing_or_mistyped_fields() {
        for text in [
            without("hidden_size"),
            with("hidden_size", "\"384\""),
            with("vocab_size", "-3"),
        ] {
            let err = BertConfig::from_json(&text).unwrap_err();
            assert!(matches!(err, ModelError::BadJson { .. }), "{err}");
        }
        assert!(BertConfig::from_json("not json").is_err());
    }

    #[test]
    fn accepts_other_activations_and_defaults() {
        assert_eq!(
            BertConfig::from_json(&with("hidden_act", "\"gelu_new\""))
                .unwrap()
                .activation,
            Activation::GeluTanh
        );
        assert_eq!(
            BertConfig::from_json(&with("hidden_act", "\"relu\""))
                .unwrap()
                .activation,
            Activation::Relu
        );
        let c = BertConfig::from_json(&without("position_embedding_type")).unwrap();
        assert_eq!(c.max_position_embeddings, 512);
    }
}
