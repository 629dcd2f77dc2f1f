//! The Go text/template subset catalog `.tpl` files use. Supported:
//! - output: `{{ .Values.NAME }}`, `{{ .Stack.Name }}`, `{{ .Release.Version }}`, string
//!   literals, and the functions below; `{{- … -}}` trims the whitespace beside the action;
//! - `{{ if COND }} … {{ else if COND }} … {{ else }} … {{ end }}`;
//! - `{{ range $v := splitList "," .Values.X }} … {{ $v }} … {{ end }}` (also `$i, $v :=`, and
//!   `until N` for 0..N-1);
//! - functions: `eq`, `ne`, `and`, `or`, `not`, `default DEFAULT VALUE`, `quote`, `upper`,
//!   `lower`, `trim`, `splitList SEP S`, `until N`, `atoi S`, `empty S`, and pipes `X | f`;
//! - comments `{{/* … */}}`; a file starting with `# notemplating` is not rendered.
//!
//! Values are strings (answers always are); truthiness is Go's: an empty string is false, any
//! other string true (`"false"` too: compare with `eq .Values.X "true"`, as catalog templates do);
//! `and`/`or` return one of their arguments, as Go's; `default` is sprig's.
//! Anything else is an error naming the line.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateError {
    pub line: usize,
    pub message: String,
}

/// The data a template sees.
#[derive(Debug, Default, Clone)]
pub struct Data {
    pub values: BTreeMap<String, String>,
    pub stack_name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Val {
    Str(String),
    List(Vec<String>),
    Bool(bool),
    Int(i64),
}

impl Val {
    fn truthy(&self) -> bool {
        match self {
            Val::Str(s) => !s.is_empty(),
            Val::List(l) => !l.is_empty(),
            Val::Bool(b) => *b,
            Val::Int(i) => *i != 0,
        }
    }
    fn text(&self) -> String {
        match self {
            Val::Str(s) => s.clone(),
            Val::List(l) => format!("[{}]", l.join(" ")),
            Val::Bool(b) => b.to_string(),
            Val::Int(i) => i.to_string(),
        }
    }
}

#[derive(Debug)]
enum Node {
    Text(String),
    Out(String, usize),
    If(Vec<(String, Vec<Node>)>, Vec<Node>, usize),
    Range { vars: Vec<String>, expr: String, body: Vec<Node>, line: usize },
}

/// Renders `text`. Returns it unchanged if its first non-blank line is `# notemplating`.
pub fn render(text: &str, data: &Data) -> Result<String, TemplateError> {
    if text.trim_start().starts_with("# notemplating") || text.trim_start().starts_with("#notemplating") {
        return Ok(text.to_string());
    }
    let tokens = lex(text)?;
    let mut pos = 0;
    let nodes = parse(&tokens, &mut pos, &[])?;
    if pos < tokens.len() {
        let (_, line) = action_of(&tokens[pos]).unwrap_or(("", 0));
        return Err(TemplateError { line, message: "`end` or `else` without a matching `if` or `range`".into() });
    }
    let mut out = String::new();
    let mut vars = BTreeMap::new();
    exec(&nodes, data, &mut vars, &mut out)?;
    Ok(out)
}

#[derive(Debug)]
enum Token {
    Text(String),
    Action(String, usize),
}

fn action_of(t: &Token) -> Option<(&str, usize)> {
    match t {
        Token::Action(a, l) => Some((a.as_str(), *l)),
        Token::Text(_) => None,
    }
}

fn lex(text: &str) -> Result<Vec<Token>, TemplateError> {
    let mut tokens = Vec::new();
    let mut rest = text;
    let mut line = 1;
    while let Some(start) = rest.find("{{") {
        let mut before = rest[..start].to_string();
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            return Err(TemplateError { line: line + before.matches('\n').count(), message: "unclosed {{".into() });
        };
        let mut inner = &after[..end];
        if let Some(stripped) = inner.strip_prefix('-') {
            inner = stripped;
            before = before.trim_end().to_string();
        }
        let trim_after = inner.ends_with('-');
        if trim_after {
            inner = &inner[..inner.len() - 1];
        }
        line += rest[..start].matches('\n').count();
        tokens.push(Token::Text(before));
        let inner_trim = inner.trim();
        if !(inner_trim.starts_with("/*") && inner_trim.ends_with("*/")) {
            tokens.push(Token::Action(inner_trim.to_string(), line));
        }
        line += after[..end].matches('\n').count();
        rest = &after[end + 2..];
        if trim_after {
            let trimmed = rest.trim_start();
            line += rest[..rest.len() - trimmed.len()].matches('\n').count();
            rest = trimmed;
        }
    }
    tokens.push(Token::Text(rest.to_string()));
    Ok(tokens)
}

