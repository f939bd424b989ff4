//! Conversations with tools, for templates that render them and for those that do not.
//!
//! A template that mentions `tools` (Qwen's, Llama 3.1's, Hermes's) gets the OpenAI tool list
//! and the history as is. A template that does not (SmolLM2's, plain ChatML) would drop
//! them silently, so the conversation is rewritten in the Hermes convention such models
//! understand best: the tool list and call format go into the system message, earlier calls
//! become `<tool_call>` blocks in the assistant's text, and tool results become
//! `<tool_response>` blocks in a user turn.

use super::{ChatMessage, ChatTemplate};
use crate::constraint::{ToolCalling, CALL_CLOSE, CALL_OPEN};
use crate::error::EngineError;

impl ChatTemplate {
    /// Whether the template renders a `tools` list itself.
    pub fn renders_tools(&self) -> bool {
        self.source().contains("tools")
    }

    /// Whether the template renders assistant `tool_calls` itself.
    pub fn renders_tool_calls(&self) -> bool {
        self.source().contains("tool_calls")
    }

    /// Renders `messages` with the tools of `tools` (or none), rewriting the conversation
    /// for templates that do not know tools (see the module docs).
    pub fn render_with_tools(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
        tools: Option<&ToolCalling>,
    ) -> Result<String, EngineError> {
        let history_has_tools = messages
            .iter()
            .any(|m| m.tool_calls.is_some() || m.role == "tool");
        if tools.is_none() && !history_has_tools {
            return self.render(messages, add_generation_prompt, None);
        }
        let mut messages = messages.to_vec();
        if !self.renders_tool_calls() {
            messages = messages.into_iter().map(hermes_history).collect();
        }
        match tools {
            Some(t) if self.renders_tools() => {
                self.render(&messages, add_generation_prompt, Some(&t.openai_tools()))
            }
            Some(t) => {
                let prompt = t.system_prompt();
                match messages.first_mut() {
                    Some(first) if first.role == "system" => {
                        first.content = format!("{}\n\n{prompt}", first.content);
                    }
                    _ => messages.insert(0, ChatMessage::new("system", prompt)),
                }
                self.render(&messages, add_generation_prompt, None)
            }
            None => self.render(&messages, add_generation_prompt, None),
        }
    }
}

/// One message of the history in the Hermes convention.
fn hermes_history(mut m: ChatMessage) -> ChatMessage {
    if let Some(calls) = m.tool_calls.take() {
        for call in calls {
            let body = serde_json::json!({
                "name": call.function.name,
                "arguments": call.function.arguments,
            });
            if !m.content.is_empty() {
                m.content.push('\n');
            }
            m.content
                .push_str(&format!("{CALL_OPEN}\n{body}\n{CALL_CLOSE}"));
        }
    }
    if m.role == "tool" {
        m.role = "user".into();
        m.content = format!("<tool_response>\n{}\n</tool_response>", m.content);
        m.tool_call_id = None;
        m.name = None;
    }
    m
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::chat_template::{FunctionCallMessage, ToolCallMessage};
    use crate::constraint::{ToolChoice, ToolDef};

    fn tools() -> ToolCalling {
        ToolCalling {
            tools: vec![ToolDef {
                name: "get_weather".into(),
                description: Some("Weather now".into()),
                parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
                strict: false,
            }],
            choice: ToolChoice::Auto,
            parallel: true,
        }
    }

    #[test]
    fn chatml_gets_the_hermes_conversation() {
        let t = ChatTemplate::chatml("", "").expect("template");
        let mut call = ChatMessage::new("assistant", "");
        call.tool_calls = Some(vec![ToolCallMessage {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCallMessage {
                name: "get_weather".into(),
                arguments: json!({"city": "Paris"}),
            },
        }]);
        let mut result = ChatMessage::new("tool", "18 C");
        result.tool_call_id = Some("call_1".into());
        let msgs = [
            ChatMessage::new("system", "Be brief."),
            ChatMessage::new("user", "Weather in Paris?"),
            call,
            result,
        ];
        let out = t
            .render_with_tools(&msgs, true, Some(&tools()))
            .expect("render");
        assert!(
            out.starts_with("<|im_start|>system\nBe brief.\n\n# Tools"),
            "{out}"
        );
        assert!(out.contains("<tools>\n{\"type\":\"function\""), "{out}");
        assert!(
            out.contains("<|im_start|>assistant\n<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call><|im_end|>"),
            "{out}"
        );
        assert!(
            out.contains("<|im_start|>user\n<tool_response>\n18 C\n</tool_response><|im_end|>"),
            "{out}"
        );
        // Without tools and tool history, nothing changes.
        let plain = t.render_with_tools(&msgs[..2], true, None).expect("render");
        assert_eq!(plain, t.render(&msgs[..2], true, None).expect("render"));
    }

    #[test]
    fn templates_that_know_tools_get_them() {
        let src = "{% for t in tools %}[{{ t.function.name }}]{% endfor %}{% for m in messages %}{{ m.role }}:{{ m.content }}{% if m.tool_calls %}{% for c in m.tool_calls %}<{{ c.function.name }} {{ c.function.arguments | tojson }}>{% endfor %}{% endif %};{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("template");
        let out = t
            .render_with_tools(&[ChatMessage::new("user", "hi")], false, Some(&tools()))
            .expect("render");
        assert_eq!(out, "[get_weather]user:hi;");
    }
}
