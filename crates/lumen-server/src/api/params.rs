//! The generation fields chat and text completions share, as JSON names, and their mapping
//! onto the engine's [`GenerationParams`].
//!
//! Nothing is validated here: the engine owns the rule book (`lumen_engine::request`), and
//! its errors name the parameter as the client sent it. This module only knows the wire:
//! which JSON field feeds which parameter (`max_completion_tokens` wins over `max_tokens`,
//! `stop` may be one string or a list, `logit_bias` is a map) and the transport options that
//! are not the engine's business (`stream`, `stream_options`, `user`). Structured output
//! and tool fields are read by [`super::structured`].

use std::fmt;

use lumen_engine::{Api, CallerId, GenerationParams, PriorityInput, MAX_LOGIT_BIAS};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// `stop`: one string or a list.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum StopField {
    /// A single stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `priority`: vLLM's integer (lower runs earlier) or a class name.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub enum PriorityField {
    /// Above zero means a batch job.
    Int(i64),
    /// `"interactive"` or `"batch"`.
    Name(String),
}

/// `stream_options`.
#[derive(Deserialize, Debug, Clone, Default)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: Option<bool>,
}

/// The fields both endpoints accept (unknown fields are ignored).
#[derive(Deserialize, Debug, Default)]
pub struct GenFields {
    /// Choices per prompt.
    pub n: Option<i64>,
    /// Most generated tokens per choice.
    pub max_tokens: Option<i64>,
    /// The newer name of `max_tokens` (wins when both are sent).
    pub max_completion_tokens: Option<i64>,
    /// Sampling temperature.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Stop sequences.
    pub stop: Option<StopField>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Penalty for tokens already present.
    pub presence_penalty: Option<f64>,
    /// Penalty by count of tokens already present.
    pub frequency_penalty: Option<f64>,
    /// Token id (as a string) → bias added to its logit; reading stops with an error past
    /// the engine's limit, so a body of a million keys costs no more than the limit.
    #[serde(default, deserialize_with = "bounded_bias")]
    pub logit_bias: Option<Vec<(String, f64)>>,
    /// End-user id (logged only).
    pub user: Option<String>,
    /// Stream server-sent events.
    pub stream: Option<bool>,
    /// Streaming options.
    pub stream_options: Option<StreamOptions>,
    /// vLLM: keep the k most likely tokens (-1 or 0: off).
    pub top_k: Option<i64>,
    /// vLLM: drop tokens below `min_p` times the top probability.
    pub min_p: Option<f64>,
    /// vLLM: penalty for repeating prompt or generated tokens.
    pub repetition_penalty: Option<f64>,
    /// vLLM: keep generating past end-of-sequence tokens.
    pub ignore_eos: Option<bool>,
    /// vLLM: tokens to generate before a stop may end the choice.
    pub min_tokens: Option<i64>,
    /// vLLM: logprobs of the prompt tokens.
    pub prompt_logprobs: Option<i64>,
    /// vLLM: scheduling priority.
    pub priority: Option<PriorityField>,
    /// vLLM: token ids that end a choice.
    pub stop_token_ids: Option<Vec<i64>>,
    /// vLLM: leave special tokens out of the text (default true).
    pub skip_special_tokens: Option<bool>,
    /// vLLM: salt that keeps this request's prefix-cache entries apart.
    pub cache_salt: Option<String>,
    /// Lumen: entropy and margin per generated token, and a summary per choice.
    pub lumen_uncertainty: Option<bool>,
}

/// How the answer travels, which the engine does not need to know.
#[derive(Debug, Clone, Default)]
pub struct Transport {
    /// Stream server-sent events.
    pub stream: bool,
    /// Send usage in a last chunk (streaming only).
    pub include_usage: bool,
    /// The end user, for logs.
    pub user: Option<String>,
}