fn parse(tokens: &[Token], pos: &mut usize, stop: &[&str]) -> Result<Vec<Node>, TemplateError> {
    let mut nodes = Vec::new();
    while *pos < tokens.len() {
        match &tokens[*pos] {
            Token::Text(t) => {
                nodes.push(Node::Text(t.clone()));
                *pos += 1;
            }
            Token::Action(a, line) => {
                let word = a.split_whitespace().next().unwrap_or("");
                if stop.contains(&word) {
                    return Ok(nodes);
                }
                *pos += 1;
                match word {
                    "if" => {
                        let mut branches = vec![(a[2..].trim().to_string(), parse(tokens, pos, &["else", "end"])?)];
                        let mut otherwise = Vec::new();
                        loop {
                            let Some((next, l)) = tokens.get(*pos).and_then(action_of) else {
                                return Err(TemplateError { line: *line, message: "`if` without `end`".into() });
                            };
                            *pos += 1;
                            if next == "end" {
                                break;
                            }
                            let rest = next["else".len()..].trim();
                            if let Some(cond) = rest.strip_prefix("if ") {
                                branches.push((cond.trim().to_string(), parse(tokens, pos, &["else", "end"])?));
                            } else if rest.is_empty() {
                                otherwise = parse(tokens, pos, &["end"])?;
                            } else {
                                return Err(TemplateError { line: l, message: format!("unexpected {next:?}") });
                            }
                        }
                        nodes.push(Node::If(branches, otherwise, *line));
                    }
                    "range" => {
                        let spec = a[5..].trim();
                        let (vars, expr) = match spec.split_once(":=") {
                            Some((v, e)) => {
                                (v.split(',').map(|s| s.trim().to_string()).collect(), e.trim().to_string())
                            }
                            None => (vec![], spec.to_string()),
                        };
                        let body = parse(tokens, pos, &["end"])?;
                        if tokens.get(*pos).and_then(action_of).map(|(a, _)| a) != Some("end") {
                            return Err(TemplateError { line: *line, message: "`range` without `end`".into() });
                        }
                        *pos += 1;
                        nodes.push(Node::Range { vars, expr, body, line: *line });
                    }
                    "end" | "else" => {
                        return Err(TemplateError {
                            line: *line,
                            message: format!("`{word}` without a matching `if` or `range`"),
                        })
                    }
                    _ => nodes.push(Node::Out(a.clone(), *line)),
                }
            }
        }
    }
    Ok(nodes)
}

