//! The typed objects chat and text completions answer with, streamed or whole.
//!
//! Both endpoints stream chunks; a non-streaming answer is those same chunks folded into one
//! object ([`Fold`]), so the two forms cannot disagree. Field order follows OpenAI's docs.

use lumen_engine::Usage;
use serde::Serialize;

use super::logprobs::{ChatLogprobs, ChatTokenLogprob, CompletionLogprobs, PromptLogprobs};
use super::uncertainty::UncertaintyOut;
use super::Meta;

/// OpenAI's `usage` object.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct UsageOut {
    /// Prompt tokens over all prompts.
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// The sum of both.
    pub total_tokens: usize,
    /// Details of the prompt tokens.
    pub prompt_tokens_details: PromptTokensDetails,
}

/// `usage.prompt_tokens_details`.
#[derive(Serialize, Clone, Copy, Debug, Default, PartialEq)]
pub struct PromptTokensDetails {
    /// Prompt tokens served from the prefix cache.
    pub cached_tokens: usize,
}

impl From<Usage> for UsageOut {
    fn from(u: Usage) -> Self {
        UsageOut {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            total_tokens: u.prompt_tokens + u.completion_tokens,
            prompt_tokens_details: PromptTokensDetails {
                cached_tokens: u.cached_prompt_tokens,
            },
        }
    }
}

/// The envelope every response object and chunk shares.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Envelope<C> {
    /// Response id (the same in every chunk of a stream).
    pub id: String,
    /// `chat.completion`, `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Unix time.
    pub created: u64,
    /// Model name.
    pub model: String,
    /// Always `null` (no fingerprint is kept).
    pub system_fingerprint: Option<()>,
    /// The choices this object carries.
    pub choices: Vec<C>,
    /// Absent, `null` (a stream with `include_usage`, before the end) or the usage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<UsageOut>>,
    /// vLLM's prompt logprobs (chat: on the response, or the first chunk after they are known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
}

impl<C> Envelope<C> {
    /// An object of kind `object` with `choices`; `usage_null` adds `"usage": null` (every
    /// chunk of a stream that ends with a usage chunk).
    pub fn new(meta: &Meta, object: &'static str, choices: Vec<C>, usage_null: bool) -> Self {
        Envelope {
            id: meta.id.clone(),
            object,
            created: meta.created,
            model: meta.model.clone(),
            system_fingerprint: None,
            choices,
            usage: usage_null.then_some(None),
            prompt_logprobs: None,
        }
    }
}

/// A chat chunk's `delta`.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct Delta {
    /// `assistant` in the first chunk of a choice.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// Text added.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Tool calls begun or continued.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
}

/// One tool call's part of a chunk: the first carries its id, type and name, later ones
/// pieces of its arguments.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ToolCallDelta {
    /// Position among the choice's calls.
    pub index: usize,
    /// The call's id (first part only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Always `function` (first part only).
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Name and/or arguments text.
    pub function: FunctionDelta,
}

/// `tool_calls[].function` in a delta.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct FunctionDelta {
    /// The function's name (first part only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// More of the arguments' JSON text.
    pub arguments: String,
}

/// A whole tool call of a chat answer.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct ToolCallOut {
    /// The call's id, which a `tool` message answers.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// What is called.
    pub function: FunctionOut,
}

/// `tool_calls[].function` of a whole answer.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct FunctionOut {
    /// The function.
    pub name: String,
    /// Its arguments, as JSON text.
    pub arguments: String,
}

/// One choice of a `chat.completion.chunk`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ChatChunkChoice {
    /// Choice index.
    pub index: usize,
    /// What this chunk adds.
    pub delta: Delta,
    /// Logprobs of the token(s) in this chunk.
    pub logprobs: Option<ChatLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    /// Lumen: the uncertainty of the token(s) in this chunk (the summary in the last one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lumen_uncertainty: Option<UncertaintyOut>,
}

/// The assistant message of a whole chat answer.
#[derive(Serialize, Clone, Debug, Default, PartialEq)]
pub struct MessageOut {
    /// Always `assistant`.
    pub role: &'static str,
    /// The text (`null` when the answer is only tool calls).
    pub content: Option<String>,
    /// The tool calls, when the model made any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallOut>>,
}

/// One choice of a `chat.completion`.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ChatChoice {
    /// Choice index.
    pub index: usize,
    /// The reply.
    pub message: MessageOut,
    /// Logprobs, when asked for.
    pub logprobs: Option<ChatLogprobs>,
    /// Why it ended.
    pub finish_reason: &'static str,
    /// Lumen: per-token uncertainty and its summary, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lumen_uncertainty: Option<UncertaintyOut>,
}

/// One choice of a `text_completion`, whole or as a chunk (the shapes are the same).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct TextChoice {
    /// `prompt * n + choice`.
    pub index: usize,
    /// Text (added).
    pub text: String,
    /// Logprobs (of the tokens added), when asked for.
    pub logprobs: Option<CompletionLogprobs>,
    /// Set in the choice's last chunk.
    pub finish_reason: Option<&'static str>,
    /// vLLM's prompt logprobs of this choice's prompt, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prompt_logprobs: Option<PromptLogprobs>,
    /// Lumen: uncertainty of the tokens added (the summary in the last chunk), when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lumen_uncertainty: Option<UncertaintyOut>,
}

