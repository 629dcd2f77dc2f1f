//! Catalogs in Rancher's layout: `templates/<name>/config.yml` and numbered version folders
//! (`0/`, `1/`, …) holding `docker-compose.yml` (or `.yml.tpl`) and `rancher-compose.yml`, whose
//! `catalog:` (or `.catalog:`) block names the version and asks the questions.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::yaml::{self, Node};

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("no template {name:?} in {catalog} (deploy catalog list shows them)")]
    NoTemplate { name: String, catalog: String },
    #[error("template {name:?} has no version {version:?} (it has: {have})")]
    NoVersion { name: String, version: String, have: String },
}

/// `config.yml` of a template.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub maintainer: Option<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Question {
    pub variable: String,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default = "string_type", rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub min_length: Option<usize>,
    #[serde(default)]
    pub max_length: Option<usize>,
    #[serde(default)]
    pub valid_chars: Option<String>,
    #[serde(default)]
    pub invalid_chars: Option<String>,
}

fn string_type() -> String {
    "string".into()
}

#[derive(Debug, Clone)]
pub struct Version {
    /// The folder (`0`, `1`, …).
    pub folder: String,
    /// `catalog.version`, when the folder says.
    pub version: Option<String>,
    pub dir: PathBuf,
    pub questions: Vec<Question>,
    pub compose: PathBuf,
    pub rancher: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Template {
    /// The template's folder name (what `--template` takes).
    pub id: String,
    pub config: Config,
    /// Oldest first.
    pub versions: Vec<Version>,
}

fn file_err(path: &Path, message: impl Into<String>) -> CatalogError {
    CatalogError::File { path: path.display().to_string(), message: message.into() }
}

/// Every template of the catalog at `root`, by id, and the problems of those that cannot be
/// read (one broken template does not hide the others).
pub fn templates(root: &Path) -> Result<(Vec<Template>, Vec<CatalogError>), CatalogError> {
    let dir = root.join("templates");
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| file_err(&dir, format!("not a catalog ({e}); expected templates/<name>/config.yml")))?;
    let (mut out, mut broken) = (Vec::new(), Vec::new());
    for entry in entries.flatten() {
        if entry.path().join("config.yml").is_file() {
            match template(&entry.path()) {
                Ok(t) => out.push(t),
                Err(e) => broken.push(e),
            }
        }
    }
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok((out, broken))
}

fn template(dir: &Path) -> Result<Template, CatalogError> {
    let id = dir.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let cfg_path = dir.join("config.yml");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| file_err(&cfg_path, e.to_string()))?;
    let config: Config = serde_norway::from_str(&text).map_err(|e| file_err(&cfg_path, e.to_string()))?;
    let mut folders: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map_err(|e| file_err(dir, e.to_string()))?
        .flatten()
        .filter_map(|e| Some((e.file_name().to_string_lossy().parse::<u64>().ok()?, e.path())))
        .filter(|(_, p)| p.is_dir())
        .collect();
    folders.sort();
    let mut versions = Vec::new();
    for (n, path) in folders {
        let compose =
            ["docker-compose.yml.tpl", "docker-compose.yml"].iter().map(|f| path.join(f)).find(|p| p.is_file());
        let Some(compose) = compose else { continue };
        let rancher = Some(path.join("rancher-compose.yml")).filter(|p| p.is_file());
        let (version, questions) = match &rancher {
            Some(r) => catalog_block(r)?,
            None => (None, Vec::new()),
        };
        versions.push(Version { folder: n.to_string(), version, dir: path, questions, compose, rancher });
    }
    Ok(Template { id, config, versions })
}

/// The `catalog:` / `.catalog:` block of a rancher-compose.yml: version and questions.
fn catalog_block(path: &Path) -> Result<(Option<String>, Vec<Question>), CatalogError> {
    let text = std::fs::read_to_string(path).map_err(|e| file_err(path, e.to_string()))?;
    let node = yaml::parse(&text).map_err(|e| file_err(path, format!("{}: YAML: {}", e.pos, e.message)))?;
    let block: Option<&Node> = node.get("catalog").or_else(|| node.get(".catalog"));
    let Some(block) = block else { return Ok((None, Vec::new())) };
    let version = block.get("version").and_then(Node::as_str).map(String::from);
    let mut questions = Vec::new();
    if let Some(list) = block.get("questions") {
        let json = list.to_json();
        let items = json.as_array().cloned().unwrap_or_default();
        for (i, q) in items.into_iter().enumerate() {
            // Defaults and options are strings in Rancher ("answers are always strings").
            let q = stringify(q, &["default", "options"]);
            let parsed: Question =
                serde_json::from_value(q).map_err(|e| file_err(path, format!("catalog.questions[{i}]: {e}")))?;
            questions.push(parsed);
        }
    }
    Ok((version, questions))
}

fn stringify(mut q: serde_json::Value, keys: &[&str]) -> serde_json::Value {
    fn s(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Bool(b) => serde_json::Value::String(b.to_string()),
            serde_json::Value::Number(n) => serde_json::Value::String(n.to_string()),
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(s).collect()),
            other => other.clone(),
        }
    }
    if let Some(m) = q.as_object_mut() {
        for k in keys {
            if let Some(v) = m.get_mut(*k) {
                *v = s(v);
            }
        }
    }
    q
}