/// `logit_bias` as a list of entries, refused once it passes [`MAX_LOGIT_BIAS`].
fn bounded_bias<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<(String, f64)>>, D::Error> {
    struct Entries;
    impl<'de> Visitor<'de> for Entries {
        type Value = Option<Vec<(String, f64)>>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an object mapping token ids to biases")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
            d.deserialize_map(self)
        }

        fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
            let mut out = Vec::new();
            while let Some(entry) = map.next_entry::<String, f64>()? {
                if out.len() == MAX_LOGIT_BIAS {
                    return Err(de::Error::custom(format!(
                        "at most {MAX_LOGIT_BIAS} entries"
                    )));
                }
                out.push(entry);
            }
            Ok(Some(out))
        }
    }
    d.deserialize_option(Entries)
}

impl GenFields {
    /// Splits the fields into the engine's parameters (for `api`, from `caller`) and the
    /// transport options.
    pub fn split(self, api: Api, caller: Option<CallerId>) -> (GenerationParams, Transport) {
        let stream = self.stream.unwrap_or(false);
        let transport = Transport {
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
            user: self.user,
        };
        let params = GenerationParams {
            api,
            n: self.n,
            max_tokens: self.max_completion_tokens.or(self.max_tokens),
            min_tokens: self.min_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: self.logit_bias.unwrap_or_default(),
            seed: self.seed,
            stop: match self.stop {
                None => Vec::new(),
                Some(StopField::One(s)) => vec![s],
                Some(StopField::Many(v)) => v,
            },
            stop_token_ids: self.stop_token_ids.unwrap_or_default(),
            ignore_eos: self.ignore_eos,
            skip_special_tokens: self.skip_special_tokens,
            prompt_logprobs: self.prompt_logprobs,
            priority: self.priority.map(|p| match p {
                PriorityField::Int(i) => PriorityInput::Int(i),
                PriorityField::Name(s) => PriorityInput::Name(s),
            }),
            cache_salt: self.cache_salt,
            uncertainty: self.lumen_uncertainty,
            caller,
            // Each endpoint maps its own logprobs fields, `echo` and `best_of`.
            ..GenerationParams::default()
        };
        (params, transport)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServerError;

    fn fields(v: serde_json::Value) -> GenFields {
        serde_json::from_value(v).expect("fields")
    }

    #[test]
    fn max_completion_tokens_wins_and_stop_may_be_one_string() {
        let (p, t) = fields(serde_json::json!({
            "max_tokens": 5, "max_completion_tokens": 9, "stop": "END", "stream": true,
            "stream_options": {"include_usage": true}, "logit_bias": {"7": 1.5},
            "priority": "batch", "stop_token_ids": [3], "seed": -4
        }))
        .split(Api::Completions, Some(CallerId::new("k")));
        assert_eq!(p.api, Api::Completions);
        assert_eq!(p.max_tokens, Some(9));
        assert_eq!(p.stop, vec!["END".to_string()]);
        assert_eq!(p.logit_bias, vec![("7".to_string(), 1.5)]);
        assert_eq!(p.priority, Some(PriorityInput::Name("batch".into())));
        assert_eq!((p.stop_token_ids, p.seed), (vec![3], Some(-4)));
        assert_eq!(p.caller, Some(CallerId::new("k")));
        assert!(t.stream && t.include_usage);
    }

    #[test]
    fn logit_bias_reading_stops_at_the_limit() {
        let many: serde_json::Map<String, serde_json::Value> = (0..=MAX_LOGIT_BIAS)
            .map(|i| (i.to_string(), serde_json::json!(1)))
            .collect();
        let body = serde_json::json!({"logit_bias": many}).to_string();
        match crate::extract::parse_json::<GenFields>(body.as_bytes()) {
            Err(ServerError::InvalidParam { param, message }) => {
                assert_eq!(param.as_deref(), Some("logit_bias"));
                assert!(message.contains("at most"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let ok = crate::extract::parse_json::<GenFields>(br#"{"logit_bias": null}"#)
            .expect("null is absent");
        assert!(ok.logit_bias.is_none());
    }

    #[test]
    fn usage_chunk_only_when_streaming() {
        let (p, t) = fields(
            serde_json::json!({"stop": ["a", "b"], "stream_options": {"include_usage": true}}),
        )
        .split(Api::Chat, None);
        assert_eq!(p.stop.len(), 2);
        assert!(!t.stream && !t.include_usage);
        assert_eq!(p.max_tokens, None);
    }
}
