//! Forwarding to upstream resolvers: one try per upstream in order, each bounded by
//! `--recurser-timeout`; UDP first and TCP when the UDP answer is truncated; the next upstream
//! on a timeout, a network error, SERVFAIL, REFUSED, FORMERR or NOTIMP (an upstream that rejects
//! our EDNS query, say); answers cached per [`crate::cache`].

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::cache::{Cache, Cached, Key};
use crate::metrics::DnsMetrics;

/// Our advertised UDP size towards upstreams (the DNS Flag Day 2020 value).
const UPSTREAM_UDP_SIZE: u16 = 1232;

/// Which upstreams may be used: never our own address, never the `--never-recurse-to`
/// addresses, and no loopback resolver on port 53 unless the operator named it in `--upstream`
/// (in a container, `127.0.0.11:53` or a local stub would send the question straight back).
#[derive(Debug, Clone, Default)]
pub struct Guard {
    pub never: HashSet<IpAddr>,
    pub own: Vec<SocketAddr>,
}

impl Guard {
    /// Filters a list from state, an answers file or resolv.conf.
    pub fn filter(&self, list: &[SocketAddr]) -> Vec<SocketAddr> {
        list.iter().copied().filter(|a| self.allowed(a) && !(a.ip().is_loopback() && a.port() == 53)).collect()
    }

    /// Filters the operator's own `--upstream` list.
    pub fn filter_explicit(&self, list: &[SocketAddr]) -> Vec<SocketAddr> {
        list.iter().copied().filter(|a| self.allowed(a)).collect()
    }

    fn allowed(&self, a: &SocketAddr) -> bool {
        !self.never.contains(&a.ip())
            && !self
                .own
                .iter()
                .any(|o| o == a || (o.port() == a.port() && o.ip().is_unspecified() && a.ip().is_loopback()))
    }
}

pub struct Forwarder {
    timeout: Duration,
    cache: Cache,
    metrics: DnsMetrics,
}

#[derive(Debug)]
pub struct Forwarded {
    pub answer: Cached,
    pub from_cache: bool,
}

#[derive(Debug, thiserror::Error)]
enum TryError {
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bad answer: {0}")]
    Proto(String),
}

impl Forwarder {
    pub fn new(timeout: Duration, cache_capacity: usize, metrics: DnsMetrics) -> Arc<Forwarder> {
        Arc::new(Forwarder { timeout, cache: Cache::new(cache_capacity), metrics })
    }

    /// Asks the upstreams, in order, for `name`/`qtype`. `None` when every upstream failed
    /// without answering (the caller answers SERVFAIL). A SERVFAIL or REFUSED from the last
    /// upstream that answered is returned as is, and not cached.
    pub async fn forward(&self, name: &Name, qtype: RecordType, upstreams: &[SocketAddr]) -> Option<Forwarded> {
        let key = Key { name: name.to_lowercase().to_ascii(), qtype, upstreams: upstreams.to_vec() };
        if let Some(answer) = self.cache.get(&key, Instant::now()) {
            self.metrics.cache_hits.inc();
            return Some(Forwarded { answer, from_cache: true });
        }
        self.metrics.cache_misses.inc();
        let mut last_refusal = None;
        for upstream in upstreams {
            let started = Instant::now();
            match self.exchange(name, qtype, *upstream).await {
                Ok(msg) => {
                    self.metrics.upstream(upstream, started.elapsed());
                    let answer = Cached {
                        rcode: msg.metadata.response_code,
                        answers: msg.answers,
                        authorities: msg.authorities,
                        additionals: msg.additionals,
                    };
                    match answer.rcode {
                        ResponseCode::ServFail
                        | ResponseCode::Refused
                        | ResponseCode::FormErr
                        | ResponseCode::NotImp => {
                            let reason = match answer.rcode {
                                ResponseCode::ServFail => "servfail",
                                ResponseCode::Refused => "refused",
                                ResponseCode::FormErr => "formerr",
                                _ => "notimp",
                            };
                            self.metrics.upstream_failure(upstream, reason);
                            tracing::debug!(%upstream, %name, rcode = %answer.rcode, "upstream refused; trying the next");
                            last_refusal = Some(answer);
                        }
                        _ => {
                            if self.cache.put(key, answer.clone(), Instant::now()) {
                                self.metrics.cache_entries.set(self.cache.len() as i64);
                            }
                            return Some(Forwarded { answer, from_cache: false });
                        }
                    }
                }
                Err(e) => {
                    let reason = match e {
                        TryError::Timeout => "timeout",
                        _ => "error",
                    };
                    self.metrics.upstream_failure(upstream, reason);
                    tracing::debug!(%upstream, %name, error = %e, "upstream failed; trying the next");
                }
            }
        }
        last_refusal.map(|answer| Forwarded { answer, from_cache: false })
    }

