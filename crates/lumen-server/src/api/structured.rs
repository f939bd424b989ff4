//! The wire forms of structured output and tools, mapped onto the engine's
//! [`ConstraintSpec`]: OpenAI's `response_format`, `tools`, `tool_choice` and
//! `parallel_tool_calls`, and vLLM's `guided_json`, `guided_regex`, `guided_choice`,
//! `guided_grammar` and `structured_outputs`.
//!
//! Only shapes are checked here; sizes, names and whether a grammar compiles are the
//! engine's rule book. One request may use one of these ways to constrain its output.

use lumen_engine::{Api, Constraint, ConstraintSpec, ToolCalling, ToolChoice, ToolDef};
use serde::Deserialize;
use serde_json::Value;

use crate::error::ServerError;

/// `response_format`.
#[derive(Deserialize, Debug, Clone)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    /// Free text (the default).
    Text,
    /// Any JSON object.
    JsonObject,
    /// JSON that follows a schema.
    JsonSchema {
        /// The schema and its options.
        json_schema: JsonSchemaFormat,
    },
}

/// `response_format.json_schema`.
#[derive(Deserialize, Debug, Clone)]
pub struct JsonSchemaFormat {
    /// The format's name (informative).
    pub name: Option<String>,
    /// The JSON schema (absent: any JSON value).
    pub schema: Option<Value>,
    /// Close every object of the schema.
    pub strict: Option<bool>,
}

/// vLLM's `structured_outputs` object (one of its fields).
#[derive(Deserialize, Debug, Clone, Default)]
pub struct StructuredOutputs {
    /// A JSON schema (object or its text).
    pub json: Option<Value>,
    /// A regular expression.
    pub regex: Option<String>,
    /// A list of choices.
    pub choice: Option<Vec<String>>,
    /// A Lark grammar.
    pub grammar: Option<String>,
    /// Any JSON object.
    pub json_object: Option<bool>,
}

/// One entry of `tools`.
#[derive(Deserialize, Debug, Clone)]
pub struct ToolIn {
    /// Must be `function`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The function.
    pub function: FunctionIn,
}

/// `tools[].function`.
#[derive(Deserialize, Debug, Clone)]
pub struct FunctionIn {
    /// Its name.
    pub name: String,
    /// What it does.
    pub description: Option<String>,
    /// JSON schema of its arguments (absent: no arguments).
    pub parameters: Option<Value>,
    /// Close every object of the schema.
    pub strict: Option<bool>,
}

/// The constraint fields of a request, as sent.
#[derive(Deserialize, Debug, Default)]
pub struct ConstraintFields {
    /// OpenAI's output format.
    pub response_format: Option<ResponseFormat>,
    /// vLLM: JSON schema (object or text).
    pub guided_json: Option<Value>,
    /// vLLM: regular expression.
    pub guided_regex: Option<String>,
    /// vLLM: choices.
    pub guided_choice: Option<Vec<String>>,
    /// vLLM: Lark grammar.
    pub guided_grammar: Option<String>,
    /// vLLM's newer form of the guided fields.
    pub structured_outputs: Option<StructuredOutputs>,
    /// Function tools.
    pub tools: Option<Vec<ToolIn>>,
    /// `none`, `auto`, `required` or `{"type": "function", "function": {"name"}}`.
    pub tool_choice: Option<Value>,
    /// Whether several calls may come in one answer (default true).
    pub parallel_tool_calls: Option<bool>,
    /// The legacy name of `tools` (refused: use `tools`).
    pub functions: Option<Value>,
    /// The legacy name of `tool_choice` (refused: use `tool_choice`).
    pub function_call: Option<Value>,
}

