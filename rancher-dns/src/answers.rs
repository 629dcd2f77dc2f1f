//! One generation of answers: every name the server knows, for every caller.
//!
//! Both sources produce this shape: the state cache (see [`crate::naming`]) and the original
//! `answers.json` file (see [`crate::file`]). It mirrors the original's model: a `default` view
//! holding every name, plus one view per caller IP with its own search list, upstreams and extra
//! names (links).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use hickory_proto::rr::rdata::SOA;
use hickory_proto::rr::{Name, RData, Record};
use rustc_hash::FxBuildHasher;

/// The namespace Rancher 1.6 served: `<service>.<stack>.rancher.internal.` and friends.
pub const ZONE: &str = "rancher.internal.";

/// A generation of answers, swapped in whole when the state changes.
#[derive(Debug, Default)]
pub struct Answers {
    /// SOA serial of the authoritative zones: the environment's version.
    pub serial: u32,
    /// TTL of local records that do not set their own, and of the SOA.
    pub ttl: u32,
    /// Zones answered with authority: a miss under one of them is NXDOMAIN with its SOA.
    /// Lowercase, with the trailing dot.
    pub authoritative: Vec<Box<str>>,
    pub default: View,
    /// Per-caller views. Shared between generations when only statuses or health changed: they
    /// depend on containers, services and stacks alone (links name their target instead of
    /// copying its records).
    pub clients: Arc<Clients>,
    /// The SOA record of each authoritative zone, made on first use.
    pub soa_records: std::sync::OnceLock<Vec<Record>>,
}

pub type Names = HashMap<Arc<str>, Arc<Entry>, FxBuildHasher>;
pub type Clients = HashMap<IpAddr, View, FxBuildHasher>;

/// What one caller (or everyone, for `default`) sees.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct View {
    /// Server-side search suffixes, lowercase, with the trailing dot (`app.rancher.internal.`).
    pub search: Arc<[Box<str>]>,
    /// Upstream resolvers for names that are not local, before the defaults.
    pub recurse: Arc<[SocketAddr]>,
    /// Names, lowercase, with the trailing dot.
    pub names: Names,
}

/// Everything a name holds. A name that exists with no record of the asked type is NODATA.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Entry {
    pub a: Vec<Ipv4Addr>,
    pub cname: Option<Name>,
    pub ptr: Option<Name>,
    pub txt: Vec<String>,
    pub srv: Vec<SrvTarget>,
    /// Overrides the answers' TTL for this name (answers file only).
    pub ttl: Option<u32>,
    /// A link: this name answers whatever the shared name `link` holds at the time of the question.
    pub link: Option<Box<str>>,
}

/// One SRV answer: a container name and port, with its address as glue.
#[derive(Debug, Clone, PartialEq)]
pub struct SrvTarget {
    pub port: u16,
    pub target: Name,
    pub addr: Option<Ipv4Addr>,
}

impl Answers {
    /// The authoritative zone `name` (lowercase, trailing dot) lies in, if any.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        self.authoritative
            .iter()
            .find(|z| {
                name == &***z
                    || (name.len() > z.len()
                        && name.ends_with(&***z)
                        && name.as_bytes()[name.len() - z.len() - 1] == b'.')
            })
            .map(|z| &**z)
    }

    /// The SOA record of zone `zone` (one of `authoritative`) with this generation's serial.
    pub fn soa(&self, zone: &str) -> Record {
        let records = self.soa_records.get_or_init(|| self.authoritative.iter().map(|z| self.make_soa(z)).collect());
        match self.authoritative.iter().position(|z| &**z == zone) {
            Some(i) => records[i].clone(),
            None => self.make_soa(zone),
        }
    }

    fn make_soa(&self, zone: &str) -> Record {
        let origin = Name::from_ascii(zone).unwrap_or_else(|_| Name::root());
        // Refresh, retry and expire as the original; `minimum` (the negative-caching TTL) follows
        // `--ttl`, so a name that appears is not hidden behind a cached NXDOMAIN for longer than
        // a positive answer would be cached.
        let soa = SOA::new(origin.clone(), origin.clone(), self.serial, 60, 10, 86400, self.ttl);
        Record::from_rdata(origin, self.ttl, RData::SOA(soa))
    }

    pub fn client(&self, ip: IpAddr) -> Option<&View> {
        self.clients.get(&ip).or_else(|| match ip {
            // A caller on an IPv4-mapped IPv6 socket is the IPv4 caller.
            IpAddr::V6(v6) => v6.to_ipv4_mapped().and_then(|v4| self.clients.get(&IpAddr::V4(v4))),
            IpAddr::V4(_) => None,
        })
    }
}

/// `10.42.1.5` → `5.1.42.10.in-addr.arpa.`
pub fn reverse_name(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("{d}.{c}.{b}.{a}.in-addr.arpa.")
}

/// Lowercases and appends the trailing dot.
pub fn fqdn(name: &str) -> String {
    let mut s = name.trim().to_ascii_lowercase();
    if !s.ends_with('.') {
        s.push('.');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_membership_is_by_label() {
        let a = Answers { authoritative: vec!["rancher.internal.".into()], ..Default::default() };
        assert_eq!(a.zone_of("web.app.rancher.internal."), Some("rancher.internal."));
        assert_eq!(a.zone_of("rancher.internal."), Some("rancher.internal."));
        assert_eq!(a.zone_of("notrancher.internal."), None);
        assert_eq!(a.zone_of("internal."), None);
    }

    #[test]
    fn reverse_names() {
        assert_eq!(reverse_name("10.42.1.5".parse().unwrap()), "5.1.42.10.in-addr.arpa.");
        assert_eq!(fqdn("Web.App"), "web.app.");
    }
}