fn exec(nodes: &[Node], data: &Data, vars: &mut BTreeMap<String, Val>, out: &mut String) -> Result<(), TemplateError> {
    for n in nodes {
        match n {
            Node::Text(t) => out.push_str(t),
            Node::Out(expr, line) => out.push_str(&eval(expr, data, vars, *line)?.text()),
            Node::If(branches, otherwise, line) => {
                let mut done = false;
                for (cond, body) in branches {
                    if eval(cond, data, vars, *line)?.truthy() {
                        exec(body, data, vars, out)?;
                        done = true;
                        break;
                    }
                }
                if !done {
                    exec(otherwise, data, vars, out)?;
                }
            }
            Node::Range { vars: names, expr, body, line } => {
                let items = match eval(expr, data, vars, *line)? {
                    Val::List(l) => l,
                    Val::Str(s) if s.is_empty() => vec![],
                    other => {
                        return Err(TemplateError {
                            line: *line,
                            message: format!("range over {:?}, not a list", other.text()),
                        })
                    }
                };
                for (i, item) in items.into_iter().enumerate() {
                    let mut scope = vars.clone();
                    match names.as_slice() {
                        [v] => {
                            scope.insert(v.clone(), Val::Str(item));
                        }
                        [i_name, v] => {
                            scope.insert(i_name.clone(), Val::Int(i as i64));
                            scope.insert(v.clone(), Val::Str(item));
                        }
                        _ => {}
                    }
                    exec(body, data, &mut scope, out)?;
                }
            }
        }
    }
    Ok(())
}

/// Splits an expression into words, keeping quoted strings and parenthesized groups whole.
fn words(expr: &str, line: usize) -> Result<Vec<String>, TemplateError> {
    let mut out = Vec::new();
    let mut chars = expr.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '"' || c == '`' {
            chars.next();
            let mut s = String::from("\"");
            let mut closed = false;
            while let Some(d) = chars.next() {
                if d == c {
                    closed = true;
                    break;
                }
                if d == '\\' && c == '"' {
                    match chars.next() {
                        Some('n') => s.push('\n'),
                        Some('t') => s.push('\t'),
                        Some(e) => s.push(e),
                        None => {}
                    }
                } else {
                    s.push(d);
                }
            }
            if !closed {
                return Err(TemplateError { line, message: format!("unclosed string in {expr:?}") });
            }
            out.push(s);
        } else if c == '(' {
            let mut depth = 0;
            let mut s = String::new();
            for d in chars.by_ref() {
                match d {
                    '(' => depth += 1,
                    ')' => depth -= 1,
                    _ => {}
                }
                s.push(d);
                if depth == 0 {
                    break;
                }
            }
            if depth != 0 {
                return Err(TemplateError { line, message: format!("unbalanced ( in {expr:?}") });
            }
            out.push(s);
        } else {
            let mut s = String::new();
            while let Some(&d) = chars.peek() {
                if d.is_whitespace() || d == '(' {
                    break;
                }
                s.push(d);
                chars.next();
            }
            out.push(s);
        }
    }
    Ok(out)
}

fn eval(expr: &str, data: &Data, vars: &BTreeMap<String, Val>, line: usize) -> Result<Val, TemplateError> {
    // Pipes: `a | f x` is `f x a`.
    let stages = split_pipes(expr);
    let mut acc: Option<Val> = None;
    for stage in stages {
        let mut w = words(stage.trim(), line)?;
        if w.is_empty() {
            return Err(TemplateError { line, message: format!("empty expression in {expr:?}") });
        }
        let head = w.remove(0);
        let mut args: Vec<Val> = w.iter().map(|a| operand(a, data, vars, line)).collect::<Result<_, _>>()?;
        if let Some(prev) = acc.take() {
            args.push(prev);
        }
        acc = Some(if is_function(&head) {
            call(&head, args, line)?
        } else if args.is_empty() {
            operand(&head, data, vars, line)?
        } else {
            return Err(TemplateError {
                line,
                message: format!(
                    "unsupported template function {head:?} (see the deploy README for what is supported)"
                ),
            });
        });
    }
    acc.ok_or(TemplateError { line, message: "empty expression".into() })
}