impl ConstraintFields {
    /// The one constraint these fields ask for, if any; `api` refuses tools outside chat.
    pub fn to_spec(self, api: Api) -> Result<Option<ConstraintSpec>, ServerError> {
        refuse_legacy(&self.functions, "functions", "tools")?;
        refuse_legacy(&self.function_call, "function_call", "tool_choice")?;
        let mut found: Vec<ConstraintSpec> = Vec::new();
        if let Some(rf) = self.response_format {
            match rf {
                ResponseFormat::Text => {}
                ResponseFormat::JsonObject => found.push(ConstraintSpec::new(
                    "response_format",
                    Constraint::JsonObject,
                )),
                ResponseFormat::JsonSchema { json_schema } => found.push(ConstraintSpec::new(
                    "response_format",
                    Constraint::JsonSchema {
                        schema: json_schema.schema.unwrap_or(Value::Bool(true)),
                        strict: json_schema.strict.unwrap_or(false),
                    },
                )),
            }
        }
        if let Some(schema) = self.guided_json {
            found.push(json_spec("guided_json", schema)?);
        }
        if let Some(rx) = self.guided_regex {
            found.push(ConstraintSpec::new("guided_regex", Constraint::Regex(rx)));
        }
        if let Some(c) = self.guided_choice {
            found.push(ConstraintSpec::new("guided_choice", Constraint::Choice(c)));
        }
        if let Some(g) = self.guided_grammar {
            found.push(ConstraintSpec::new("guided_grammar", Constraint::Lark(g)));
        }
        if let Some(so) = self.structured_outputs {
            let p = "structured_outputs";
            if let Some(schema) = so.json {
                found.push(json_spec(p, schema)?);
            }
            if let Some(rx) = so.regex {
                found.push(ConstraintSpec::new(p, Constraint::Regex(rx)));
            }
            if let Some(c) = so.choice {
                found.push(ConstraintSpec::new(p, Constraint::Choice(c)));
            }
            if let Some(g) = so.grammar {
                found.push(ConstraintSpec::new(p, Constraint::Lark(g)));
            }
            if so.json_object == Some(true) {
                found.push(ConstraintSpec::new(p, Constraint::JsonObject));
            }
        }
        if let Some(tools) = tool_spec(self.tools, self.tool_choice, self.parallel_tool_calls)? {
            if api != Api::Chat {
                return Err(ServerError::param(
                    "tools",
                    "tools are supported on /v1/chat/completions only",
                ));
            }
            found.push(tools);
        }
        match found.len() {
            0 | 1 => Ok(found.pop()),
            _ => Err(ServerError::param(
                found[1].param,
                format!(
                    "'{}' and '{}' both constrain the output; send one of them",
                    found[0].param, found[1].param
                ),
            )),
        }
    }
}

/// A JSON schema given as an object or as its text.
fn json_spec(param: &'static str, schema: Value) -> Result<ConstraintSpec, ServerError> {
    let schema = match schema {
        Value::String(text) => serde_json::from_str(&text).map_err(|e| {
            ServerError::param(param, format!("the JSON schema does not parse: {e}"))
        })?,
        other => other,
    };
    Ok(ConstraintSpec::new(
        param,
        Constraint::JsonSchema {
            schema,
            strict: false,
        },
    ))
}

fn refuse_legacy(v: &Option<Value>, param: &str, instead: &str) -> Result<(), ServerError> {
    match v {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(a)) if a.is_empty() => Ok(()),
        Some(Value::String(s)) if s == "none" || s == "auto" => Ok(()),
        Some(_) => Err(ServerError::Unsupported {
            param: param.into(),
            message: format!("'{param}' is the deprecated form of '{instead}'; send '{instead}'"),
        }),
    }
}

