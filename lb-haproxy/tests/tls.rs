//! TLS passed through by SNI name to a TLS backend, and a certificate replaced in the state.

mod common;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::{tls, wait_async, Lb, State};
use event_bus::testkit::free_port;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

/// A TLS server on `addr` answering every request with `name`, in a thread of its own.
fn tls_backend(addr: std::net::SocketAddr, name: &'static str, cert: &rcgen::CertifiedKey<rcgen::KeyPair>) {
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
    let config = Arc::new(config);
    let listener = std::net::TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for sock in listener.incoming().flatten() {
            let config = config.clone();
            std::thread::spawn(move || {
                let conn = rustls::ServerConnection::new(config).unwrap();
                let mut s = rustls::StreamOwned::new(conn, sock);
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let _ =
                    write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}", name.len());
                s.conn.send_close_notify();
                let _ = s.flush();
            });
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_and_certificate_rotation() {
    let st = State::start().await;
    let port = free_port();
    let pass_cert = rcgen::generate_simple_self_signed(vec!["pass.example.com".into()]).unwrap();
    st.service("pass").await;
    tls_backend(common::addr("127.0.9.1", port), "pass-1", &pass_cert);
    st.container("pass", 1, "127.0.9.1").await;
    st.service("web").await;
    let _web = common::Backend::http("web-1", common::addr("127.0.9.2", port)).await;
    st.container("web", 1, "127.0.9.2").await;

    let first = rcgen::generate_simple_self_signed(vec!["site.example.com".into()]).unwrap();
    st.cert("site", &first.cert.pem(), &first.signing_key.serialize_pem()).await;
    let (sni, https) = (free_port(), free_port());
    st.lb(json!({
        "port_rules": [
            {"source_port": sni, "target_port": port, "service": "pass", "protocol": "sni", "hostname": "*.example.com"},
            {"source_port": https, "target_port": port, "service": "web", "protocol": "https"},
        ],
        "certs": ["site"],
    }))
    .await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();

    // Passed through: the backend's own certificate, not one of ours.
    let (served, status, body) = tls::aget(sni, "pass.example.com", "/").await.unwrap();
    assert_eq!(served, pass_cert.cert.der().to_vec());
    assert_eq!((status, body.as_str()), (200, "pass-1"));
    // A name no rule matches: no default backend on that port, the connection is closed.
    assert!(tls::aget(sni, "other.org", "/").await.is_err());

    // Terminated with the stored certificate; no default_cert, so strict SNI.
    let (served, status, _) = tls::aget(https, "site.example.com", "/").await.unwrap();
    assert_eq!((served, status), (first.cert.der().to_vec(), 200));
    assert!(tls::aget(https, "unknown.example.org", "/").await.is_err(), "strict-sni without a default");

    // The certificate is replaced in the state: a new file, one reload, the new one served.
    let second = rcgen::generate_simple_self_signed(vec!["site.example.com".into()]).unwrap();
    st.cert("site", &second.cert.pem(), &second.signing_key.serialize_pem()).await;
    wait_async("the new certificate applied", Duration::from_secs(30), || lb.reloads() == 1.0).await;
    let (served, _, _) = tls::aget(https, "site.example.com", "/").await.unwrap();
    assert_eq!(served, second.cert.der().to_vec());

    let certs = lb.run_dir.path().join("certs");
    assert_eq!(std::fs::metadata(&certs).unwrap().permissions().mode() & 0o777, 0o700);
    let files: Vec<_> = std::fs::read_dir(&certs).unwrap().flatten().collect();
    let pems: Vec<_> = files.iter().filter(|f| f.file_name().to_string_lossy().ends_with(".pem")).collect();
    assert_eq!(pems.len(), 1, "the old certificate file is removed: {files:?}");
    for f in &files {
        assert_eq!(f.metadata().unwrap().permissions().mode() & 0o777, 0o600, "{f:?}");
    }
}

/// TLS to backends (rancher/rancher#7576, #8655), asked for the way Rancher's raw config
/// allowed: `server $IP ssl verify none` in the backend's section. Both the servers in the file
/// and one added later through the runtime API speak TLS to their backend; without the line,
/// HAProxy would speak plain HTTP to a TLS server and answer 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_backends_through_the_raw_config() {
    let st = State::start().await;
    let port = free_port();
    let cert = rcgen::generate_simple_self_signed(vec!["backend.internal".into()]).unwrap();
    st.service("secure").await;
    tls_backend(common::addr("127.0.9.3", port), "secure-1", &cert);
    st.container("secure", 1, "127.0.9.3").await;
    let front = free_port();
    st.lb(json!({
        "port_rules": [
            {"source_port": front, "target_port": port, "service": "secure", "backend_name": "secure"},
        ],
        "config": "backend secure\n  server $IP ssl verify none\n",
    }))
    .await;
    let lb = Lb::start(&st.nats.url());
    lb.wait_ready();
    assert_eq!(common::aget(front, "x", "/").await, (200, "secure-1".to_string()));

    // A second target, added without a reload: the runtime API gets the same params.
    tls_backend(common::addr("127.0.9.4", port), "secure-2", &cert);
    st.container("secure", 2, "127.0.9.4").await;
    let mut seen = std::collections::BTreeSet::new();
    wait_async("both TLS backends answer", Duration::from_secs(30), || {
        let (status, body) = common::get(front, "x", "/");
        if status == 200 {
            seen.insert(body);
        }
        seen.len() == 2
    })
    .await;
    assert_eq!(lb.reloads(), 0.0, "membership changed through the runtime API");
}
