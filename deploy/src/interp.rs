//! Compose-style variables in scalar values: `$VAR`, `${VAR}`, `${VAR:-default}` (unset or
//! empty), `${VAR-default}` (unset), `${VAR:?message}` / `${VAR?message}` (required), and `$$`
//! for a literal `$`. A variable that is unset and has no default is an error at its position
//! (Rancher silently substituted an empty string and produced images like `foo:`).

use crate::problem::Problems;
use crate::yaml::{Node, Value};

/// Replaces variables in every scalar value (not in keys) of `node`; problems are collected.
pub fn interpolate(node: &mut Node, lookup: &dyn Fn(&str) -> Option<String>, path: &str, problems: &mut Problems) {
    match &mut node.value {
        Value::Scalar { text, .. } => {
            if text.contains('$') {
                match expand(text, lookup) {
                    Ok(s) => *text = s,
                    Err(message) => problems.add(node.pos, path, message),
                }
            }
        }
        Value::Seq(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                interpolate(item, lookup, &format!("{path}[{i}]"), problems);
            }
        }
        Value::Map(entries) => {
            for (k, v) in entries.iter_mut() {
                let key = k.as_str().unwrap_or("?").to_string();
                let p = if path.is_empty() { key } else { format!("{path}.{key}") };
                interpolate(v, lookup, &p, problems);
            }
        }
        Value::Null => {}
    }
}

/// Expands one string.
pub fn expand(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '$' {
            out.push(c);
            continue;
        }
        match chars.peek().map(|(_, c)| *c) {
            Some('$') => {
                chars.next();
                out.push('$');
            }
            Some('{') => {
                chars.next();
                let mut inner = String::new();
                let mut closed = false;
                for (_, c) in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    inner.push(c);
                }
                if !closed {
                    return Err(format!("unclosed ${{ in {text:?}"));
                }
                out.push_str(&braced(&inner, lookup)?);
            }
            Some(c) if c == '_' || c.is_ascii_alphabetic() => {
                let mut name = String::new();
                while let Some((_, c)) = chars.peek() {
                    if *c == '_' || c.is_ascii_alphanumeric() {
                        name.push(*c);
                        chars.next();
                    } else {
                        break;
                    }
                }
                out.push_str(&lookup(&name).ok_or_else(|| unset(&name))?);
            }
            _ => return Err(format!("invalid interpolation in {text:?}: use $$ for a literal $")),
        }
    }
    Ok(out)
}

fn unset(name: &str) -> String {
    format!("variable {name} is not set (give it in the answers, --env-file or the environment, or write ${{{name}:-default}})")
}

fn braced(inner: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let name_end = inner.find(|c: char| !(c == '_' || c.is_ascii_alphanumeric())).unwrap_or(inner.len());
    let (name, rest) = inner.split_at(name_end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(format!("invalid variable name in ${{{inner}}}"));
    }
    let value = lookup(name);
    match rest {
        "" => value.ok_or_else(|| unset(name)),
        r if r.starts_with(":-") => Ok(value.filter(|v| !v.is_empty()).unwrap_or_else(|| r[2..].to_string())),
        r if r.starts_with('-') => Ok(value.unwrap_or_else(|| r[1..].to_string())),
        r if r.starts_with(":?") || r.starts_with('?') => {
            let msg = r.trim_start_matches(':').trim_start_matches('?');
            match value.filter(|v| !(r.starts_with(':') && v.is_empty())) {
                Some(v) => Ok(v),
                None if msg.is_empty() => Err(unset(name)),
                None => Err(format!("variable {name}: {msg}")),
            }
        }
        _ => Err(format!("invalid interpolation ${{{inner}}}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "TAG" => Some("1.2".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn forms() {
        assert_eq!(expand("nginx:$TAG", &env).unwrap(), "nginx:1.2");
        assert_eq!(expand("nginx:${TAG}-x", &env).unwrap(), "nginx:1.2-x");
        assert_eq!(expand("a$$b", &env).unwrap(), "a$b");
        assert_eq!(expand("$${stack_name}", &env).unwrap(), "${stack_name}");
        assert_eq!(expand("${NOPE:-d}", &env).unwrap(), "d");
        assert_eq!(expand("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand("${EMPTY-d}", &env).unwrap(), "");
        assert_eq!(expand("${NOPE-}", &env).unwrap(), "");
        assert!(expand("foo:$NOPE", &env).unwrap_err().contains("NOPE is not set"));
        assert!(expand("${NOPE:?give a port}", &env).unwrap_err().contains("give a port"));
        assert!(expand("${TAG", &env).unwrap_err().contains("unclosed"));
        assert!(expand("a $ b", &env).unwrap_err().contains("$$"));
        assert!(expand("${1X}", &env).is_err());
    }
}
