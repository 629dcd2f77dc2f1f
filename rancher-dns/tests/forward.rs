//! Forwarding against real BIND upstreams started by the test: answers, NXDOMAIN, an upstream
//! that never answers, one that answers SERVFAIL, and an answer too big for UDP.

mod common;

use common::{Dns, Named};

const ME: &str = "127.0.0.1";

fn zone() -> String {
    let mut z = String::from("www.example.test. IN A 127.0.0.80\n");
    // 95 addresses: 1.5 KB, more than the 1232 bytes we accept over UDP from upstreams.
    for i in 1..=95 {
        z.push_str(&format!("big.example.test. IN A 127.0.1.{i}\n"));
    }
    z
}

fn answers_file(dir: &std::path::Path) -> String {
    let p = dir.join("answers.json");
    std::fs::write(&p, r#"{"default": {"authoritative": ["rancher.internal"], "a": {"web.app.rancher.internal.": {"answer": ["10.42.0.5"]}}}}"#)
        .unwrap();
    p.display().to_string()
}

#[test]
fn answers_negatives_and_caching() {
    let named = Named::start(&zone());
    let dir = tempfile::tempdir().unwrap();
    let dns = Dns::start(&["--answers", &answers_file(dir.path()), "--upstream", &named.addr()], None);

    let d = dns.dig(ME, &["www.example.test"]);
    assert_eq!(d.status, "NOERROR");
    assert_eq!(d.data("A"), ["127.0.0.80"]);
    assert!(d.has_flag("ra") && !d.has_flag("aa"), "forwarded answers are not ours: {:?}", d.flags);
    assert_eq!(d.answer[0].1, 300, "upstream TTL kept");
    let misses = dns.metric("corral_dns_cache_misses_total");

    // Asked again: from the cache, same answer.
    let d = dns.dig(ME, &["www.example.test"]);
    assert_eq!(d.data("A"), ["127.0.0.80"]);
    assert!(d.answer[0].1 <= 300);
    assert_eq!(dns.metric("corral_dns_cache_hits_total"), 1.0);
    assert_eq!(dns.metric("corral_dns_cache_misses_total"), misses);

    // NXDOMAIN is passed through with the upstream's SOA, and cached (RFC 2308).
    let d = dns.dig(ME, &["nope.example.test"]);
    assert_eq!(d.status, "NXDOMAIN");
    assert_eq!(d.authority[0].2, "SOA");
    assert_eq!(dns.dig(ME, &["nope.example.test"]).status, "NXDOMAIN");
    assert_eq!(dns.metric("corral_dns_cache_hits_total"), 2.0);
    assert_eq!(dns.metric("corral_dns_cache_entries"), 2.0);

    // Local names still answered locally and authoritatively.
    let d = dns.dig(ME, &["web.app.rancher.internal"]);
    assert!(d.has_flag("aa"));
    assert_eq!(d.data("A"), ["10.42.0.5"]);
    assert!(
        dns.metrics().contains("corral_dns_upstream_duration_seconds_count{upstream=\"127.0.0.1:"),
        "upstream latency"
    );
}

#[test]
fn an_upstream_that_never_answers_fails_over_to_the_next() {
    let named = Named::start(&zone());
    // A socket nobody reads: questions sent there go unanswered.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let upstreams = format!("{silent_addr},{}", named.addr());
    let dns = Dns::start(
        &["--answers", &answers_file(dir.path()), "--upstream", &upstreams, "--recurser-timeout", "300ms"],
        None,
    );
    let started = std::time::Instant::now();
    let d = dns.dig(ME, &["www.example.test"]);
    assert_eq!(d.data("A"), ["127.0.0.80"]);
    assert!(started.elapsed() >= std::time::Duration::from_millis(300), "the silent upstream was asked first");
    assert_eq!(
        dns.metric(&format!("corral_dns_upstream_failures_total{{upstream=\"{silent_addr}\",reason=\"timeout\"}}")),
        1.0
    );

    // Only silent upstreams: SERVFAIL after the timeout, not a hang.
    let dns2 = Dns::start(
        &["--answers", &answers_file(dir.path()), "--upstream", &silent_addr, "--recurser-timeout", "200ms"],
        None,
    );
    assert_eq!(dns2.dig(ME, &["www.example.test"]).status, "SERVFAIL");
}

#[test]
fn servfail_is_passed_on_but_never_cached() {
    let named = Named::start(&zone());
    let dir = tempfile::tempdir().unwrap();
    let dns = Dns::start(&["--answers", &answers_file(dir.path()), "--upstream", &named.addr()], None);
    let key = format!("corral_dns_upstream_failures_total{{upstream=\"{}\",reason=\"servfail\"}}", named.addr());
    // named answers SERVFAIL for broken.test (its zone file is missing).
    for asked in 1..=3 {
        assert_eq!(dns.dig(ME, &["x.broken.test"]).status, "SERVFAIL");
        assert_eq!(dns.metric(&key), asked as f64, "each SERVFAIL came from upstream, not from a cache");
    }
    assert_eq!(dns.metric("corral_dns_cache_hits_total"), 0.0);
    assert_eq!(dns.metric("corral_dns_cache_entries"), 0.0);

    // A SERVFAIL from the first upstream sends the question to the next one.
    let named2 = Named::start_without_broken_zone("x.broken.test. IN A 127.0.0.83");
    let both = format!("{},{}", named.addr(), named2.addr());
    let dns2 = Dns::start(&["--answers", &answers_file(dir.path()), "--upstream", &both], None);
    assert_eq!(dns2.dig(ME, &["x.broken.test"]).data("A"), ["127.0.0.83"]);
}

#[test]
fn truncated_upstream_answers_are_fetched_over_tcp() {
    let named = Named::start(&zone());
    // Confirm the setup: over UDP at 1232 bytes named itself must truncate.
    let direct = common::dig(named.port, ME, &["big.example.test", "+ignore", "+bufsize=1232"]);
    assert!(direct.has_flag("tc"), "named did not truncate: {}", direct.raw);

    let dir = tempfile::tempdir().unwrap();
    let dns = Dns::start(&["--answers", &answers_file(dir.path()), "--upstream", &named.addr()], None);
    // A client with a big buffer gets every record over UDP (we fetched them over TCP).
    let d = dns.dig(ME, &["big.example.test", "+bufsize=4096", "+ignore"]);
    assert!(!d.has_flag("tc"), "{}", d.raw);
    assert_eq!(d.data("A").len(), 95);
    // A client without EDNS gets a truncated answer and retries over TCP, as stub resolvers do.
    let d = dns.dig(ME, &["big.example.test", "+noedns", "+ignore"]);
    assert!(d.has_flag("tc"), "{}", d.raw);
    let d = dns.dig(ME, &["big.example.test", "+tcp"]);
    assert_eq!(d.data("A").len(), 95);
}

#[test]
fn never_forwards_to_itself_or_forbidden_addresses() {
    let dir = tempfile::tempdir().unwrap();
    // The answers file names this server itself and the metadata address as upstreams; a
    // resolv.conf names a loopback resolver on port 53.
    let resolv = dir.path().join("resolv.conf");
    std::fs::write(&resolv, "nameserver 127.0.0.11\nnameserver 169.254.169.250\n").unwrap();
    let port = event_bus::testkit::free_port();
    let file = dir.path().join("answers.json");
    std::fs::write(&file, format!(r#"{{"default": {{"recurse": ["127.0.0.1:{port}", "169.254.169.250"]}}}}"#)).unwrap();
    let dns = Dns::start_on(port, &["--answers", file.to_str().unwrap(), "--resolv-conf", resolv.to_str().unwrap()]);
    let started = std::time::Instant::now();
    assert_eq!(dns.dig(ME, &["www.example.test"]).status, "SERVFAIL");
    assert!(started.elapsed() < std::time::Duration::from_secs(1), "no upstream was tried");
    let m = dns.metrics();
    assert!(!m.contains("corral_dns_upstream_duration_seconds_count"), "something was forwarded: {m}");
}
