//! Chat templates: the model's Jinja template turns a conversation into a prompt.
//!
//! Templates are written for Python's Jinja2 as Hugging Face runs it, so the
//! environment copies those settings: `trim_blocks` and `lstrip_blocks` on, loop
//! controls, Python string/dict methods (`.strip()`, `.startswith()`, `.items()`, via
//! `minijinja_contrib::pycompat`), `raise_exception`, `strftime_now`, and a `tojson`
//! that writes what Python's `json.dumps` writes. String literals continued over a line
//! break with a backslash are joined as Python joins them.
//!
//! The template comes from the model file, so it renders under a budget (see [`budget`]):
//! its operators, filters, methods and printing are checked (`checked`, `rewrite`),
//! and a template is test-rendered when a model loads ([`ChatTemplate::check_budget`]).

pub mod budget;
mod checked;
mod pyjson;
mod renderer;
mod rewrite;
mod source;
mod strftime;
mod tools;

use std::sync::Arc;

use lumen_gguf::Metadata;
use minijinja::value::Value;
use minijinja::{Environment, Error, ErrorKind};
use serde::{Deserialize, Serialize};

use crate::error::EngineError;
use crate::tokenizer::Tokenizer;

/// The ChatML template, used when a model ships none.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// GGUF key holding the default chat template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

/// Name of the template inside the environment.
const NAME: &str = "chat_template";

/// Prefix that marks an error raised by the template's own `raise_exception`.
const RAISED: &str = "raise_exception: ";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant`, `tool`, ...
    pub role: String,
    /// The text; OpenAI content-part lists are flattened when deserialized.
    #[serde(deserialize_with = "content::deserialize", default)]
    pub content: String,
    /// An assistant message's tool calls (arguments as JSON values, as templates expect).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallMessage>>,
    /// A `tool` message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A tool call inside an assistant message of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallMessage {
    /// The call's id.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What was called.
    pub function: FunctionCallMessage,
}

/// The function part of a [`ToolCallMessage`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCallMessage {
    /// The function's name.
    pub name: String,
    /// Its arguments, parsed (templates write them with `tojson`).
    pub arguments: serde_json::Value,
}

impl ChatMessage {
    /// A message with the given role and text.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: role.into(),
            content: content.into(),
            tool_calls: None,
            tool_call_id: None,
            name: None,
        }
    }

    /// Bytes this message adds to a template's input (for the render budget).
    fn input_size(&self) -> usize {
        let calls = self.tool_calls.as_ref().map_or(0, |c| {
            c.iter()
                .map(|t| {
                    t.id.len() + t.function.name.len() + t.function.arguments.to_string().len()
                })
                .sum()
        });
        self.role.len() + self.content.len() + calls
    }

    /// Reads an OpenAI-style message object (`content` may be a list of text parts).
    pub fn from_json(value: &serde_json::Value) -> Result<ChatMessage, EngineError> {
        ChatMessage::deserialize(value).map_err(|e| EngineError::InvalidMessage(e.to_string()))
    }
}

mod content {
    //! `content` as a string, `null`, or a list of `{"type": "text", "text": ...}` parts.

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }

    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        #[serde(default)]
        text: Option<String>,
    }

    /// Flattens text parts with newlines, as vLLM does; other part types are rejected.
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        match Option::<Content>::deserialize(d)? {
            None => Ok(String::new()),
            Some(Content::Text(s)) => Ok(s),
            Some(Content::Parts(parts)) => {
                let mut texts = Vec::with_capacity(parts.len());
                for p in parts {
                    match (p.kind.as_str(), p.text) {
                        ("text", Some(t)) => texts.push(t),
                        ("text", None) => {
                            return Err(serde::de::Error::custom("text part without 'text'"))
                        }
                        (other, _) => {
                            return Err(serde::de::Error::custom(format!(
                                "content parts of type '{other}' are not supported"
                            )))
                        }
                    }
                }
                Ok(texts.join("\n"))
            }
        }
    }
}

/// A compiled chat template plus the special-token texts it may print.
#[derive(Debug)]
pub struct ChatTemplate {
    inner: Arc<Compiled>,
}

/// The compiled template and what it renders with (shared with the render threads).
#[derive(Debug)]
struct Compiled {
    env: Environment<'static>,
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source`; `bos_token`/`eos_token` are the texts templates see.
    pub fn new(
        source: &str,
        bos_token: &str,
        eos_token: &str,
    ) -> Result<ChatTemplate, EngineError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(budget::MAX_FUEL));
        env.set_recursion_limit(budget::MAX_RECURSION);
        checked::install(&mut env);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime::strftime_now);
        env.add_filter("tojson", pyjson::tojson);
        let normalized = source::normalize(source);
        rewrite::check_tag_sizes(&normalized).map_err(EngineError::TemplateBudget)?;
        // A source that does not parse is compiled as is, so the error is minijinja's own.
        let compiled =
            rewrite::checked_operators(&normalized).unwrap_or_else(|| normalized.into_owned());
        env.add_template_owned(NAME, compiled)
            .map_err(|e| EngineError::TemplateSyntax(describe(&e)))?;
        Ok(ChatTemplate {
            inner: Arc::new(Compiled {
                env,
                source: source.to_owned(),
                bos_token: bos_token.to_owned(),
                eos_token: eos_token.to_owned(),
            }),
        })
    }

    /// The ChatML template with the given special-token texts.
    pub fn chatml(bos_token: &str, eos_token: &str) -> Result<ChatTemplate, EngineError> {
        ChatTemplate::new(CHATML_TEMPLATE, bos_token, eos_token)
    }

    /// The model's `tokenizer.chat_template`, or ChatML when the file has none.
    pub fn from_metadata(
        meta: &Metadata,
        tokenizer: &Tokenizer,
    ) -> Result<ChatTemplate, EngineError> {
        let text = |id: Option<u32>| {
            id.and_then(|i| tokenizer.token_to_piece(i).ok())
                .unwrap_or_default()
        };
        let (bos, eos) = (text(tokenizer.bos_id()), text(tokenizer.eos_id()));
        let template = match meta.get(CHAT_TEMPLATE_KEY) {
            Some(_) => ChatTemplate::new(meta.get_str(CHAT_TEMPLATE_KEY)?, &bos, &eos)?,
            None => ChatTemplate::chatml(&bos, &eos)?,
        };
        template.check_budget()?;
        Ok(template)
    }

    /// Test-renders a sample conversation so that a template which exceeds its budget
    /// (a memory or time bomb) is refused when the model loads, not on a request.
    ///
    /// Tries system, user, assistant, user with a generation prompt; a template that
    /// rejects that with `raise_exception` (no system role, say) is tried without the
    /// system message. Only [`EngineError::TemplateBudget`] fails the check: other render
    /// errors depend on the conversation and are reported per request, as before.
    pub fn check_budget(&self) -> Result<(), EngineError> {
        let full = [
            ChatMessage::new("system", "You are a helpful assistant."),
            ChatMessage::new("user", "Hello! What can you do?"),
            ChatMessage::new("assistant", "I can answer questions and help with writing."),
            ChatMessage::new("user", "Write a haiku about the sea."),
        ];
        let mut result = self.render(&full, true, None);
        if matches!(result, Err(EngineError::TemplateException(_))) {
            result = self.render(&full[1..], true, None);
        }
        match result {
            Err(e @ EngineError::TemplateBudget(_)) => Err(e),
            Err(e) => {
                tracing::warn!("the chat template does not render a sample conversation: {e}");
                Ok(())
            }
            Ok(_) => Ok(()),
        }
    }

    /// The template source.
    pub fn source(&self) -> &str {
        &self.inner.source
    }

    /// Renders the conversation; `tools` (OpenAI tool definitions) is passed through as is.
    ///
    /// Renders on one of the render threads (module `renderer`), whose large stacks let a
    /// template build values nested as deep as its instruction budget allows: dropping them
    /// recurses.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, EngineError> {
        let inner = self.inner.clone();
        let messages = messages.to_vec();
        let tools = tools.cloned();
        renderer::run(move || inner.render_here(&messages, add_generation_prompt, tools.as_ref()))?
    }
}

