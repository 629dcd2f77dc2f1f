//! The pure middle: a load balancer service and the state around it → the complete HAProxy
//! configuration text, plus what the applier needs to change membership at runtime (each
//! backend's servers and server parameters) and to tell a structural change from a membership
//! change (the same text without its `server` lines).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use event_bus::model::Service;
use event_bus::Snapshot;

use crate::certs::{self, CertFile};
use crate::custom::{self, Custom};
use crate::error::ConfigError;
use crate::rules::{self, Frontend, Host, Plan, Protocol};
use crate::targets::{self, Check, Endpoint, Endpoints, Locality};

/// Where and how this load balancer runs; the same for every configuration it renders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Holds `haproxy.cfg`, the sockets, the server-state file and `certs/`.
    pub run_dir: PathBuf,
    /// Address the port rules' source ports are bound on.
    pub bind_address: IpAddr,
    /// Where HAProxy serves its own Prometheus metrics (`/metrics`) and stats page (`/stats`).
    pub stats_addr: Option<SocketAddr>,
    /// The host this load balancer runs on, for `only-local` / `prefer-local`.
    pub host_uuid: Option<String>,
}

impl Settings {
    pub fn config_path(&self) -> PathBuf {
        self.run_dir.join("haproxy.cfg")
    }
    pub fn master_socket(&self) -> PathBuf {
        self.run_dir.join("master.sock")
    }
    pub fn admin_socket(&self) -> PathBuf {
        self.run_dir.join("admin.sock")
    }
    pub fn server_state(&self) -> PathBuf {
        self.run_dir.join("server-state")
    }
    pub fn certs_dir(&self) -> PathBuf {
        self.run_dir.join("certs")
    }
}

/// The servers of one backend and how each is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendServers {
    pub servers: Vec<Endpoint>,
    /// Everything after `server <name> <addr>`: check settings, cookie, user params.
    pub params: String,
    /// HAProxy 2.6 accepts `add server` with these params (not with `cookie`): membership can
    /// change without a reload.
    pub dynamic: bool,
}

/// A complete configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub text: String,
    /// `text` without its `server` lines: equal structures differ only in membership.
    pub structure: String,
    pub certs: Vec<CertFile>,
    /// `(file name, content)` of the crt-list the TLS ports use.
    pub crt_list: Option<(String, String)>,
    pub backends: BTreeMap<String, BackendServers>,
    /// Source port → the first rule that named it.
    pub ports: BTreeMap<u16, usize>,
    pub warnings: Vec<String>,
}

/// Cookie stickiness (`lb_config.stickiness_policy`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sticky {
    pub cookie: Option<String>,
    pub mode: String,
    pub indirect: bool,
    pub nocache: bool,
    pub postonly: bool,
    pub domain: Option<String>,
}

impl Sticky {
    /// `None` when there is no policy or its mode is empty (Rancher's rule).
    pub fn parse(v: Option<&serde_json::Value>) -> Result<Option<Sticky>, ConfigError> {
        let Some(obj) = v.and_then(|v| v.as_object()) else { return Ok(None) };
        let text = |k: &str| obj.get(k).and_then(|v| v.as_str()).map(str::trim).filter(|s| !s.is_empty());
        let flag = |k: &str| match obj.get(k) {
            Some(serde_json::Value::Bool(b)) => *b,
            Some(serde_json::Value::String(s)) => s.eq_ignore_ascii_case("true"),
            _ => false,
        };
        let Some(mode) = text("mode") else { return Ok(None) };
        if !["insert", "rewrite", "prefix"].contains(&mode) {
            return Err(ConfigError::Stickiness {
                field: "mode",
                reason: format!("{mode:?}: expected insert, rewrite or prefix"),
            });
        }
        let token = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let cookie = text("cookie").map(str::to_string);
        if let Some(c) = cookie.as_deref().filter(|c| !token(c)) {
            return Err(ConfigError::Stickiness { field: "cookie", reason: format!("{c:?}: expected a cookie name") });
        }
        let domain = text("domain").map(str::to_string);
        if let Some(d) = domain.as_deref().filter(|d| !token(d)) {
            return Err(ConfigError::Stickiness { field: "domain", reason: format!("{d:?}: expected a domain name") });
        }
        Ok(Some(Sticky {
            cookie,
            mode: mode.into(),
            indirect: flag("indirect"),
            nocache: flag("nocache"),
            postonly: flag("postonly"),
            domain,
        }))
    }
}

