//! A `tojson` filter that writes JSON the way Python's `json.dumps` does.
//!
//! Hugging Face renders chat templates with `json.dumps(x, ensure_ascii=False)`, whose
//! separators are `", "` and `": "`; minijinja's built-in `tojson` is compact and escapes
//! HTML characters. Tool-calling templates print tool schemas with `tojson`, so the prompt
//! only matches the one the model was trained on if Lumen writes Python's format.

use std::fmt::Write;

use minijinja::value::{Kwargs, Value, ValueKind};
use minijinja::{Error, ErrorKind};

/// The `tojson` filter: `x | tojson`, `x | tojson(indent=2)`, `tojson(x, sort_keys=true)`.
pub(crate) fn tojson(value: &Value, indent: Option<usize>, kwargs: Kwargs) -> Result<Value, Error> {
    let indent = match indent {
        Some(i) => Some(i),
        None => kwargs.get::<Option<usize>>("indent")?,
    };
    if let Some(n) = indent {
        super::budget::width("tojson indent", n)?;
    }
    let opts = Opts {
        indent,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    // Accepted for compatibility; Python's defaults are what Lumen writes.
    let _: Option<Value> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let mut out = String::new();
    write_value(&mut out, value, &opts, 0)?;
    super::budget::string(out.len())?;
    Ok(Value::from(out))
}

struct Opts {
    indent: Option<usize>,
    sort_keys: bool,
    ensure_ascii: bool,
}

fn write_value(out: &mut String, v: &Value, o: &Opts, depth: usize) -> Result<(), Error> {
    if depth > 64 {
        return Err(Error::new(
            ErrorKind::InvalidOperation,
            "tojson: value nested too deeply",
        ));
    }
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => write_number(out, v),
        ValueKind::String => write_str(out, v.as_str().unwrap_or_default(), o.ensure_ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter()?.collect();
            write_container(out, '[', ']', items.len(), o, depth, |out, i| {
                write_value(out, &items[i], o, depth + 1)
            })?;
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v.try_iter()?.collect();
            if o.sort_keys {
                keys.sort();
            }
            write_container(out, '{', '}', keys.len(), o, depth, |out, i| {
                let key = &keys[i];
                match key.as_str() {
                    Some(k) => write_str(out, k, o.ensure_ascii),
                    None => write_str(out, &key.to_string(), o.ensure_ascii),
                }
                out.push_str(": ");
                write_value(out, &v.get_item(key)?, o, depth + 1)
            })?;
        }
        _ => write_str(out, &v.to_string(), o.ensure_ascii),
    }
    Ok(())
}

fn write_container(
    out: &mut String,
    open: char,
    close: char,
    len: usize,
    o: &Opts,
    depth: usize,
    mut item: impl FnMut(&mut String, usize) -> Result<(), Error>,
) -> Result<(), Error> {
    out.push(open);
    if len == 0 {
        out.push(close);
        return Ok(());
    }
    for i in 0..len {
        match o.indent {
            Some(n) => {
                out.push_str(if i == 0 { "\n" } else { ",\n" });
                out.extend(std::iter::repeat_n(' ', n * (depth + 1)));
            }
            None if i > 0 => out.push_str(", "),
            None => {}
        }
        item(out, i)?;
        // Many references to one big string must not add up unchecked.
        let max = super::budget::limits().max_string;
        if out.len() > max {
            return Err(super::budget::exceeded(format!(
                "tojson output is over the limit of {max} bytes"
            )));
        }
    }
    if let Some(n) = o.indent {
        out.push('\n');
        out.extend(std::iter::repeat_n(' ', n * depth));
    }
    out.push(close);
    Ok(())
}

fn write_number(out: &mut String, v: &Value) {
    if v.is_integer() {
        let _ = write!(out, "{v}");
        return;
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if f.is_nan() {
        out.push_str("NaN");
    } else if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
    } else if f.fract() == 0.0 && f.abs() < 1e16 {
        let _ = write!(out, "{f:.1}");
    } else {
        let _ = write!(out, "{f}");
    }
}

fn write_str(out: &mut String, s: &str, ensure_ascii: bool) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 || (ensure_ascii && !c.is_ascii()) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use minijinja::Environment;

    fn render(src: &str, ctx: serde_json::Value) -> String {
        let mut env = Environment::new();
        env.add_filter("tojson", super::tojson);
        env.render_str(src, ctx).unwrap()
    }

    #[test]
    fn matches_python_json_dumps() {
        let ctx = serde_json::json!({"x": {"name": "f", "args": [1, 2.5, true, null, "é<\"\n"]}});
        assert_eq!(
            render("{{ x | tojson }}", ctx.clone()),
            r#"{"args": [1, 2.5, true, null, "é<\"\n"], "name": "f"}"#
        );
        assert_eq!(
            render("{{ x.args | tojson(indent=2) }}", ctx.clone()),
            "[\n  1,\n  2.5,\n  true,\n  null,\n  \"é<\\\"\\n\"\n]"
        );
        assert_eq!(
            render("{{ [] | tojson }}{{ {} | tojson }}", ctx.clone()),
            "[]{}"
        );
        assert_eq!(
            render("{{ 'é' | tojson(ensure_ascii=true) }}", ctx),
            "\"\\u00e9\""
        );
    }
}