/// `NAME` or `NAME:VERSION` (the version as `catalog.version` says it, or the folder number).
/// Without a version: the one `config.yml` names, else the newest.
pub fn resolve(root: &Path, spec: &str) -> Result<(Template, Version), CatalogError> {
    let (name, want) = match spec.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (spec, None),
    };
    let dir = root.join("templates").join(name);
    if name.contains(['/', '\\']) || name.starts_with('.') || !dir.join("config.yml").is_file() {
        return Err(CatalogError::NoTemplate { name: name.into(), catalog: root.display().to_string() });
    }
    let t = template(&dir)?;
    let want = want.map(String::from).or_else(|| t.config.version.clone());
    let v = match &want {
        Some(w) => t.versions.iter().find(|v| v.version.as_deref() == Some(w.as_str()) || &v.folder == w),
        None => t.versions.last(),
    };
    match v {
        Some(v) => Ok((t.clone(), v.clone())),
        None => Err(CatalogError::NoVersion {
            name: name.into(),
            version: want.unwrap_or_default(),
            have: t
                .versions
                .iter()
                .map(|v| v.version.clone().unwrap_or_else(|| v.folder.clone()))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Checks one answer against its question; `Err` says what was expected.
pub fn check(q: &Question, answer: &str) -> Result<(), String> {
    match q.kind.as_str() {
        "int" => {
            let n: i64 = answer.trim().parse().map_err(|_| format!("{answer:?} is not a whole number"))?;
            if let Some(min) = q.min.filter(|m| n < *m) {
                return Err(format!("{n} is less than the minimum {min}"));
            }
            if let Some(max) = q.max.filter(|m| n > *m) {
                return Err(format!("{n} is more than the maximum {max}"));
            }
        }
        "boolean" => {
            if answer != "true" && answer != "false" {
                return Err(format!("{answer:?}: expected true or false"));
            }
        }
        "enum" => {
            if !q.options.iter().any(|o| o == answer) {
                return Err(format!("{answer:?}: expected one of {}", q.options.join(", ")));
            }
        }
        "service" => {
            let ok = answer.split('/').count() == 2 && answer.split('/').all(crate::compose::valid_name);
            if !ok {
                return Err(format!("{answer:?}: expected stack/service"));
            }
        }
        "certificate" => {
            if answer.trim().is_empty() {
                return Err("expected a certificate name".into());
            }
        }
        "string" | "password" | "multiline" => {}
        other => return Err(format!("unknown question type {other:?}")),
    }
    let len = answer.chars().count();
    if let Some(min) = q.min_length.filter(|m| len < *m) {
        return Err(format!("at least {min} characters"));
    }
    if let Some(max) = q.max_length.filter(|m| len > *m) {
        return Err(format!("at most {max} characters"));
    }
    if let Some(valid) = &q.valid_chars {
        if let Some(bad) = answer.chars().find(|c| !valid.contains(*c)) {
            return Err(format!("{bad:?} is not allowed (allowed: {valid})"));
        }
    }
    if let Some(invalid) = &q.invalid_chars {
        if let Some(bad) = answer.chars().find(|c| invalid.contains(*c)) {
            return Err(format!("{bad:?} is not allowed"));
        }
    }
    Ok(())
}

/// Checks every answer, and that every required question without a default has one. Returns
/// each problem as (variable, message).
pub fn check_answers(questions: &[Question], answers: &BTreeMap<String, String>) -> Result<(), Vec<(String, String)>> {
    let mut problems = Vec::new();
    for q in questions {
        match answers.get(&q.variable) {
            Some(a) => {
                if let Err(e) = check(q, a) {
                    problems.push((q.variable.clone(), e));
                }
            }
            None if q.required && q.default.as_deref().unwrap_or("").is_empty() => {
                let label = if q.label.is_empty() { String::new() } else { format!(" ({})", q.label) };
                problems.push((q.variable.clone(), format!("an answer is required{label}")));
            }
            None => {}
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

/// Question defaults, looked up after every other source.
pub fn defaults(questions: &[Question]) -> BTreeMap<String, String> {
    questions.iter().filter_map(|q| Some((q.variable.clone(), q.default.clone()?))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(kind: &str) -> Question {
        Question { variable: "X".into(), kind: kind.into(), ..Default::default() }
    }

    #[test]
    fn answer_checks() {
        let int = Question { min: Some(1), max: Some(10), ..q("int") };
        assert!(check(&int, "5").is_ok());
        assert_eq!(check(&int, "0").unwrap_err(), "0 is less than the minimum 1");
        assert_eq!(check(&int, "x").unwrap_err(), "\"x\" is not a whole number");
        assert!(check(&q("boolean"), "yes").is_err());
        let e = Question { options: vec!["a".into(), "b".into()], ..q("enum") };
        assert_eq!(check(&e, "c").unwrap_err(), "\"c\": expected one of a, b");
        assert!(check(&q("service"), "app/web").is_ok());
        assert!(check(&q("service"), "web").is_err());
        let s = Question { min_length: Some(3), valid_chars: Some("abc".into()), ..q("password") };
        assert_eq!(check(&s, "ab").unwrap_err(), "at least 3 characters");
        assert_eq!(check(&s, "abd").unwrap_err(), "'d' is not allowed (allowed: abc)");
        let required = Question { required: true, label: "Port".into(), ..q("int") };
        assert_eq!(
            check_answers(&[required], &BTreeMap::new()).unwrap_err(),
            [("X".to_string(), "an answer is required (Port)".to_string())]
        );
    }
}
