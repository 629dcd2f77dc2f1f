//! Local resolution: (answers, caller, name, type) → what to answer. Pure: no I/O, so every naming
//! and search rule is tested here, and the server only turns the outcome into a message.

use std::net::IpAddr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, CNAME, PTR, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::answers::{Answers, Entry, View};

/// CNAME chains longer than this are cut (as the original: 10).
const MAX_CNAME_DEPTH: usize = 10;

/// What the server should send.
#[derive(Debug, PartialEq)]
pub enum Outcome {
    /// NOERROR with authority; `answers` may be empty (NODATA), then `soa` says which zone.
    Local { answers: Vec<Record>, additionals: Vec<Record>, soa: Option<Record> },
    /// The name exists here as a CNAME to a name that does not: answer the chain, then ask the
    /// upstreams for `target` with the same type and append what they say.
    CnameOut { chain: Vec<Record>, target: Name },
    /// NXDOMAIN: the name is under an authoritative zone and nothing matched (`chain`: the
    /// CNAMEs that led there, when a local alias points at a missing name of our zone).
    NxDomain { chain: Vec<Record>, soa: Record },
    /// Not ours: forward.
    Forward,
}

/// How a name is looked up, from flags.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Apply search suffixes only to names with fewer dots than this; 0 = always.
    pub ndots: u32,
    /// Rotate A records on each answer by this amount (round robin).
    pub rotate: usize,
}

/// Finds the entry `qname` (lowercase, trailing dot) means for this caller: the caller's own names
/// and search suffixes first, then the shared names, then the shared search suffixes (on the
/// caller's names, then the shared ones). Returns the
/// entry with the full name that matched.
pub fn find<'a>(
    answers: &'a Answers,
    client: Option<&'a View>,
    qname: &str,
    ndots: u32,
) -> Option<(String, &'a Arc<Entry>)> {
    let searching = ndots == 0 || (dots(qname) as u32) < ndots;
    // Client suffixes are not tried on names already under our zones, as the original.
    let client_suffixes = searching && answers.zone_of(qname).is_none();
    let shared = &answers.default.names;
    // A caller's name may be a link: it answers what the shared name it points to holds.
    let own = |name: &str| -> Option<&'a Arc<Entry>> {
        let e = client?.names.get(name)?;
        match &e.link {
            Some(target) => shared.get(&**target),
            None => Some(e),
        }
    };
    let mut candidate = String::with_capacity(qname.len() + 40);
    if let Some(view) = client {
        if let Some(e) = own(qname) {
            return Some((qname.to_string(), e));
        }
        if client_suffixes {
            for s in view.search.iter() {
                join(&mut candidate, qname, s);
                if let Some(e) = own(&candidate) {
                    return Some((candidate, e));
                }
            }
        }
    }
    if let Some(e) = shared.get(qname) {
        return Some((qname.to_string(), e));
    }
    if let (Some(view), true) = (client, client_suffixes) {
        for s in view.search.iter() {
            join(&mut candidate, qname, s);
            if let Some(e) = shared.get(candidate.as_str()) {
                return Some((candidate, e));
            }
        }
    }
    if searching {
        // The shared suffixes apply to everyone, and to the caller's own names too.
        for s in answers.default.search.iter() {
            join(&mut candidate, qname, s);
            if let Some(e) = own(&candidate).or_else(|| shared.get(candidate.as_str())) {
                return Some((candidate, e));
            }
        }
    }
    None
}

fn join(out: &mut String, qname: &str, suffix: &str) {
    out.clear();
    out.push_str(qname);
    if !qname.ends_with('.') {
        out.push('.');
    }
    out.push_str(suffix);
}

fn dots(name: &str) -> usize {
    name.trim_end_matches('.').matches('.').count()
}

