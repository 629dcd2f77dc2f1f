//! The HTTP side: routing, canonical paths, caller identity, content negotiation, long-poll.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::watch;

use crate::data::{Caller, Data};
use crate::local_caller::LocalCallers;
use crate::lookup::View;
use crate::node::Node;
use crate::render::{error_body, query_unescape, render, scalar_text, Format};
use event_bus::runtime::metrics::Metrics;

/// Longest path accepted (the original had none; ours answers 414 beyond it).
const MAX_PATH: usize = 4096;
/// Deepest path accepted (metadata trees are a handful of levels deep).
const MAX_SEGMENTS: usize = 64;
const DEFAULT_WAIT: Duration = Duration::from_secs(60);
const MAX_WAIT: Duration = Duration::from_secs(120);

#[derive(Clone)]
struct HttpMetrics {
    requests: Family<Vec<(String, String)>, Counter>,
    /// The counters of the status codes this server answers, looked up once: after a change,
    /// thousands of long-polls finish together and each would otherwise build a label set.
    by_code: Vec<(StatusCode, Counter)>,
    waiting: Gauge,
    generation: Gauge,
    change_to_answer: Histogram,
}

impl HttpMetrics {
    fn count(&self, status: StatusCode) {
        match self.by_code.iter().find(|(code, _)| *code == status) {
            Some((_, counter)) => counter.inc(),
            None => self.requests.get_or_create(&code_label(status)).inc(),
        };
    }
}

fn code_label(status: StatusCode) -> Vec<(String, String)> {
    vec![("code".into(), status.as_u16().to_string())]
}

/// Shared state of the server: the answers and who waits for them to change.
pub struct App {
    data: ArcSwap<Data>,
    generation: watch::Sender<u64>,
    xff: bool,
    /// Finds callers on the host's network by their container (`local_caller`), when on.
    local_callers: Option<LocalCallers>,
    metrics: HttpMetrics,
}

impl App {
    pub fn new(xff: bool, local_callers: Option<LocalCallers>, metrics: &Metrics) -> Arc<App> {
        let requests = Family::<Vec<(String, String)>, Counter>::default();
        let by_code = [
            StatusCode::OK,
            StatusCode::MOVED_PERMANENTLY,
            StatusCode::BAD_REQUEST,
            StatusCode::NOT_FOUND,
            StatusCode::URI_TOO_LONG,
            StatusCode::SERVICE_UNAVAILABLE,
        ]
        .into_iter()
        .map(|code| (code, requests.get_or_create(&code_label(code)).clone()))
        .collect();
        let m = HttpMetrics {
            requests,
            by_code,
            waiting: Gauge::default(),
            generation: Gauge::default(),
            // From 0.5 ms to ~1.1 s in steps of 1.5×: fine enough to tell 50 ms from 100 ms.
            change_to_answer: Histogram::new(exponential_buckets(0.0005, 1.5, 20)),
        };
        metrics.register("corral_metadata_requests", "Metadata requests by status code", m.requests.clone());
        metrics.register(
            "corral_metadata_change_to_answer_seconds",
            "From a new generation being served to a long-poll it released being answered (handed to the connection)",
            m.change_to_answer.clone(),
        );
        metrics.register(
            "corral_metadata_long_polls_waiting",
            "Long-poll requests waiting for a change",
            m.waiting.clone(),
        );
        metrics.register(
            "corral_metadata_generation",
            "Answer generations served (moves only when an answer changes)",
            m.generation.clone(),
        );
        Arc::new(App {
            data: ArcSwap::from_pointee(Data::empty()),
            generation: watch::channel(0).0,
            xff,
            local_callers,
            metrics: m,
        })
    }

    pub fn data(&self) -> Arc<Data> {
        self.data.load_full()
    }

    /// Serves `data` from now on and wakes the long-pollers. Returns the generation served
    /// until now (see `settled`).
    pub fn publish(&self, mut data: Data) -> Arc<Data> {
        data.published = std::time::Instant::now();
        let g = data.generation;
        tracing::info!(generation = g, version = %data.token, "serving new metadata answers");
        let previous = self.data.swap(Arc::new(data));
        self.metrics.generation.set(g as i64);
        self.generation.send_replace(g);
        previous
    }

    /// Waits (at most `limit`) until no request holds `previous` any more but the caller: every
    /// long-poll parked on it has been woken and answered. Work a change brings besides waking
    /// them (building the new tree, freeing the old one) waits for this, so that it does not
    /// take the cores from the answers thousands of waiters are owed.
    pub async fn settled(previous: &Arc<Data>, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while Arc::strong_count(previous) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.data.load().generation > 0
    }
}

