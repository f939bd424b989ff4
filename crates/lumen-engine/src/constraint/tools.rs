//! Function tools: their definitions, how the model is told about them when its chat template
//! does not render them, and the grammar that holds its calls to their schemas.
//!
//! The call format is Hermes's (Qwen 2.5, SmolLM2 and most open models fine-tuned for tools):
//! `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per call. The
//! grammar puts `name` first, so a stream can announce the function before its arguments.

use serde_json::{json, Value};

use super::spec::json_schema;
use crate::error::EngineError;
use crate::request::limits::{invalid, MAX_GRAMMAR_BYTES, MAX_TOOLS};

/// The tag that opens a call.
pub const CALL_OPEN: &str = "<tool_call>";
/// The tag that closes a call.
pub const CALL_CLOSE: &str = "</tool_call>";

/// One function the model may call.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolDef {
    /// Its name (`[A-Za-z0-9_-]{1,64}`, as OpenAI requires).
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// JSON schema of its arguments (an object schema).
    pub parameters: Value,
    /// OpenAI's `strict`. Lumen closes argument objects in every case (see
    /// [`ToolCalling::grammar`]), so it changes nothing; it is kept to echo the request.
    pub strict: bool,
}

impl ToolDef {
    /// The OpenAI tool object, as chat templates and the tool prompt show it.
    pub fn to_openai(&self) -> Value {
        let mut f = json!({"name": self.name});
        if let Some(d) = &self.description {
            f["description"] = Value::from(d.clone());
        }
        f["parameters"] = self.parameters.clone();
        json!({"type": "function", "function": f})
    }

    /// Schema of one call of this function: `{"name": <const>, "arguments": <parameters>}`.
    fn call_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "name": {"const": self.name},
                "arguments": self.parameters,
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    }
}

/// `tool_choice` (`none` never reaches the engine: it means no tools at all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToolChoice {
    /// The model may answer in text or call tools.
    Auto,
    /// The model must call at least one tool.
    Required,
    /// The model must call this function.
    Named(String),
}

/// Tools offered to the model and how it must use them.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolCalling {
    /// The functions.
    pub tools: Vec<ToolDef>,
    /// How they are chosen.
    pub choice: ToolChoice,
    /// Whether one answer may hold several calls.
    pub parallel: bool,
}

impl ToolCalling {
    /// The OpenAI tool list, for the chat template.
    pub fn openai_tools(&self) -> Value {
        Value::Array(self.tools.iter().map(ToolDef::to_openai).collect())
    }

    /// Checks names, the choice and sizes; `param` is the parameter the tools came in.
    pub(crate) fn check(&self, param: &'static str) -> Result<(), EngineError> {
        if self.tools.is_empty() {
            return Err(invalid(param, "tools must not be empty"));
        }
        if self.tools.len() > MAX_TOOLS {
            return Err(invalid(
                param,
                format!(
                    "at most {MAX_TOOLS} tools are allowed, got {}",
                    self.tools.len()
                ),
            ));
        }
        for (i, t) in self.tools.iter().enumerate() {
            let valid_name = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
            if !valid_name {
                return Err(invalid(
                    param,
                    format!(
                        "tools[{i}].function.name must be 1 to 64 letters, digits, '_' or '-', got '{}'",
                        t.name
                    ),
                ));
            }
            if self.tools[..i].iter().any(|o| o.name == t.name) {
                return Err(invalid(param, format!("two tools are named '{}'", t.name)));
            }
            if !t.parameters.is_object() {
                return Err(invalid(
                    param,
                    format!("tools[{i}].function.parameters must be a JSON schema object"),
                ));
            }
        }
        if let ToolChoice::Named(name) = &self.choice {
            if !self.tools.iter().any(|t| &t.name == name) {
                return Err(invalid(
                    "tool_choice",
                    format!("tool_choice names '{name}', which is not among the tools"),
                ));
            }
        }
        let n = self.openai_tools().to_string().len();
        if n > MAX_GRAMMAR_BYTES {
            return Err(invalid(
                param,
                format!("the tools take {n} bytes; at most {MAX_GRAMMAR_BYTES} are allowed"),
            ));
        }
        Ok(())
    }

