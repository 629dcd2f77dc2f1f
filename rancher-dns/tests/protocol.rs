//! Protocol robustness and the answers-file mode, through hickory's message types on raw UDP and
//! TCP sockets: odd questions get the right rcode, garbage gets no crash, big answers truncate,
//! SIGHUP reloads and a bad file is refused.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use common::Dns;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};

fn answers(dir: &std::path::Path, web_ip: &str) -> String {
    let many: Vec<String> = (1..=100).map(|i| format!("\"10.42.2.{i}\"")).collect();
    let p = dir.join("answers.yaml");
    std::fs::write(
        &p,
        format!(
            r#"default:
  authoritative: [rancher.internal]
  search: [rancher.internal]
  a:
    web.app.rancher.internal.: {{answer: ["{web_ip}"]}}
    many.app.rancher.internal.: {{answer: [{}]}}
  txt:
    info.app.rancher.internal.: {{answer: ["hello"], ttl: 30}}
  cname:
    loop.app.rancher.internal.: {{answer: loop.app.rancher.internal.}}
    gone.app.rancher.internal.: {{answer: nothere.rancher.internal.}}
"127.0.50.1":
  search: [app.rancher.internal]
  a:
    private.rancher.internal.: {{answer: ["10.42.9.9"]}}
"#,
            many.join(", ")
        ),
    )
    .unwrap();
    p.display().to_string()
}

fn query(name: &str, qtype: RecordType) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m
}

/// Sends raw bytes over UDP; the reply, if any within a second.
fn exchange_raw(port: u16, bytes: &[u8]) -> Option<Message> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    s.send_to(bytes, ("127.0.0.1", port)).unwrap();
    let mut buf = [0u8; 65535];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(Message::from_vec(&buf[..n]).expect("the server's reply parses"))
}

fn exchange(port: u16, m: &Message) -> Message {
    exchange_raw(port, &m.to_vec().unwrap()).expect("an answer")
}

fn exchange_tcp(port: u16, m: &Message) -> Message {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let b = m.to_vec().unwrap();
    s.write_all(&(b.len() as u16).to_be_bytes()).unwrap();
    s.write_all(&b).unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).unwrap();
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut buf).unwrap();
    Message::from_vec(&buf).unwrap()
}

