//! The rule book: every limit and range a generation request is held to, defined once.
//!
//! Request validation ([`super::GenerationParams::validate`]), the sampler's own check of
//! its parameters ([`crate::SamplingParams::validate`]) and the HTTP layer's documentation all
//! read these constants, so a range cannot differ between two places again.

use crate::error::EngineError;

/// Most choices one request may ask for (`n`).
pub const MAX_CHOICES: usize = 16;
/// Most stop strings per request (`stop`).
pub const MAX_STOP: usize = 8;
/// Longest stop string, in bytes: text that may still become a stop string is held back and
/// searched at every token, so a long one costs every sequence in the batch.
pub const MAX_STOP_BYTES: usize = 4096;
/// Most `logit_bias` entries (more than any vocabulary Lumen serves needs for a bias per
/// token it means to touch, few enough that parsing them stays cheap).
pub const MAX_LOGIT_BIAS: usize = 65_536;
/// Most alternatives per token for `logprobs` / `top_logprobs` / `prompt_logprobs`.
pub const MAX_LOGPROBS: usize = 20;

/// Largest JSON schema, regex or grammar a request may constrain its output with, in bytes
/// (compiling one is work done before the first token; a tool list counts as its schemas).
pub const MAX_GRAMMAR_BYTES: usize = 64 * 1024;
/// Most alternatives in `guided_choice`.
pub const MAX_GUIDED_CHOICES: usize = 1024;
/// Most function tools in one request (`tools`).
pub const MAX_TOOLS: usize = 64;

/// A closed or half-open range of a float parameter, with the parameter's API name.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FloatRange {
    /// The OpenAI / vLLM parameter name.
    pub param: &'static str,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound (inclusive).
    pub hi: f64,
    /// Whether the lower bound itself is excluded.
    pub lo_open: bool,
    /// The value used when the parameter is absent.
    pub default: f64,
}

impl FloatRange {
    /// Whether `v` is finite and inside the range.
    pub fn contains(&self, v: f64) -> bool {
        v.is_finite() && v <= self.hi && (v > self.lo || (!self.lo_open && v == self.lo))
    }

    /// `v` as the f32 the sampler uses, or an error naming the parameter.
    pub fn check(&self, v: f64) -> Result<f32, EngineError> {
        if self.contains(v) {
            Ok(v as f32)
        } else {
            let open = if self.lo_open { "(" } else { "[" };
            Err(invalid(
                self.param,
                format!(
                    "{} must be in {open}{}, {}], got {v}",
                    self.param, self.lo, self.hi
                ),
            ))
        }
    }

    /// The checked value of an optional parameter, or the default.
    pub fn check_or_default(&self, v: Option<f64>) -> Result<f32, EngineError> {
        v.map_or(Ok(self.default as f32), |v| self.check(v))
    }
}

/// `temperature`: 0 is greedy (OpenAI's range).
pub const TEMPERATURE: FloatRange = FloatRange {
    param: "temperature",
    lo: 0.0,
    hi: 2.0,
    lo_open: false,
    default: 1.0,
};
/// `top_p`: 1 turns nucleus sampling off.
pub const TOP_P: FloatRange = FloatRange {
    param: "top_p",
    lo: 0.0,
    hi: 1.0,
    lo_open: true,
    default: 1.0,
};
/// `min_p` (vLLM): 0 turns it off.
pub const MIN_P: FloatRange = FloatRange {
    param: "min_p",
    lo: 0.0,
    hi: 1.0,
    lo_open: false,
    default: 0.0,
};
/// `presence_penalty`.
pub const PRESENCE_PENALTY: FloatRange = FloatRange {
    param: "presence_penalty",
    lo: -2.0,
    hi: 2.0,
    lo_open: false,
    default: 0.0,
};
/// `frequency_penalty`.
pub const FREQUENCY_PENALTY: FloatRange = FloatRange {
    param: "frequency_penalty",
    lo: -2.0,
    hi: 2.0,
    lo_open: false,
    default: 0.0,
};
/// `repetition_penalty` (vLLM): 1 is off.
pub const REPETITION_PENALTY: FloatRange = FloatRange {
    param: "repetition_penalty",
    lo: 0.0,
    hi: 10.0,
    lo_open: true,
    default: 1.0,
};
/// One `logit_bias` value.
pub const LOGIT_BIAS: FloatRange = FloatRange {
    param: "logit_bias",
    lo: -100.0,
    hi: 100.0,
    lo_open: false,
    default: 0.0,
};

/// An `InvalidRequest` error naming `param`.
pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> EngineError {
    EngineError::InvalidRequest {
        param,
        message: message.into(),
    }
}

/// A count parameter that must lie in `lo..=hi`.
pub(crate) fn count(
    param: &'static str,
    v: i64,
    lo: usize,
    hi: usize,
) -> Result<usize, EngineError> {
    match usize::try_from(v) {
        Ok(c) if (lo..=hi).contains(&c) => Ok(c),
        _ => Err(invalid(
            param,
            format!("{param} must be between {lo} and {hi}, got {v}"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_honour_open_and_closed_bounds() {
        assert!(TEMPERATURE.contains(0.0) && TEMPERATURE.contains(2.0));
        assert!(!TEMPERATURE.contains(2.0001) && !TEMPERATURE.contains(-0.0001));
        assert!(!TOP_P.contains(0.0) && TOP_P.contains(1e-9) && TOP_P.contains(1.0));
        assert!(!REPETITION_PENALTY.contains(0.0) && REPETITION_PENALTY.contains(10.0));
        for r in [
            TEMPERATURE,
            TOP_P,
            MIN_P,
            PRESENCE_PENALTY,
            FREQUENCY_PENALTY,
            REPETITION_PENALTY,
            LOGIT_BIAS,
        ] {
            assert!(
                !r.contains(f64::NAN) && !r.contains(f64::INFINITY),
                "{}",
                r.param
            );
            assert!(r.contains(r.default), "{} default in range", r.param);
        }
    }

    #[test]
    fn errors_name_the_parameter_and_the_range() {
        let e = TOP_P.check(0.0).unwrap_err();
        match e {
            EngineError::InvalidRequest { param, message } => {
                assert_eq!(param, "top_p");
                assert_eq!(message, "top_p must be in (0, 1], got 0");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            count("n", 0, 1, MAX_CHOICES),
            Err(EngineError::InvalidRequest { param: "n", .. })
        ));
        assert_eq!(count("n", 16, 1, MAX_CHOICES).unwrap(), 16);
        assert!(count("n", -1, 1, MAX_CHOICES).is_err());
    }
}
