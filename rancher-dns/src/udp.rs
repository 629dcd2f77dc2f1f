//! The UDP loop: hickory-server's request parsing, handler and response encoding, with a thinner
//! transport than its `Server` for the packet path. hickory's loop makes two system calls and a
//! task per datagram and hands every answer to a channel that another task writes out; here up to
//! 32 questions are read with one `recvmmsg`, each one whose answer is local (nearly all) is
//! parsed, answered and queued without leaving the loop, and the answers leave with one
//! `sendmmsg`. Only a question that must wait for an upstream becomes a task of its own, and
//! sends its answer itself.

use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use hickory_proto::op::{Header, Message, MessageType, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder, BinEncoder};
use hickory_server::net::runtime::TokioTime;
use hickory_server::net::xfer::Protocol;
use hickory_server::net::NetError;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponse;
use tokio::io::Interest;
use tokio::net::UdpSocket;

use crate::server::Handler;

const BATCH: usize = 32;
/// Questions are small; a datagram longer than this is not one we answer.
const MAX_QUESTION: usize = 4096;

/// Answers produced while a batch is being handled, sent together at its end.
struct Outbox {
    open: AtomicBool,
    queue: Mutex<Vec<(Vec<u8>, SocketAddr)>>,
}

/// Serves one UDP socket until the process ends.
pub async fn serve(socket: UdpSocket, handler: Handler) {
    let socket = Arc::new(socket);
    let mut batch = RecvBatch::new();
    let outbox = Arc::new(Outbox { open: AtomicBool::new(false), queue: Mutex::new(Vec::with_capacity(BATCH)) });
    let mut sending = Vec::with_capacity(BATCH);
    loop {
        let n = match batch.recv(&socket).await {
            Ok(n) => n,
            Err(e) => {
                // ICMP errors from earlier sends surface here; they concern another client.
                tracing::debug!(error = %e, "udp receive error");
                continue;
            }
        };
        outbox.open.store(true, Ordering::Relaxed);
        for i in 0..n {
            let Some((packet, src)) = batch.get(i) else { continue };
            if src.port() == 0 || src.ip().is_unspecified() {
                continue; // nowhere to answer
            }
            let request = match Request::from_bytes(packet.to_vec(), src, Protocol::Udp) {
                Ok(r) => r,
                Err(_) => {
                    form_error(&outbox, packet, src);
                    continue;
                }
            };
            if request.metadata.message_type == MessageType::Response {
                continue; // never answer answers (reflection)
            }
            let responder = Responder { socket: socket.clone(), dst: src, outbox: outbox.clone() };
            let handler = handler.clone();
            let mut answer: Pin<Box<dyn std::future::Future<Output = ()> + Send>> = Box::pin(async move {
                handler.handle_request::<_, TokioTime>(&request, responder).await;
            });
            // A local answer completes on this first poll. A future that is not done (waiting
            // for an upstream) continues as a task, which polls it again with its own waker, as
            // the Future contract allows.
            if answer.as_mut().poll(&mut Context::from_waker(Waker::noop())) == Poll::Pending {
                tokio::spawn(answer);
            }
        }
        outbox.open.store(false, Ordering::Relaxed);
        std::mem::swap(&mut sending, &mut *outbox.queue.lock().expect("outbox poisoned"));
        send_batch(&socket, &sending).await;
        sending.clear();
    }
}

/// A datagram that is not a DNS message: FORMERR if there is at least a header to answer to,
/// silence otherwise (as hickory's own loop).
fn form_error(outbox: &Outbox, packet: &[u8], src: SocketAddr) {
    let Ok(header) = Header::read(&mut BinDecoder::new(packet)) else { return };
    if header.metadata.message_type == MessageType::Response {
        return;
    }
    let reply = Message::error_msg(header.metadata.id, header.metadata.op_code, ResponseCode::FormErr);
    if let Ok(bytes) = reply.to_vec() {
        outbox.queue.lock().expect("outbox poisoned").push((bytes, src));
    }
}

#[derive(Clone)]
struct Responder {
    socket: Arc<UdpSocket>,
    dst: SocketAddr,
    outbox: Arc<Outbox>,
}

#[async_trait::async_trait]
impl ResponseHandler for Responder {
    async fn send_response<'a>(
        &mut self,
        response: MessageResponse<
            '_,
            'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
            impl Iterator<Item = &'a Record> + Send + 'a,
        >,
    ) -> Result<ResponseInfo, NetError> {
        // RFC 6891: at most what the client advertised, 512 bytes without EDNS; records that do
        // not fit are left out and TC is set.
        let max = response.edns().map(|e| e.max_payload().max(512)).unwrap_or(512);
        let edns = response.edns().cloned();
        let id = response.metadata().id;
        let op_code = response.metadata().op_code;
        let mut bytes = Vec::with_capacity(512);
        let mut encoder = BinEncoder::new(&mut bytes);
        encoder.set_max_size(max);
        let info = match response.destructive_emit(&mut encoder) {
            Ok(info) => info,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode an answer; sending SERVFAIL");
                let reply = Message::error_msg(id, op_code, ResponseCode::ServFail);
                bytes = reply.to_vec().map_err(NetError::from)?;
                let mut decoder = BinDecoder::new(&bytes);
                ResponseInfo::from(Header::read(&mut decoder).map_err(NetError::from)?)
            }
        };
        if info.truncation && edns.is_some() {
            bytes = truncated_with_opt(&bytes, edns.as_ref()).unwrap_or(bytes);
        }
        if self.outbox.open.load(Ordering::Relaxed) {
            self.outbox.queue.lock().expect("outbox poisoned").push((bytes, self.dst));
            return Ok(info);
        }
        match self.socket.try_send_to(&bytes, self.dst) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                self.socket.send_to(&bytes, self.dst).await?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(info)
    }
}