/// The router: every path goes to one handler (the original's tree has no fixed routes).
pub fn router(app: Arc<App>) -> axum::Router {
    axum::Router::new().fallback(handle).with_state(app)
}

fn response(status: StatusCode, body: impl Into<Body>, error: bool) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    if error {
        h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    }
    r
}

/// Go's `path.Clean`: one slash between segments, `.` and `..` resolved, no trailing slash.
fn clean_path(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

fn client_ip(peer: SocketAddr, headers: &axum::http::HeaderMap, xff: bool) -> String {
    if xff {
        if let Some(v) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            // The original used the whole header value, as is: no splitting on commas, no trimming.
            return v.to_string();
        }
    }
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)).to_string(),
        ip => ip.to_string(),
    }
}

struct Query {
    wait: bool,
    value: Option<String>,
    max_wait: Duration,
}

fn parse_query(q: Option<&str>) -> Query {
    let mut out = Query { wait: false, value: None, max_wait: DEFAULT_WAIT };
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = query_unescape(v).unwrap_or_default();
        match k {
            "wait" => out.wait = v == "true",
            "value" => out.value = Some(v),
            "maxWait" => {
                out.max_wait = match v.parse::<u64>() {
                    Ok(0) | Err(_) => DEFAULT_WAIT,
                    Ok(s) => Duration::from_secs(s).min(MAX_WAIT),
                }
            }
            _ => {}
        }
    }
    out
}

/// One client connection: its addresses, and the Docker container the caller's socket was made
/// in, looked up at most once (and only if a request needs it).
struct Conn {
    peer: SocketAddr,
    /// The server's end; unknown on the in-process router (no lookup there).
    local: Option<SocketAddr>,
    docker: tokio::sync::OnceCell<Option<String>>,
}

impl Conn {
    fn new(peer: SocketAddr, local: Option<SocketAddr>) -> Conn {
        Conn { peer, local, docker: tokio::sync::OnceCell::new() }
    }

    /// The Docker id of the caller's container, if the caller shares this network namespace.
    async fn docker_id(&self, app: &App) -> Option<String> {
        let local = self.local?;
        let (peer, callers) = (self.peer, app.local_callers.clone()?);
        self.docker
            .get_or_init(|| async move {
                // A netlink request and a read of Docker's cgroup directories: short, but file
                // system work, so not on the async workers.
                let id = tokio::task::spawn_blocking(move || callers.docker_id(local, peer)).await.ok().flatten();
                tracing::debug!(%peer, container = id.as_deref().unwrap_or("none"), "caller from this host's network");
                id
            })
            .await
            .clone()
    }
}

async fn handle(State(app): State<Arc<App>>, ConnectInfo(peer): ConnectInfo<SocketAddr>, req: Request) -> Response {
    answer_counted(&app, &Conn::new(peer, None), req).await
}

async fn answer_counted(app: &App, conn: &Conn, req: Request) -> Response {
    let resp = answer(app, conn, req).await;
    app.metrics.count(resp.status());
    resp
}

