//! The raw `lb_config.config` text, split into the sections it adds to, as Rancher merged it
//! (healthcheck-lb.md §2.7): `global` and `defaults` lines come first and replace the built-in
//! line with the same key; `frontend <source_port>` and `backend <name>` add to the generated
//! section (`accept-proxy` becomes a bind option, `server $IP <params>` appends the params to
//! every server); a bare `backend` adds to every backend; any other section is appended whole.

use std::collections::BTreeMap;

use crate::error::ConfigError;

const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "userlist",
    "peers",
    "mailers",
    "resolvers",
    "cache",
    "http-errors",
    "ring",
    "program",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Custom {
    pub global: Vec<String>,
    pub defaults: Vec<String>,
    /// By source port.
    pub frontends: BTreeMap<u16, FrontendExtra>,
    /// By backend name.
    pub backends: BTreeMap<String, BackendExtra>,
    /// For every backend (a bare `backend` header).
    pub all_backends: BackendExtra,
    /// Other sections, header first, sorted by header.
    pub other: BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FrontendExtra {
    pub lines: Vec<String>,
    pub accept_proxy: bool,
    /// Line of the header (for "no such port" messages).
    pub line: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendExtra {
    pub lines: Vec<String>,
    /// Params from `server $IP <params>`, added to each server.
    pub server_params: Vec<String>,
    pub line: usize,
}

enum Into_ {
    Global,
    Defaults,
    Frontend(u16),
    Backend(Option<String>),
    Other(String),
}

/// Splits the text into sections. Refuses text before the first section header and a
/// `frontend` that is not a source port.
pub fn parse(text: &str) -> Result<Custom, ConfigError> {
    let mut c = Custom::default();
    let mut cur: Option<Into_> = None;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let starts_section = SECTIONS.contains(&first) && !raw.starts_with([' ', '\t']);
        if starts_section {
            let arg: Vec<&str> = words.collect();
            cur = Some(match first {
                "global" => Into_::Global,
                "defaults" => Into_::Defaults,
                "frontend" => {
                    let port =
                        arg.first().and_then(|p| p.parse::<u16>().ok()).ok_or_else(|| ConfigError::CustomConfig {
                            line: line_no,
                            reason: format!(
                                "{line:?}: generated frontends are named by their source port, e.g. `frontend 80`"
                            ),
                        })?;
                    c.frontends.entry(port).or_default().line = line_no;
                    Into_::Frontend(port)
                }
                "backend" => match arg.first() {
                    Some(name) => {
                        c.backends.entry(name.to_string()).or_default().line = line_no;
                        Into_::Backend(Some(name.to_string()))
                    }
                    None => Into_::Backend(None),
                },
                _ => {
                    let header = line.to_string();
                    c.other.entry(header.clone()).or_default();
                    Into_::Other(header)
                }
            });
            continue;
        }
        let Some(section) = &cur else {
            return Err(ConfigError::CustomConfig {
                line: line_no,
                reason: format!("{line:?} is outside any section (start with `global`, `defaults`, `frontend <port>`, `backend <name>` …)"),
            });
        };
        match section {
            Into_::Global => c.global.push(line.into()),
            Into_::Defaults => c.defaults.push(line.into()),
            Into_::Frontend(p) => {
                let fe = c.frontends.get_mut(p).expect("created with the header");
                if line == "accept-proxy" {
                    fe.accept_proxy = true;
                } else {
                    fe.lines.push(line.into());
                }
            }
            Into_::Backend(name) => {
                let be = match name {
                    Some(n) => c.backends.get_mut(n).expect("created with the header"),
                    None => &mut c.all_backends,
                };
                match line.strip_prefix("server $IP") {
                    Some(params) if params.is_empty() || params.starts_with(char::is_whitespace) => {
                        be.server_params.extend(params.split_whitespace().map(str::to_string))
                    }
                    _ => be.lines.push(line.into()),
                }
            }
            Into_::Other(h) => c.other.get_mut(h).expect("created with the header").push(line.into()),
        }
    }
    Ok(c)
}

/// Built-in lines of `global`/`defaults`, minus those a user line overrides (a user line that
/// starts with the built-in line's key), user lines first, the rest sorted.
pub fn merge(user: &[String], builtin: &[(&str, String)]) -> Vec<String> {
    let mut out: Vec<String> = user.to_vec();
    let mut rest: Vec<String> = builtin
        .iter()
        .filter(|(key, _)| !user.iter().any(|u| u == key || u.starts_with(&format!("{key} "))))
        .map(|(_, line)| line.clone())
        .collect();
    rest.sort();
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_land_where_rancher_put_them() {
        let text = "global\n    maxconn 8000\ndefaults\n  timeout client 1h\nfrontend 80\n  accept-proxy\n  http-request set-header X-A b\nbackend\n  http-request set-header X-All 1\nbackend 80_web\n  server $IP maxconn 10\n  balance leastconn\nlisten stats\n  bind 127.0.0.1:9999\n";
        let c = parse(text).unwrap();
        assert_eq!(c.global, vec!["maxconn 8000"]);
        assert!(c.frontends[&80].accept_proxy);
        assert_eq!(c.frontends[&80].lines, vec!["http-request set-header X-A b"]);
        assert_eq!(c.all_backends.lines, vec!["http-request set-header X-All 1"]);
        assert_eq!(c.backends["80_web"].server_params, vec!["maxconn", "10"]);
        assert_eq!(c.backends["80_web"].lines, vec!["balance leastconn"]);
        assert_eq!(c.other["listen stats"], vec!["bind 127.0.0.1:9999"]);
        let merged =
            merge(&c.global, &[("maxconn", "maxconn 4096".into()), ("hard-stop-after", "hard-stop-after 10m".into())]);
        assert_eq!(merged, vec!["maxconn 8000", "hard-stop-after 10m"]);
        let d = merge(
            &c.defaults,
            &[("timeout client", "timeout client 50s".into()), ("timeout server", "timeout server 50s".into())],
        );
        assert_eq!(d, vec!["timeout client 1h", "timeout server 50s"]);
    }

    #[test]
    fn text_outside_a_section_and_named_frontends_are_refused() {
        assert!(matches!(parse("maxconn 10\n"), Err(ConfigError::CustomConfig { line: 1, .. })));
        assert!(matches!(parse("\nfrontend web\n bind :1\n"), Err(ConfigError::CustomConfig { line: 2, .. })));
    }
}
