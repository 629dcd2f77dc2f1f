//! Who a caller on this machine's own network is: the Docker container whose cgroup the caller's
//! socket was made in.
//!
//! A container on the host's network calls from the host's address, which names no container,
//! so the original gave it only `/self/host`. When the connection comes from the server's own
//! network namespace, the kernel knows the caller's end of it, and tells (netlink `sock_diag`,
//! attribute `INET_DIAG_CGROUP_ID`) the id of the cgroup v2 group its socket was created in.
//! That id is the inode number of the group's directory in the cgroup v2 hierarchy; Docker makes
//! one directory per container, `docker/<id>` (cgroupfs driver) or
//! `system.slice/docker-<id>.scope` (systemd driver). The caller is the container whose directory
//! that is.
//!
//! Why a caller cannot choose the answer: a socket is marked with its creator's cgroup by the
//! kernel, only root can put a process into a container's cgroup, and only these two exact
//! directories of the host's hierarchy count (a group a user or a container made under its own
//! subtree, whatever its name, is not one of them). A process in a sub-group of a container, or
//! a socket made outside any container and handed to a container's process, is an unknown
//! caller. What remains (a container's socket handed out, or taken by a host user allowed to
//! ptrace the container's process) is in the README.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Finds callers' containers through the host's cgroup v2 hierarchy mounted at `root`.
#[derive(Debug, Clone)]
pub struct LocalCallers {
    root: PathBuf,
}

impl LocalCallers {
    /// The host's cgroup v2 hierarchy as this process sees it (`/proc/self/mountinfo`: a
    /// `cgroup2` mount of the hierarchy's root, e.g. `/sys/fs/cgroup` or, on hybrid hosts,
    /// `/sys/fs/cgroup/unified`). `Err` says why there is none.
    pub fn detect() -> Result<LocalCallers, String> {
        let mountinfo =
            std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("/proc/self/mountinfo: {e}"))?;
        let root = cgroup2_root(&mountinfo).ok_or_else(|| {
            "no cgroup v2 hierarchy is mounted here (a container needs the host's cgroup namespace \
             and /sys/fs/cgroup)"
                .to_string()
        })?;
        // The hierarchy's real root has id (inode) 1; a private cgroup namespace shows its own
        // group as `/`, and Docker's directories are not below it.
        match std::fs::metadata(&root).map(|m| m.ino()) {
            Ok(1) => Ok(LocalCallers { root }),
            Ok(_) => Err(format!("{} is not the host's cgroup root (a private cgroup namespace?)", root.display())),
            Err(e) => Err(format!("{}: {e}", root.display())),
        }
    }

    /// Where the host's cgroup v2 hierarchy is mounted.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Docker id of the container in which the caller's end of the connection `server` ←
    /// `peer` was made, when that end is in this network namespace.
    pub fn docker_id(&self, server: SocketAddr, peer: SocketAddr) -> Option<String> {
        let cgroup = sock_diag::cgroup_of_established(unmapped(peer), unmapped(server))?;
        container_of_cgroup(&self.root, cgroup)
    }
}

/// The mount point of a `cgroup2` file system whose root is the hierarchy's root (`/`).
fn cgroup2_root(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let f: Vec<&str> = left.split(' ').collect();
        let mount = f.get(4)?;
        (right.split(' ').next() == Some("cgroup2") && f.get(3) == Some(&"/"))
            .then(|| PathBuf::from(mount.replace("\\040", " ")))
    })
}

/// The container whose Docker cgroup directory has inode `cgroup`.
fn container_of_cgroup(root: &Path, cgroup: u64) -> Option<String> {
    for dir in ["docker", "system.slice"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| docker_id_in_name(dir, n)) else { continue };
            if entry.metadata().is_ok_and(|m| m.is_dir() && m.ino() == cgroup) {
                return Some(id.to_string());
            }
        }
    }
    None
}

/// `docker/<id>` (cgroupfs driver) or `system.slice/docker-<id>.scope` (systemd driver).
fn docker_id_in_name<'a>(dir: &str, name: &'a str) -> Option<&'a str> {
    let id = match dir {
        "docker" => name,
        _ => name.strip_prefix("docker-")?.strip_suffix(".scope")?,
    };
    is_docker_id(id).then_some(id)
}

fn is_docker_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
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

/// One exact socket lookup over netlink (`SOCK_DIAG_BY_FAMILY` without a dump: the kernel finds
/// the socket by its addresses). Layouts from linux/netlink.h and linux/inet_diag.h.
mod sock_diag {
    use std::net::{IpAddr, SocketAddr};

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const TCP_ESTABLISHED: u8 = 1;
    const INET_DIAG_CGROUP_ID: u16 = 21;
    /// nlmsghdr (16 bytes) + inet_diag_msg (72 bytes); attributes follow.
    const ATTRIBUTES_AT: usize = 88;

    /// The cgroup v2 id of the established socket whose local end is `local` and remote end
    /// `remote`, if this network namespace has one (and the kernel reports cgroup ids).
    pub fn cgroup_of_established(local: SocketAddr, remote: SocketAddr) -> Option<u64> {
        let family = match (local.ip(), remote.ip()) {
            (IpAddr::V4(_), IpAddr::V4(_)) => libc::AF_INET,
            (IpAddr::V6(_), IpAddr::V6(_)) => libc::AF_INET6,
            _ => return None,
        };
        let request = request(family as u8, local, remote);
        let reply = ask(&request)?;
        cgroup_in_reply(&reply, &request[SOCKET_ID_IN_REQUEST])
    }