async fn answer(app: &App, conn: &Conn, req: Request) -> Response {
    let peer = conn.peer;
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return response(StatusCode::NOT_FOUND, "404 page not found\n", true);
    }
    let format = Format::from_accept(req.headers().get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    let path = req.uri().path();
    if path.len() > MAX_PATH {
        return response(StatusCode::URI_TOO_LONG, error_body(414, "Path too long", format), true);
    }
    let clean = clean_path(path);
    let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path };
    if clean != trimmed && !(clean == "/" && trimmed.is_empty()) {
        let location = match req.uri().query() {
            Some(q) => format!("{clean}?{q}"),
            None => clean.clone(),
        };
        let mut r = response(StatusCode::MOVED_PERMANENTLY, String::new(), false);
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return r;
    }
    let mut segments = Vec::new();
    for raw in clean.split('/').filter(|s| !s.is_empty()) {
        match query_unescape(raw) {
            Ok(s) => segments.push(s),
            Err(e) => return response(StatusCode::BAD_REQUEST, error_body(400, &e, format), true),
        }
    }
    if segments.len() > MAX_SEGMENTS {
        return response(StatusCode::NOT_FOUND, error_body(404, "Not found", format), true);
    }
    if segments.first().map(String::as_str) == Some("favicon.ico") {
        return response(StatusCode::NOT_FOUND, "404 page not found\n", true);
    }
    let Some((version, rest)) = segments.split_first() else {
        let data = app.data();
        let versions = data
            .version_names()
            .into_iter()
            .map(|v| (v.as_str().into(), Node::String(format!("/{v}").into())))
            .collect();
        return response(StatusCode::OK, render(&Node::object(versions), format), false);
    };
    let ip = client_ip(peer, req.headers(), app.xff);
    let forwarded = app.xff && req.headers().contains_key("x-forwarded-for");
    let query = parse_query(req.uri().query());
    // Everything needed is copied out: the request (and the connection's read buffer its head
    // points into) is freed now, not by each of thousands of waiters when a change releases them.
    drop(req);
    // A caller whose address names no container may be one on the host's network: find it by
    // the container its socket was made in, when the answer can depend on who asks (the
    // version's root or `self`) and the address is the connection's own (not a forwarded one).
    let about_self = rest.first().is_none_or(|f| f.eq_ignore_ascii_case("self"));
    let look_up = about_self && !forwarded && app.local_callers.is_some() && app.data().ip_is_unknown(&ip);
    let who = match if look_up { conn.docker_id(app).await } else { None } {
        Some(id) => Caller::Docker(id),
        None => Caller::Ip(ip),
    };
    let mut rx = app.generation.subscribe();
    let deadline = tokio::time::Instant::now() + query.max_wait;
    let long_poll = query.wait && query.value.is_some();
    let _waiting = long_poll.then(|| WaitGuard::new(&app.metrics.waiting));
    let mut woken = false;
    loop {
        rx.borrow_and_update();
        let data = app.data();
        let version_answer = data.version_answer(version, format).filter(|_| is_version_path(rest));
        // `differs`: the value the long-poll waits on is not the one asked with.
        let (found, differs) = match version_answer {
            // `/version` is what every long-poller asks after a change: the same bytes for all.
            Some((token, body)) => (Some(body), query.value.as_deref() != Some(token)),
            None => {
                if data.needs_build(version) && !is_version_path(rest) {
                    // The first request after a change builds the version's tree; do it where it
                    // does not hold up the async workers (concurrent requests wait on the same build).
                    let (d, v) = (data.clone(), version.clone());
                    let _ = tokio::task::spawn_blocking(move || d.default_tree(&v).is_some()).await;
                }
                match resolve(&data, version, rest, &who, format, long_poll) {
                    Outcome::InvalidVersion if data.generation > 0 => {
                        return response(StatusCode::NOT_FOUND, error_body(404, "Invalid version", format), true)
                    }
                    Outcome::InvalidVersion | Outcome::Missing => (None, false),
                    Outcome::Found { body, text } => {
                        let differs = matches!((&text, &query.value), (Some(t), Some(want)) if t != want);
                        (Some(body), differs)
                    }
                }
            }
        };
        if !long_poll || differs || tokio::time::Instant::now() >= deadline {
            if woken && differs {
                app.metrics.change_to_answer.observe(data.published.elapsed().as_secs_f64());
            }
            return match found {
                Some(body) => response(StatusCode::OK, body, false),
                None => response(StatusCode::NOT_FOUND, error_body(404, "Not found", format), true),
            };
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return response(StatusCode::SERVICE_UNAVAILABLE, String::new(), true) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
        woken = true;
    }
}

fn is_version_path(rest: &[String]) -> bool {
    matches!(rest, [one] if one.eq_ignore_ascii_case("version"))
}

enum Outcome {
    InvalidVersion,
    Missing,
    /// The rendered body, and (for long-poll) the value's text to compare with `value=`.
    Found {
        body: bytes::Bytes,
        text: Option<String>,
    },
}