/// Renders the configuration of load balancer `lb` from `snap`. Everything that can refuse a
/// configuration without touching the host happens here.
pub fn render_service(settings: &Settings, lb: &Service, snap: &Snapshot) -> Result<Rendered, ConfigError> {
    let plan = rules::plan(lb, snap)?;
    let lbc = lb.lb_config.as_ref().expect("plan checked lb_config");
    let tls = plan.frontends.iter().any(|f| f.protocol.terminates_tls());
    let cert_files = if tls { certs::load(lbc, snap)? } else { Vec::new() };
    let has_default = lbc.default_cert.as_deref().is_some_and(|d| !d.trim().is_empty());
    let custom = match lbc.config.as_deref() {
        Some(text) => custom::parse(text)?,
        None => Custom::default(),
    };
    let sticky = Sticky::parse(lbc.stickiness_policy.as_ref())?;
    let endpoints = targets::resolve(&plan, snap, &lb.uuid, Locality::of(lb), settings.host_uuid.as_deref());
    let label = snap.stack(&lb.stack_uuid).map_or(lb.name.clone(), |s| format!("{}/{}", s.name, lb.name));
    render(
        settings,
        &Input {
            label: &label,
            plan: &plan,
            endpoints: &endpoints,
            certs: &cert_files,
            has_default,
            custom: &custom,
            sticky: sticky.as_ref(),
        },
    )
}

pub struct Input<'a> {
    /// `stack/service`, for the header comment.
    pub label: &'a str,
    pub plan: &'a Plan,
    pub endpoints: &'a Endpoints,
    pub certs: &'a [CertFile],
    pub has_default: bool,
    pub custom: &'a Custom,
    pub sticky: Option<&'a Sticky>,
}

/// Two texts at once: the configuration, and the same without `server` lines.
struct Out {
    text: String,
    structure: String,
}

impl Out {
    fn line(&mut self, indent: bool, s: &str) {
        for t in [&mut self.text, &mut self.structure] {
            if indent {
                t.push_str("    ");
            }
            t.push_str(s);
            t.push('\n');
        }
    }
    fn section(&mut self, header: &str) {
        self.line(false, "");
        self.line(false, header);
    }
    fn server(&mut self, s: &str) {
        let _ = writeln!(self.text, "    {s}");
    }
}

fn global_builtins() -> Vec<(&'static str, String)> {
    vec![
        ("maxconn", "maxconn 4096".into()),
        // Old workers finish their connections after a reload, but not forever (Rancher's LBs
        // piled up old processes, rancher/rancher#6245).
        ("hard-stop-after", "hard-stop-after 10m".into()),
        ("ssl-default-bind-options", "ssl-default-bind-options ssl-min-ver TLSv1.2".into()),
        ("tune.ssl.default-dh-param", "tune.ssl.default-dh-param 2048".into()),
    ]
}

fn defaults_builtins() -> Vec<(&'static str, String)> {
    vec![
        ("mode", "mode tcp".into()),
        ("maxconn", "maxconn 4096".into()),
        ("retries", "retries 3".into()),
        // A connection refused by a server that just went away is retried on another one.
        ("option redispatch", "option redispatch".into()),
        ("timeout connect", "timeout connect 5s".into()),
        ("timeout client", "timeout client 50s".into()),
        ("timeout server", "timeout server 50s".into()),
        // Health survives reloads (Rancher reset every server to "UP 1/3" on each one).
        ("load-server-state-from-file", "load-server-state-from-file global".into()),
    ]
}

fn host_cond(fetch: &str, h: &Host) -> String {
    match h {
        Host::Exact(x) => format!("{{ {fetch} -m str -i {x} }}"),
        Host::Suffix(x) => format!("{{ {fetch} -m end -i {x} }}"),
        Host::Prefix(x) => format!("{{ {fetch} -m beg -i {x} }}"),
    }
}

fn server_params(check: Option<&Check>, weight: Option<u32>, user: &[String]) -> Vec<String> {
    let mut p = Vec::new();
    if let Some(c) = check {
        p.push(format!("check port {} inter {} rise {} fall {}", c.port, c.inter_ms, c.rise, c.fall));
    }
    // Rancher v1.6 wrote the weight when it was not HAProxy's default of 1.
    if let Some(w) = weight.filter(|w| *w != 1) {
        p.push(format!("weight {w}"));
    }
    p.extend(user.iter().cloned());
    p
}

