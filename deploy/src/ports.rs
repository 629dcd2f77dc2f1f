//! Compose port specs (`80`, `8080:80`, `127.0.0.1:8080:80/udp`, `8000-8010:8000-8010`,
//! `127.0.0.1::80`), parsed once for the checks in `compose`, the scheduler's port conflicts and
//! the agent's Docker port bindings.

use std::net::IpAddr;

/// One spec, ranges kept as ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortSpec {
    /// The address the port is published on; none: every address.
    pub host_ip: Option<IpAddr>,
    /// Host ports, `first..=last`; none: not published on a fixed port (Docker picks one, or
    /// the port is only exposed).
    pub host: Option<(u16, u16)>,
    pub container: (u16, u16),
    /// `tcp` or `udp`.
    pub proto: &'static str,
}

impl PortSpec {
    /// Each (container port, host port) pair, ranges expanded.
    pub fn pairs(&self) -> impl Iterator<Item = (u16, Option<u16>)> + '_ {
        (self.container.0..=self.container.1)
            .enumerate()
            .map(|(i, c)| (c, self.host.map(|(first, _)| first + i as u16)))
    }

    /// Fixed host ports as `port/proto` with the address, for conflict checks.
    pub fn published(&self) -> impl Iterator<Item = (Option<IpAddr>, u16, &'static str)> + '_ {
        self.pairs().filter_map(|(_, h)| h.map(|h| (self.host_ip, h, self.proto)))
    }
}

fn range(text: &str, spec: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{spec:?}: ports are numbers from 1 to 65535");
    let num = |s: &str| s.parse::<u16>().ok().filter(|n| *n > 0).ok_or_else(bad);
    match text.split('-').collect::<Vec<_>>().as_slice() {
        [one] => num(one).map(|n| (n, n)),
        [a, b] => {
            let (a, b) = (num(a)?, num(b)?);
            if a > b {
                return Err(format!("{spec:?}: a range goes from the lower port to the higher"));
            }
            Ok((a, b))
        }
        _ => Err(bad()),
    }
}

/// Parses a spec; the error quotes it and says what was expected.
pub fn parse(spec: &str) -> Result<PortSpec, String> {
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((ports, "tcp")) => (ports, "tcp"),
        Some((ports, "udp")) => (ports, "udp"),
        Some(_) => return Err(format!("{spec:?}: protocol must be tcp or udp")),
        None => (spec, "tcp"),
    };
    let parts: Vec<&str> = ports.rsplitn(3, ':').collect();
    let host_ip = match parts.get(2) {
        Some(ip) => Some(
            ip.trim_matches(['[', ']'])
                .parse::<IpAddr>()
                .map_err(|_| format!("{spec:?}: expected [ip:]host_port:container_port"))?,
        ),
        None => None,
    };
    let container = range(parts[0], spec)?;
    let host = match parts.get(1) {
        Some(h) if h.is_empty() && host_ip.is_some() => None, // `ip::80`: any host port on that address
        Some(h) => Some(range(h, spec)?),
        None => None,
    };
    if let Some((a, b)) = host {
        if b - a != container.1 - container.0 {
            return Err(format!("{spec:?}: the host and container ranges must be the same length"));
        }
    }
    Ok(PortSpec { host_ip, host, container, proto })
}

/// Whether two published ports clash on one host: same port and protocol, and either listens
/// on every address or both on the same one.
pub fn clash(a: (Option<IpAddr>, u16, &str), b: (Option<IpAddr>, u16, &str)) -> bool {
    a.1 == b.1 && a.2 == b.2 && (a.0.is_none() || b.0.is_none() || a.0 == b.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let p = parse("127.0.0.1:8080:80/udp").unwrap();
        assert_eq!(p.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((p.host, p.container, p.proto), (Some((8080, 8080)), (80, 80), "udp"));
        assert_eq!(parse("80").unwrap().host, None);
        assert_eq!(parse("127.0.0.1::80").unwrap().host, None);
        let r = parse("8000-8002:9000-9002").unwrap();
        assert_eq!(r.pairs().collect::<Vec<_>>(), [(9000, Some(8000)), (9001, Some(8001)), (9002, Some(8002))]);
        for bad in ["0", "70000", "80/sctp", "a:80", "x:1:2", "1-2-3", "9-8", "8000-8001:80", ":80"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clashes() {
        let any = (None, 8080, "tcp");
        let lo: (Option<IpAddr>, u16, &str) = (Some("127.0.0.1".parse().unwrap()), 8080, "tcp");
        let other: (Option<IpAddr>, u16, &str) = (Some("127.0.0.2".parse().unwrap()), 8080, "tcp");
        assert!(clash(any, lo));
        assert!(!clash(lo, other));
        assert!(!clash(any, (None, 8080, "udp")));
        assert!(!clash(any, (None, 8081, "tcp")));
    }
}
