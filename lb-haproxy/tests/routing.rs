//! Black-box: state in NATS, the binary, a real HAProxy, backends on loopback. Asserts on which
//! backend answered, the bytes a TCP rule passed, and the certificate a TLS client was served.

mod common;

use std::time::{Duration, Instant};

use common::{addr, aget, get_raw, parse_response, tls, wait_async, Backend, Lb, State};
use event_bus::testkit::free_port;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_paths_tcp_tls_health_and_no_backend() {
    let st = State::start().await;
    let port = free_port();
    let mut backends = Vec::new();
    for (i, svc) in ["a-one", "a-two", "b-one", "b-two", "fallback", "wild", "pair", "pair"].iter().enumerate() {
        let n = if i == 7 { 2 } else { 1 };
        let ip = format!("127.0.1.{}", i + 1);
        if n == 1 {
            st.service(svc).await;
        }
        backends.push(Backend::http(&format!("{svc}-{n}"), addr(&ip, port)).await);
        st.container(svc, n, &ip).await;
    }
    st.service("echo").await;
    let _echo = Backend::echo("echo-1", addr("127.0.1.20", port)).await;
    st.container("echo", 1, "127.0.1.20").await;

    let cert_a = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
    let cert_wild = rcgen::generate_simple_self_signed(vec!["*.wild.example.com".into()]).unwrap();
    let cert_default = rcgen::generate_simple_self_signed(vec!["default.example.com".into()]).unwrap();
    for (uuid, c) in [("cert-a", &cert_a), ("cert-wild", &cert_wild), ("cert-default", &cert_default)] {
        st.cert(uuid, &c.cert.pem(), &c.signing_key.serialize_pem()).await;
    }

    let (http, tcp, https) = (free_port(), free_port(), free_port());
    let rule = |src: u16, svc: &str, host: Option<&str>, path: Option<&str>, proto: &str| json!({"source_port": src, "target_port": port, "service": svc, "hostname": host, "path": path, "protocol": proto});
    st.lb(json!({
        "port_rules": [
            rule(http, "a-one", Some("a.example.com"), Some("/one"), "http"),
            rule(http, "a-two", Some("a.example.com"), Some("/two"), "http"),
            rule(http, "b-one", Some("b.example.com"), Some("/one"), "http"),
            rule(http, "b-two", Some("b.example.com"), Some("/two"), "http"),
            rule(http, "pair", Some("pair.example.com"), None, "http"),
            rule(http, "fallback", None, None, "http"),
            rule(tcp, "echo", None, None, "tcp"),
            rule(https, "a-one", Some("a.example.com"), None, "https"),
            rule(https, "wild", Some("*.wild.example.com"), None, "https"),
            rule(https, "fallback", None, None, "https"),
        ],
        "certs": ["cert-a", "cert-wild"],
        "default_cert": "cert-default",
    }))
    .await;
    let stats = free_port();
    let lb = Lb::start_with(&st.nats.url(), &["--haproxy-stats-addr", &format!("127.0.0.1:{stats}")]);
    lb.wait_ready();
    // HAProxy's own metrics, next to ours.
    let promex = common::raw_get(stats, "/metrics");
    assert!(promex.contains("haproxy_backend_active_servers{proxy=\""), "{promex}");

    // Two hostnames × two paths, a Host header with a port, case, a path prefix, the default.
    for (host, path, want) in [
        ("a.example.com", "/one", "a-one-1"),
        ("a.example.com", "/two/deeper", "a-two-1"),
        ("b.example.com", "/one", "b-one-1"),
        ("B.Example.COM:8080", "/TWO", "b-two-1"),
        ("a.example.com", "/three", "fallback-1"),
        ("c.example.com", "/one", "fallback-1"),
    ] {
        assert_eq!(aget(http, host, path).await, (200, want.to_string()), "{host}{path}");
    }

    // TCP: raw bytes through, unchanged.
    let echoed = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", tcp)).unwrap();
        s.write_all(b"\x00\x01raw bytes\xff").unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        out
    })
    .await
    .unwrap();
    assert_eq!(echoed, b"echo-1:\x00\x01raw bytes\xff");

    // TLS terminated with the certificate for the SNI name: exact, wildcard, and the default
    // for a name no certificate covers.
    for (name, cert, want) in [
        ("a.example.com", &cert_a, "a-one-1"),
        ("x.wild.example.com", &cert_wild, "wild-1"),
        ("other.example.org", &cert_default, "fallback-1"),
    ] {
        let (served, status, body) = tls::aget(https, name, "/").await.unwrap();
        assert_eq!(served, cert.cert.der().to_vec(), "certificate served for {name}");
        assert_eq!((status, body.as_str()), (200, want), "{name}");
    }

    // Health: a container turning unhealthy stops receiving traffic, without a reload.
    let hits_of = |b: &Backend| b.hits();
    // Servers across backends: a-one and fallback serve two ports each.
    let all = lb.servers();
    assert_eq!(all, 11.0, "{}", lb.metrics());
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(aget(http, "pair.example.com", "/").await.1);
    }
    assert_eq!(seen.len(), 2, "round robin over both: {seen:?}");
    st.set_health("pair-2", "unhealthy").await;
    wait_async("pair-2 out of rotation", Duration::from_secs(30), || lb.servers() == all - 1.0).await;
    let before = hits_of(&backends[7]);
    for _ in 0..10 {
        assert_eq!(aget(http, "pair.example.com", "/").await, (200, "pair-1".into()));
    }
    assert_eq!(hits_of(&backends[7]), before, "the unhealthy container got traffic");

    // None healthy: 503 at once, not a hang.
    st.set_health("pair-1", "unhealthy").await;
    wait_async("pair-1 out of rotation", Duration::from_secs(30), || lb.servers() == all - 2.0).await;
    let t = Instant::now();
    let (status, _) = aget(http, "pair.example.com", "/").await;
    assert_eq!(status, 503);
    assert!(t.elapsed() < Duration::from_secs(5), "503 took {:?}", t.elapsed());

    // And back.
    st.set_health("pair-2", "healthy").await;
    wait_async("pair-2 back", Duration::from_secs(30), || lb.servers() == all - 1.0).await;
    assert_eq!(aget(http, "pair.example.com", "/").await, (200, "pair-2".into()));

    assert_eq!(lb.reloads(), 0.0, "membership and health changes must not reload:\n{}", lb.metrics());
    assert_eq!(lb.haproxy_reloads(), 0);
    assert!(lb.metric("corral_lb_runtime_updates_total") >= 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cookie_stickiness_holds_and_membership_changes_reload() {
    let st = State::start().await;
    let port = free_port();
    st.service("web").await;
    let mut backends = Vec::new();
    for n in 1..=2 {
        let ip = format!("127.0.7.{n}");
        backends.push(Backend::http(&format!("web-{n}"), addr(&ip, port)).await);
        st.container("web", n, &ip).await;
    }
    let lb_port = free_port();
    st.lb(json!({
        "port_rules": [{"source_port": lb_port, "target_port": port, "service": "web"}],
        "stickiness_policy": {"mode": "insert", "cookie": "SRV", "indirect": true, "nocache": true},
    }))
    .await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();

    let first = tokio::task::spawn_blocking(move || get_raw(lb_port, "")).await.unwrap();
    let cookie = first
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: ").or_else(|| l.strip_prefix("Set-Cookie: ")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_else(|| panic!("no cookie set: {first}"))
        .to_string();
    let pinned = parse_response(&first).1;
    for _ in 0..8 {
        let c = cookie.clone();
        let raw = tokio::task::spawn_blocking(move || get_raw(lb_port, &format!("Cookie: {c}\r\n"))).await.unwrap();
        assert_eq!(parse_response(&raw).1, pinned, "the cookie pins the server");
    }

    // HAProxy 2.6 refuses `cookie` on servers added at runtime: a sticky backend changes
    // membership by a (hitless) reload.
    backends.push(Backend::http("web-3", addr("127.0.7.3", port)).await);
    st.container("web", 3, "127.0.7.3").await;
    wait_async("web-3 added by a reload", Duration::from_secs(30), || lb.reloads() == 1.0).await;
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..6 {
        seen.insert(aget(lb_port, "x", "/").await.1);
    }
    assert!(seen.contains("web-3"), "{seen:?}");
}

/// Rancher's load balancer could target an external service (its IPs) and an alias
/// (`rancher/dns-service`, whatever its links reach); an external service's IPs changing is a
/// membership change like any other (no reload).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_and_alias_services_as_targets() {
    use event_bus::model::ServiceKind;
    let st = State::start().await;
    let port = free_port();
    st.service("web").await;
    let _web = Backend::http("web-1", addr("127.0.8.1", port)).await;
    st.container("web", 1, "127.0.8.1").await;
    let _outside = Backend::http("outside", addr("127.0.8.9", port)).await;
    let _moved = Backend::http("moved", addr("127.0.8.10", port)).await;
    let mut ext = event_bus::testkit::fixtures::service("ext", common::STACK, "ext");
    ext.kind = ServiceKind::External;
    ext.external_ips = vec!["127.0.8.9".into()];
    st.put(&ext).await;
    let mut both = event_bus::testkit::fixtures::service("both", common::STACK, "both");
    both.kind = ServiceKind::Alias;
    both.links = [("web".to_string(), String::new()), ("ext".to_string(), String::new())].into();
    st.put(&both).await;
    let (to_ext, to_alias) = (free_port(), free_port());
    st.lb(json!({"port_rules": [
        {"source_port": to_ext, "target_port": port, "service": "ext"},
        {"source_port": to_alias, "target_port": port, "service": "both"},
    ]}))
    .await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();
    assert_eq!(aget(to_ext, "x", "/").await, (200, "outside".into()));
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..8 {
        answered.insert(aget(to_alias, "x", "/").await.1);
    }
    assert_eq!(answered, ["outside".to_string(), "web-1".to_string()].into());

    // The external service now points elsewhere: traffic follows, without a reload.
    ext.external_ips = vec!["127.0.8.10".into()];
    st.put(&ext).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while aget(to_ext, "x", "/").await.1 != "moved" {
        assert!(Instant::now() < deadline, "the external service's new address never served");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lb.reloads(), 0.0, "{}", lb.metrics());
}
