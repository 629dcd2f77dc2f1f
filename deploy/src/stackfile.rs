//! Loading a stack: read both files, interpolate, decode, check across services. All-or-nothing:
//! the result is either the whole desired state or every problem found.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use event_bus::model::{Service, Stack};

use crate::compose::{self, StackFiles};
use crate::interp::interpolate;
use crate::problem::{Problem, Problems};
use crate::yaml::{self, Node, Pos};

/// What `deploy up` was given.
#[derive(Debug, Clone, Default)]
pub struct Input {
    pub compose: PathBuf,
    pub rancher: Option<PathBuf>,
    pub stack: String,
    /// Values for variables: answers first, then `--env-file`, then the process environment.
    pub answers: BTreeMap<String, String>,
    pub env_file: BTreeMap<String, String>,
    /// Question defaults: looked up last.
    pub defaults: BTreeMap<String, String>,
    /// The compose file's text when it does not come from `compose` as is (a rendered `.tpl`).
    pub compose_text: Option<String>,
}

/// A stack's desired state.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub stack: Stack,
    pub services: Vec<Service>,
    pub volumes: BTreeMap<String, serde_json::Value>,
}

/// Reads `KEY=VALUE` lines (`#` comments, blank lines ignored).
pub fn read_env_file(path: &Path) -> Result<BTreeMap<String, String>, Problem> {
    let text = std::fs::read_to_string(path).map_err(|e| Problem {
        file: path.display().to_string(),
        pos: Pos { line: 1, col: 1 },
        path: String::new(),
        message: format!("cannot read: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) => out.insert(k.trim().to_string(), v.to_string()),
            None => {
                return Err(Problem {
                    file: path.display().to_string(),
                    pos: Pos { line: i + 1, col: 1 },
                    path: String::new(),
                    message: "expected KEY=VALUE".into(),
                })
            }
        };
    }
    Ok(out)
}

fn read(path: &Path, text: Option<&str>, problems: &mut Problems) -> Option<Node> {
    let text = match text.map(|t| Ok(t.to_string())).unwrap_or_else(|| std::fs::read_to_string(path)) {
        Ok(t) => t,
        Err(e) => {
            problems.add(Pos { line: 1, col: 1 }, "", format!("cannot read: {e}"));
            return None;
        }
    };
    match yaml::parse(&text) {
        Ok(n) => Some(n),
        Err(e) => {
            problems.add(e.pos, "", format!("YAML: {}", e.message));
            None
        }
    }
}

/// Loads and checks a stack.
pub fn load(input: &Input) -> Result<Desired, Vec<Problem>> {
    let mut all = Vec::new();
    if !compose::valid_name(&input.stack) {
        all.push(Problem {
            file: "-p".into(),
            pos: Pos { line: 1, col: 1 },
            path: String::new(),
            message: format!(
                "stack name {:?}: 1-63 letters, digits and dashes, not starting or ending with a dash",
                input.stack
            ),
        });
    }
    let lookup = |name: &str| -> Option<String> {
        input
            .answers
            .get(name)
            .or_else(|| input.env_file.get(name))
            .cloned()
            .or_else(|| std::env::var(name).ok())
            .or_else(|| input.defaults.get(name).cloned())
    };
    // Positions in a rendered template are positions in the rendered text: say so.
    let label = match input.compose_text {
        Some(_) => format!("{} (as rendered)", input.compose.display()),
        None => input.compose.display().to_string(),
    };
    let mut cp = Problems::new(label);
    let base = input.compose.parent().unwrap_or(Path::new("."));
    let mut files = StackFiles::default();
    let mut index = Default::default();
    if let Some(mut node) = read(&input.compose, input.compose_text.as_deref(), &mut cp) {
        interpolate(&mut node, &lookup, "", &mut cp);
        let services = if node.get("version").is_some() { node.get("services").cloned() } else { Some(node.clone()) };
        index = services.as_ref().map(yaml::index).unwrap_or_default();
        files = compose::services_of(&node, &input.stack, base, &mut cp);
    }
    if let Some(rpath) = &input.rancher {
        let mut rp = Problems::new(rpath.display().to_string());
        if let Some(mut node) = read(rpath, None, &mut rp) {
            // The catalog block is the template's description, not stack settings: its
            // questions may well contain `$`, and it is not interpolated.
            if let yaml::Value::Map(entries) = &mut node.value {
                entries.retain(|(k, _)| !matches!(k.as_str(), Some("catalog" | ".catalog")));
            }
            interpolate(&mut node, &lookup, "", &mut rp);
            compose::apply_rancher(&node, &mut files, &mut rp);
        }
        all.extend(rp.list);
    }
    compose::assemble(&mut files, &input.stack, &mut cp, &|path| yaml::locate(&index, path));
    all.extend(cp.list);
    if !all.is_empty() {
        all.sort_by(|a, b| (&a.file, a.pos.line, a.pos.col).cmp(&(&b.file, b.pos.line, b.pos.col)));
        return Err(all);
    }
    let mut stack = compose::stack_record(&input.stack);
    if !files.volumes.is_empty() {
        // v2 volume templates travel with the stack (and its history).
        stack.extra.insert("volumes".into(), serde_json::to_value(&files.volumes).unwrap_or_default());
    }
    Ok(Desired { stack, services: files.services, volumes: files.volumes })
}
