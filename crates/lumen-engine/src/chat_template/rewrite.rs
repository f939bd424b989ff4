//! Routes a template's `+`, `*` and `~` operators through checked functions.
//!
//! minijinja evaluates these operators inside its VM, where nothing can watch how big
//! the result gets: `{% set s = s ~ s %}` forty times asks for a terabyte in one step.
//! Every other way a template allocates (filters, functions, methods, printing) can be
//! wrapped, so only operators need this: the template is parsed, and each `a + b`,
//! `a * b` and `a ~ b` is rewritten in the source to `__lumen_add(a, b)` (and so on),
//! which [`super::checked`] implements with size checks and minijinja's own semantics.
//! Only expressions inside tags change; text, whitespace rules and line numbers do not.

use minijinja::machinery::ast::{self, BinOpKind, CallArg, Expr, Stmt};
use minijinja::machinery::{parse, tokenize, Span, Token, WhitespaceConfig};
use minijinja::syntax::SyntaxConfig;

/// Global function that replaces `a + b`.
pub(crate) const ADD: &str = "__lumen_add";
/// Global function that replaces `a * b`.
pub(crate) const MUL: &str = "__lumen_mul";
/// Global function that replaces `a ~ b`.
pub(crate) const CONCAT: &str = "__lumen_concat";

/// Most tokens in one `{{ }}` or `{% %}` tag. Chains of operators, filters, attributes
/// or calls parse into a tree as deep as they are long, which minijinja (and this
/// module) walk recursively: a tag of tens of thousands of them overflows the stack.
pub const MAX_TAG_TOKENS: usize = 1000;

