//! `POST /v1/chat/completions`.

use std::sync::Arc;

use lumen_engine::{
    Api, ChatMessage, FunctionCallMessage, GenerationParams, Tokenizer, ToolCallMessage,
    ToolChoice, ValidParams,
};
use serde::Deserialize;

use super::generate::{ChunkFormat, Endpoint, Prompt};
use super::logprobs::{prompt_logprobs, ChatTokenLogprob, PromptLogprobs};
use super::response::{chat_logprobs, ChatChoice, ChatChunkChoice, Delta, Envelope};
use super::tool_calls::ToolStream;
use super::uncertainty::UncertaintyTally;
use super::Meta;
use crate::error::ServerError;
use crate::gen::GenEvent;
use crate::state::ChatServed;

/// The chat-specific fields of a request.
#[derive(Deserialize, Debug)]
pub struct ChatBody {
    /// Model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<MessageIn>,
    /// Return logprobs of the generated tokens.
    pub logprobs: Option<bool>,
    /// Alternatives per token (0..=20), with `logprobs: true`.
    pub top_logprobs: Option<i64>,
}

/// One message of the conversation.
#[derive(Deserialize, Debug)]
pub struct MessageIn {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of content parts.
    #[serde(default)]
    pub content: Option<ContentIn>,
    /// An assistant message's tool calls.
    pub tool_calls: Option<Vec<ToolCallIn>>,
    /// A `tool` message: the id of the call it answers.
    pub tool_call_id: Option<String>,
    /// A `tool` message: the function's name (optional).
    pub name: Option<String>,
}

/// A tool call in the history.
#[derive(Deserialize, Debug)]
pub struct ToolCallIn {
    /// The call's id.
    pub id: String,
    /// `function` (the only kind).
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// What was called.
    pub function: FunctionCallIn,
}

/// The function of a [`ToolCallIn`].
#[derive(Deserialize, Debug)]
pub struct FunctionCallIn {
    /// The function's name.
    pub name: String,
    /// Its arguments: JSON text as OpenAI sends it (an object is accepted too).
    pub arguments: serde_json::Value,
}

/// Message content.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum ContentIn {
    /// Plain text.
    Text(String),
    /// Content parts (only `text` parts are supported).
    Parts(Vec<PartIn>),
}

/// A content part.
#[derive(Deserialize, Debug)]
pub struct PartIn {
    /// Part type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The text of a `text` part.
    pub text: Option<String>,
}

const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool"];

/// Checks roles and content and turns the messages into template input.
pub fn convert_messages(messages: &[MessageIn]) -> Result<Vec<ChatMessage>, ServerError> {
    if messages.is_empty() {
        return Err(ServerError::param("messages", "messages must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.iter().enumerate() {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(ServerError::param(
                format!("messages[{i}].role"),
                format!(
                    "unknown role '{}' (expected one of {})",
                    m.role,
                    ROLES.join(", ")
                ),
            ));
        }
        let content = match &m.content {
            None if m.role == "assistant" => String::new(),
            None if m.role == "tool" => {
                return Err(ServerError::param(
                    format!("messages[{i}].content"),
                    "a tool message needs content (the tool's result)",
                ))
            }
            None => {
                return Err(ServerError::param(
                    format!("messages[{i}].content"),
                    "content is required",
                ))
            }
            Some(ContentIn::Text(t)) => t.clone(),
            Some(ContentIn::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => text.push_str(t),
                        _ => {
                            return Err(ServerError::param(
                                format!("messages[{i}].content[{j}]"),
                                format!(
                                    "content parts of type '{}' are not supported; send text",
                                    p.kind
                                ),
                            ))
                        }
                    }
                }
                text
            }
        };
        // The templates know `system`; `developer` is OpenAI's newer name for it.
        let role = if m.role == "developer" {
            "system"
        } else {
            m.role.as_str()
        };
        let mut msg = ChatMessage::new(role, content);
        if let Some(calls) = &m.tool_calls {
            if m.role != "assistant" {
                return Err(ServerError::param(
                    format!("messages[{i}].tool_calls"),
                    "only assistant messages carry tool_calls",
                ));
            }
            msg.tool_calls = Some(history_calls(i, calls)?);
        }
        if m.role == "tool" {
            let Some(id) = &m.tool_call_id else {
                return Err(ServerError::param(
                    format!("messages[{i}].tool_call_id"),
                    "a tool message must name the call it answers (tool_call_id)",
                ));
            };
            msg.tool_call_id = Some(id.clone());
            msg.name = m.name.clone();
        }
        out.push(msg);
    }
    Ok(out)
}

/// The tool calls of history message `i`, arguments parsed for the template.
fn history_calls(i: usize, calls: &[ToolCallIn]) -> Result<Vec<ToolCallMessage>, ServerError> {
    calls
        .iter()
        .enumerate()
        .map(|(j, c)| {
            if c.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ServerError::param(
                    format!("messages[{i}].tool_calls[{j}].type"),
                    "the only tool call type is \"function\"",
                ));
            }
            let arguments = match &c.function.arguments {
                serde_json::Value::String(text) => serde_json::from_str(text).map_err(|e| {
                    ServerError::param(
                        format!("messages[{i}].tool_calls[{j}].function.arguments"),
                        format!("the arguments are not JSON: {e}"),
                    )
                })?,
                other => other.clone(),
            };
            Ok(ToolCallMessage {
                id: c.id.clone(),
                kind: "function".into(),
                function: FunctionCallMessage {
                    name: c.function.name.clone(),
                    arguments,
                },
            })
        })
        .collect()
}

/// The chat endpoint's differences from text completions.
pub struct Chat;

