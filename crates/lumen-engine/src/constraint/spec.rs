//! What a request asks its output to follow, checked against the rule book, and the grammar
//! each form becomes.

use llguidance::api::TopLevelGrammar;
use serde_json::{Map, Value};

use super::tools::ToolCalling;
use crate::error::EngineError;
use crate::request::limits::{invalid, MAX_GRAMMAR_BYTES, MAX_GUIDED_CHOICES};

/// JSON whitespace allowed at each place JSON allows it: at most 16 characters, so a model
/// cannot spend its whole budget on spaces (llguidance's default is unbounded), while
/// pretty-printed JSON nested a few levels deep still fits.
pub const JSON_WHITESPACE: &str = r"[\x20\x0A\x0D\x09]{1,16}";

/// The forms of constraint a request can carry.
#[derive(Clone, Debug, PartialEq)]
pub enum Constraint {
    /// Any JSON object (`response_format: {"type": "json_object"}`).
    JsonObject,
    /// JSON valid against a schema; `strict` closes every object that does not say
    /// otherwise (`additionalProperties: false`), as OpenAI's strict mode does.
    JsonSchema {
        /// The schema.
        schema: Value,
        /// OpenAI's `strict`.
        strict: bool,
    },
    /// Text that fully matches a regular expression (vLLM's `guided_regex`).
    Regex(String),
    /// Exactly one of these strings (vLLM's `guided_choice`).
    Choice(Vec<String>),
    /// Text in the language of a Lark grammar (vLLM's `guided_grammar`, llguidance's dialect).
    Lark(String),
    /// Tool calls in the model's call format (`tools` + `tool_choice`).
    Tools(ToolCalling),
}

/// A constraint and the request parameter it came from (errors name it).
#[derive(Clone, Debug, PartialEq)]
pub struct ConstraintSpec {
    /// The parameter as the client sent it: `response_format`, `guided_json`, `tools`, ...
    pub param: &'static str,
    /// What the output must follow.
    pub constraint: Constraint,
}

impl ConstraintSpec {
    /// A constraint from `param`.
    pub fn new(param: &'static str, constraint: Constraint) -> Self {
        ConstraintSpec { param, constraint }
    }

    /// Checks the sizes the rule book sets, before anything is compiled.
    pub fn check(&self) -> Result<(), EngineError> {
        let p = self.param;
        let too_big = |what: &str, n: usize| {
            invalid(
                p,
                format!("the {what} is {n} bytes; at most {MAX_GRAMMAR_BYTES} are allowed"),
            )
        };
        match &self.constraint {
            Constraint::JsonObject => Ok(()),
            Constraint::JsonSchema { schema, .. } => {
                if !schema.is_object() && !schema.is_boolean() {
                    return Err(invalid(p, "the JSON schema must be an object"));
                }
                let n = schema.to_string().len();
                if n > MAX_GRAMMAR_BYTES {
                    return Err(too_big("JSON schema", n));
                }
                Ok(())
            }
            Constraint::Regex(rx) => {
                if rx.len() > MAX_GRAMMAR_BYTES {
                    return Err(too_big("regular expression", rx.len()));
                }
                Ok(())
            }
            Constraint::Lark(g) => {
                if g.trim().is_empty() {
                    return Err(invalid(p, "the grammar is empty"));
                }
                if g.len() > MAX_GRAMMAR_BYTES {
                    return Err(too_big("grammar", g.len()));
                }
                Ok(())
            }
            Constraint::Choice(choices) => {
                if choices.is_empty() {
                    return Err(invalid(p, "the list of choices is empty"));
                }
                if choices.len() > MAX_GUIDED_CHOICES {
                    return Err(invalid(
                        p,
                        format!(
                            "at most {MAX_GUIDED_CHOICES} choices are allowed, got {}",
                            choices.len()
                        ),
                    ));
                }
                if choices.iter().any(String::is_empty) {
                    return Err(invalid(p, "a choice must not be empty"));
                }
                let n: usize = choices.iter().map(String::len).sum();
                if n > MAX_GRAMMAR_BYTES {
                    return Err(too_big("list of choices", n));
                }
                Ok(())
            }
            Constraint::Tools(t) => t.check(p),
        }
    }

    /// A key naming this constraint's grammar: equal keys compile to the same grammar.
    pub fn cache_key(&self) -> String {
        match &self.constraint {
            Constraint::JsonObject => "json_object".into(),
            Constraint::JsonSchema { schema, strict } => format!("schema:{strict}:{schema}"),
            Constraint::Regex(rx) => format!("regex:{rx}"),
            Constraint::Choice(c) => format!("choice:{}", Value::from(c.clone())),
            Constraint::Lark(g) => format!("lark:{g}"),
            Constraint::Tools(t) => format!("tools:{}", t.grammar()),
        }
    }

