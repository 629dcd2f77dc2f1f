//! Which containers this host checks, and how: a pure function of a state snapshot.
//!
//! The deploy controller assigns checkers (it writes `health.<uuid>.health_check_hosts`, up to N
//! hosts per container: the container's own host plus others); a checker configures exactly the
//! containers whose record lists its host. One writer decides, so checkers never disagree about
//! who checks what, and a new checker host needs no coordination.

use event_bus::model::{Container, HealthCheck};
use event_bus::Snapshot;

/// One container to check, with the effective check settings (defaults applied).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// HAProxy backend and server name: unique per container and start count, so a restart
    /// starts with fresh HAProxy state, as in Rancher.
    pub name: String,
    pub container_uuid: String,
    pub start_count: u64,
    pub ip: String,
    pub port: u16,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    pub rise: u32,
    pub fall: u32,
    /// `Some(method, uri, version)`: an HTTP check; `None`: a TCP connect check.
    pub http: Option<HttpCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HttpCheck {
    pub method: String,
    pub uri: String,
    pub version: Option<String>,
}

/// Why a container with a health check is not checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Skipped {
    #[error("container {container}: health_check.port is 0")]
    NoPort { container: String },
    #[error("container {container}: no IP address to check (host network, or not placed yet)")]
    NoAddress { container: String },
    #[error("container {container}: health_check.request_line {line:?}: expected METHOD /path [HTTP/1.x] in printable ASCII")]
    BadRequestLine { container: String, line: String },
}

/// The name HAProxy knows a target by: `c_<uuid>_<start count>`, with `=` (allowed in Corral
/// ids, not in HAProxy names) written as `.`.
pub fn server_name(container_uuid: &str, start_count: u64) -> String {
    format!("c_{}_{start_count}", container_uuid.replace('=', "."))
}

/// Parses a request line into what `option httpchk` takes. Refuses anything HAProxy's config
/// parser would read differently from what the user meant: control characters (a newline would
/// inject configuration), quotes, backslashes, `#`, more than three words.
pub fn parse_request_line(line: &str) -> Option<HttpCheck> {
    let ok = |w: &str| w.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b'\'' | b'\\' | b'#'));
    if line.chars().any(|c| c.is_control()) {
        return None;
    }
    let words: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
    match words.as_slice() {
        [m, u] if ok(m) && ok(u) && u.starts_with('/') => {
            Some(HttpCheck { method: m.to_string(), uri: u.to_string(), version: None })
        }
        [m, u, v] if ok(m) && ok(u) && ok(v) && u.starts_with('/') => {
            Some(HttpCheck { method: m.to_string(), uri: u.to_string(), version: Some(v.to_string()) })
        }
        _ => None,
    }
}

/// The check of one container, or why it cannot be checked.
pub fn target(snap: &Snapshot, c: &Container, hc: &HealthCheck) -> Result<Target, Skipped> {
    if hc.port == 0 {
        return Err(Skipped::NoPort { container: c.uuid.clone() });
    }
    // A sidekick sharing its partner's network is reached at the partner's address.
    let ip = match &c.network_from_container_uuid {
        Some(partner) => snap.container(partner).and_then(|p| p.primary_ip.clone()),
        None => c.primary_ip.clone(),
    }
    .filter(|ip| !ip.is_empty())
    .ok_or_else(|| Skipped::NoAddress { container: c.uuid.clone() })?;
    let http = match hc.http_request_line() {
        None => None,
        Some(line) => Some(
            parse_request_line(line)
                .ok_or_else(|| Skipped::BadRequestLine { container: c.uuid.clone(), line: line.to_string() })?,
        ),
    };
    let start_count = snap.status(&c.uuid).map(|s| s.start_count).unwrap_or(0);
    Ok(Target {
        name: server_name(&c.uuid, start_count),
        container_uuid: c.uuid.clone(),
        start_count,
        ip,
        port: hc.port,
        interval_ms: hc.interval_ms(),
        timeout_ms: hc.response_timeout_ms(),
        rise: hc.healthy_threshold_or_default(),
        fall: hc.unhealthy_threshold_or_default(),
        http,
    })
}

/// Whether the container's agent says it is gone or stopped (nothing to check then).
fn not_running(snap: &Snapshot, c: &Container) -> bool {
    snap.status(&c.uuid).is_some_and(|s| matches!(s.state.as_str(), "stopped" | "removed" | "error"))
}

/// The containers `host_uuid` checks, sorted by name, and the ones it should check but cannot
/// (with why).
pub fn select(snap: &Snapshot, host_uuid: &str) -> (Vec<Target>, Vec<Skipped>) {
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for c in snap.containers() {
        let Some(hc) = c.health_check.as_ref() else { continue };
        if c.desired_state != "running" || not_running(snap, c) {
            continue;
        }
        let assigned = snap.health(&c.uuid).is_some_and(|h| h.health_check_hosts.iter().any(|x| x == host_uuid));
        if !assigned {
            continue;
        }
        match target(snap, c, hc) {
            Ok(t) => out.push(t),
            Err(e) => skipped.push(e),
        }
    }
    out.sort();
    (out, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines() {
        let h = parse_request_line("GET /healthz HTTP/1.0").unwrap();
        assert_eq!((h.method.as_str(), h.uri.as_str(), h.version.as_deref()), ("GET", "/healthz", Some("HTTP/1.0")));
        assert!(parse_request_line("GET /").is_some());
        for bad in [
            "healthz",
            "GET healthz",
            "GET /x HTTP/1.0\nHost: a",
            "GET /x\r\n",
            "GET /# HTTP/1.0",
            "GET /x HTTP/1.0 extra",
            "GET /\"x",
        ] {
            assert!(parse_request_line(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn names_are_haproxy_safe() {
        assert_eq!(server_name("ab=c", 3), "c_ab.c_3");
    }
}