/// Looks the path up for one caller and renders it, without copying the tree: answers that do
/// not depend on the caller are rendered once per generation and then served from a cache.
fn resolve(data: &Data, version: &str, rest: &[String], who: &Caller, format: Format, long_poll: bool) -> Outcome {
    let Some(default) = data.default_tree(version) else { return Outcome::InvalidVersion };
    let own = data.caller(version, who);
    let stack = own.as_ref().and_then(|o| o.get("self")?.get("stack")?.get("name")).and_then(Node::as_str);
    // An answer is the same for every caller when the caller's own entry does not hold its
    // top-level key (in either case: lookups retry lowercased).
    let shared = rest.first().is_some_and(|first| {
        own.as_ref().is_none_or(|o| o.get(first.as_str()).is_none() && o.get(first.to_lowercase().as_str()).is_none())
    });
    let key = shared.then(|| crate::data::RenderKey {
        version: version.to_string(),
        path: rest.to_vec(),
        prefer_stack: stack
            .filter(|_| rest.first().is_some_and(|f| f.eq_ignore_ascii_case("services")))
            .map(String::from),
        format,
    });
    if let Some(hit) = key.as_ref().and_then(|k| data.rendered(k)).filter(|_| !long_poll) {
        return Outcome::Found { body: hit, text: None };
    }
    let view = View { own: own.as_ref(), default, prefer_stack: stack };
    let Some(found) = view.get(rest) else { return Outcome::Missing };
    if rest.is_empty() {
        // The whole environment under the version (long-poll compares its text listing).
        let body = bytes::Bytes::from(render(&found, format));
        let text = long_poll.then(|| render(&found, Format::Text));
        return Outcome::Found { body, text };
    }
    let body = bytes::Bytes::from(render(&found, format));
    if let Some(k) = key {
        data.remember(k, body.clone());
    }
    // Go's `%v` of a missing value is `<nil>`, which no `value=` equals: a null answers at once.
    let text = long_poll.then(|| if found.is_null() { "<nil>".to_string() } else { scalar_text(&found) });
    Outcome::Found { body, text }
}

struct WaitGuard(Gauge);

impl WaitGuard {
    fn new(g: &Gauge) -> Self {
        g.inc();
        WaitGuard(g.clone())
    }
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// How long a client may take to send its request head (slowloris guard).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head accepted.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// How long in-flight requests (long-polls included) may run on after a shutdown signal.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves `app` on `listener` until `shutdown` resolves, then lets in-flight requests finish
/// for up to 5 s. Slow or oversized request heads are cut off (hyper's read timeout and buffer cap).
pub async fn serve(listener: tokio::net::TcpListener, app: Arc<App>, shutdown: impl std::future::Future<Output = ()>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    // HTTP/1 only: metadata clients speak it, and the head-read timeout guards only HTTP/1 (a
    // cleartext HTTP/2 connection could otherwise idle past it).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEAD_BYTES)
        .max_header_size(MAX_HEAD_BYTES);
    let builder = Arc::new(builder);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        // Answers go out whole in one write; Nagle would only hold back the tail of a big one.
        let _ = stream.set_nodelay(true);
        let conn = Arc::new(Conn::new(peer, stream.local_addr().ok()));
        // The same handler as `router`'s, called directly: no router, layers or extensions to
        // build per connection and per request.
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (app, conn) = (app.clone(), conn.clone());
            async move { Ok::<_, std::convert::Infallible>(answer_counted(&app, &conn, req.map(Body::new)).await) }
        });
        let conn = builder.serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::info!("shutdown: cut off requests still running after {DRAIN:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_cleaned_like_go() {
        assert_eq!(clean_path("/latest//self/./container/../host/"), "/latest/self/host");
        assert_eq!(clean_path("/"), "/");
        assert_eq!(clean_path("/../x"), "/x");
    }

    #[test]
    fn max_wait_defaults_and_caps() {
        assert_eq!(parse_query(Some("wait=true&value=x&maxWait=10")).max_wait, Duration::from_secs(10));
        assert_eq!(parse_query(Some("maxWait=0")).max_wait, DEFAULT_WAIT);
        assert_eq!(parse_query(Some("maxWait=abc")).max_wait, DEFAULT_WAIT);
        assert_eq!(parse_query(Some("maxWait=999")).max_wait, MAX_WAIT);
        let q = parse_query(Some("wait=true&value="));
        assert!(q.wait && q.value.as_deref() == Some(""));
    }
}

/// Random bytes through every parser that faces the network: none may panic. (A deterministic
/// xorshift stream, so a failure reproduces.)
#[cfg(test)]
mod robustness {
    use super::*;
    use crate::lookup::View;
    use crate::render::query_unescape;

    fn xorshift(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn random_paths_queries_and_headers_never_panic() {
        let tree = Node::from(
            serde_json::json!({"services": [{"name": "web", "uuid": "u", "stack_name": "a"}], "self": {"host": {}}}),
        );
        let alphabet = b"/%.+?&=aZ09-_~ \x00\xff\\*>";
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..50_000 {
            let len = (xorshift(&mut state) % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| alphabet[(xorshift(&mut state) as usize) % alphabet.len()]).collect();
            let s = String::from_utf8_lossy(&bytes).into_owned();
            let _ = clean_path(&s);
            let _ = parse_query(Some(&s));
            let _ = Format::from_accept(Some(&s));
            let segs: Vec<String> = s.split('/').filter_map(|p| query_unescape(p).ok()).collect();
            let _ = View { own: None, default: &tree, prefer_stack: Some("a") }.get(&segs);
        }
    }
}