/// A stable cookie value per server that says nothing about the backend's addresses.
fn cookie_value(name: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    name.hash(&mut h);
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}

pub fn render(settings: &Settings, input: &Input<'_>) -> Result<Rendered, ConfigError> {
    let Input { label, plan, endpoints, certs, has_default, custom, sticky } = *input;
    let ports: BTreeMap<u16, usize> = plan.frontends.iter().map(|f| (f.port, f.first_rule)).collect();
    for (port, fe) in &custom.frontends {
        if !ports.contains_key(port) {
            return Err(ConfigError::CustomConfig {
                line: fe.line,
                reason: format!("`frontend {port}`: no port rule has source_port {port}"),
            });
        }
    }
    for (name, be) in &custom.backends {
        if !plan.backends.contains_key(name) {
            let known: Vec<&String> = plan.backends.keys().collect();
            return Err(ConfigError::CustomConfig {
                line: be.line,
                reason: format!("`backend {name}`: no such backend (the generated ones are {known:?})"),
            });
        }
    }

    let mut o = Out { text: String::new(), structure: String::new() };
    o.line(false, &format!("# Generated by lb-haproxy for {label}. Edits are overwritten."));
    o.section("global");
    o.line(true, "master-worker");
    o.line(true, &format!("stats socket {} mode 600 level admin expose-fd listeners", abs(&settings.admin_socket())));
    o.line(true, &format!("server-state-file {}", abs(&settings.server_state())));
    for l in custom::merge(&custom.global, &global_builtins()) {
        o.line(true, &l);
    }
    o.section("defaults");
    for l in custom::merge(&custom.defaults, &defaults_builtins()) {
        o.line(true, &l);
    }
    for (header, lines) in &custom.other {
        o.section(header);
        for l in lines {
            o.line(true, l);
        }
    }
    if let Some(addr) = settings.stats_addr {
        o.section("frontend corral_stats");
        o.line(true, &format!("bind {addr}"));
        o.line(true, "mode http");
        o.line(true, "http-request use-service prometheus-exporter if { path /metrics }");
        o.line(true, "stats enable");
        o.line(true, "stats uri /stats");
    }

    let crt_list = (!certs.is_empty()).then(|| {
        let dir = settings.certs_dir();
        let content: String = certs.iter().map(|c| format!("{}\n", abs(&dir.join(&c.file_name)))).collect();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        content.hash(&mut h);
        (format!("{:016x}.crtlist", h.finish()), content)
    });

    for fe in &plan.frontends {
        frontend(&mut o, settings, fe, custom, crt_list.as_ref().map(|c| &c.0), has_default);
    }

    // Backends behind a TLS-terminating port: only they can see `ssl_fc`.
    let behind_tls: std::collections::BTreeSet<&String> = plan
        .frontends
        .iter()
        .filter(|f| f.protocol.terminates_tls())
        .flat_map(|f| f.routes.iter().map(|r| &r.backend).chain(f.default_backend.iter()))
        .collect();
    let mut backends = BTreeMap::new();
    for (name, be) in &plan.backends {
        o.section(&format!("backend {name}"));
        o.line(true, if be.http { "mode http" } else { "mode tcp" });
        o.line(true, "balance roundrobin");
        if be.http {
            o.line(
                true,
                "http-request set-header X-Forwarded-Port %[dst_port] if !{ req.hdr(X-Forwarded-Port) -m found }",
            );
            if behind_tls.contains(name) {
                o.line(
                    true,
                    "http-request add-header X-Forwarded-Proto https if { ssl_fc } !{ req.hdr(X-Forwarded-Proto) -m found }",
                );
            }
        }
        let check = endpoints.checks.get(name);
        if let Some(c) = check {
            o.line(true, &format!("timeout check {}", c.timeout_ms));
            if let Some(req) = &c.request_line {
                o.line(true, &format!("option httpchk {req}"));
            }
        }
        let sticky_here = sticky.filter(|_| be.http);
        if let Some(s) = sticky_here {
            let mut l = format!("cookie {} {}", s.cookie.clone().unwrap_or_else(|| format!("lb_{name}")), s.mode);
            for (on, word) in [(s.indirect, "indirect"), (s.nocache, "nocache"), (s.postonly, "postonly")] {
                if on {
                    l.push(' ');
                    l.push_str(word);
                }
            }
            if let Some(d) = &s.domain {
                l.push_str(&format!(" domain {d}"));
            }
            o.line(true, &l);
        }
        let named = custom.backends.get(name);
        for l in custom.all_backends.lines.iter().chain(named.map(|b| b.lines.iter()).into_iter().flatten()) {
            o.line(true, l);
        }
        let user: Vec<String> = custom
            .all_backends
            .server_params
            .iter()
            .chain(named.map(|b| b.server_params.iter()).into_iter().flatten())
            .cloned()
            .collect();
        let params = server_params(check, be.weight, &user).join(" ");
        let servers = endpoints.servers.get(name).cloned().unwrap_or_default();
        for s in &servers {
            let mut l = format!("server {} {}", s.name, s.addr);
            if !params.is_empty() {
                l.push(' ');
                l.push_str(&params);
            }
            if sticky_here.is_some() {
                l.push_str(&format!(" cookie {}", cookie_value(&s.name)));
            }
            o.server(&l);
        }
        backends.insert(name.clone(), BackendServers { servers, params, dynamic: sticky_here.is_none() });
    }
    Ok(Rendered {
        text: o.text,
        structure: o.structure,
        certs: certs.to_vec(),
        crt_list,
        backends,
        ports,
        warnings: plan.warnings.clone(),
    })
}