impl Compiled {
    fn render_here(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&serde_json::Value>,
    ) -> Result<String, EngineError> {
        let tpl = self
            .env
            .get_template(NAME)
            .map_err(|e| EngineError::TemplateRender(describe(&e)))?;
        let ctx = minijinja::context! {
            messages => Value::from_serialize(messages),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            tools => tools.map(Value::from_serialize).unwrap_or(Value::from(())),
        };
        let input = messages.iter().map(ChatMessage::input_size).sum::<usize>()
            + tools.map_or(0, |t| t.to_string().len())
            + self.bos_token.len()
            + self.eos_token.len();
        let limits = budget::Limits::for_input(input);
        let guard = budget::Guard::enter(limits);
        let mut out = budget::BoundedBytes::new(limits.max_string);
        let result = tpl.render_captured_to(ctx, &mut out).map(drop);
        let err = match result {
            Ok(_) => {
                return String::from_utf8(out.bytes)
                    .map_err(|e| EngineError::TemplateRender(e.to_string()))
            }
            Err(e) => e,
        };
        if let Some(what) = guard.exceeded() {
            return Err(EngineError::TemplateBudget(what));
        }
        if out.overflowed {
            return Err(EngineError::TemplateBudget(format!(
                "the prompt is longer than {} bytes",
                limits.max_string
            )));
        }
        Err(match (raised_message(&err), budget_kind(&err)) {
            (Some(msg), _) => EngineError::TemplateException(msg),
            (None, Some(what)) => EngineError::TemplateBudget(what),
            (None, None) => EngineError::TemplateRender(describe(&err)),
        })
    }
}

/// `raise_exception(message)`: lets a template reject a conversation.
fn raise_exception(message: String) -> Result<Value, Error> {
    Err(Error::new(
        ErrorKind::InvalidOperation,
        format!("{RAISED}{message}"),
    ))
}

/// The message of a `raise_exception` call somewhere in the error chain.
fn raised_message(e: &Error) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(mj) = err.downcast_ref::<Error>() {
            if let Some(msg) = mj.detail().and_then(|d| d.strip_prefix(RAISED)) {
                return Some(msg.to_owned());
            }
        }
        cur = err.source();
    }
    None
}

/// Budget limits that minijinja enforces itself: fuel, recursion depth, `range` length.
fn budget_kind(e: &Error) -> Option<String> {
    if e.kind() == ErrorKind::OutOfFuel {
        return Some(format!(
            "the template ran more than {} instructions",
            budget::MAX_FUEL
        ));
    }
    let detail = e.detail().unwrap_or_default();
    if detail.contains("recursion limit exceeded") {
        return Some(format!(
            "the template nests calls deeper than the recursion limit ({})",
            budget::MAX_RECURSION
        ));
    }
    if detail.contains("range has too many elements") {
        return Some(format!("range() is limited to {} items", budget::MAX_ITEMS));
    }
    None
}

/// An error with its causes, e.g. `syntax error: unexpected end of input (in chat_template:3)`.
fn describe(e: &Error) -> String {
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

#[cfg(test)]
mod tests;
