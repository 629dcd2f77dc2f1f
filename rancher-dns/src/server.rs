//! The hickory-server handler: checks the question, resolves it locally or forwards it, and turns
//! the outcome into a message (EDNS echoed, truncation by hickory's encoder).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use hickory_proto::op::{Edns, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;

use crate::answers::Answers;
use crate::forward::{Forwarder, Guard};
use crate::metrics::{DnsMetrics, Source};
use crate::resolve::{self, Options, Outcome};

/// The largest UDP answer we send, whatever the client advertises (RFC 6891 leaves it to us).
const MAX_UDP_PAYLOAD: u16 = 4096;

/// What the handler reads on every query; swapped whole when the answers change.
pub struct Shared {
    answers: ArcSwap<Answers>,
    loaded: std::sync::atomic::AtomicBool,
    forwarder: Arc<Forwarder>,
    /// Upstreams for callers without their own (flags or resolv.conf), already filtered.
    default_upstreams: Vec<SocketAddr>,
    guard: Guard,
    ndots: u32,
    rotate: AtomicUsize,
    pub metrics: DnsMetrics,
}

impl Shared {
    pub fn new(
        forwarder: Arc<Forwarder>,
        default_upstreams: Vec<SocketAddr>,
        guard: Guard,
        ndots: u32,
        metrics: DnsMetrics,
    ) -> Arc<Shared> {
        Arc::new(Shared {
            answers: ArcSwap::from_pointee(Answers::default()),
            loaded: Default::default(),
            forwarder,
            default_upstreams,
            guard,
            ndots,
            rotate: AtomicUsize::new(0),
            metrics,
        })
    }

    /// Swaps in a new generation of answers.
    pub fn publish(&self, answers: Answers) {
        self.metrics.names.set(answers.default.names.len() as i64);
        self.metrics.generations.inc();
        self.answers.store(Arc::new(answers));
        self.loaded.store(true, Ordering::Release);
    }

    pub fn answers(&self) -> Arc<Answers> {
        self.answers.load_full()
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(Ordering::Acquire)
    }

    /// The caller's own resolvers, then the defaults (the answers file's, or else the flags'),
    /// without repeats and without anything the loop guard forbids.
    fn upstreams(&self, answers: &Answers, client: std::net::IpAddr) -> Vec<SocketAddr> {
        let own = answers.client(client).map(|v| self.guard.filter(&v.recurse)).unwrap_or_default();
        let defaults = if answers.default.recurse.is_empty() {
            self.default_upstreams.clone()
        } else {
            self.guard.filter(&answers.default.recurse)
        };
        let mut out: Vec<SocketAddr> = Vec::with_capacity(own.len() + defaults.len());
        for a in own.into_iter().chain(defaults) {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        out
    }
}

#[derive(Clone)]
pub struct Handler(pub Arc<Shared>);

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut rh: R) -> ResponseInfo {
        let started = Instant::now();
        let shared = &self.0;
        let queries = request.queries.queries();
        let qtype = queries.first().map(|q| q.query_type()).unwrap_or(RecordType::Unknown(0));

        let mut edns_out = None;
        if let Some(edns) = &request.edns {
            let mut e = Edns::new();
            e.set_max_payload(edns.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            edns_out = Some(e);
        }
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(e) = &edns_out {
            builder.edns(e);
        }
        let mut md = Metadata::response_from_request(&request.metadata);
        md.recursion_available = true;

        // Questions we do not take.
        let reject = if request.metadata.op_code != OpCode::Query {
            Some(ResponseCode::NotImp)
        } else if request.edns.as_ref().is_some_and(|e| e.version() > 0) {
            Some(ResponseCode::BADVERS)
        } else if queries.len() != 1 {
            // Nobody sends several questions in one message (RFC 9619): FORMERR, as BIND.
            Some(ResponseCode::FormErr)
        } else if queries[0].query_class() != DNSClass::IN {
            Some(ResponseCode::NotImp)
        } else if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            // Zone transfers are not offered (the names differ per caller anyway).
            Some(ResponseCode::Refused)
        } else {
            None
        };
        if let Some(code) = reject {
            md.response_code = code;
            md.recursion_available = false;
            let info =
                send(&mut rh, request, builder.build(md, None.iter(), None.iter(), None.iter(), None.iter())).await;
            shared.metrics.query(qtype, code, Source::Rejected, started.elapsed());
            return info;
        }

        let query = queries[0].original();
        let owner = query.name();
        let answers = shared.answers.load();
        let src = request.src().ip();
        let opts = Options { ndots: shared.ndots, rotate: shared.rotate.fetch_add(1, Ordering::Relaxed) };
        let outcome = resolve::resolve(&answers, src, owner, qtype, opts);

        let (source, info) = match outcome {
            Outcome::Local { answers: ans, additionals, soa } => {
                md.authoritative = true;
                let resp = builder.build(md, ans.iter(), None.iter(), soa.iter(), additionals.iter());
                (Source::Local, send(&mut rh, request, resp).await)
            }
            Outcome::NxDomain { chain, soa } => {
                md.authoritative = true;
                md.response_code = ResponseCode::NXDomain;
                let resp = builder.build(md, chain.iter(), None.iter(), std::iter::once(&soa), None.iter());
                (Source::Local, send(&mut rh, request, resp).await)
            }
            Outcome::CnameOut { chain, target } => {
                // We own the alias; what it points to is the upstreams' to say.
                md.authoritative = true;
                let upstreams = shared.upstreams(&answers, src);
                let rest = match upstreams.is_empty() {
                    true => None,
                    false => shared.forwarder.forward(&target, qtype, &upstreams).await,
                };
                let mut all: Vec<Record> = chain;
                if let Some(f) = &rest {
                    md.response_code = f.answer.rcode;
                    all.extend(f.answer.answers.iter().cloned());
                }
                let resp = builder.build(md, all.iter(), None.iter(), None.iter(), None.iter());
                (Source::Forwarded, send(&mut rh, request, resp).await)
            }
            Outcome::Forward => {
                let upstreams = shared.upstreams(&answers, src);
                let forwarded = match upstreams.is_empty() {
                    true => None,
                    false => shared.forwarder.forward(owner, qtype, &upstreams).await,
                };
                match forwarded {
                    Some(f) => {
                        md.response_code = f.answer.rcode;
                        let a = &f.answer;
                        let resp = builder.build(
                            md,
                            a.answers.iter(),
                            a.authorities.iter(),
                            None.iter(),
                            a.additionals.iter(),
                        );
                        (Source::Forwarded, send(&mut rh, request, resp).await)
                    }
                    None => {
                        if upstreams.is_empty() {
                            tracing::debug!(name = %owner, "no upstream resolver to forward to");
                        }
                        md.response_code = ResponseCode::ServFail;
                        let resp = builder.build(md, None.iter(), None.iter(), None.iter(), None.iter());
                        (Source::Forwarded, send(&mut rh, request, resp).await)
                    }
                }
            }
        };
        shared.metrics.query(qtype, info.response_code, source, started.elapsed());
        info
    }
}