/// hickory writes the OPT record last, so an answer cut at the client's size loses it, which
/// RFC 6891 forbids. A truncated answer is sent as the question, TC and the OPT record alone:
/// the client asks again over TCP and gets everything.
fn truncated_with_opt(bytes: &[u8], edns: Option<&hickory_proto::op::Edns>) -> Option<Vec<u8>> {
    let mut msg = Message::from_vec(bytes).ok()?;
    msg.answers.clear();
    msg.authorities.clear();
    msg.additionals.clear();
    msg.metadata.truncation = true;
    if let Some(e) = edns {
        msg.set_edns(e.clone());
    }
    msg.to_vec().ok()
}

/// Buffers for one `recvmmsg`.
struct RecvBatch {
    bufs: Box<[[u8; MAX_QUESTION]]>,
    addrs: Box<[libc::sockaddr_storage]>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
}

impl RecvBatch {
    fn new() -> RecvBatch {
        RecvBatch {
            bufs: vec![[0u8; MAX_QUESTION]; BATCH].into_boxed_slice(),
            // SAFETY: sockaddr_storage is plain data; all zeroes is a valid (empty) value.
            addrs: (0..BATCH).map(|_| unsafe { zeroed() }).collect(),
            lens: [0; BATCH],
            truncated: [false; BATCH],
        }
    }

    /// Waits for datagrams and reads as many as are there (at most `BATCH`).
    async fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        loop {
            socket.readable().await?;
            match socket.try_io(Interest::READABLE, || self.recvmmsg(socket.as_raw_fd())) {
                Ok(n) => return Ok(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn recvmmsg(&mut self, fd: i32) -> std::io::Result<usize> {
        // SAFETY: plain C structs, zero is valid for all of them.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for i in 0..BATCH {
            iov[i] = libc::iovec { iov_base: self.bufs[i].as_mut_ptr().cast(), iov_len: MAX_QUESTION };
            msgs[i].msg_hdr.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: every pointer in `msgs` points into buffers that outlive the call, with the
        // lengths given; the kernel writes at most those.
        let n =
            unsafe { libc::recvmmsg(fd, msgs.as_mut_ptr(), BATCH as u32, libc::MSG_DONTWAIT, std::ptr::null_mut()) };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, m) in msgs.iter().take(n).enumerate() {
            self.lens[i] = m.msg_len as usize;
            self.truncated[i] = m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        Ok(n)
    }

    /// Datagram `i` of the last read and who sent it; `None` if it was cut short or came from an
    /// address family we do not answer.
    fn get(&self, i: usize) -> Option<(&[u8], SocketAddr)> {
        if self.truncated[i] {
            return None;
        }
        Some((&self.bufs[i][..self.lens[i]], from_storage(&self.addrs[i])?))
    }
}

fn from_storage(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match s.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a = unsafe { &*(s as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(ip, u16::from_be(a.sin6_port), a.sin6_flowinfo, a.sin6_scope_id)))
        }
        _ => None,
    }
}

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: plain data, zero is valid.
    let mut s: libc::sockaddr_storage = unsafe { zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr = libc::in_addr { s_addr: u32::from(*a.ip()).to_be() };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe { &mut *(&mut s as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr = libc::in6_addr { s6_addr: a.ip().octets() };
            sin6.sin6_flowinfo = a.flowinfo();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (s, len as libc::socklen_t)
}

/// Sends every queued answer, `BATCH` per `sendmmsg`. A datagram the kernel refuses (the
/// client's port is gone, say) is dropped, not retried.
async fn send_batch(socket: &UdpSocket, queue: &[(Vec<u8>, SocketAddr)]) {
    let mut start = 0;
    while start < queue.len() {
        let chunk = &queue[start..queue.len().min(start + BATCH)];
        let mut addrs: Vec<(libc::sockaddr_storage, libc::socklen_t)> =
            chunk.iter().map(|(_, a)| to_storage(a)).collect();
        // SAFETY: plain C structs, zero is valid.
        let mut iov: [libc::iovec; BATCH] = unsafe { zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { zeroed() };
        for (i, (bytes, _)) in chunk.iter().enumerate() {
            iov[i] = libc::iovec { iov_base: bytes.as_ptr() as *mut libc::c_void, iov_len: bytes.len() };
            msgs[i].msg_hdr.msg_name = (&mut addrs[i].0 as *mut libc::sockaddr_storage).cast();
            msgs[i].msg_hdr.msg_namelen = addrs[i].1;
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        let fd = socket.as_raw_fd();
        let sent = socket.try_io(Interest::WRITABLE, || {
            // SAFETY: the pointers in `msgs` point into `chunk`, `iov` and `addrs`, alive for the call.
            let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), chunk.len() as u32, 0) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(n) => start += n.max(1),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if socket.writable().await.is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, dst = %chunk[0].1, "udp send failed");
                start += 1;
            }
        }
    }
}
