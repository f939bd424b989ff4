//! Checked versions of everything through which a template can allocate in one step.
//!
//! Operators (`+`, `*`, `~`, routed here by [`super::rewrite`]), the built-in filters that
//! build strings or lists, Python string methods and the printing of values: each checks
//! the size of what it is about to build against [`super::budget`] first (or, where the
//! work is only proportional to its input, charges the result), then does what minijinja
//! does. Built-ins are called through minijinja itself, so behaviour stays the same.

use std::sync::LazyLock;

use minijinja::value::{Rest, Value, ValueKind};
use minijinja::{filters, Environment, Error, ErrorKind, Expression, Output, State};

use super::budget;

/// A plain environment in which the original operators run once sizes are checked.
static OPS_ENV: LazyLock<Environment<'static>> = LazyLock::new(Environment::new);

/// `a + b`, `a * b` and `a ~ b` compiled in [`OPS_ENV`].
static OPS: LazyLock<Result<[Expression<'static, 'static>; 3], String>> = LazyLock::new(|| {
    let c = |e: &'static str| OPS_ENV.compile_expression(e).map_err(|e| e.to_string());
    Ok([c("a + b")?, c("a * b")?, c("a ~ b")?])
});

fn original(which: usize, a: Value, b: Value) -> Result<Value, Error> {
    match OPS.as_ref() {
        Ok(ops) => ops[which].eval(minijinja::context! { a => a, b => b }),
        Err(e) => Err(Error::new(ErrorKind::InvalidOperation, e.clone())),
    }
}

fn is_seq(v: &Value) -> bool {
    matches!(v.kind(), ValueKind::Seq | ValueKind::Iterable)
}

/// `a + b`.
pub(crate) fn add(a: Value, b: Value) -> Result<Value, Error> {
    if let (Some(x), Some(y)) = (a.as_str(), b.as_str()) {
        budget::string(x.len().saturating_add(y.len()))?;
        return Ok(Value::from([x, y].concat()));
    }
    if is_seq(&a) && is_seq(&b) {
        if let (Some(x), Some(y)) = (a.len(), b.len()) {
            budget::items(x.saturating_add(y))?;
        }
    }
    original(0, a, b)
}

/// `a * b`.
pub(crate) fn mul(a: Value, b: Value) -> Result<Value, Error> {
    let (seq, n) = if a.kind() == ValueKind::Number {
        (&b, &a)
    } else {
        (&a, &b)
    };
    if let Some(n) = n.as_usize() {
        if let Some(s) = seq.as_str() {
            budget::string(s.len().saturating_mul(n))?;
        } else if is_seq(seq) {
            budget::items(seq.len().unwrap_or(0).saturating_mul(n))?;
        }
    }
    original(1, a, b)
}

/// `a ~ b`.
pub(crate) fn concat(a: Value, b: Value) -> Result<Value, Error> {
    budget::to_string(&format_args!("{a}{b}")).map(Value::from)
}

/// Charges what a filter or method returned.
fn charge_result(v: &Value) -> Result<(), Error> {
    match v.kind() {
        ValueKind::String => budget::string(v.as_str().map_or(0, str::len)),
        ValueKind::Seq | ValueKind::Map => budget::items(v.len().unwrap_or(0)),
        _ => Ok(()),
    }
}

/// Bytes that joining `items` with `sep` would produce (fails past the string limit).
fn check_join(items: &Value, sep: &str) -> Result<(), Error> {
    let max = budget::limits().max_string;
    let mut total = 0usize;
    let Ok(iter) = items.try_iter() else {
        return Ok(());
    };
    for (i, item) in iter.enumerate() {
        let len = match item.as_str() {
            Some(s) => s.len(),
            None => budget::display_len(&item, max).unwrap_or(usize::MAX),
        };
        total = total.saturating_add(len);
        if i > 0 {
            total = total.saturating_add(sep.len());
        }
        if total > max {
            return budget::string(total);
        }
    }
    Ok(())
}

/// Size of `s` with `count` (or every) occurrence of `from` replaced by `to`.
fn check_replace(s: &str, from: &str, to: &str, count: Option<usize>) -> Result<(), Error> {
    if to.len() <= from.len() && !from.is_empty() {
        return Ok(());
    }
    let found = if from.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(from).count()
    };
    let n = count.map_or(found, |c| c.min(found));
    budget::string(s.len().saturating_add(n.saturating_mul(to.len())))
}

/// Widths in a printf-style or `str.format` string, and a bound on the result.
fn check_format(fmt: &str, args: &[Value]) -> Result<(), Error> {
    let max = budget::limits().max_string;
    let mut widths = 0usize;
    let mut specs = 0usize;
    let b = fmt.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let (open, spec_chars): (u8, &[u8]) = match b[i] {
            b'%' => (b'%', b"-+ #0123456789.*"),
            b'{' => (b'{', b":<>^=-+ #0123456789.,_*"),
            _ => {
                i += 1;
                continue;
            }
        };
        if b.get(i + 1) == Some(&open) {
            i += 2;
            continue;
        }
        specs += 1;
        i += 1;
        // Skip a `%(name)` mapping key or a `{name` field.
        if open == b'%' && b.get(i) == Some(&b'(') {
            while i < b.len() && b[i] != b')' {
                i += 1;
            }
            i += 1;
        } else if open == b'{' {
            while i < b.len() && !matches!(b[i], b':' | b'}') {
                i += 1;
            }
        }
        while i < b.len()
            && (spec_chars.contains(&b[i]) || (open == b'{' && b[i].is_ascii_alphabetic()))
        {
            if b[i] == b'*' || b[i] == b'{' {
                for a in args {
                    if let Some(n) = a.as_usize() {
                        budget::width("format width", n)?;
                        widths = widths.saturating_add(n);
                    }
                }
            }
            if b[i].is_ascii_digit() {
                let start = i;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                let n = fmt[start..i].parse::<usize>().unwrap_or(usize::MAX);
                budget::width("format width", n)?;
                widths = widths.saturating_add(n);
                continue;
            }
            i += 1;
        }
    }
    let mut args_len = 0usize;
    for a in args {
        args_len = args_len.saturating_add(budget::display_len(a, max).unwrap_or(usize::MAX));
    }
    budget::string(
        fmt.len()
            .saturating_add(widths)
            .saturating_add(args_len.saturating_mul(specs.max(1))),
    )
}