async fn send<'a, R: ResponseHandler>(
    rh: &mut R,
    request: &Request,
    response: hickory_server::zone_handler::MessageResponse<
        '_,
        'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
        impl Iterator<Item = &'a Record> + Send + 'a,
    >,
) -> ResponseInfo {
    match rh.send_response(response).await {
        Ok(info) => info,
        Err(e) => {
            tracing::debug!(error = %e, src = %request.src(), "sending the answer failed");
            let mut md = Metadata::response_from_request(&request.metadata);
            md.response_code = ResponseCode::ServFail;
            ResponseInfo::from(hickory_proto::op::Header { metadata: md, counts: Default::default() })
        }
    }
}

/// Binds UDP and TCP on `addr`. Each of the `udp_sockets` UDP sockets (sharing the port with
/// SO_REUSEPORT, so the kernel spreads callers over them) is served by [`crate::udp::serve`] on
/// its own thread with a single-threaded runtime: a question is received, answered and sent on
/// one thread, without cross-thread wake-ups per packet. TCP is served by hickory's `Server` on
/// the caller's runtime. Returns the TCP server (shut it down to stop) and the bound address.
pub async fn bind(
    addr: SocketAddr,
    handler: Handler,
    udp_sockets: usize,
) -> std::io::Result<(Server<Handler>, SocketAddr)> {
    // SO_REUSEPORT would let us join a port another process already serves, and share its
    // questions with it without a word: make sure the port is free first.
    let addr = {
        let probe = std::net::UdpSocket::bind(addr)?;
        probe.local_addr()?
    };
    let first = udp_socket(addr)?;
    let local = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..udp_sockets.max(1) {
        sockets.push(udp_socket(local)?);
    }
    for (i, socket) in sockets.into_iter().enumerate() {
        let handler = handler.clone();
        std::thread::Builder::new().name(format!("dns-udp-{i}")).spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(error = %e, "cannot start a UDP worker");
                    return;
                }
            };
            rt.block_on(async move {
                match tokio::net::UdpSocket::from_std(socket) {
                    Ok(socket) => crate::udp::serve(socket, handler).await,
                    Err(e) => tracing::error!(error = %e, "cannot register a UDP socket"),
                }
            });
        })?;
    }
    let mut server = Server::new(handler);
    let tcp = tcp_listener(local)?;
    server.register_listener(tcp, Duration::from_secs(5), 64);
    Ok((server, local))
}

fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    let domain = if addr.is_ipv4() { socket2::Domain::IPV4 } else { socket2::Domain::IPV6 };
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    // Room for bursts: dnsperf and busy hosts send faster than one wake-up drains.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into())?;
    Ok(s.into())
}

fn tcp_listener(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
