use std::io::Write;

use serde::Serialize;

/// How the CLI prints documents.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    Json,
    Yaml,
}

impl Output {
    /// A whole document (pretty JSON, or a YAML document).
    pub fn print<T: Serialize>(self, v: &T) -> anyhow::Result<()> {
        let text = match self {
            Output::Json => serde_json::to_string_pretty(v)? + "\n",
            Output::Yaml => serde_norway::to_string(v)?,
        };
        write_stdout(&text)
    }

    /// One item of a stream: a JSON line, or a YAML document with its `---` separator.
    pub fn print_line<T: Serialize>(self, v: &T) -> anyhow::Result<()> {
        let text = match self {
            Output::Json => serde_json::to_string(v)? + "\n",
            Output::Yaml => format!("---\n{}", serde_norway::to_string(v)?),
        };
        write_stdout(&text)
    }
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}
