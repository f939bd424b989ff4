//! One grammar compiler per model: llguidance's parser factory over the model's vocabulary,
//! and a cache of compiled grammars keyed by their content.

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};

use llguidance::api::ParserLimits;
use llguidance::{Matcher, ParserFactory};

use super::spec::{Constraint, ConstraintSpec};
use super::vocab::tok_env;
use crate::error::EngineError;
use crate::request::limits::invalid;
use crate::tokenizer::Tokenizer;

/// Compiled grammars kept per model (a hit skips compilation; each entry is a parser in its
/// start state, so memory per entry is about the grammar's size plus its lexer cache).
const CACHE_ENTRIES: usize = 64;

/// A grammar compiled for one model, ready to start a sequence from.
#[derive(Clone)]
pub struct CompiledConstraint {
    param: &'static str,
    start: Matcher,
    /// Whether this is a tool-call grammar (the server parses calls out of the text).
    tools: bool,
}

impl std::fmt::Debug for CompiledConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledConstraint")
            .field("param", &self.param)
            .finish_non_exhaustive()
    }
}

impl CompiledConstraint {
    /// A matcher in the grammar's start state, for one sequence. Clones share the grammar
    /// and its lexer cache (the engine thread owns them all, so sharing costs no lock).
    pub(crate) fn start(&self) -> Matcher {
        self.start.clone()
    }

    /// The request parameter the grammar came from.
    pub fn param(&self) -> &'static str {
        self.param
    }

    /// Whether the grammar is for tool calls.
    pub fn is_tools(&self) -> bool {
        self.tools
    }
}

/// Compiles constraints for one model.
pub struct ConstraintCompiler {
    tokenizer: Arc<Tokenizer>,
    /// Built on the first constrained request: a model that never sees one pays nothing.
    factory: OnceLock<Result<ParserFactory, String>>,
    cache: Mutex<Cache>,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, CompiledConstraint>,
    order: VecDeque<String>,
}

impl ConstraintCompiler {
    /// A compiler over `tokenizer`'s vocabulary.
    pub fn new(tokenizer: Arc<Tokenizer>) -> Self {
        ConstraintCompiler {
            tokenizer,
            factory: OnceLock::new(),
            cache: Mutex::new(Cache::default()),
        }
    }

    fn factory(&self) -> Result<&ParserFactory, EngineError> {
        let built = self.factory.get_or_init(|| {
            let tokenizer = self.tokenizer.clone();
            // A vocabulary llguidance cannot take must not take the server down.
            catch_unwind(AssertUnwindSafe(move || {
                let env = tok_env(&tokenizer);
                let mut f = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
                f.quiet();
                *f.limits_mut() = ParserLimits {
                    verbose_errors: false,
                    ..ParserLimits::default()
                };
                Ok(f)
            }))
            .unwrap_or_else(|_| Err("the vocabulary cannot be indexed".into()))
        });
        built.as_ref().map_err(|e| {
            EngineError::Config(format!(
                "structured output is unavailable for this model: {e}"
            ))
        })
    }

    /// Checks `spec` and compiles it (or takes it from the cache). Compiling takes
    /// milliseconds to, for large schemas, a second: call it off the async workers. Work is
    /// bounded by llguidance's fuel limits, and the first token mask is computed here, so a
    /// grammar that cannot start fails now, as a 400, not in the middle of a stream.
    pub fn compile(&self, spec: &ConstraintSpec) -> Result<CompiledConstraint, EngineError> {
        spec.check()?;
        let key = spec.cache_key();
        if let Some(hit) = self.lock().entries.get(&key) {
            return Ok(hit.clone());
        }
        let factory = self.factory()?;
        let param = spec.param;
        let grammar = spec.grammar();
        let compiled = catch_unwind(AssertUnwindSafe(|| {
            let mut m = Matcher::new(factory.create_parser(grammar));
            m.compute_mask().map(|_| m).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| Err("the grammar engine failed on it".into()));
        let start = compiled.map_err(|e| invalid(param, describe(spec, &e)))?;
        let c = CompiledConstraint {
            param,
            start,
            tools: matches!(spec.constraint, Constraint::Tools(_)),
        };
        let mut cache = self.lock();
        if cache.entries.len() >= CACHE_ENTRIES {
            if let Some(old) = cache.order.pop_front() {
                cache.entries.remove(&old);
            }
        }
        if cache.entries.insert(key.clone(), c.clone()).is_none() {
            cache.order.push_back(key);
        }
        Ok(c)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        // The cache holds no invariant a panic could break half-way.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The client-facing message for a grammar llguidance refused.
fn describe(spec: &ConstraintSpec, error: &str) -> String {
    let what = match spec.constraint {
        Constraint::JsonObject | Constraint::JsonSchema { .. } => "JSON schema",
        Constraint::Regex(_) => "regular expression",
        Constraint::Choice(_) => "choice list",
        Constraint::Lark(_) => "grammar",
        Constraint::Tools(_) => "tool parameter schemas",
    };
    // llguidance's messages can be long (they may quote the grammar); keep the head.
    let error: String = error.chars().take(600).collect();
    format!("the {what} cannot be used: {error}")
}