    async fn exchange(&self, name: &Name, qtype: RecordType, upstream: SocketAddr) -> Result<Message, TryError> {
        let mut query = Message::query();
        query.metadata.recursion_desired = true;
        query.add_query(Query::query(name.clone(), qtype));
        let mut edns = Edns::new();
        edns.set_max_payload(UPSTREAM_UDP_SIZE);
        query.set_edns(edns);
        let bytes = query.to_vec().map_err(|e| TryError::Proto(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + self.timeout;

        let reply =
            tokio::time::timeout_at(deadline, udp(&bytes, &query, upstream)).await.map_err(|_| TryError::Timeout)??;
        if !reply.metadata.truncation {
            return Ok(reply);
        }
        // Truncated: the whole answer over TCP, within the same time budget.
        tokio::time::timeout_at(deadline, tcp(&bytes, &query, upstream)).await.map_err(|_| TryError::Timeout)?
    }
}

fn matches(query: &Message, reply: &Message) -> bool {
    reply.metadata.id == query.metadata.id && reply.queries == query.queries
}

async fn udp(bytes: &[u8], query: &Message, upstream: SocketAddr) -> Result<Message, TryError> {
    let local: SocketAddr = if upstream.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
    // A fresh socket (random source port) per question, connected so only the upstream's
    // datagrams are read.
    let socket = UdpSocket::bind(local).await?;
    socket.connect(upstream).await?;
    socket.send(bytes).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        match Message::from_vec(&buf[..n]) {
            Ok(reply) if matches(query, &reply) => return Ok(reply),
            // Someone else's datagram or garbage: keep waiting for ours until the deadline.
            _ => continue,
        }
    }
}

async fn tcp(bytes: &[u8], query: &Message, upstream: SocketAddr) -> Result<Message, TryError> {
    let mut stream = TcpStream::connect(upstream).await?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await?;
    loop {
        let len = stream.read_u16().await? as usize;
        let mut buf = vec![0u8; len];
        stream.read_exact(&mut buf).await?;
        let reply = Message::from_vec(&buf).map_err(|e| TryError::Proto(e.to_string()))?;
        if matches(query, &reply) {
            return Ok(reply);
        }
    }
}

/// The `nameserver` lines of a resolv.conf, as addresses.
pub fn resolv_conf_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|ns| ns.split('%').next().and_then(|ip| ip.parse::<IpAddr>().ok()))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loop_guards() {
        let g = Guard {
            never: ["169.254.169.250".parse().unwrap()].into(),
            own: vec!["127.0.0.1:5353".parse().unwrap(), "0.0.0.0:53".parse().unwrap()],
        };
        let list: Vec<SocketAddr> =
            ["169.254.169.250:53", "127.0.0.11:53", "127.0.0.1:5353", "127.0.0.1:5300", "10.0.0.2:53"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect();
        let kept = |v: Vec<SocketAddr>| v.iter().map(|a| a.to_string()).collect::<Vec<_>>();
        assert_eq!(kept(g.filter(&list)), ["127.0.0.1:5300", "10.0.0.2:53"]);
        // The operator may name a loopback resolver on port 53, but never us.
        let explicit: Vec<SocketAddr> = vec!["127.0.0.53:53".parse().unwrap(), "127.0.0.1:5353".parse().unwrap()];
        assert_eq!(
            kept(g.filter_explicit(&explicit)),
            Vec::<String>::new(),
            "0.0.0.0:53 is us on every loopback address"
        );
    }

    #[test]
    fn resolv_conf() {
        let text = "# comment\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nsearch example.com\nnameserver bogus\n";
        let ns = resolv_conf_nameservers(text);
        assert_eq!(ns.len(), 2);
        assert_eq!(ns[0], "10.0.0.2:53".parse().unwrap());
    }
}