/// Refuses a template with a tag of more than [`MAX_TAG_TOKENS`] tokens (the lexer is
/// not recursive, so this is safe to run on any source).
pub(crate) fn check_tag_sizes(source: &str) -> Result<(), String> {
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = SyntaxConfig::default();
    let mut in_tag = 0usize;
    for item in tokenize(source, false, syntax, ws) {
        // A lexer error is reported by the compiler, as before.
        let Ok((token, span)) = item else {
            return Ok(());
        };
        match token {
            Token::VariableStart | Token::BlockStart => in_tag = 1,
            Token::VariableEnd | Token::BlockEnd => in_tag = 0,
            _ if in_tag > 0 => {
                in_tag += 1;
                if in_tag > MAX_TAG_TOKENS {
                    return Err(format!(
                        "the tag at line {} has more than {MAX_TAG_TOKENS} tokens",
                        span.start_line
                    ));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// One operator to rewrite: the whole expression and its two operands.
struct Op {
    func: &'static str,
    whole: (usize, usize),
    left: (usize, usize),
    right: (usize, usize),
}

/// The source with every `+`, `*` and `~` turned into a checked call, or `None` when it
/// does not parse (the caller then compiles the original and reports minijinja's error).
pub(crate) fn checked_operators(source: &str) -> Option<String> {
    let ws = WhitespaceConfig {
        keep_trailing_newline: false,
        lstrip_blocks: true,
        trim_blocks: true,
    };
    // A unit struct unless minijinja's `custom_syntax` is on; `default()` builds either.
    #[allow(clippy::default_constructed_unit_structs)]
    let syntax = SyntaxConfig::default();
    let root = parse(source, "chat_template", syntax, ws).ok()?;
    let mut ops = Vec::new();
    stmt(source, &root, &mut ops);
    if ops.is_empty() {
        return Some(source.to_owned());
    }
    // Spans nest, so sorting by start (outermost first on ties) gives a pre-order walk.
    ops.sort_by_key(|o| (o.whole.0, std::cmp::Reverse(o.whole.1)));
    for o in &ops {
        let ok = |(a, b): (usize, usize)| {
            a <= b && b <= source.len() && source.is_char_boundary(a) && source.is_char_boundary(b)
        };
        if !(ok(o.whole) && ok(o.left) && ok(o.right)) {
            return None;
        }
    }
    let mut out = String::with_capacity(source.len() + ops.len() * 16);
    emit(source, (0, source.len()), &ops, &mut out);
    Some(out)
}

/// Writes `range` of the source with the operators inside it rewritten.
fn emit(src: &str, range: (usize, usize), ops: &[Op], out: &mut String) {
    let mut pos = range.0;
    let mut i = ops.partition_point(|o| o.whole.0 < range.0);
    while i < ops.len() && ops[i].whole.0 < range.1 {
        let o = &ops[i];
        if o.whole.1 > range.1 || o.whole.0 < pos {
            // Not nested in this range (cannot happen with a well-formed tree).
            i += 1;
            continue;
        }
        out.push_str(&src[pos..o.whole.0]);
        out.push_str(o.func);
        out.push('(');
        emit(src, o.left, ops, out);
        out.push_str(", ");
        emit(src, o.right, ops, out);
        // Keep line numbers: the dropped operator text may have held line breaks.
        let dropped = src[o.whole.0..o.left.0].matches('\n').count()
            + src[o.left.1..o.right.0].matches('\n').count()
            + src[o.right.1..o.whole.1].matches('\n').count();
        out.extend(std::iter::repeat_n('\n', dropped));
        out.push(')');
        pos = o.whole.1;
        // Skip every operator inside this one; the recursive calls wrote them.
        i += 1;
        while i < ops.len() && ops[i].whole.0 < o.whole.1 {
            i += 1;
        }
    }
    out.push_str(&src[pos..range.1]);
}

fn range(s: Span) -> (usize, usize) {
    (s.start_offset as usize, s.end_offset as usize)
}

fn span_of(e: &Expr<'_>) -> Span {
    match e {
        Expr::Var(x) => x.span(),
        Expr::Const(x) => x.span(),
        Expr::Slice(x) => x.span(),
        Expr::UnaryOp(x) => x.span(),
        Expr::BinOp(x) => x.span(),
        Expr::Compare(x) => x.span(),
        Expr::IfExpr(x) => x.span(),
        Expr::Filter(x) => x.span(),
        Expr::Test(x) => x.span(),
        Expr::GetAttr(x) => x.span(),
        Expr::GetItem(x) => x.span(),
        Expr::Call(x) => x.span(),
        Expr::List(x) => x.span(),
        Expr::Map(x) => x.span(),
    }
}

fn stmts(src: &str, body: &[Stmt<'_>], ops: &mut Vec<Op>) {
    body.iter().for_each(|s| stmt(src, s, ops));
}

fn stmt(src: &str, s: &Stmt<'_>, ops: &mut Vec<Op>) {
    match s {
        Stmt::Template(t) => stmts(src, &t.children, ops),
        Stmt::EmitExpr(e) => expr(src, &e.expr, ops),
        Stmt::EmitRaw(_) | Stmt::Continue(_) | Stmt::Break(_) => {}
        Stmt::ForLoop(f) => {
            expr(src, &f.target, ops);
            expr(src, &f.iter, ops);
            if let Some(e) = &f.filter_expr {
                expr(src, e, ops);
            }
            stmts(src, &f.body, ops);
            stmts(src, &f.else_body, ops);
        }
        Stmt::IfCond(c) => {
            expr(src, &c.expr, ops);
            stmts(src, &c.true_body, ops);
            stmts(src, &c.false_body, ops);
        }
        Stmt::WithBlock(w) => {
            for (a, b) in &w.assignments {
                expr(src, a, ops);
                expr(src, b, ops);
            }
            stmts(src, &w.body, ops);
        }
        Stmt::Set(x) => {
            expr(src, &x.target, ops);
            expr(src, &x.expr, ops);
        }
        Stmt::SetBlock(x) => {
            expr(src, &x.target, ops);
            if let Some(f) = &x.filter {
                expr(src, f, ops);
            }
            stmts(src, &x.body, ops);
        }
        Stmt::AutoEscape(a) => {
            expr(src, &a.enabled, ops);
            stmts(src, &a.body, ops);
        }
        Stmt::FilterBlock(f) => {
            expr(src, &f.filter, ops);
            stmts(src, &f.body, ops);
        }
        Stmt::Block(b) => stmts(src, &b.body, ops),
        Stmt::Import(i) => {
            expr(src, &i.expr, ops);
            expr(src, &i.name, ops);
        }
        Stmt::FromImport(i) => {
            expr(src, &i.expr, ops);
            for (a, b) in &i.names {
                expr(src, a, ops);
                if let Some(b) = b {
                    expr(src, b, ops);
                }
            }
        }
        Stmt::Extends(e) => expr(src, &e.name, ops),
        Stmt::Include(i) => expr(src, &i.name, ops),
        Stmt::Macro(m) => macro_decl(src, m, ops),
        Stmt::CallBlock(c) => {
            call(src, &c.call, ops);
            macro_decl(src, &c.macro_decl, ops);
        }
        Stmt::Do(d) => call(src, &d.call, ops),
    }
}

fn macro_decl(src: &str, m: &ast::Macro<'_>, ops: &mut Vec<Op>) {
    m.args.iter().for_each(|e| expr(src, e, ops));
    m.defaults.iter().for_each(|e| expr(src, e, ops));
    stmts(src, &m.body, ops);
}

fn call(src: &str, c: &ast::Call<'_>, ops: &mut Vec<Op>) {
    expr(src, &c.expr, ops);
    for arg in &c.args {
        match arg {
            CallArg::Pos(e)
            | CallArg::Kwarg(_, e)
            | CallArg::PosSplat(e)
            | CallArg::KwargSplat(e) => expr(src, e, ops),
        }
    }
}

/// The sub-expressions of `e`.
fn children<'a, 'b>(e: &'b Expr<'a>) -> Vec<&'b Expr<'a>> {
    let args = |a: &'b [CallArg<'a>]| {
        a.iter().map(|arg| match arg {
            CallArg::Pos(e)
            | CallArg::Kwarg(_, e)
            | CallArg::PosSplat(e)
            | CallArg::KwargSplat(e) => e,
        })
    };
    match e {
        Expr::Var(_) | Expr::Const(_) => vec![],
        Expr::Slice(s) => std::iter::once(&s.expr)
            .chain([&s.start, &s.stop, &s.step].into_iter().flatten())
            .collect(),
        Expr::UnaryOp(u) => vec![&u.expr],
        Expr::BinOp(b) => vec![&b.left, &b.right],
        Expr::Compare(c) => std::iter::once(&c.expr)
            .chain(c.ops.iter().map(|o| &o.expr))
            .collect(),
        Expr::IfExpr(i) => [&i.test_expr, &i.true_expr]
            .into_iter()
            .chain(&i.false_expr)
            .collect(),
        Expr::Filter(f) => f.expr.iter().chain(args(&f.args)).collect(),
        Expr::Test(t) => std::iter::once(&t.expr).chain(args(&t.args)).collect(),
        Expr::GetAttr(g) => vec![&g.expr],
        Expr::GetItem(g) => vec![&g.expr, &g.subscript_expr],
        Expr::Call(c) => std::iter::once(&c.expr).chain(args(&c.args)).collect(),
        Expr::List(l) => l.items.iter().collect(),
        Expr::Map(m) => m.keys.iter().chain(&m.values).collect(),
    }
}

/// The source range an expression covers. minijinja's spans start some nodes at their
/// operator (a filter at its name, a comparison at its operator), so the range is the
/// union with the children's, widened over the opening parentheses it closes.
fn extent(src: &str, e: &Expr<'_>) -> (usize, usize) {
    let (mut a, mut b) = range(span_of(e));
    for c in children(e) {
        let (ca, cb) = extent(src, c);
        a = a.min(ca);
        b = b.max(cb);
    }
    widen_parens(src, (a, b))
}

/// Extends `r` to the left over the `(` of every `)` inside it that has no `(` inside it.
fn widen_parens(src: &str, (mut a, b): (usize, usize)) -> (usize, usize) {
    let Some(text) = src.get(a..b) else {
        return (a, b);
    };
    let (mut depth, mut open_needed) = (0i64, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    for ch in text.chars() {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if ch == '\\' {
                    escaped = true;
                } else if ch == q {
                    quote = None;
                }
            }
            None => match ch {
                '\'' | '"' => quote = Some(ch),
                '(' => depth += 1,
                ')' if depth == 0 => open_needed += 1,
                ')' => depth -= 1,
                _ => {}
            },
        }
    }
    let bytes = src.as_bytes();
    while open_needed > 0 && a > 0 {
        a -= 1;
        match bytes[a] {
            b'(' => open_needed -= 1,
            c if c.is_ascii_whitespace() => {}
            _ => break,
        }
    }
    (a, b)
}

fn expr(src: &str, e: &Expr<'_>, ops: &mut Vec<Op>) {
    for c in children(e) {
        expr(src, c, ops);
    }
    if let Expr::BinOp(b) = e {
        let func = match b.op {
            BinOpKind::Add => ADD,
            BinOpKind::Mul => MUL,
            BinOpKind::Concat => CONCAT,
            _ => return,
        };
        ops.push(Op {
            func,
            whole: extent(src, e),
            left: extent(src, &b.left),
            right: extent(src, &b.right),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_become_calls() {
        let r = |s: &str| checked_operators(s).unwrap();
        assert_eq!(r("a{{ x ~ y }}b"), "a{{ __lumen_concat(x, y) }}b");
        assert_eq!(
            r("{% set s = (a ~ b) ~ c * 2 %}"),
            "{% set s = __lumen_concat(__lumen_concat(a, b), __lumen_mul(c, 2)) %}"
        );
        assert_eq!(
            r("{{ (a + b).strip() }}"),
            "{{ (__lumen_add(a, b)).strip() }}"
        );
        assert_eq!(
            r("{{ f(a + 1, k=[b * 2]) | join(x ~ '\n') }}"),
            "{{ f(__lumen_add(a, 1), k=[__lumen_mul(b, 2)]) | join(__lumen_concat(x, '\n')) }}"
        );
        assert_eq!(r("{{ a\n+ b }}"), "{{ __lumen_add(a, b\n) }}");
        assert_eq!(r("{{ a - b }}"), "{{ a - b }}");
        assert!(checked_operators("{{ a + }}").is_none());
    }
}