    /// The Lark grammar (llguidance's dialect) for the choice.
    ///
    /// `auto` lets any text through until the model writes `<tool_call>`, from where the
    /// call must match one function's schema (llguidance's lazy lexeme: the header rule ends
    /// at the first tag); `required` and a named function allow nothing but calls.
    pub fn grammar(&self) -> String {
        let offered: Vec<&ToolDef> = match &self.choice {
            ToolChoice::Named(name) => self.tools.iter().filter(|t| &t.name == name).collect(),
            _ => self.tools.iter().collect(),
        };
        // Arguments are always closed (`additionalProperties: false` where the schema does
        // not say otherwise): a function takes the parameters it declares, and a small model
        // sampled at temperature 1 otherwise invents keys until it runs out of tokens.
        let schemas: Vec<Value> = offered
            .iter()
            .map(|t| json_schema(&t.call_schema(), true, false))
            .collect();
        let body = match schemas.as_slice() {
            [one] => one.clone(),
            many => {
                let mut any = json!({"anyOf": many});
                // Options are read at the top level only.
                any["x-guidance"] = json!({"whitespace_pattern": super::spec::JSON_WHITESPACE});
                any
            }
        };
        let mut g = String::new();
        g.push_str(&format!("body: %json {body}\n"));
        g.push_str("TEXT: /(.|\\n)*/\n");
        match (&self.choice, self.parallel) {
            (ToolChoice::Auto, parallel) => {
                let calls = if parallel { "call*" } else { "call{0,1}" };
                g.push_str(&format!("start: {calls} TEXT\n"));
                g.push_str("call: head \"\\n\" body \"\\n</tool_call>\"\n");
                g.push_str("head[lazy]: TEXT \"<tool_call>\"\n");
            }
            (ToolChoice::Required, true) => {
                g.push_str("start: call (\"\\n\" call)*\n");
                g.push_str("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n");
            }
            (ToolChoice::Required, false) | (ToolChoice::Named(_), _) => {
                g.push_str("start: call\n");
                g.push_str("call: \"<tool_call>\\n\" body \"\\n</tool_call>\"\n");
            }
        }
        g
    }

    /// Instructions that tell a model about the tools when its chat template does not
    /// render them (Hermes's system prompt, which Qwen 2.5's template also writes).
    pub fn system_prompt(&self) -> String {
        let mut s = String::from(
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n\
             You are provided with function signatures within <tools></tools> XML tags:\n<tools>",
        );
        for t in &self.tools {
            s.push('\n');
            s.push_str(&t.to_openai().to_string());
        }
        s.push_str(
            "\n</tools>\n\nFor each function call, return a json object with function name and \
             arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n\
             {\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>",
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weather() -> ToolDef {
        ToolDef {
            name: "get_weather".into(),
            description: Some("Weather in a city".into()),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}),
            strict: false,
        }
    }

    #[test]
    fn names_and_choices_are_checked() {
        let mut t = ToolCalling {
            tools: vec![weather()],
            choice: ToolChoice::Named("nope".into()),
            parallel: true,
        };
        assert!(matches!(
            t.check("tools"),
            Err(EngineError::InvalidRequest {
                param: "tool_choice",
                ..
            })
        ));
        t.choice = ToolChoice::Auto;
        assert!(t.check("tools").is_ok());
        t.tools.push(weather());
        assert!(t.check("tools").is_err(), "duplicate names");
        t.tools[1].name = "bad name".into();
        assert!(t.check("tools").is_err(), "spaces in a name");
    }

    #[test]
    fn grammar_follows_the_choice() {
        let mut t = ToolCalling {
            tools: vec![weather()],
            choice: ToolChoice::Auto,
            parallel: false,
        };
        assert!(t.grammar().contains("start: call{0,1} TEXT"));
        t.choice = ToolChoice::Required;
        t.parallel = true;
        assert!(t.grammar().contains("start: call (\"\\n\" call)*"));
        assert!(t.system_prompt().contains("\"get_weather\""));
    }
}
