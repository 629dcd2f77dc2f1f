//! Who a caller on this machine's own network is: the Docker container of the process that holds
//! the other end of the connection, found through `/proc`.
//!
//! A container on the host's network calls from the host's address, which names no container,
//! so the original gave it only `/self/host`. When the connection comes from the server's own
//! network namespace, the kernel's socket table (`/proc/net/tcp`, `/proc/net/tcp6`) has the
//! caller's end of it; the process holding that socket (`/proc/<pid>/fd`) sits in its
//! container's cgroup (`/proc/<pid>/cgroup`), whose last path element carries the Docker id that
//! the deploy agent records as the container's `external_id`.
//!
//! Only an answer every holder of the socket agrees on counts: a socket held by processes of
//! two containers (passed over a unix socket) or by none that can be read names nobody.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// The Docker id of the container whose process holds the caller's end of the connection
/// `server` ← `peer`, when that end is in this network namespace and all of its holders are in
/// one container. `proc_root` is `/proc` (a parameter for tests).
pub fn docker_id(proc_root: &Path, server: SocketAddr, peer: SocketAddr) -> Option<String> {
    let inode = caller_socket_inode(proc_root, server, peer)?;
    let target = format!("socket:[{inode}]");
    let mut found: Option<String> = None;
    let mut holders = 0;
    for pid in std::fs::read_dir(proc_root).ok()?.flatten() {
        if !pid.file_name().as_encoded_bytes().iter().all(u8::is_ascii_digit) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(pid.path().join("fd")) else { continue };
        let holds =
            fds.flatten().any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()));
        if !holds {
            continue;
        }
        holders += 1;
        let id = std::fs::read_to_string(pid.path().join("cgroup")).ok().and_then(|c| container_of_cgroup(&c));
        match (&found, id) {
            (_, None) => return None,
            (None, Some(id)) => found = Some(id),
            (Some(a), Some(b)) if *a == b => {}
            (Some(_), Some(_)) => return None,
        }
    }
    found.filter(|_| holders > 0)
}

/// The inode of the socket whose local end is `peer` and remote end `server`: the caller's end,
/// present only when the caller shares this network namespace. Asked of the kernel for that one
/// socket (netlink `sock_diag`); read from the whole table only where netlink is refused, as that
/// table holds every socket of the host, `TIME_WAIT` ones included (tens of ms for 10,000).
fn caller_socket_inode(proc_root: &Path, server: SocketAddr, peer: SocketAddr) -> Option<u64> {
    let (server, peer) = (unmapped(server), unmapped(peer));
    if proc_root == Path::new("/proc") {
        if let Ok(found) = sock_diag::established_inode(peer, server) {
            return found;
        }
    }
    let table = match peer.ip() {
        IpAddr::V4(_) => "net/tcp",
        IpAddr::V6(_) => "net/tcp6",
    };
    let text = std::fs::read_to_string(proc_root.join(table)).ok()?;
    socket_inode(&text, peer, server)
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        IpAddr::V4(_) => a,
    }
}

/// Finds the established socket `local` → `remote` in a `/proc/net/tcp{,6}` table.
fn socket_inode(table: &str, local: SocketAddr, remote: SocketAddr) -> Option<u64> {
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != "01" {
            continue;
        }
        if parse_addr(f[1]) == Some(local) && parse_addr(f[2]) == Some(remote) {
            return f[9].parse().ok().filter(|i| *i != 0);
        }
    }
    None
}

/// `0100007F:1F90` (IPv4) or 32 hex digits then the port (IPv6): the address as the kernel
/// prints it, 32-bit words in the machine's byte order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word =
        |i: usize| addr.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes);
    let ip = match addr.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(unmapped(SocketAddr::new(ip, port)))
}

/// The container id in a `/proc/<pid>/cgroup` file: the last path element that is, or wraps,
/// 64 hex digits (`/docker/<id>` with the cgroupfs driver, `/system.slice/docker-<id>.scope` with
/// systemd). A process outside any container has none.
fn container_of_cgroup(cgroup: &str) -> Option<String> {
    let mut found = None;
    for line in cgroup.lines() {
        let path = line.splitn(3, ':').nth(2)?;
        let Some(last) = path.rsplit('/').next() else { continue };
        let id = last.strip_prefix("docker-").unwrap_or(last);
        let id = id.strip_suffix(".scope").unwrap_or(id);
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            match &found {
                None => found = Some(id.to_ascii_lowercase()),
                Some(f) if f == id => {}
                Some(_) => return None,
            }
        }
    }
    found
}

/// One exact socket lookup over netlink (`SOCK_DIAG_BY_FAMILY` without a dump: the kernel finds
/// the socket by its addresses). Layouts from linux/netlink.h and linux/inet_diag.h.
mod sock_diag {
    use std::net::{IpAddr, SocketAddr};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLMSG_ERROR: u16 = 2;
    const TCP_ESTABLISHED: u8 = 1;