impl Endpoint for Chat {
    const API: Api = Api::Chat;
    const ID_PREFIX: &'static str = "chatcmpl";
    type Body = ChatBody;
    type Format = ChatChunks;

    fn model_name(body: &ChatBody) -> &str {
        &body.model
    }

    fn map_params(body: &ChatBody, params: &mut GenerationParams) {
        params.logprobs = body.logprobs;
        params.top_logprobs = body.top_logprobs;
    }

    fn prompts(
        body: ChatBody,
        model: &ChatServed,
        params: &ValidParams,
    ) -> Result<Vec<Prompt>, ServerError> {
        let messages = convert_messages(&body.messages)?;
        let text = model
            .template
            .render_with_tools(&messages, true, params.tools())?;
        let ids = model.handle.tokenizer().encode(&text, true, true)?;
        Ok(vec![Prompt { ids, text }])
    }

    fn format(
        meta: Meta,
        tokenizer: Arc<Tokenizer>,
        params: &ValidParams,
        _: Vec<Prompt>,
        include_usage: bool,
    ) -> ChatChunks {
        let tools = params.tools().map(|t| {
            let named = matches!(t.choice, ToolChoice::Named(_));
            ToolStream::new(params.n(), named, &meta.id)
        });
        ChatChunks {
            meta,
            tokenizer,
            n: params.n(),
            logprobs: params.logprobs().is_some(),
            include_usage,
            prompt_logprobs: None,
            tools,
            uncertainty: params.uncertainty().then(UncertaintyTally::default),
        }
    }
}

/// `chat.completion.chunk` frames.
pub struct ChatChunks {
    meta: Meta,
    tokenizer: Arc<Tokenizer>,
    n: usize,
    logprobs: bool,
    include_usage: bool,
    /// Prompt logprobs waiting for the next chunk to carry them.
    prompt_logprobs: Option<PromptLogprobs>,
    /// Tool-call parsing, when the request offers tools.
    tools: Option<ToolStream>,
    /// Per-choice uncertainty sums, when `lumen_uncertainty` was asked for.
    uncertainty: Option<UncertaintyTally>,
}

impl ChatChunks {
    fn push(&mut self, out: &mut Vec<Envelope<ChatChunkChoice>>, choice: ChatChunkChoice) {
        let mut c = self.chunk(vec![choice]);
        c.prompt_logprobs = self.prompt_logprobs.take();
        out.push(c);
    }
}

impl ChunkFormat for ChatChunks {
    type Choice = ChatChunkChoice;
    type FinalChoice = ChatChoice;
    const OBJECT: &'static str = "chat.completion.chunk";

    fn meta(&self) -> &Meta {
        &self.meta
    }

    fn include_usage(&self) -> bool {
        self.include_usage
    }

    fn start(&mut self, out: &mut Vec<Envelope<ChatChunkChoice>>) {
        for index in 0..self.n {
            let delta = Delta {
                role: Some("assistant"),
                content: Some(String::new()),
                tool_calls: None,
            };
            self.push(
                out,
                ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
                    lumen_uncertainty: None,
                },
            );
        }
    }

    fn event(&mut self, ev: GenEvent, out: &mut Vec<Envelope<ChatChunkChoice>>) {
        match ev {
            GenEvent::Token {
                index,
                text,
                logprob,
                uncertainty,
                ..
            } => {
                if text.is_empty() && logprob.is_none() && uncertainty.is_none() {
                    return;
                }
                let mut lumen_uncertainty = match (&mut self.uncertainty, uncertainty) {
                    (Some(t), Some(u)) => Some(t.token(index, &u)),
                    _ => None,
                };
                let mut logprobs =
                    logprob.map(|lp| chat_logprobs(ChatTokenLogprob::new(&self.tokenizer, &lp)));
                let mut deltas = match &mut self.tools {
                    Some(t) => t.push(index, &text),
                    None => vec![Delta {
                        content: Some(text),
                        ..Delta::default()
                    }],
                };
                if deltas.is_empty() && (logprobs.is_some() || lumen_uncertainty.is_some()) {
                    // Text held back by the tool parser: the token's logprobs still go out.
                    deltas.push(Delta::default());
                }
                for delta in deltas {
                    let choice = ChatChunkChoice {
                        index,
                        delta,
                        logprobs: logprobs.take(),
                        finish_reason: None,
                        lumen_uncertainty: lumen_uncertainty.take(),
                    };
                    self.push(out, choice);
                }
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                let (deltas, reason) = match &mut self.tools {
                    Some(t) => t.finish(index, &text, reason.as_str()),
                    None => (
                        vec![Delta {
                            content: Some(text),
                            ..Delta::default()
                        }],
                        reason.as_str(),
                    ),
                };
                let mut deltas: Vec<Delta> = deltas
                    .into_iter()
                    .filter(|d| d.tool_calls.is_some() || d.content.as_deref() != Some(""))
                    .collect();
                let last = deltas.pop().unwrap_or_default();
                for delta in deltas {
                    let choice = ChatChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: None,
                        lumen_uncertainty: None,
                    };
                    self.push(out, choice);
                }
                let choice = ChatChunkChoice {
                    index,
                    delta: last,
                    logprobs: None,
                    finish_reason: Some(reason),
                    lumen_uncertainty: self.uncertainty.as_mut().map(|t| t.finish(index)),
                };
                self.push(out, choice);
            }
            GenEvent::PromptLogprobs { logprobs, .. } => {
                self.prompt_logprobs = Some(prompt_logprobs(&self.tokenizer, &logprobs));
            }
        }
    }

    fn empty_answer(&self, choices: usize) -> Envelope<ChatChoice> {
        Envelope::empty_chat(
            &self.meta,
            choices,
            self.logprobs,
            self.uncertainty.is_some(),
        )
    }
}