fn frontend(o: &mut Out, s: &Settings, fe: &Frontend, custom: &Custom, crt_list: Option<&String>, has_default: bool) {
    let extra = custom.frontends.get(&fe.port);
    o.section(&format!("frontend {}", fe.port));
    let mut bind = format!("bind {}:{}", s.bind_address, fe.port);
    if fe.protocol.terminates_tls() {
        if let Some(list) = crt_list {
            bind.push_str(&format!(" ssl crt-list {}", abs(&s.certs_dir().join(list))));
            if !has_default {
                // No default certificate: a name no certificate covers fails the handshake
                // rather than getting some other site's certificate (Rancher did the same).
                bind.push_str(" strict-sni");
            }
        }
    }
    if extra.is_some_and(|e| e.accept_proxy) {
        bind.push_str(" accept-proxy");
    }
    o.line(true, &bind);
    match fe.protocol {
        Protocol::Http | Protocol::Https => {
            o.line(true, "mode http");
            o.line(true, "option forwardfor");
            if fe.routes.iter().any(|r| r.host.is_some()) {
                // The Host header without its port, lower-cased, computed once per request.
                o.line(true, "http-request set-var(txn.lb_host) req.hdr(host),field(1,:),lower");
            }
            for r in &fe.routes {
                let mut conds = Vec::new();
                if let Some(h) = &r.host {
                    conds.push(host_cond("var(txn.lb_host)", h));
                }
                if let Some(p) = &r.path {
                    conds.push(format!("{{ path -m beg -i {p} }}"));
                }
                o.line(true, &format!("use_backend {} if {}", r.backend, conds.join(" ")));
            }
        }
        Protocol::Sni => {
            o.line(true, "mode tcp");
            o.line(true, "tcp-request inspect-delay 5s");
            o.line(true, "tcp-request content accept if { req_ssl_hello_type 1 }");
            for r in &fe.routes {
                let h = r.host.as_ref().expect("sni routes have a hostname");
                o.line(true, &format!("use_backend {} if {}", r.backend, host_cond("req_ssl_sni", h)));
            }
        }
        Protocol::Tls | Protocol::Tcp => {
            o.line(true, "mode tcp");
            for r in &fe.routes {
                let h = r.host.as_ref().expect("tls routes have a hostname");
                o.line(true, &format!("use_backend {} if {}", r.backend, host_cond("ssl_fc_sni", h)));
            }
        }
    }
    if let Some(d) = &fe.default_backend {
        o.line(true, &format!("default_backend {d}"));
    }
    for l in extra.map(|e| e.lines.as_slice()).unwrap_or_default() {
        o.line(true, l);
    }
}