#[test]
fn odd_questions_get_the_right_rcode_and_garbage_no_crash() {
    let dir = tempfile::tempdir().unwrap();
    let dns = Dns::start(&["--answers", &answers(dir.path(), "10.42.0.5")], None);
    let p = dns.port;

    // Two questions in one message: FORMERR.
    let mut m = query("web.app.rancher.internal.", RecordType::A);
    m.add_query(Query::query(Name::from_ascii("x.app.rancher.internal.").unwrap(), RecordType::A));
    assert_eq!(exchange(p, &m).metadata.response_code, ResponseCode::FormErr);

    // No question at all: FORMERR.
    let m = Message::query();
    assert_eq!(exchange(p, &m).metadata.response_code, ResponseCode::FormErr);

    // Class CHAOS: NOTIMP.
    let mut m = Message::query();
    let mut q = Query::query(Name::from_ascii("version.bind.").unwrap(), RecordType::TXT);
    q.set_query_class(DNSClass::CH);
    m.add_query(q);
    assert_eq!(exchange(p, &m).metadata.response_code, ResponseCode::NotImp);

    // Opcodes other than QUERY: NOTIMP.
    let mut m = query("web.app.rancher.internal.", RecordType::A);
    m.metadata.op_code = OpCode::Status;
    assert_eq!(exchange(p, &m).metadata.response_code, ResponseCode::NotImp);

    // EDNS version 1: BADVERS (RFC 6891), carried in the OPT record.
    let mut m = query("web.app.rancher.internal.", RecordType::A);
    let mut e = Edns::new();
    e.set_version(1);
    m.set_edns(e);
    // (16 is BADVERS in an OPT record; hickory's enum names it BADSIG, the same number in TSIG.)
    assert_eq!(u16::from(exchange(p, &m).metadata.response_code), 16);

    // ANY: what the name holds (RFC 8482), not an error.
    let r = exchange(p, &query("web.app.rancher.internal.", RecordType::ANY));
    assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NoError, 1));

    // The longest legal name, under our zone: NXDOMAIN; elsewhere: forwarded (no upstream: SERVFAIL).
    let label = "a".repeat(63);
    let long = format!("{label}.{label}.{label}.{}.rancher.internal.", "b".repeat(44));
    assert_eq!(long.len(), 254, "253 characters and the root dot");
    assert_eq!(exchange(p, &query(&long, RecordType::A)).metadata.response_code, ResponseCode::NXDomain);
    let long_out = format!("{label}.{label}.{label}.{}.test.", "b".repeat(56));
    assert_eq!(exchange(p, &query(&long_out, RecordType::A)).metadata.response_code, ResponseCode::ServFail);

    // The zone's apex exists: NODATA (not NXDOMAIN) for A; zone transfers are refused.
    let r = exchange(p, &query("rancher.internal.", RecordType::A));
    assert_eq!((r.metadata.response_code, r.answers.len(), r.authorities.len()), (ResponseCode::NoError, 0, 1));
    let r = exchange_tcp(p, &query("rancher.internal.", RecordType::AXFR));
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    // A CNAME to itself: one record, not a repeat; a CNAME into our zone that leads nowhere:
    // NXDOMAIN with the chain, not a forward.
    let r = exchange(p, &query("loop.app.rancher.internal.", RecordType::A));
    assert_eq!(r.answers.len(), 1, "{r:?}");
    let r = exchange(p, &query("gone.app.rancher.internal.", RecordType::A));
    assert_eq!((r.metadata.response_code, r.answers.len()), (ResponseCode::NXDomain, 1));

    // A response sent to us is ignored (no reflection).
    let mut m = query("web.app.rancher.internal.", RecordType::A);
    m.metadata.message_type = MessageType::Response;
    assert!(exchange_raw(p, &m.to_vec().unwrap()).is_none());

    // Garbage: short packets, random bytes, a header promising records that are not there, a
    // name with a compression pointer loop. Nothing crashes; the server answers the next question.
    let mut garbage: Vec<Vec<u8>> = vec![vec![], vec![0u8; 5], vec![0xff; 12], vec![0xff; 512]];
    garbage.push(vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x05, 0x00, 0x09, 0x00, 0x00, 0x00, 0x00]);
    garbage.push(vec![0x12, 0x34, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    let mut seed = 0x2545F4914F6CDD1Du64;
    for len in [13usize, 40, 100, 300, 1500] {
        let mut v = Vec::with_capacity(len);
        for _ in 0..len {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            v.push(seed as u8);
        }
        garbage.push(v);
    }
    for g in &garbage {
        if let Some(r) = exchange_raw(p, g) {
            assert_ne!(r.metadata.response_code, ResponseCode::NoError, "garbage {g:?} got NOERROR");
        }
    }
    let r = exchange(p, &query("web.app.rancher.internal.", RecordType::A));
    assert_eq!(r.answers.len(), 1, "still answering after the garbage");
}

#[test]
fn big_answers_truncate_over_udp_and_come_whole_over_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let dns = Dns::start(&["--answers", &answers(dir.path(), "10.42.0.5")], None);
    let q = query("many.app.rancher.internal.", RecordType::A);

    // No EDNS: 512 bytes, so TC and a partial answer.
    let r = exchange(dns.port, &q);
    assert!(r.metadata.truncation);
    assert!(r.answers.len() < 100);
    // EDNS with 600 bytes: still too big; TC, and the OPT record is kept (RFC 6891).
    let mut small = q.clone();
    let mut e = Edns::new();
    e.set_max_payload(600);
    small.set_edns(e);
    let r = exchange(dns.port, &small);
    assert!(r.metadata.truncation);
    assert!(r.edns.is_some(), "OPT kept in a truncated answer");
    // EDNS with 4096: everything fits; the OPT record is echoed.
    let mut big = q.clone();
    let mut e = Edns::new();
    e.set_max_payload(4096);
    big.set_edns(e);
    let r = exchange(dns.port, &big);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    assert!(r.edns.is_some(), "EDNS echoed");
    // TCP: everything.
    let r = exchange_tcp(dns.port, &q);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
}