    /// The llguidance grammar for this constraint.
    pub fn grammar(&self) -> TopLevelGrammar {
        match &self.constraint {
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(json_schema(&Value::Bool(true), false, true))
            }
            Constraint::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(json_schema(schema, *strict, false))
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choice(choices) => {
                let alternatives: Vec<String> =
                    choices.iter().map(|c| regex_syntax_escape(c)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alternatives.join("|")))
            }
            Constraint::Lark(g) => TopLevelGrammar::from_lark(g.clone()),
            Constraint::Tools(t) => TopLevelGrammar::from_lark(t.grammar()),
        }
    }
}

/// A schema ready for llguidance: closed when `strict`, an object when `object_only`, and
/// with bounded whitespace unless the client set its own `x-guidance` options.
pub(crate) fn json_schema(schema: &Value, strict: bool, object_only: bool) -> Value {
    let mut schema = match schema {
        Value::Object(m) => Value::Object(m.clone()),
        // `true` accepts anything, `false` nothing; as objects they take options.
        Value::Bool(true) => Value::Object(Map::new()),
        other => other.clone(),
    };
    if strict {
        close_objects(&mut schema, 0);
    }
    if let Value::Object(m) = &mut schema {
        if object_only && !m.contains_key("type") {
            m.insert("type".into(), "object".into());
        }
        let options = m
            .entry("x-guidance")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(o) = options {
            if !o.contains_key("whitespace_pattern") && !o.contains_key("whitespace_flexible") {
                o.insert("whitespace_pattern".into(), JSON_WHITESPACE.into());
            }
        }
    }
    schema
}

/// Adds `additionalProperties: false` to every object schema that does not set it (OpenAI's
/// strict mode). Depth is bounded by the schema's size limit; the guard is for safety.
fn close_objects(v: &mut Value, depth: usize) {
    if depth > 256 {
        return;
    }
    match v {
        Value::Object(m) => {
            let is_object_schema = m.get("type").and_then(Value::as_str) == Some("object")
                || m.contains_key("properties");
            if is_object_schema && !m.contains_key("additionalProperties") {
                m.insert("additionalProperties".into(), Value::Bool(false));
            }
            for (key, child) in m.iter_mut() {
                // Values of `properties`/`$defs` are schemas; `enum`/`const` values are data.
                if key != "enum" && key != "const" && key != "default" && key != "examples" {
                    close_objects(child, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            for child in items {
                close_objects(child, depth + 1);
            }
        }
        _ => {}
    }
}

/// `s` as a regular expression that matches exactly `s`.
fn regex_syntax_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~ \t\n\r".contains(c) {
            match c {
                '\t' => out.push_str("\\t"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                ' ' => out.push(' '),
                _ => {
                    out.push('\\');
                    out.push(c);
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_closes_nested_objects_but_not_data() {
        let s = serde_json::json!({
            "type": "object",
            "properties": {
                "a": {"type": "object", "properties": {"b": {"type": "string"}}},
                "c": {"enum": [{"type": "object"}]}
            }
        });
        let out = json_schema(&s, true, false);
        assert_eq!(out["additionalProperties"], false);
        assert_eq!(out["properties"]["a"]["additionalProperties"], false);
        assert!(out["properties"]["c"]["enum"][0]
            .get("additionalProperties")
            .is_none());
        assert_eq!(out["x-guidance"]["whitespace_pattern"], JSON_WHITESPACE);
        let loose = json_schema(&s, false, false);
        assert!(loose.get("additionalProperties").is_none());
    }

    #[test]
    fn choices_are_escaped_literally() {
        assert_eq!(regex_syntax_escape("a.b*(c)"), r"a\.b\*\(c\)");
        assert_eq!(regex_syntax_escape("x|y"), r"x\|y");
    }

    #[test]
    fn sizes_are_checked_before_compiling() {
        let big = "a".repeat(MAX_GRAMMAR_BYTES + 1);
        let e = ConstraintSpec::new("guided_regex", Constraint::Regex(big)).check();
        assert!(matches!(
            e,
            Err(EngineError::InvalidRequest {
                param: "guided_regex",
                ..
            })
        ));
        let empty = ConstraintSpec::new("guided_choice", Constraint::Choice(vec![])).check();
        assert!(empty.is_err());
        let many = vec!["x".to_string(); MAX_GUIDED_CHOICES + 1];
        assert!(
            ConstraintSpec::new("guided_choice", Constraint::Choice(many))
                .check()
                .is_err()
        );
        let ok = ConstraintSpec::new("guided_choice", Constraint::Choice(vec!["yes".into()]));
        assert!(ok.check().is_ok());
    }
}