    /// Where the socket id (ports and addresses, 36 bytes) sits in a request and in a reply.
    const SOCKET_ID_IN_REQUEST: std::ops::Range<usize> = 24..60;
    const SOCKET_ID_IN_REPLY: std::ops::Range<usize> = 20..56;

    /// Reads a reply: an error message (no such socket) has another type; the kernel's exact
    /// lookup also falls back to a socket listening on the port asked for, so only an established
    /// socket with exactly the ports and addresses asked for (`asked`) is the caller's end.
    pub(super) fn cgroup_in_reply(reply: &[u8], asked: &[u8]) -> Option<u64> {
        let u16_at = |i: usize| reply.get(i..i + 2).map(|b| u16::from_ne_bytes([b[0], b[1]]));
        let len = reply.get(0..4).map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize)?;
        if u16_at(4)? != SOCK_DIAG_BY_FAMILY || len > reply.len() || len < ATTRIBUTES_AT {
            return None;
        }
        if reply[17] != TCP_ESTABLISHED || reply[SOCKET_ID_IN_REPLY] != *asked {
            return None;
        }
        let mut at = ATTRIBUTES_AT;
        while at + 4 <= len {
            let (size, kind) = (u16_at(at)? as usize, u16_at(at + 2)?);
            if size < 4 || at + size > len {
                return None;
            }
            if kind == INET_DIAG_CGROUP_ID && size == 12 {
                let b = &reply[at + 4..at + 12];
                return Some(u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]));
            }
            at += (size + 3) & !3;
        }
        None
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
    fn ask(request: &[u8]) -> Option<Vec<u8>> {
        // SAFETY: plain socket calls on a descriptor this function owns and closes; every buffer
        // passed is valid for the length given.
        unsafe {
            let fd = libc::socket(libc::AF_NETLINK, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, libc::NETLINK_SOCK_DIAG);
            if fd < 0 {
                return None;
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
                return None;
            }
            reply.truncate(got as usize);
            Some(reply)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "59f921231275899f49a2f31349c63e9cf7db5103badb493785465d8b7f338738";

    #[test]
    fn the_cgroup2_mount_of_the_hierarchy_root() {
        let hybrid = "24 31 0:21 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(cgroup2_root(hybrid), Some(PathBuf::from("/sys/fs/cgroup/unified")));
        let v2 = "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(cgroup2_root(v2), Some(PathBuf::from("/sys/fs/cgroup")));
        // A container's own namespace shows its group as the root of a bind mount: not the host's.
        let inner = "700 690 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup ro\n";
        assert_eq!(cgroup2_root(inner), None);
        assert_eq!(cgroup2_root("25 24 0:22 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"), None);
    }

    #[test]
    fn only_the_two_docker_layouts_name_a_container() {
        let root = tempfile::tempdir().unwrap();
        let plain = root.path().join("docker").join(ID);
        let scope = root.path().join("system.slice").join(format!("docker-{}.scope", ID.replace('5', "6")));
        let forged = root.path().join("user.slice").join(format!("docker-{ID}.scope"));
        let nested = plain.join("inner");
        for d in [&plain, &scope, &forged, &nested] {
            std::fs::create_dir_all(d).unwrap();
        }
        let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
        assert_eq!(container_of_cgroup(root.path(), ino(&plain)).as_deref(), Some(ID));
        assert_eq!(container_of_cgroup(root.path(), ino(&scope)), Some(ID.replace('5', "6")));
        assert_eq!(container_of_cgroup(root.path(), ino(&forged)), None);
        assert_eq!(container_of_cgroup(root.path(), ino(&nested)), None);
        assert!(!is_docker_id(&ID.to_uppercase()) && !is_docker_id(&ID[1..]));
    }

    /// The kernel answers for a real connection: the caller's end is established and has a
    /// cgroup (this test's own: the hierarchy's root or some group, never a container's unless
    /// the test itself runs in one); a connection that does not exist has none.
    #[test]
    fn a_real_connection_is_found() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let server = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(server).unwrap();
        let (_accepted, peer) = listener.accept().unwrap();
        assert!(
            sock_diag::cgroup_of_established(peer, server).is_some(),
            "the kernel does not report socket cgroups (INET_DIAG_CGROUP_ID) over sock_diag"
        );
        let nobody: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(sock_diag::cgroup_of_established(nobody, server), None);
    }

    #[test]
    fn replies_that_are_not_an_established_socket_with_a_cgroup() {
        let mut reply = vec![0u8; 100];
        reply[0..4].copy_from_slice(&100u32.to_ne_bytes());
        reply[4..6].copy_from_slice(&20u16.to_ne_bytes());
        reply[17] = 1;
        reply[88..90].copy_from_slice(&12u16.to_ne_bytes());
        reply[90..92].copy_from_slice(&21u16.to_ne_bytes());
        reply[92..100].copy_from_slice(&4242u64.to_ne_bytes());
        let asked: Vec<u8> = (0..36).collect();
        reply[20..56].copy_from_slice(&asked);
        assert_eq!(sock_diag::cgroup_in_reply(&reply, &asked), Some(4242));
        let mut listening = reply.clone();
        listening[17] = 10;
        assert_eq!(sock_diag::cgroup_in_reply(&listening, &asked), None);
        // Established, but another socket than the one asked about (another peer address).
        let mut other = reply.clone();
        other[40] ^= 1;
        assert_eq!(sock_diag::cgroup_in_reply(&other, &asked), None);
        let mut error = reply.clone();
        error[4..6].copy_from_slice(&2u16.to_ne_bytes());
        assert_eq!(sock_diag::cgroup_in_reply(&error, &asked), None);
        assert_eq!(sock_diag::cgroup_in_reply(&reply[..60], &asked), None);
    }
}