#[test]
fn answers_file_reloads_on_sighup_and_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = answers(dir.path(), "10.42.0.5");
    let dns = Dns::start(&["--answers", &file], None);
    assert_eq!(dns.dig("127.0.0.1", &["web.app.rancher.internal"]).data("A"), ["10.42.0.5"]);
    let d = dns.dig("127.0.0.1", &["info.app.rancher.internal", "TXT"]);
    assert_eq!((d.data("TXT"), d.answer[0].1), (vec!["\"hello\"".to_string()], 30), "per-record ttl");
    // Per-client entries: search and names of that client only.
    assert_eq!(dns.dig("127.0.50.1", &["web"]).data("A"), ["10.42.0.5"]);
    assert_eq!(dns.dig("127.0.50.1", &["private"]).data("A"), ["10.42.9.9"]);
    assert_eq!(dns.dig("127.0.0.1", &["private.rancher.internal"]).status, "NXDOMAIN");
    let serial = |d: &Dns| -> u32 {
        let r = d.dig("127.0.0.1", &["nope.rancher.internal"]);
        r.authority[0].3.split_whitespace().nth(2).unwrap().parse().unwrap()
    };
    let s1 = serial(&dns);

    let hup = || assert!(Command::new("kill").args(["-HUP", &dns.pid().to_string()]).status().unwrap().success());
    answers(dir.path(), "10.42.0.6");
    hup();
    common::within(Duration::from_secs(5), "reloaded", || {
        dns.dig("127.0.0.1", &["web.app.rancher.internal"]).data("A") == ["10.42.0.6"]
    });
    assert_eq!(serial(&dns), s1 + 1, "the serial moves on reload");

    // A broken file is refused as a whole; the last good answers stay.
    std::fs::write(&file, "default:\n  a:\n    web.app.rancher.internal.: {answer: [\"10.42.0.300\"]}\n").unwrap();
    hup();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(dns.dig("127.0.0.1", &["web.app.rancher.internal"]).data("A"), ["10.42.0.6"]);
}

#[test]
fn a_bad_answers_file_at_start_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("answers.json");
    std::fs::write(&file, r#"{"default": {"cname": {"x.": {"answer": "not a..name"}}}}"#).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rancher-dns"))
        .args(["--answers", file.to_str().unwrap(), "--listen", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("answers.json") && err.contains("cname") && err.contains("\"x.\""), "{err}");
}

#[test]
fn help_documents_every_flag_with_its_environment_variable() {
    let out = Command::new(env!("CARGO_BIN_EXE_rancher-dns")).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "CORRAL_DNS_LISTEN",
        "CORRAL_DNS_TTL",
        "CORRAL_DNS_RECURSER_TIMEOUT",
        "CORRAL_DNS_NDOTS",
        "CORRAL_DNS_CACHE_CAPACITY",
        "CORRAL_DNS_RANCHER_METADATA_ANSWER",
        "CORRAL_DNS_NEVER_RECURSE_TO",
        "CORRAL_DNS_UPSTREAM",
        "CORRAL_DNS_RESOLV_CONF",
        "CORRAL_DNS_ANSWERS",
        "CORRAL_DNS_UDP_SOCKETS",
        "CORRAL_NATS_URL",
        "CORRAL_ADMIN_ADDR",
    ] {
        assert!(help.contains(var), "{var} missing from --help");
    }
    assert!(help.contains("nats://127.0.0.1:4222"));
}

#[test]
fn a_port_in_use_is_an_error_not_a_shared_port() {
    // Another process's socket on the port (with SO_REUSEPORT, as BIND's and our own are).
    let held = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_rancher-dns"))
        .args(["--answers", &answers(dir.path(), "10.42.0.5"), "--listen", &format!("127.0.0.1:{port}")])
        .args(["--admin-addr", "127.0.0.1:0", "--resolv-conf", "/dev/null"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("listening on 127.0.0.1:{port}")) && err.contains("in use"), "{err}");
}