/// Resolves one question. `owner` is the query's own name (its case kept): every record that
/// answers the question directly carries it, even when the match came through a search suffix.
pub fn resolve(answers: &Answers, client_ip: IpAddr, owner: &Name, qtype: RecordType, opts: Options) -> Outcome {
    let mut qname = owner.to_ascii();
    qname.make_ascii_lowercase();
    let client = answers.client(client_ip);
    let Some((matched, entry)) = find(answers, client, &qname, opts.ndots) else {
        if let Some(zone) = answers.zone_of(&qname) {
            if qname == zone {
                // The zone's apex exists: its SOA, and NODATA for anything else.
                let soa = answers.soa(zone);
                return match qtype {
                    RecordType::SOA => Outcome::Local { answers: vec![soa], additionals: vec![], soa: None },
                    _ => Outcome::Local { answers: vec![], additionals: vec![], soa: Some(soa) },
                };
            }
            return Outcome::NxDomain { chain: vec![], soa: answers.soa(zone) };
        }
        return Outcome::Forward;
    };
    let ttl = entry.ttl.unwrap_or(answers.ttl);
    // The SOA of a NODATA answer: only when the name asked is itself in our zone (for `web.`
    // found as `web.app.rancher.internal.` the zone's SOA would be out of bailiwick).
    let soa = || answers.zone_of(&qname).map(|z| answers.soa(z));
    let nodata = || Outcome::Local { answers: vec![], additionals: vec![], soa: soa() };

    match qtype {
        RecordType::A | RecordType::AAAA | RecordType::ANY if entry.cname.is_some() => {
            cname_chain(answers, client, owner, &matched, entry, ttl, qtype, opts)
        }
        RecordType::A if !entry.a.is_empty() => {
            Outcome::Local { answers: a_records(owner, &entry.a, ttl, opts.rotate), additionals: vec![], soa: None }
        }
        RecordType::CNAME if entry.cname.is_some() => {
            let target = entry.cname.clone().expect("checked");
            Outcome::Local {
                answers: vec![record(owner, ttl, RData::CNAME(CNAME(target)))],
                additionals: vec![],
                soa: None,
            }
        }
        RecordType::PTR if entry.ptr.is_some() => {
            let target = entry.ptr.clone().expect("checked");
            Outcome::Local {
                answers: vec![record(owner, ttl, RData::PTR(PTR(target)))],
                additionals: vec![],
                soa: None,
            }
        }
        RecordType::TXT if !entry.txt.is_empty() => Outcome::Local {
            answers: entry.txt.iter().map(|t| record(owner, ttl, RData::TXT(TXT::new(vec![t.clone()])))).collect(),
            additionals: vec![],
            soa: None,
        },
        RecordType::SRV if !entry.srv.is_empty() => {
            let (answers, additionals) = srv_records(owner, entry, ttl, opts.rotate);
            Outcome::Local { answers, additionals, soa: None }
        }
        // RFC 8482: ANY gets what the name holds, not an error.
        RecordType::ANY => {
            let mut out = a_records(owner, &entry.a, ttl, 0);
            if let Some(p) = &entry.ptr {
                out.push(record(owner, ttl, RData::PTR(PTR(p.clone()))));
            }
            out.extend(entry.txt.iter().map(|t| record(owner, ttl, RData::TXT(TXT::new(vec![t.clone()])))));
            let (srv, _) = srv_records(owner, entry, ttl, 0);
            out.extend(srv);
            if out.is_empty() {
                nodata()
            } else {
                Outcome::Local { answers: out, additionals: vec![], soa: None }
            }
        }
        // The name exists: AAAA (never served locally, as the original) and every other type is
        // NODATA, with the SOA so resolvers can cache the absence (RFC 2308).
        _ => nodata(),
    }
}

#[allow(clippy::too_many_arguments)]
fn cname_chain(
    answers: &Answers,
    client: Option<&View>,
    owner: &Name,
    matched: &str,
    first: &Arc<Entry>,
    ttl: u32,
    qtype: RecordType,
    opts: Options,
) -> Outcome {
    let mut chain = Vec::new();
    let mut current_owner = owner.clone();
    let mut entry = first.clone();
    // The name we started from counts as seen: a CNAME to itself is a loop of one.
    let mut seen = vec![matched.to_string()];
    loop {
        let Some(target) = entry.cname.clone() else {
            // The chain ended on a local name holding addresses.
            let mut out = chain;
            match qtype {
                RecordType::A | RecordType::ANY => {
                    out.extend(a_records(&current_owner, &entry.a, entry.ttl.unwrap_or(ttl), opts.rotate))
                }
                _ => {}
            }
            return Outcome::Local { answers: out, additionals: vec![], soa: None };
        };
        chain.push(record(&current_owner, entry.ttl.unwrap_or(ttl), RData::CNAME(CNAME(target.clone()))));
        let key = target.to_lowercase().to_ascii();
        if seen.contains(&key) || chain.len() > MAX_CNAME_DEPTH {
            // A loop or an absurd chain: answer what we have rather than spin.
            return Outcome::Local { answers: chain, additionals: vec![], soa: None };
        }
        let next = client.and_then(|v| v.names.get(key.as_str())).or_else(|| answers.default.names.get(key.as_str()));
        match next {
            Some(e) => {
                seen.push(key);
                entry = e.clone();
                current_owner = target;
            }
            None => match answers.zone_of(&key) {
                // An alias into our own zone that leads nowhere: NXDOMAIN, not a forward.
                Some(zone) => return Outcome::NxDomain { chain, soa: answers.soa(zone) },
                None => return Outcome::CnameOut { chain, target },
            },
        }
    }
}

fn record(owner: &Name, ttl: u32, data: RData) -> Record {
    Record::from_rdata(owner.clone(), ttl, data)
}

fn a_records(owner: &Name, ips: &[std::net::Ipv4Addr], ttl: u32, rotate: usize) -> Vec<Record> {
    let n = ips.len();
    (0..n).map(|i| record(owner, ttl, RData::A(A(ips[(i + rotate) % n])))).collect()
}

fn srv_records(owner: &Name, entry: &Entry, ttl: u32, rotate: usize) -> (Vec<Record>, Vec<Record>) {
    let n = entry.srv.len();
    let mut answers = Vec::with_capacity(n);
    let mut glue = Vec::with_capacity(n);
    for i in 0..n {
        let t = &entry.srv[(i + rotate) % n.max(1)];
        answers.push(record(owner, ttl, RData::SRV(SRV::new(0, 1, t.port, t.target.clone()))));
        if let Some(ip) = t.addr {
            glue.push(record(&t.target, ttl, RData::A(A(ip))));
        }
    }
    (answers, glue)
}