/// HAProxy wants socket and file paths absolute.
fn abs(p: &Path) -> String {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()).display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use event_bus::keys::Document;
    use event_bus::model::{Certificate, LbConfig, PrivateKey, ServiceKind};
    use event_bus::testkit::fixtures;

    pub(crate) fn settings() -> Settings {
        Settings {
            run_dir: "/run/lb".into(),
            bind_address: "127.0.0.1".parse().unwrap(),
            stats_addr: None,
            host_uuid: None,
        }
    }

    fn env(lbc: serde_json::Value) -> (Service, Snapshot) {
        let mut lb = fixtures::service("lb", "st1", "lb");
        lb.kind = ServiceKind::LoadBalancer;
        lb.lb_config = Some(serde_json::from_value::<LbConfig>(lbc).unwrap());
        let mut records = vec![
            fixtures::stack("st1", "app").into_record(),
            fixtures::service("web", "st1", "web").into_record(),
            fixtures::service("api", "st1", "api").into_record(),
            lb.clone().into_record(),
        ];
        for (i, svc) in [(1, "web"), (2, "web"), (3, "api")] {
            let uuid = format!("c{i}");
            records.push(
                fixtures::container(&uuid, &format!("app-{svc}-{i}"), svc, "st1", "h1", &format!("10.42.0.{i}"))
                    .into_record(),
            );
            records.push(fixtures::status(&uuid, "h1", "running").into_record());
        }
        (lb, Snapshot::from_records(1, records))
    }

    #[test]
    fn http_rules_render_in_order_with_servers() {
        let (lb, snap) = env(serde_json::json!({"port_rules": [
            {"source_port": 80, "target_port": 8080, "service": "web"},
            {"source_port": 80, "target_port": 9000, "service": "api", "hostname": "api.example.com", "path": "/v1"},
            {"source_port": 80, "target_port": 9000, "service": "api", "hostname": "*.example.com"},
        ]}));
        let r = render_service(&settings(), &lb, &snap).unwrap();
        let t = &r.text;
        let a = t.find("use_backend 80_api_example_com_v1 if { var(txn.lb_host) -m str -i api.example.com } { path -m beg -i /v1 }").expect(t);
        let b = t.find("use_backend 80_example_com_ if { var(txn.lb_host) -m end -i .example.com }").expect(t);
        assert!(a < b, "exact host + path before the wildcard:\n{t}");
        assert!(t.contains("default_backend 80_\n"), "{t}");
        assert!(t.contains("bind 127.0.0.1:80\n"), "{t}");
        assert!(t.contains("    server app-web-1 10.42.0.1:8080\n    server app-web-2 10.42.0.2:8080\n"), "{t}");
        assert!(!r.structure.contains("server app-web-1"), "{}", r.structure);
        assert!(t.contains("stats socket /run/lb/admin.sock mode 600 level admin expose-fd listeners"));
        assert_eq!(r.backends["80_"].servers.len(), 2);
        assert!(r.backends["80_"].dynamic);
    }

    #[test]
    fn membership_changes_leave_the_structure_alone() {
        let rules = serde_json::json!({"port_rules": [{"source_port": 80, "target_port": 8080, "service": "web"}]});
        let (lb, snap) = env(rules);
        let before = render_service(&settings(), &lb, &snap).unwrap();
        let mut snap2 = snap.clone();
        let st = fixtures::status("c2", "h1", "stopped");
        snap2.apply(&st.key(), Some(st.clone().into_record()));
        let after = render_service(&settings(), &lb, &snap2).unwrap();
        assert_eq!(before.structure, after.structure);
        assert_ne!(before.text, after.text);
        assert_eq!(after.backends["80_"].servers.len(), 1);
    }

    #[test]
    fn tcp_sni_and_custom_config() {
        let (lb, snap) = env(serde_json::json!({
            "port_rules": [
                {"source_port": 3306, "target_port": 3306, "service": "api", "protocol": "tcp"},
                {"source_port": 8443, "target_port": 443, "service": "web", "protocol": "sni", "hostname": "*.secure.example.com"},
            ],
            "config": "global\n  maxconn 9000\ndefaults\n  timeout client 1h\nfrontend 3306\n  accept-proxy\nbackend 3306_\n  server $IP maxconn 5\n"
        }));
        let r = render_service(&settings(), &lb, &snap).unwrap();
        let t = &r.text;
        assert!(t.contains("bind 127.0.0.1:3306 accept-proxy\n    mode tcp\n    default_backend 3306_\n"), "{t}");
        assert!(t.contains("server app-api-3 10.42.0.3:3306 maxconn 5\n"), "{t}");
        assert!(
            t.contains("use_backend 8443_secure_example_com_ if { req_ssl_sni -m end -i .secure.example.com }"),
            "{t}"
        );
        assert!(t.contains("maxconn 9000") && !t.contains("maxconn 4096\n    hard"), "{t}");
        assert!(t.contains("timeout client 1h") && !t.contains("timeout client 50s"), "{t}");
        assert!(
            !t.contains("X-Forwarded-Port %[dst_port] if !{ req.hdr(X-Forwarded-Port) -m found }\n    server app-api"),
            "no HTTP rules in TCP backends"
        );
    }

    #[test]
    fn custom_sections_must_name_generated_ones() {
        let (lb, snap) = env(serde_json::json!({
            "port_rules": [{"source_port": 80, "target_port": 8080, "service": "web"}],
            "config": "backend nope\n  balance first\n"
        }));
        let e = render_service(&settings(), &lb, &snap).unwrap_err();
        assert!(matches!(e, ConfigError::CustomConfig { line: 1, .. }), "{e}");
    }

    #[test]
    fn stickiness_is_static() {
        let (lb, snap) = env(serde_json::json!({
            "port_rules": [{"source_port": 80, "target_port": 8080, "service": "web"}],
            "stickiness_policy": {"mode": "insert", "cookie": "SRV", "indirect": true, "nocache": true}
        }));
        let r = render_service(&settings(), &lb, &snap).unwrap();
        assert!(r.text.contains("cookie SRV insert indirect nocache\n"), "{}", r.text);
        assert!(r.text.contains(&format!("server app-web-1 10.42.0.1:8080 cookie {}", cookie_value("app-web-1"))));
        assert!(!r.backends["80_"].dynamic);
        let (lb, snap) = env(serde_json::json!({
            "port_rules": [{"source_port": 80, "target_port": 8080, "service": "web"}],
            "stickiness_policy": {"mode": "sometimes"}
        }));
        assert!(matches!(render_service(&settings(), &lb, &snap), Err(ConfigError::Stickiness { field: "mode", .. })));
    }

    #[test]
    fn health_check_and_weight_of_the_target_are_rendered() {
        let (lb, mut snap) = env(serde_json::json!({"port_rules": [
            {"source_port": 80, "target_port": 8080, "service": "web", "weight": 50}
        ]}));
        let mut web = Service::clone(snap.service("web").unwrap());
        web.launch_config.health_check = Some(
            serde_json::from_value(
                serde_json::json!({"port": 8080, "interval": 500, "request_line": "GET /healthz HTTP/1.0"}),
            )
            .unwrap(),
        );
        snap.apply(&web.key(), Some(web.clone().into_record()));
        let r = render_service(&settings(), &lb, &snap).unwrap();
        assert!(r.text.contains("option httpchk GET /healthz HTTP/1.0\n"), "{}", r.text);
        assert!(
            r.text.contains("server app-web-1 10.42.0.1:8080 check port 8080 inter 500 rise 2 fall 3 weight 50\n"),
            "{}",
            r.text
        );
    }

    #[test]
    fn certificate_problems_are_refused_without_showing_the_key() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
        let b = rcgen::generate_simple_self_signed(vec!["b.example.com".into()]).unwrap();
        let secret = b.signing_key.serialize_pem();
        let cert = |uuid: &str, key: String| Certificate {
            uuid: uuid.into(),
            name: format!("{uuid}-name"),
            cert: a.cert.pem(),
            key: PrivateKey(key),
            cn: None,
            subject_alternative_names: vec![],
            expires_at: None,
            extra: Default::default(),
        };
        let (lb, mut snap) = env(serde_json::json!({
            "port_rules": [{"source_port": 443, "target_port": 8080, "service": "web", "protocol": "https"}],
            "certs": ["good"], "default_cert": "bad"
        }));
        for c in [cert("good", a.signing_key.serialize_pem()), cert("bad", secret.clone())] {
            snap.apply(&c.key(), Some(c.clone().into_record()));
        }
        let e = render_service(&settings(), &lb, &snap).unwrap_err();
        assert!(
            matches!(&e, ConfigError::BadCertificate { field, name, .. } if field == "default_cert" && name == "bad-name"),
            "{e}"
        );
        assert!(e.to_string().contains("does not match"), "{e}");
        let body: String = secret.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!format!("{e} {e:?}").contains(&body[..20]));

        let (lb, mut snap2) = env(serde_json::json!({
            "port_rules": [{"source_port": 443, "target_port": 8080, "service": "web", "protocol": "https"}],
            "certs": ["good"]
        }));
        let good = cert("good", a.signing_key.serialize_pem());
        snap2.apply(&good.key(), Some(good.clone().into_record()));
        let r = render_service(&settings(), &lb, &snap2).unwrap();
        let (list, content) = r.crt_list.clone().unwrap();
        assert!(r.text.contains(&format!("ssl crt-list /run/lb/certs/{list} strict-sni")), "{}", r.text);
        assert!(content.starts_with("/run/lb/certs/good-name-"), "{content}");
        assert!(format!("{:?}", r.certs).contains("good-name") && !format!("{:?}", r.certs).contains("PRIVATE"));
    }

    /// Everything the renderer can emit, checked by the real `haproxy -c`.
    #[test]
    fn haproxy_accepts_what_we_render() {
        let a = rcgen::generate_simple_self_signed(vec!["a.example.com".into()]).unwrap();
        let (lb, mut snap) = env(serde_json::json!({
            "port_rules": [
                {"source_port": 80, "target_port": 8080, "service": "web"},
                {"source_port": 80, "target_port": 9000, "service": "api", "hostname": "api.example.com", "path": "/v1", "priority": 1},
                {"source_port": 80, "target_port": 9000, "service": "api", "hostname": "www.*"},
                {"source_port": 443, "target_port": 8080, "service": "web", "protocol": "https", "hostname": "*.example.com"},
                {"source_port": 444, "target_port": 8080, "service": "web", "protocol": "tls", "hostname": "a.example.com"},
                {"source_port": 3306, "target_port": 3306, "service": "api", "protocol": "tcp", "weight": 0},
                {"source_port": 8443, "target_port": 443, "service": "web", "protocol": "sni", "hostname": "*.secure.example.com"},
            ],
            "certs": ["good"], "default_cert": "good",
            "stickiness_policy": {"mode": "insert", "indirect": true, "nocache": true, "postonly": true, "domain": "example.com"},
            "config": "global\n  maxconn 9000\ndefaults\n  timeout client 1h\nfrontend 3306\n  accept-proxy\nbackend\n  http-request set-header X-All 1\nbackend 3306_\n  server $IP maxconn 5\nlisten extra\n  bind 127.0.0.1:1\n"
        }));
        let mut web = Service::clone(snap.service("web").unwrap());
        web.launch_config.health_check = Some(
            serde_json::from_value(serde_json::json!({"port": 8080, "request_line": "GET /healthz HTTP/1.0"})).unwrap(),
        );
        snap.apply(&web.key(), Some(web.clone().into_record()));
        let c = Certificate {
            uuid: "good".into(),
            name: "good".into(),
            cert: a.cert.pem(),
            key: PrivateKey(a.signing_key.serialize_pem()),
            cn: None,
            subject_alternative_names: vec![],
            expires_at: None,
            extra: Default::default(),
        };
        snap.apply(&c.key(), Some(c.clone().into_record()));
        let dir = tempfile::tempdir().unwrap();
        let s = Settings { run_dir: dir.path().into(), stats_addr: Some("127.0.0.1:1".parse().unwrap()), ..settings() };
        let r = render_service(&s, &lb, &snap).unwrap();
        crate::certs::write_all(&s.certs_dir(), &r.certs).unwrap();
        let (list, content) = r.crt_list.clone().unwrap();
        std::fs::write(s.certs_dir().join(list), content).unwrap();
        std::fs::write(s.config_path(), &r.text).unwrap();
        std::fs::write(s.server_state(), "1\n").unwrap();
        let out = std::process::Command::new("haproxy").arg("-c").arg("-f").arg(s.config_path()).output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{said}\n{}", r.text);
        // The bare `backend` section reaches TCP backends too, as in Rancher: HAProxy only warns.
        let unexpected = said.lines().filter(|l| l.contains("WARNING") && !l.contains("require HTTP mode"));
        assert_eq!(unexpected.count(), 0, "{said}\n{}", r.text);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(s.certs_dir()).unwrap().permissions().mode() & 0o777, 0o700);
        let pem = s.certs_dir().join(&r.certs[0].file_name);
        assert_eq!(std::fs::metadata(pem).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
