//! Errors in the user's files: every one is collected (not just the first), each with the file,
//! line, column and key path, printed as `file:line:column: path: message`.

use std::fmt;

use crate::yaml::Pos;

#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    pub file: String,
    pub pos: Pos,
    /// Key path, e.g. `services.web.ports[1]`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Position 0 means "this file as a whole" (a catalog or a command-line value).
        let at = if self.pos.line == 0 { String::new() } else { format!(":{}", self.pos) };
        if self.path.is_empty() {
            write!(f, "{}{at}: {}", self.file, self.message)
        } else {
            write!(f, "{}{at}: {}: {}", self.file, self.path, self.message)
        }
    }
}

/// Problems found in one file.
#[derive(Debug, Default)]
pub struct Problems {
    pub file: String,
    pub list: Vec<Problem>,
}

impl Problems {
    pub fn new(file: impl Into<String>) -> Problems {
        Problems { file: file.into(), list: Vec::new() }
    }

    pub fn add(&mut self, pos: Pos, path: &str, message: impl Into<String>) {
        self.list.push(Problem { file: self.file.clone(), pos, path: path.to_string(), message: message.into() });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}