fn split_pipes(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut quote, mut start) = (0, false, 0);
    for (i, c) in expr.char_indices() {
        match c {
            '"' => quote = !quote,
            '(' if !quote => depth += 1,
            ')' if !quote => depth -= 1,
            '|' if !quote && depth == 0 => {
                out.push(&expr[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&expr[start..]);
    out
}

const FUNCTIONS: &[&str] = &[
    "eq",
    "ne",
    "and",
    "or",
    "not",
    "default",
    "quote",
    "upper",
    "lower",
    "trim",
    "splitList",
    "split",
    "until",
    "atoi",
    "empty",
];

fn is_function(w: &str) -> bool {
    FUNCTIONS.contains(&w)
}

fn operand(w: &str, data: &Data, vars: &BTreeMap<String, Val>, line: usize) -> Result<Val, TemplateError> {
    if let Some(s) = w.strip_prefix('"') {
        return Ok(Val::Str(s.to_string()));
    }
    if w.starts_with('(') && w.ends_with(')') {
        return eval(&w[1..w.len() - 1], data, vars, line);
    }
    if let Some(name) = w.strip_prefix(".Values.") {
        // A missing answer is empty, as Go's template with a map gives "<no value>"; catalog
        // templates test such values with `if`, so empty is what they mean.
        return Ok(Val::Str(data.values.get(name).cloned().unwrap_or_default()));
    }
    match w {
        ".Stack.Name" => return Ok(Val::Str(data.stack_name.clone())),
        ".Release.Version" | ".Stack.Version" => return Ok(Val::Str(data.version.clone())),
        "true" => return Ok(Val::Bool(true)),
        "false" => return Ok(Val::Bool(false)),
        _ => {}
    }
    if w.starts_with('$') {
        return vars.get(w).cloned().ok_or(TemplateError { line, message: format!("undefined variable {w}") });
    }
    if let Ok(i) = w.parse::<i64>() {
        return Ok(Val::Int(i));
    }
    if is_function(w) {
        return call(w, vec![], line);
    }
    Err(TemplateError {
        line,
        message: format!("unsupported template expression {w:?} (see the deploy README for what is supported)"),
    })
}

fn call(f: &str, args: Vec<Val>, line: usize) -> Result<Val, TemplateError> {
    let want = |n: usize| -> Result<(), TemplateError> {
        if args.len() == n {
            Ok(())
        } else {
            Err(TemplateError { line, message: format!("{f} takes {n} argument(s), got {}", args.len()) })
        }
    };
    Ok(match f {
        "eq" | "ne" => {
            want(2)?;
            let same = args[0].text() == args[1].text();
            Val::Bool(if f == "eq" { same } else { !same })
        }
        // Go: `and` gives the first false argument or the last; `or` the first true one or the last.
        "and" => args.iter().find(|a| !a.truthy()).or(args.last()).cloned().unwrap_or(Val::Bool(true)),
        "or" => args.iter().find(|a| a.truthy()).or(args.last()).cloned().unwrap_or(Val::Bool(false)),
        "not" => {
            want(1)?;
            Val::Bool(!args[0].truthy())
        }
        "default" => {
            // sprig: the value unless it is empty ("", false, 0, an empty list).
            want(2)?;
            let empty = match &args[1] {
                Val::Str(s) => s.is_empty(),
                Val::List(l) => l.is_empty(),
                Val::Bool(b) => !b,
                Val::Int(i) => *i == 0,
            };
            if empty {
                args[0].clone()
            } else {
                args[1].clone()
            }
        }
        "quote" => {
            want(1)?;
            let t = args[0].text();
            let mut q = String::from("\"");
            for c in t.chars() {
                match c {
                    '"' => q.push_str("\\\""),
                    '\\' => q.push_str("\\\\"),
                    '\n' => q.push_str("\\n"),
                    '\t' => q.push_str("\\t"),
                    c => q.push(c),
                }
            }
            q.push('"');
            Val::Str(q)
        }
        "upper" | "lower" | "trim" => {
            want(1)?;
            let t = args[0].text();
            Val::Str(match f {
                "upper" => t.to_uppercase(),
                "lower" => t.to_lowercase(),
                _ => t.trim().to_string(),
            })
        }
        "splitList" | "split" => {
            want(2)?;
            let (sep, s) = (args[0].text(), args[1].text());
            Val::List(if s.is_empty() { vec![] } else { s.split(sep.as_str()).map(String::from).collect() })
        }
        "until" => {
            want(1)?;
            let n = match &args[0] {
                Val::Int(i) => *i,
                other => other.text().trim().parse().map_err(|_| TemplateError {
                    line,
                    message: format!("until needs a number, got {:?}", other.text()),
                })?,
            };
            Val::List((0..n.max(0)).map(|i| i.to_string()).collect())
        }
        "atoi" => {
            want(1)?;
            Val::Int(
                args[0].text().trim().parse().map_err(|_| TemplateError {
                    line,
                    message: format!("atoi: {:?} is not a number", args[0].text()),
                })?,
            )
        }
        "empty" => {
            want(1)?;
            Val::Bool(!args[0].truthy())
        }
        other => return Err(TemplateError { line, message: format!("unknown function {other:?}") }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> Data {
        Data {
            values: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            stack_name: "app".into(),
            version: "1.0".into(),
        }
    }

    #[test]
    fn catalog_idioms() {
        let t = "services:\n  web:\n    image: nginx:{{ .Values.TAG }}\n{{- if eq .Values.HOST_PORTS \"true\" }}\n    ports: [\"80:80\"]\n{{- end }}\n";
        assert_eq!(
            render(t, &data(&[("TAG", "1.25"), ("HOST_PORTS", "true")])).unwrap(),
            "services:\n  web:\n    image: nginx:1.25\n    ports: [\"80:80\"]\n"
        );
        assert_eq!(
            render(t, &data(&[("TAG", "1.25"), ("HOST_PORTS", "false")])).unwrap(),
            "services:\n  web:\n    image: nginx:1.25\n"
        );
        // Go semantics: a non-empty string is true; `or` gives a value; sprig's default.
        assert_eq!(render("{{ if .Values.X }}y{{ end }}", &data(&[("X", "false")])).unwrap(), "y");
        assert_eq!(render("{{ or .Values.TAG \"latest\" }}", &data(&[])).unwrap(), "latest");
        assert_eq!(render("{{ default \"d\" \"false\" }}", &data(&[])).unwrap(), "false");
        assert_eq!(render("{{ quote \"a\\tb\" }}", &data(&[])).unwrap(), "\"a\\tb\"");
        let t = "{{ if .Values.A }}a{{ else if ne .Values.B \"\" }}b{{ else }}c{{ end }}";
        assert_eq!(render(t, &data(&[("A", "x")])).unwrap(), "a");
        assert_eq!(render(t, &data(&[("B", "y")])).unwrap(), "b");
        assert_eq!(render(t, &data(&[])).unwrap(), "c");
        let t = "{{ range $i, $h := splitList \",\" .Values.HOSTS }}[{{ $i }}={{ $h }}]{{ end }}";
        assert_eq!(render(t, &data(&[("HOSTS", "a,b")])).unwrap(), "[0=a][1=b]");
        assert_eq!(render("{{ .Values.X | default \"d\" | upper }}", &data(&[])).unwrap(), "D");
        assert_eq!(render("{{ range $i := until (atoi .Values.N) }}x{{ end }}", &data(&[("N", "3")])).unwrap(), "xxx");
        assert_eq!(render("{{/* note */}}{{ .Stack.Name }}", &data(&[])).unwrap(), "app");
        assert_eq!(render("# notemplating\n{{ x }}", &data(&[])).unwrap(), "# notemplating\n{{ x }}");
        assert_eq!(
            render("{{ if and (eq .Values.A \"1\") (not .Values.B) }}y{{ end }}", &data(&[("A", "1")])).unwrap(),
            "y"
        );
    }

    #[test]
    fn errors_name_the_line() {
        assert_eq!(render("a\n{{ if .Values.X }}\nb\n", &data(&[])).unwrap_err().line, 2);
        assert_eq!(render("a\nb\n{{ end }}", &data(&[])).unwrap_err().line, 3);
        let e = render("a\n\n{{ include \"x\" }}", &data(&[])).unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.contains("unsupported"), "{}", e.message);
        assert!(render("{{ .Values.X", &data(&[])).unwrap_err().message.contains("unclosed"));
    }
}
