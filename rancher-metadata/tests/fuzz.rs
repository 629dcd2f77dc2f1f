//! Hostile requests, generated: paths built from the API's own words mixed with junk (bad and
//! odd escapes, `..`, huge numbers, non-ASCII, very long segments), odd query strings and
//! Accept headers, sent to the real router in process (no sockets: thousands of cases per run).
//! Whatever comes in, the server answers with a status below 500, never panics, never hangs,
//! and its error bodies are the JSON the original sent when JSON was asked for.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::Request;
use event_bus::runtime::metrics::Metrics;
use event_bus::testkit::fixtures::EnvironmentShape;
use event_bus::Snapshot;
use proptest::prelude::*;
use rancher_metadata::data::Data;
use rancher_metadata::server::{router, App};
use tower::ServiceExt as _;

/// One server for every case (building answers is what takes time, not answering).
fn app() -> Arc<App> {
    static APP: std::sync::OnceLock<Arc<App>> = std::sync::OnceLock::new();
    APP.get_or_init(build).clone()
}

fn build() -> Arc<App> {
    let shape = EnvironmentShape { hosts: 3, stacks: 2, services: 6, containers: 20 };
    let snap = Arc::new(Snapshot::from_records(7, shape.build()));
    let app = App::new(false, None, &Metrics::new());
    let data = Data::from_snapshot(snap, Some("h1".into()), &app.data()).expect("answers from the fixture");
    app.publish(data);
    app
}

fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec![
            "latest", "2015-07-25", "2015-12-19", "2016-07-29", "self", "container", "containers", "services",
            "stacks", "hosts", "host", "service", "metadata", "labels", "ports", "name", "primary_ip", "version",
            "0", "1", "-1", "99999999999999999999999", "..", ".", "", "%2F", "%2e%2e", "%", "%zz", "%C3%A9", "é",
            "a%00b", "LATEST", "Self",
        ])
        .prop_map(String::from),
        1 => "[a-zA-Z0-9%._~-]{0,12}",
        1 => "\\PC{0,6}",
        1 => "[a-z]{200,2000}",
    ]
}

fn path() -> impl Strategy<Value = String> {
    (prop::collection::vec(segment(), 0..40), any::<bool>()).prop_map(|(segs, slash)| {
        let mut p = format!("/{}", segs.join("/"));
        if slash {
            p.push('/');
        }
        p
    })
}

fn query() -> impl Strategy<Value = Option<String>> {
    prop::option::of(prop_oneof![
        Just("wait=true&value=not-the-version&maxWait=1".to_string()),
        Just("maxWait=-5".to_string()),
        Just("maxWait=99999999999999999999".to_string()),
        Just("value=%zz&wait=maybe".to_string()),
        "[a-zA-Z0-9=&%+]{0,64}",
        "[a-z=&]{2000,5000}",
    ])
}

fn accept() -> impl Strategy<Value = Option<&'static str>> {
    prop::option::of(prop::sample::select(vec![
        "application/json",
        "application/yaml",
        "text/plain",
        "*/*",
        "application/json;q=0.1, text/plain",
        "\u{0}garbage",
    ]))
}

/// Builds the request, or `None` when the generated path is not even a valid URI (hyper would
/// refuse it before any handler runs).
fn request(path: &str, query: Option<&str>, accept: Option<&str>) -> Option<Request<Body>> {
    let uri = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    let mut b = Request::builder().uri(uri.parse::<axum::http::Uri>().ok()?);
    if let Some(a) = accept.filter(|a| axum::http::HeaderValue::from_str(a).is_ok()) {
        b = b.header("accept", a);
    }
    let mut req = b.body(Body::empty()).ok()?;
    let peer: SocketAddr = "127.0.0.1:40000".parse().expect("address");
    req.extensions_mut().insert(ConnectInfo(peer));
    Some(req)
}

proptest! {
    // 500 cases in CI; `PROPTEST_CASES=100000 cargo test -p rancher-metadata --test fuzz` for a long run.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(500),
        ..ProptestConfig::default()
    })]
    #[test]
    fn any_request_gets_a_clear_answer(p in path(), q in query(), a in accept()) {
        static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
        let rt = RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap());
        let app = app();
        let Some(req) = request(&p, q.as_deref(), a) else { return Ok(()) };
        let (status, json_asked, body) = rt.block_on(async {
            let r = tokio::time::timeout(Duration::from_secs(5), router(app).oneshot(req))
                .await
                .expect("answered within 5 s (a long-poll with a value that is not the version returns at once)")
                .expect("infallible");
            let status = r.status().as_u16();
            let body = axum::body::to_bytes(r.into_body(), 64 << 20).await.expect("body");
            (status, a == Some("application/json"), body)
        });
        prop_assert!(status < 500, "{p}?{q:?}: status {status}");
        if json_asked && status >= 400 {
            prop_assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok(), "{p}: error body not JSON: {:?}", String::from_utf8_lossy(&body));
        }
    }
}