/// A whole answer built by folding the chunks of a stream into it.
pub trait Fold<Chunk> {
    /// Adds one chunk.
    fn fold(&mut self, chunk: Envelope<Chunk>);
}

/// Why a choice that never finished ended (the stream was cut short).
const UNFINISHED: &str = "cancelled";

impl Envelope<ChatChoice> {
    /// An empty chat answer with `choices` choices (logprobs lists present when asked for).
    pub fn empty_chat(meta: &Meta, choices: usize, logprobs: bool, uncertainty: bool) -> Self {
        let choice = |index| ChatChoice {
            index,
            message: MessageOut {
                role: "assistant",
                content: Some(String::new()),
                tool_calls: None,
            },
            logprobs: logprobs.then(ChatLogprobs::default),
            finish_reason: UNFINISHED,
            lumen_uncertainty: uncertainty.then(UncertaintyOut::default),
        };
        Envelope::new(
            meta,
            "chat.completion",
            (0..choices).map(choice).collect(),
            false,
        )
    }
}

impl Fold<ChatChunkChoice> for Envelope<ChatChoice> {
    fn fold(&mut self, chunk: Envelope<ChatChunkChoice>) {
        if chunk.prompt_logprobs.is_some() {
            self.prompt_logprobs = chunk.prompt_logprobs;
        }
        for c in chunk.choices {
            let Some(choice) = self.choices.get_mut(c.index) else {
                continue;
            };
            if let Some(role) = c.delta.role {
                choice.message.role = role;
            }
            if let Some(text) = c.delta.content {
                choice
                    .message
                    .content
                    .get_or_insert_with(String::new)
                    .push_str(&text);
            }
            for part in c.delta.tool_calls.into_iter().flatten() {
                let calls = choice.message.tool_calls.get_or_insert_with(Vec::new);
                if part.index >= calls.len() {
                    calls.resize_with(part.index + 1, || ToolCallOut {
                        kind: "function",
                        ..ToolCallOut::default()
                    });
                }
                let call = &mut calls[part.index];
                if let Some(id) = part.id {
                    call.id = id;
                }
                if let Some(name) = part.function.name {
                    call.function.name = name;
                }
                call.function.arguments.push_str(&part.function.arguments);
            }
            if let Some(lp) = c.logprobs {
                choice
                    .logprobs
                    .get_or_insert_with(ChatLogprobs::default)
                    .content
                    .extend(lp.content);
            }
            if let Some(u) = c.lumen_uncertainty {
                choice
                    .lumen_uncertainty
                    .get_or_insert_with(UncertaintyOut::default)
                    .extend(u);
            }
            if let Some(reason) = c.finish_reason {
                choice.finish_reason = reason;
                // OpenAI's shape: an answer that is only tool calls has no content.
                let calls = choice
                    .message
                    .tool_calls
                    .as_ref()
                    .is_some_and(|c| !c.is_empty());
                if calls && choice.message.content.as_deref() == Some("") {
                    choice.message.content = None;
                }
            }
        }
    }
}

impl Envelope<TextChoice> {
    /// An empty text completion with `choices` choices.
    pub fn empty_text(meta: &Meta, choices: usize, logprobs: bool, uncertainty: bool) -> Self {
        let choice = |index| TextChoice {
            index,
            text: String::new(),
            logprobs: logprobs.then(CompletionLogprobs::default),
            finish_reason: Some(UNFINISHED),
            prompt_logprobs: None,
            lumen_uncertainty: uncertainty.then(UncertaintyOut::default),
        };
        Envelope::new(
            meta,
            "text_completion",
            (0..choices).map(choice).collect(),
            false,
        )
    }
}

impl Fold<TextChoice> for Envelope<TextChoice> {
    fn fold(&mut self, chunk: Envelope<TextChoice>) {
        for c in chunk.choices {
            let Some(choice) = self.choices.get_mut(c.index) else {
                continue;
            };
            choice.text.push_str(&c.text);
            if let Some(lp) = c.logprobs {
                choice
                    .logprobs
                    .get_or_insert_with(CompletionLogprobs::default)
                    .extend(lp);
            }
            if c.finish_reason.is_some() {
                choice.finish_reason = c.finish_reason;
            }
            if c.prompt_logprobs.is_some() {
                choice.prompt_logprobs = c.prompt_logprobs;
            }
            if let Some(u) = c.lumen_uncertainty {
                choice
                    .lumen_uncertainty
                    .get_or_insert_with(UncertaintyOut::default)
                    .extend(u);
            }
        }
    }
}

/// One chat logprob entry as a chunk's `logprobs`.
pub fn chat_logprobs(entry: ChatTokenLogprob) -> ChatLogprobs {
    ChatLogprobs {
        content: vec![entry],
    }
}
