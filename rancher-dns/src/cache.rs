//! A bounded cache of forwarded answers that honours TTLs: positive answers for the smallest TTL
//! of their answer records, negative answers (NXDOMAIN, NODATA) for the SOA's negative TTL as
//! RFC 2308 says, and SERVFAIL, REFUSED or answers without an SOA never. When full, expired
//! entries go first (swept at most once a second), then the entry closest to expiry among a
//! sample — one entry, never the whole cache at once, as the original did.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, Record, RecordType};

/// Upper bound for positive answers (one day) and negative ones (three hours, as BIND's
/// `max-ncache-ttl`): an upstream's typo cannot pin an answer for weeks.
pub const MAX_TTL: u32 = 86_400;
pub const MAX_NEGATIVE_TTL: u32 = 10_800;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key {
    pub name: String,
    pub qtype: RecordType,
    /// The upstream list it came from: callers with their own resolvers do not share answers
    /// with callers of other resolvers.
    pub upstreams: Vec<SocketAddr>,
}

/// A forwarded answer, as stored.
#[derive(Debug, Clone)]
pub struct Cached {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

struct Slot {
    value: Cached,
    stored: Instant,
    expires: Instant,
}

pub struct Cache {
    capacity: usize,
    slots: Mutex<HashMap<Key, Slot>>,
    last_sweep: Mutex<Instant>,
}

const EVICTION_SAMPLE: usize = 16;

impl Cache {
    pub fn new(capacity: usize) -> Cache {
        Cache { capacity, slots: Mutex::new(HashMap::new()), last_sweep: Mutex::new(Instant::now()) }
    }

    /// A copy of the entry with TTLs lowered by the time it spent here.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Cached> {
        let mut slots = self.slots.lock().expect("dns cache poisoned");
        let slot = slots.get(key)?;
        if now >= slot.expires {
            slots.remove(key);
            return None;
        }
        let age = now.duration_since(slot.stored).as_secs() as u32;
        let mut v = slot.value.clone();
        for r in v.answers.iter_mut().chain(v.authorities.iter_mut()).chain(v.additionals.iter_mut()) {
            r.decrement_ttl(age);
        }
        Some(v)
    }

    /// Stores an answer if it may be cached; returns whether it was.
    pub fn put(&self, key: Key, value: Cached, now: Instant) -> bool {
        let Some(ttl) = cache_ttl(&value) else { return false };
        if ttl == 0 || self.capacity == 0 {
            return false;
        }
        let mut slots = self.slots.lock().expect("dns cache poisoned");
        if slots.len() >= self.capacity && !slots.contains_key(&key) {
            // Sweep expired entries at most once a second; otherwise evict the soonest to
            // expire among a few entries (hash order is arbitrary enough), so a full cache
            // does not cost a scan of every entry on each insert.
            let mut last = self.last_sweep.lock().expect("dns cache poisoned");
            if now.duration_since(*last) >= Duration::from_secs(1) {
                *last = now;
                slots.retain(|_, s| s.expires > now);
            }
            if slots.len() >= self.capacity {
                let victim = slots.iter().take(EVICTION_SAMPLE).min_by_key(|(_, s)| s.expires).map(|(k, _)| k.clone());
                if let Some(k) = victim {
                    slots.remove(&k);
                }
            }
        }
        slots.insert(key, Slot { value, stored: now, expires: now + Duration::from_secs(u64::from(ttl)) });
        true
    }

    pub fn len(&self) -> usize {
        self.slots.lock().expect("dns cache poisoned").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How long an answer may be kept, or `None` when it must not be.
pub fn cache_ttl(v: &Cached) -> Option<u32> {
    match v.rcode {
        ResponseCode::NoError if !v.answers.is_empty() => v.answers.iter().map(|r| r.ttl).min().map(|t| t.min(MAX_TTL)),
        ResponseCode::NoError | ResponseCode::NXDomain => negative_ttl(&v.authorities),
        _ => None,
    }
}

/// RFC 2308 §5: the lesser of the SOA record's TTL and its MINIMUM field.
fn negative_ttl(authorities: &[Record]) -> Option<u32> {
    authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum).min(MAX_NEGATIVE_TTL)),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, SOA};
    use hickory_proto::rr::Name;

    fn a(ttl: u32) -> Record {
        Record::from_rdata(Name::from_ascii("x.example.").unwrap(), ttl, RData::A(A::new(192, 0, 2, 1)))
    }
    fn soa(ttl: u32, minimum: u32) -> Record {
        let n = Name::from_ascii("example.").unwrap();
        Record::from_rdata(n.clone(), ttl, RData::SOA(SOA::new(n.clone(), n, 1, 60, 10, 600, minimum)))
    }
    fn key(n: &str) -> Key {
        Key { name: n.into(), qtype: RecordType::A, upstreams: vec![] }
    }
    fn cached(rcode: ResponseCode, answers: Vec<Record>, authorities: Vec<Record>) -> Cached {
        Cached { rcode, answers, authorities, additionals: vec![] }
    }

    #[test]
    fn what_may_be_cached() {
        assert_eq!(cache_ttl(&cached(ResponseCode::NoError, vec![a(30), a(20)], vec![])), Some(20));
        assert_eq!(cache_ttl(&cached(ResponseCode::NXDomain, vec![], vec![soa(300, 60)])), Some(60));
        assert_eq!(cache_ttl(&cached(ResponseCode::NoError, vec![], vec![soa(30, 60)])), Some(30));
        assert_eq!(cache_ttl(&cached(ResponseCode::NXDomain, vec![], vec![])), None);
        assert_eq!(cache_ttl(&cached(ResponseCode::ServFail, vec![], vec![soa(30, 60)])), None);
        assert_eq!(cache_ttl(&cached(ResponseCode::Refused, vec![a(30)], vec![])), None);
        assert_eq!(cache_ttl(&cached(ResponseCode::NoError, vec![a(u32::MAX)], vec![])), Some(MAX_TTL));
    }

    #[test]
    fn ttls_count_down_and_expire() {
        let c = Cache::new(10);
        let t0 = Instant::now();
        assert!(c.put(key("x"), cached(ResponseCode::NoError, vec![a(10)], vec![]), t0));
        assert_eq!(c.get(&key("x"), t0 + Duration::from_secs(4)).unwrap().answers[0].ttl, 6);
        assert!(c.get(&key("x"), t0 + Duration::from_secs(10)).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn full_cache_evicts_one_not_all() {
        let c = Cache::new(3);
        let t0 = Instant::now();
        for (i, ttl) in [50, 10, 30].into_iter().enumerate() {
            c.put(key(&i.to_string()), cached(ResponseCode::NoError, vec![a(ttl)], vec![]), t0);
        }
        c.put(key("new"), cached(ResponseCode::NoError, vec![a(40)], vec![]), t0);
        assert_eq!(c.len(), 3);
        assert!(c.get(&key("1"), t0).is_none(), "the entry closest to expiry goes");
        for k in ["0", "2", "new"] {
            assert!(c.get(&key(k), t0).is_some(), "{k} kept");
        }
    }
}
