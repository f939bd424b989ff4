//! `POST /v1/chat/completions`.

use std::sync::Arc;

use lumen_engine::{Api, ChatMessage, GenerationParams, Tokenizer, ValidParams};
use serde::Deserialize;

use super::generate::{ChunkFormat, Endpoint, Prompt};
use super::logprobs::{prompt_logprobs, ChatTokenLogprob, PromptLogprobs};
use super::response::{chat_logprobs, ChatChoice, ChatChunkChoice, Delta, Envelope};
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
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
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

    fn prompts(body: ChatBody, model: &ChatServed) -> Result<Vec<Prompt>, ServerError> {
        let messages = convert_messages(&body.messages)?;
        let text = model.template.render(&messages, true, None)?;
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
        ChatChunks {
            meta,
            tokenizer,
            n: params.n(),
            logprobs: params.logprobs().is_some(),
            include_usage,
            prompt_logprobs: None,
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
            };
            self.push(
                out,
                ChatChunkChoice {
                    index,
                    delta,
                    logprobs: None,
                    finish_reason: None,
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
                ..
            } => {
                if text.is_empty() && logprob.is_none() {
                    return;
                }
                let logprobs =
                    logprob.map(|lp| chat_logprobs(ChatTokenLogprob::new(&self.tokenizer, &lp)));
                let delta = Delta {
                    role: None,
                    content: Some(text),
                };
                self.push(
                    out,
                    ChatChunkChoice {
                        index,
                        delta,
                        logprobs,
                        finish_reason: None,
                    },
                );
            }
            GenEvent::Finished {
                index,
                reason,
                text,
            } => {
                let delta = Delta {
                    role: None,
                    content: (!text.is_empty()).then_some(text),
                };
                self.push(
                    out,
                    ChatChunkChoice {
                        index,
                        delta,
                        logprobs: None,
                        finish_reason: Some(reason.as_str()),
                    },
                );
            }
            GenEvent::PromptLogprobs { logprobs, .. } => {
                self.prompt_logprobs = Some(prompt_logprobs(&self.tokenizer, &logprobs));
            }
        }
    }

    fn empty_answer(&self, choices: usize) -> Envelope<ChatChoice> {
        Envelope::empty_chat(&self.meta, choices, self.logprobs)
    }
}