fn usize_arg(args: &[Value], i: usize, kw: &str) -> Option<usize> {
    if let Some(n) = args.get(i).and_then(Value::as_usize) {
        return Some(n);
    }
    args.last()
        .and_then(|m| m.get_attr(kw).ok())
        .and_then(|v| v.as_usize())
}

/// Checks a filter's arguments before it runs (`args[0]` is the filtered value).
fn precheck_filter(name: &str, args: &[Value]) -> Result<(), Error> {
    let s = args.first().and_then(Value::as_str).unwrap_or("");
    let str_arg = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or("");
    match name {
        "join" => check_join(args.first().unwrap_or(&Value::UNDEFINED), str_arg(1)),
        "replace" => check_replace(s, str_arg(1), str_arg(2), usize_arg(args, 3, "count")),
        "indent" => {
            let w = usize_arg(args, 1, "width").unwrap_or(4);
            budget::width("indent width", w)?;
            let lines = s.matches('\n').count() + 1;
            budget::string(s.len().saturating_add(lines.saturating_mul(w)))
        }
        "format" => check_format(s, args.get(1..).unwrap_or(&[])),
        "batch" | "slice" => {
            budget::items(args.get(1).and_then(Value::as_usize).unwrap_or(0)).map(|_| ())
        }
        "string" | "pprint" => {
            let v = args.first().unwrap_or(&Value::UNDEFINED);
            let max = budget::limits().max_string;
            // `pprint` indents; allow for it.
            budget::string(budget::display_len(v, max / 2).map_or(usize::MAX, |n| n * 2))
        }
        _ => Ok(()),
    }
}

/// Built-in filters that get wrapped: pre-checks above, and every result is charged.
type MakeFilter = fn() -> Value;

const FILTERS: &[(&str, MakeFilter)] = &[
    ("join", || Value::from_function(filters::join)),
    ("replace", || Value::from_function(filters::replace)),
    ("indent", || Value::from_function(filters::indent)),
    ("format", || Value::from_function(filters::format)),
    ("batch", || Value::from_function(filters::batch)),
    ("slice", || Value::from_function(filters::slice)),
    ("string", || Value::from_function(filters::string)),
    ("pprint", || Value::from_function(filters::pprint)),
    ("upper", || Value::from_function(filters::upper)),
    ("lower", || Value::from_function(filters::lower)),
    ("title", || Value::from_function(filters::title)),
    ("capitalize", || Value::from_function(filters::capitalize)),
    ("trim", || Value::from_function(filters::trim)),
    ("reverse", || Value::from_function(filters::reverse)),
    ("list", || Value::from_function(filters::list)),
    ("sort", || Value::from_function(filters::sort)),
    ("unique", || Value::from_function(filters::unique)),
    ("items", || Value::from_function(filters::items)),
    ("dictsort", || Value::from_function(filters::dictsort)),
    ("split", || Value::from_function(filters::split)),
    ("lines", || Value::from_function(filters::lines)),
    ("escape", || Value::from_function(filters::escape)),
    ("e", || Value::from_function(filters::escape)),
];

/// Installs the checked operators, filters, method callback and formatter.
pub(crate) fn install(env: &mut Environment<'static>) {
    env.add_function(super::rewrite::ADD, add);
    env.add_function(super::rewrite::MUL, mul);
    env.add_function(super::rewrite::CONCAT, concat);
    for &(name, make) in FILTERS {
        let inner = make();
        env.add_filter(name, move |state: &State, args: Rest<Value>| {
            precheck_filter(name, &args)?;
            let rv = inner.call(state, &args)?;
            charge_result(&rv)?;
            Ok(rv)
        });
    }
    env.set_unknown_method_callback(method);
    env.set_formatter(format_value);
}

/// Python string and dict methods (`minijinja_contrib::pycompat`), checked.
fn method(state: &State, value: &Value, name: &str, args: &[Value]) -> Result<Value, Error> {
    if let Some(s) = value.as_str() {
        let str_arg = |i: usize| args.get(i).and_then(Value::as_str).unwrap_or("");
        match name {
            "replace" => check_replace(
                s,
                str_arg(0),
                str_arg(1),
                args.get(2).and_then(Value::as_usize),
            )?,
            "join" => check_join(args.first().unwrap_or(&Value::UNDEFINED), s)?,
            "format" => check_format(s, args)?,
            _ => {}
        }
    }
    let rv = minijinja_contrib::pycompat::unknown_method_callback(state, value, name, args)?;
    charge_result(&rv)?;
    Ok(rv)
}

/// Prints a value (`{{ x }}`), charging its size first.
fn format_value(out: &mut Output, state: &State, value: &Value) -> Result<(), Error> {
    let max = budget::limits().max_string;
    let len = match value.as_str() {
        Some(s) => s.len(),
        None => budget::display_len(value, max).unwrap_or(usize::MAX),
    };
    budget::string(len)?;
    minijinja::escape_formatter(out, state, value)
}