    /// `Err` when netlink cannot be used here (then read the tables); `Ok(None)` when the kernel
    /// has no established socket `local` → `remote` in this namespace.
    pub fn established_inode(local: SocketAddr, remote: SocketAddr) -> Result<Option<u64>, ()> {
        let family = match (local.ip(), remote.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
            (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
            _ => return Ok(None),
        };
        let reply = ask(&request(family as u8, local, remote))?;
        // nlmsghdr (16 bytes): len, type, flags, seq, pid; then inet_diag_msg: family, state,
        // timer, retrans, the 48-byte socket id, expires, rqueue, wqueue, uid, inode.
        let kind = reply.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])).ok_or(())?;
        if kind == NLMSG_ERROR {
            return Ok(None);
        }
        if kind != SOCK_DIAG_BY_FAMILY || reply.len() < 88 {
            return Err(());
        }
        let inode = u32::from_ne_bytes([reply[84], reply[85], reply[86], reply[87]]);
        Ok((reply[17] == TCP_ESTABLISHED && inode != 0).then_some(u64::from(inode)))
    }

    fn request(family: u8, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
        let mut m = Vec::with_capacity(72);
        m.extend_from_slice(&72u32.to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
        m.extend_from_slice(&[0; 8]); // seq, pid
        m.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
        m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
        m.extend_from_slice(&local.port().to_be_bytes());
        m.extend_from_slice(&remote.port().to_be_bytes());
        for ip in [local.ip(), remote.ip()] {
            let mut a = [0u8; 16];
            match ip {
                IpAddr::V4(v4) => a[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => a.copy_from_slice(&v6.octets()),
            }
            m.extend_from_slice(&a);
        }
        m.extend_from_slice(&0u32.to_ne_bytes()); // any interface
        m.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
        m
    }

    /// Sends one request to the kernel and returns its one reply.
    fn ask(request: &[u8]) -> Result<Vec<u8>, ()> {
        // SAFETY: plain socket calls on a descriptor this function owns and closes; every buffer
        // passed is valid for the length given.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG);
            if fd < 0 {
                return Err(());
            }
            let timeout = libc::timeval { tv_sec: 1, tv_usec: 0 };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            );
            let mut kernel: libc::sockaddr_nl = std::mem::zeroed();
            kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            let sent = libc::sendto(
                fd,
                request.as_ptr().cast(),
                request.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            );
            let mut reply = vec![0u8; 8192];
            let got = if sent == request.len() as isize {
                libc::recv(fd, reply.as_mut_ptr().cast(), reply.len(), 0)
            } else {
                -1
            };
            libc::close(fd);
            if got < 16 {
                return Err(());
            }
            reply.truncate(got as usize);
            Ok(reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "59f921231275899f49a2f31349c63e9cf7db5103badb493785465d8b7f338738";

    #[test]
    fn cgroup_paths_of_both_docker_drivers_and_none() {
        assert_eq!(container_of_cgroup(&format!("12:pids:/docker/{ID}\n0::/docker/{ID}\n")).as_deref(), Some(ID));
        assert_eq!(container_of_cgroup(&format!("0::/system.slice/docker-{ID}.scope\n")).as_deref(), Some(ID));
        assert_eq!(container_of_cgroup("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(container_of_cgroup("4:memory:/process_api/2fa58b7226941988c15c50a556961cc7\n0::/\n"), None);
    }

    #[test]
    fn socket_table_lines() {
        let table =
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 100 1 0 100 0 0 10 0\n\
   1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 20 4 30 10 -1\n";
        let client: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(socket_inode(table, client, server), Some(4242));
        // The listening socket is not a caller, and the server's own end is not the caller's.
        assert_eq!(socket_inode(table, server, client), None);
        let v6 = "0000000000000000FFFF00000100007F:9C40";
        assert_eq!(parse_addr(v6), Some(client));
    }

    /// netlink and the table agree on a real connection's two ends, and neither knows a
    /// connection that does not exist.
    #[test]
    fn a_real_connection_is_found_both_ways() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let client = std::net::TcpStream::connect(server).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert_eq!(peer, client.local_addr().unwrap());
        let by_netlink = sock_diag::established_inode(peer, server).expect("netlink sock_diag");
        let text = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let by_table = socket_inode(&text, peer, server);
        assert!(by_netlink.is_some());
        assert_eq!(by_netlink, by_table);
        // The other end is another socket.
        assert_ne!(sock_diag::established_inode(server, peer).unwrap(), by_netlink);
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag::established_inode(nobody, server).unwrap(), None);
        // This test's process holds the client socket and is in no container.
        assert_eq!(docker_id(Path::new("/proc"), server, peer), None);
    }
}