/// `tools` + `tool_choice` + `parallel_tool_calls`: `None` when no tool may be called.
fn tool_spec(
    tools: Option<Vec<ToolIn>>,
    choice: Option<Value>,
    parallel: Option<bool>,
) -> Result<Option<ConstraintSpec>, ServerError> {
    let tools = tools.unwrap_or_default();
    let choice = match choice {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => Some(ToolChoice::Auto),
            "required" => Some(ToolChoice::Required),
            other => {
                return Err(ServerError::param(
                    "tool_choice",
                    format!(
                        "tool_choice must be \"none\", \"auto\", \"required\" or a named function, got \"{other}\""
                    ),
                ))
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => Some(ToolChoice::Named(name.to_string())),
                _ => {
                    return Err(ServerError::param(
                        "tool_choice",
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    ))
                }
            }
        }
        Some(_) => {
            return Err(ServerError::param(
                "tool_choice",
                "tool_choice must be a string or an object",
            ))
        }
    };
    if tools.is_empty() {
        return match choice {
            None | Some(ToolChoice::Auto) => Ok(None),
            Some(_) => Err(ServerError::param(
                "tool_choice",
                "tool_choice requires tools",
            )),
        };
    }
    let mut defs = Vec::with_capacity(tools.len());
    for (i, t) in tools.into_iter().enumerate() {
        if t.kind != "function" {
            return Err(ServerError::param(
                "tools",
                format!("tools[{i}].type must be \"function\", got \"{}\"", t.kind),
            ));
        }
        defs.push(ToolDef {
            name: t.function.name,
            description: t.function.description,
            parameters: t
                .function
                .parameters
                .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}})),
            strict: t.function.strict.unwrap_or(false),
        });
    }
    Ok(Some(ConstraintSpec::new(
        "tools",
        Constraint::Tools(ToolCalling {
            tools: defs,
            choice: choice.unwrap_or(ToolChoice::Auto),
            parallel: parallel.unwrap_or(true),
        }),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value, api: Api) -> Result<Option<ConstraintSpec>, ServerError> {
        serde_json::from_value::<ConstraintFields>(v)
            .expect("fields")
            .to_spec(api)
    }

    fn param_of(r: Result<Option<ConstraintSpec>, ServerError>) -> String {
        match r {
            Err(ServerError::InvalidParam { param, .. }) => param.unwrap_or_default(),
            Err(ServerError::Unsupported { param, .. }) => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn each_form_maps_to_its_constraint() {
        let s = spec(
            serde_json::json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}, "strict": true}}}),
            Api::Chat,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.param, "response_format");
        assert!(matches!(
            s.constraint,
            Constraint::JsonSchema { strict: true, .. }
        ));
        let s = spec(
            serde_json::json!({"guided_json": "{\"type\": \"string\"}"}),
            Api::Completions,
        )
        .unwrap()
        .unwrap();
        assert!(
            matches!(s.constraint, Constraint::JsonSchema { ref schema, .. } if schema["type"] == "string")
        );
        let s = spec(
            serde_json::json!({"structured_outputs": {"choice": ["a", "b"]}}),
            Api::Chat,
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            s.constraint,
            Constraint::Choice(vec!["a".into(), "b".into()])
        );
        assert!(spec(
            serde_json::json!({"response_format": {"type": "text"}}),
            Api::Chat
        )
        .unwrap()
        .is_none());
        let tool = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        let s = spec(
            serde_json::json!({"tools": tool, "tool_choice": {"type": "function", "function": {"name": "f"}}, "parallel_tool_calls": false}),
            Api::Chat,
        )
        .unwrap()
        .unwrap();
        match s.constraint {
            Constraint::Tools(t) => {
                assert_eq!(t.choice, ToolChoice::Named("f".into()));
                assert!(!t.parallel);
                assert_eq!(t.tools[0].parameters["type"], "object");
            }
            other => panic!("{other:?}"),
        }
        assert!(spec(
            serde_json::json!({"tools": tool, "tool_choice": "none"}),
            Api::Chat
        )
        .unwrap()
        .is_none());
    }

    #[test]
    fn conflicts_and_misuse_are_refused() {
        let tool = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        assert_eq!(
            param_of(spec(
                serde_json::json!({"guided_regex": "a", "guided_choice": ["a"]}),
                Api::Chat
            )),
            "guided_choice"
        );
        assert_eq!(
            param_of(spec(serde_json::json!({"tools": tool}), Api::Completions)),
            "tools"
        );
        assert_eq!(
            param_of(spec(
                serde_json::json!({"tool_choice": "required"}),
                Api::Chat
            )),
            "tool_choice"
        );
        assert_eq!(
            param_of(spec(serde_json::json!({"tool_choice": 5}), Api::Chat)),
            "tool_choice"
        );
        assert_eq!(
            param_of(spec(
                serde_json::json!({"functions": [{"name": "f"}]}),
                Api::Chat
            )),
            "functions"
        );
        assert_eq!(
            param_of(spec(serde_json::json!({"guided_json": "{nope"}), Api::Chat)),
            "guided_json"
        );
    }
}
