//! Validated requests: the only thing [`crate::EngineHandle::submit`] accepts.
//!
//! Validation has two stages because a request's parameters are known before its prompt is
//! (a chat template must be rendered and tokenized first, off the async workers):
//! [`ValidParams`] is every parameter checked, [`ValidRequest`] is those plus one tokenized
//! prompt that fits the model's context and KV cache. Neither can be built any other way,
//! so the engine never sees a request that skipped a rule.

use super::limits::invalid;
use super::params::{Api, CallerId};
use super::{GenerateRequest, Priority};
use crate::constraint::{Constraint, ConstraintCompiler, ConstraintSpec, ToolCalling};
use crate::engine::{ModelInfo, BLOCK_SIZE};
use crate::error::EngineError;

/// Every parameter of a request checked, waiting for its prompt(s).
#[derive(Clone, Debug)]
pub struct ValidParams {
    template: GenerateRequest,
    /// The explicit `max_tokens`, or `None` to fill the context.
    max_tokens: Option<usize>,
    api: Api,
    echo: bool,
    show_prompt_logprobs: bool,
    caller: Option<CallerId>,
    /// The constraint asked for (sizes checked); compiled into `template` by
    /// [`ValidParams::compile_constraint`].
    constraint: Option<ConstraintSpec>,
    model: String,
}

impl ValidParams {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        template: GenerateRequest,
        max_tokens: Option<usize>,
        api: Api,
        echo: bool,
        show_prompt_logprobs: bool,
        caller: Option<CallerId>,
        constraint: Option<ConstraintSpec>,
        model: &ModelInfo,
    ) -> Self {
        ValidParams {
            template,
            max_tokens,
            api,
            echo,
            show_prompt_logprobs,
            caller,
            constraint,
            model: model.name.clone(),
        }
    }

    /// The constraint the output must follow, if any.
    pub fn constraint(&self) -> Option<&ConstraintSpec> {
        self.constraint.as_ref()
    }

    /// The tools offered to the model, when the request calls tools.
    pub fn tools(&self) -> Option<&ToolCalling> {
        match &self.constraint.as_ref()?.constraint {
            Constraint::Tools(t) => Some(t),
            _ => None,
        }
    }

    /// Compiles the constraint with `compiler` (the model's; slow for big schemas, so call
    /// it off the async workers). Without a constraint it does nothing.
    pub fn compile_constraint(&mut self, compiler: &ConstraintCompiler) -> Result<(), EngineError> {
        if let Some(spec) = &self.constraint {
            self.template.constraint = Some(compiler.compile(spec)?);
        }
        Ok(())
    }

    /// Choices per prompt.
    pub fn n(&self) -> usize {
        self.template.n
    }

    /// Alternatives per generated token when logprobs are asked for.
    pub fn logprobs(&self) -> Option<usize> {
        self.template.sampling.logprobs
    }

    /// Whether each generated token's uncertainty is measured (`lumen_uncertainty`).
    pub fn uncertainty(&self) -> bool {
        self.template.sampling.uncertainty
    }

    /// Whether the prompt is prepended to each choice (completions' `echo`).
    pub fn echo(&self) -> bool {
        self.echo
    }

    /// Whether the client asked for `prompt_logprobs` itself (echo may also imply them).
    pub fn show_prompt_logprobs(&self) -> bool {
        self.show_prompt_logprobs
    }

    /// Scheduling class.
    pub fn priority(&self) -> Priority {
        self.template.priority
    }

    /// The request for one tokenized prompt, fitted to `model`'s context and KV cache.
    pub fn for_prompt(
        &self,
        prompt: Vec<u32>,
        model: &ModelInfo,
    ) -> Result<ValidRequest, EngineError> {
        let param = self.api.prompt_param();
        if model.name != self.model {
            return Err(EngineError::Config(format!(
                "parameters validated for model '{}' used with '{}'",
                self.model, model.name
            )));
        }
        if self.constraint.is_some() && self.template.constraint.is_none() {
            return Err(EngineError::Config(
                "a constrained request must be compiled before it is submitted".into(),
            ));
        }
        if prompt.is_empty() {
            return Err(invalid(param, "the prompt is empty"));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= model.vocab_size) {
            return Err(invalid(
                param,
                format!(
                    "token id {t} is outside the vocabulary of {} tokens",
                    model.vocab_size
                ),
            ));
        }
        let ctx = model.context_len;
        let kv_tokens = model.kv_blocks.saturating_mul(BLOCK_SIZE);
        let limit = ctx.min(kv_tokens);
        if prompt.len() >= limit {
            let why = if kv_tokens < ctx {
                " (the KV cache holds that many)"
            } else {
                ""
            };
            return Err(invalid(
                param,
                format!(
                    "This model's maximum context length is {limit} tokens{why}, but the prompt has {} tokens.",
                    prompt.len()
                ),
            ));
        }
        let max_tokens = match self.max_tokens {
            Some(m) if prompt.len().saturating_add(m) > ctx => {
                return Err(invalid(
                    "max_tokens",
                    format!(
                        "This model's maximum context length is {ctx} tokens. However, you requested {} tokens ({} in the prompt, {m} for the completion). Please reduce the length of the prompt or max_tokens.",
                        prompt.len().saturating_add(m),
                        prompt.len()
                    ),
                ))
            }
            Some(m) if prompt.len() + m > limit => {
                return Err(invalid(
                    "max_tokens",
                    format!(
                        "The prompt ({} tokens) plus max_tokens ({m}) does not fit in the KV cache of {limit} tokens.",
                        prompt.len()
                    ),
                ))
            }
            Some(m) => m,
            None => limit - prompt.len(),
        };
        let mut request = self.template.clone();
        request.prompt = prompt;
        request.max_tokens = max_tokens;
        request.min_tokens = request.min_tokens.min(max_tokens);
        Ok(ValidRequest {
            request,
            caller: self.caller.clone(),
            model: self.model.clone(),
        })
    }
}

/// A request that passed every rule for one model: parameters and a prompt that fits.
#[derive(Clone, Debug)]
pub struct ValidRequest {
    pub(crate) request: GenerateRequest,
    caller: Option<CallerId>,
    pub(crate) model: String,
}

impl ValidRequest {
    /// The prompt's token ids.
    pub fn prompt(&self) -> &[u32] {
        &self.request.prompt
    }

    /// Prompt tokens (what admission charges before anything is generated).
    pub fn prompt_tokens(&self) -> usize {
        self.request.prompt.len()
    }

    /// Most tokens one choice may generate.
    pub fn max_tokens(&self) -> usize {
        self.request.max_tokens
    }

    /// Choices.
    pub fn n(&self) -> usize {
        self.request.n
    }

    /// Most tokens the whole request may generate (all choices): the worst case admission
    /// reserves.
    pub fn max_new_tokens(&self) -> usize {
        self.request.max_tokens.saturating_mul(self.request.n)
    }

    /// Scheduling class.
    pub fn priority(&self) -> Priority {
        self.request.priority
    }

    /// Who sent it, when the service layer said.
    pub fn caller(&self) -> Option<&CallerId> {
        self.caller.as_ref()
    }
}
