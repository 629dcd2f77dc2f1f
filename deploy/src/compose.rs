//! docker-compose.yml (v1 flat, v2 `services:`) + rancher-compose.yml → the stack's desired
//! services. Every compose field Rancher mapped is carried (into the launch config's typed
//! fields, or kept verbatim beside them) or refused by name; unknown keys are errors; every
//! problem in both files is reported at once, with its position.

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use event_bus::model::{HealthCheck, LbConfig, Service, ServiceKind, Stack};
use serde_json::{json, Value as Json};

use crate::problem::Problems;
use crate::yaml::{Node, Pos, Value};

/// Compose keys carried into typed launch-config fields (handled one by one below).
const TYPED: &[&str] = &[
    "image",
    "command",
    "entrypoint",
    "environment",
    "env_file",
    "labels",
    "ports",
    "expose",
    "dns",
    "dns_search",
    "network_mode",
    "net",
    "volumes",
    "volumes_from",
    "hostname",
    "privileged",
    "cap_add",
    "mem_reservation",
    "links",
    "external_links",
];

/// Compose keys Rancher mapped that Corral keeps verbatim in the launch config (the deploy agent
/// reads them when it creates the container).
const VERBATIM: &[&str] = &[
    "domainname",
    "user",
    "working_dir",
    "cap_drop",
    "devices",
    "restart",
    "security_opt",
    "read_only",
    "tty",
    "stdin_open",
    "cpu_shares",
    "cpuset",
    "cpu_period",
    "cpu_quota",
    "mem_limit",
    "memswap_limit",
    "mem_swappiness",
    "kernel_memory",
    "oom_kill_disable",
    "oom_score_adj",
    "shm_size",
    "tmpfs",
    "ulimits",
    "sysctls",
    "pid",
    "ipc",
    "uts",
    "group_add",
    "cgroup_parent",
    "extra_hosts",
    "stop_signal",
    "init",
    "isolation",
    "logging",
    "log_driver",
    "log_opt",
    "healthcheck",
    "dns_opt",
    "volume_driver",
    "blkio_weight",
    "blkio_weight_device",
    "device_read_bps",
    "device_write_bps",
    "device_read_iops",
    "device_write_iops",
    "mac_address",
    "stop_grace_period",
    "depends_on",
    "cpus",
    "cpu_count",
    "cpu_percent",
    "storage_opt",
];

/// Whether a compose key is one kept verbatim for the agent.
pub fn is_verbatim(key: &str) -> bool {
    VERBATIM.contains(&key)
}

/// Compose keys refused, with the reason.
const REFUSED: &[(&str, &str)] = &[
    ("build", "building images is not supported (there is no registry to push to): build the image on the hosts and give `image`"),
    ("container_name", "Corral names containers <stack>-<service>-<n> so that DNS and metadata can find them; remove `container_name`"),
    ("networks", "Corral has one managed network per environment; use `network_mode` (host, none, container:<sidekick>)"),
    ("secrets", "Docker secrets are not supported"),
    ("configs", "Docker configs are not supported"),
    ("deploy", "the Swarm `deploy` block is not supported; use rancher-compose.yml (scale, upgrade_strategy)"),
];

const RANCHER_KEYS: &[&str] = &[
    "scale",
    "retain_ip",
    "health_check",
    "lb_config",
    "load_balancer_config",
    "upgrade_strategy",
    "metadata",
    "external_ips",
    "hostname",
    "start_on_create",
    "scale_policy",
];

pub const SIDEKICKS_LABEL: &str = "io.rancher.sidekicks";

/// The parsed stack: its services in file order, with the files' problems.
#[derive(Debug, Default)]
pub struct StackFiles {
    pub services: Vec<Service>,
    /// rancher-compose.yml settings as (service, key, position), and that file's name, for
    /// checks across both files.
    pub rancher_settings: Vec<(String, String, Pos)>,
    pub rancher_file: String,
    /// Top-level `volumes:` of a v2 file, kept as written.
    pub volumes: BTreeMap<String, Json>,
}

/// A stack name Rancher would accept (also a DNS label).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

pub fn stack_id(stack: &str) -> String {
    stack.to_string()
}

/// `<stack>=<service>`: `=` cannot appear in names, so ids never collide.
pub fn service_id(stack: &str, service: &str) -> String {
    format!("{stack}={service}")
}

pub fn stack_record(name: &str) -> Stack {
    Stack::new(&stack_id(name), name)
}

/// The services of a compose file (after interpolation). `base_dir` resolves `env_file`.
pub fn services_of(compose: &Node, stack: &str, base_dir: &std::path::Path, p: &mut Problems) -> StackFiles {
    let mut out = StackFiles::default();
    let Some(top) = compose.as_map() else {
        match compose.value {
            Value::Null => p.add(compose.pos, "", "the file is empty: a stack file defines at least one service"),
            _ => p.add(compose.pos, "", format!("expected a map of services, found {}", compose.kind())),
        }
        return out;
    };
    let v2 = compose.get("version").is_some();
    let (services, prefix) = if v2 {
        match compose.get("version").and_then(Node::as_str) {
            Some("2") | Some("2.0") | Some("2.1") => {}
            Some(other) => {
                let pos = compose.get("version").map(|n| n.pos).unwrap_or_default();
                p.add(
                    pos,
                    "version",
                    format!("unsupported version {other:?}: Rancher 1.6 read versions 1 (no `version`) and 2"),
                );
            }
            None => p.add(compose.pos, "version", "expected a string such as '2'"),
        }
        for (k, v) in top {
            match k.as_str() {
                Some("version") | Some("services") => {}
                Some("volumes") => {
                    if let Some(m) = v.as_map() {
                        for (name, def) in m {
                            out.volumes.insert(name.as_str().unwrap_or_default().to_string(), def.to_json());
                        }
                    } else if !matches!(v.value, Value::Null) {
                        p.add(v.pos, "volumes", format!("expected a map of volumes, found {}", v.kind()));
                    }
                }
                Some(other @ ("networks" | "secrets" | "configs")) => {
                    p.add(k.pos, other, format!("top-level `{other}` is not supported by Corral"))
                }
                Some(other) => p.add(k.pos, other, "unknown top-level key (expected version, services, volumes)"),
                None => p.add(k.pos, "", "keys must be strings"),
            }
        }
        (compose.get("services"), "services.")
    } else {
        (Some(compose), "")
    };
    let Some(services) = services.filter(|s| !matches!(s.value, Value::Null)) else {
        p.add(
            compose.pos,
            prefix.trim_end_matches('.'),
            "no services: a stack file defines at least one (an empty file would remove every service of the stack)",
        );
        return out;
    };
    let Some(entries) = services.as_map() else {
        p.add(
            services.pos,
            prefix.trim_end_matches('.'),
            format!("expected a map of services, found {}", services.kind()),
        );
        return out;
    };
    let mut seen = HashSet::new();
    for (k, def) in entries {
        let Some(name) = k.as_str() else { continue };
        let path = format!("{prefix}{name}");
        if !valid_name(name) {
            p.add(
                k.pos,
                &path,
                "service names are 1-63 letters, digits and dashes, not starting or ending with a dash",
            );
            continue;
        }
        if !seen.insert(name.to_ascii_lowercase()) {
            p.add(k.pos, &path, "a service of this name (ignoring case) is already defined");
            continue;
        }
        out.services.push(service(name, def, stack, &path, base_dir, p));
    }
    out
}

fn service(name: &str, def: &Node, stack: &str, path: &str, base_dir: &std::path::Path, p: &mut Problems) -> Service {
    let mut svc = event_bus_service(stack, name);
    let Some(entries) = def.as_map() else {
        p.add(def.pos, path, format!("expected a map of settings, found {}", def.kind()));
        return svc;
    };
    let mut env_from_files: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in entries {
        let Some(key) = k.as_str() else { continue };
        let at = format!("{path}.{key}");
        let lc = &mut svc.launch_config;
        match key {
            "image" => lc.image = string(v, &at, p).unwrap_or_default(),
            "command" => lc.command = words(v, &at, p),
            "entrypoint" => lc.entry_point = words(v, &at, p),
            "environment" => lc.environment = pairs(v, &at, p, true),
            "env_file" => {
                for file in strings(v, &at, p) {
                    match std::fs::read_to_string(base_dir.join(&file)) {
                        Ok(text) => match parse_env_lines(&text) {
                            Ok(vars) => env_from_files.extend(vars),
                            Err((line, e)) => p.add(v.pos, &at, format!("{file} line {line}: {e}")),
                        },
                        Err(e) => p.add(v.pos, &at, format!("cannot read {file}: {e}")),
                    }
                }
            }
            "labels" => lc.labels = pairs(v, &at, p, false),
            "ports" => {
                lc.ports = strings(v, &at, p);
                for (i, port) in lc.ports.iter().enumerate() {
                    if let Err(e) = check_port_spec(port) {
                        p.add(item_pos(v, i), &format!("{at}[{i}]"), e);
                    }
                }
            }
            "expose" => {
                lc.expose = strings(v, &at, p);
                for (i, port) in lc.expose.iter().enumerate() {
                    if let Err(e) = check_port_spec(port) {
                        p.add(item_pos(v, i), &format!("{at}[{i}]"), e);
                    }
                }
            }
            "dns" => {
                // rancher-dns would skip an entry that is not an address: say so here instead.
                lc.dns = strings(v, &at, p);
                for (i, d) in lc.dns.iter().enumerate() {
                    if d.parse::<IpAddr>().is_err() && d.parse::<std::net::SocketAddr>().is_err() {
                        p.add(
                            item_pos(v, i),
                            &format!("{at}[{i}]"),
                            format!("{d:?}: expected an IP address, optionally with :port"),
                        );
                    }
                }
            }
            "dns_search" => lc.dns_search = strings(v, &at, p),
            "network_mode" | "net" => lc.network_mode = string(v, &at, p),
            "volumes" => lc.volumes = strings(v, &at, p),
            "volumes_from" => lc.volumes_from = strings(v, &at, p),
            "hostname" => lc.hostname = string(v, &at, p),
            "privileged" => lc.privileged = boolean(v, &at, p).unwrap_or(false),
            "cap_add" => lc.cap_add = strings(v, &at, p),
            "mem_reservation" => lc.memory_reservation = bytes(v, &at, p),
            "links" | "external_links" => {
                for (i, link) in strings(v, &at, p).into_iter().enumerate() {
                    let (target, alias) = link.split_once(':').unwrap_or((&link, ""));
                    let target = if key == "links" {
                        if target.contains('/') {
                            p.add(
                                item_pos(v, i),
                                &format!("{at}[{i}]"),
                                "links name services of this stack; use external_links for stack/service",
                            );
                            continue;
                        }
                        format!("{stack}/{target}")
                    } else {
                        if target.split('/').count() != 2 || target.split('/').any(|s| !valid_name(s)) {
                            p.add(
                                item_pos(v, i),
                                &format!("{at}[{i}]"),
                                "expected stack/service or stack/service:alias",
                            );
                            continue;
                        }
                        target.to_string()
                    };
                    if !alias.is_empty() && !valid_name(alias) {
                        p.add(
                            item_pos(v, i),
                            &format!("{at}[{i}]"),
                            format!("alias {alias:?}: 1-63 letters, digits and dashes"),
                        );
                        continue;
                    }
                    if svc.links.contains_key(&target) {
                        p.add(
                            item_pos(v, i),
                            &format!("{at}[{i}]"),
                            format!("{target} is linked twice (one alias per linked service)"),
                        );
                        continue;
                    }
                    svc.links.insert(target, alias.to_string());
                }
            }
            k if VERBATIM.contains(&k) => {
                if let Err(e) = check_verbatim(k, v) {
                    p.add(v.pos, &at, e);
                }
                lc.extra.insert(k.to_string(), v.to_json());
            }
            k => match REFUSED.iter().find(|(r, _)| *r == k) {
                Some((_, why)) => p.add(k_pos(entries, k), &at, *why),
                None if TYPED.contains(&k) => {}
                None => p.add(k_pos(entries, k), &at, "unknown compose key"),
            },
        }
    }
    // Variables from env_file first; `environment` wins.
    for (k, v) in env_from_files {
        svc.launch_config.environment.entry(k).or_insert(v);
    }
    if svc.launch_config.image.is_empty() {
        p.add(def.pos, path, "`image` is required");
    }
    for (label, value) in &svc.launch_config.labels {
        if let Err(e) = check_label(label, value) {
            let at = format!("{path}.labels.{label}");
            let pos = def.get("labels").map(|l| l.get(label).map(|n| n.pos).unwrap_or(l.pos)).unwrap_or(def.pos);
            p.add(pos, &at, e);
        }
    }
    svc.kind = kind_of(&svc.launch_config.image);
    if svc.launch_config.image.split(':').next() == Some("rancher/load-balancer-service") {
        let pos = def.get("image").map(|n| n.pos).unwrap_or(def.pos);
        p.add(pos, &format!("{path}.image"), "the legacy load balancer (rancher/load-balancer-service) is not converted: use rancher/lb-service-haproxy with lb_config.port_rules in rancher-compose.yml");
    }
    svc
}

fn k_pos(entries: &[(Node, Node)], key: &str) -> Pos {
    entries.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(k, _)| k.pos).unwrap_or_default()
}

fn item_pos(list: &Node, i: usize) -> Pos {
    match &list.value {
        Value::Seq(items) => items.get(i).map(|n| n.pos).unwrap_or(list.pos),
        _ => list.pos,
    }
}

/// Rancher's scheduling and selector labels, checked for syntax (what Cattle would have
/// rejected or silently ignored).
pub fn check_label(label: &str, value: &str) -> Result<(), String> {
    let pairs = |v: &str| -> Result<(), String> {
        for pair in v.split(',').map(str::trim) {
            match pair.split_once('=') {
                Some((k, _)) if !k.trim().is_empty() => {}
                _ => return Err(format!("{pair:?}: expected key=value pairs separated by commas")),
            }
        }
        Ok(())
    };
    if let Some(rule) = label.strip_prefix("io.rancher.scheduler.affinity:") {
        let base = rule.trim_end_matches("_soft_ne").trim_end_matches("_ne").trim_end_matches("_soft");
        return match base {
            "host_label" | "container_label" => pairs(value),
            "container" if value.split(',').all(|c| !c.trim().is_empty()) => Ok(()),
            "container" => Err("expected container names separated by commas".into()),
            _ => Err(format!(
                "unknown affinity rule {rule:?} (host_label, container_label, container, with _ne/_soft/_soft_ne)"
            )),
        };
    }
    match label {
        "io.rancher.scheduler.global"
        | "io.rancher.container.start_once"
        | "io.rancher.container.network"
        | "io.rancher.container.dns" => match value {
            "true" | "false" => Ok(()),
            _ => Err(format!("{value:?}: expected 'true' or 'false'")),
        },
        "io.rancher.container.requested_ip" => match value.split(',').find(|ip| ip.trim().parse::<IpAddr>().is_err()) {
            Some(bad) => Err(format!("{bad:?} is not an IP address")),
            None => Ok(()),
        },
        "io.rancher.lb_service.target" => match value {
            "only-local" | "prefer-local" | "any" => Ok(()),
            _ => Err(format!("{value:?}: expected only-local or prefer-local")),
        },
        "io.rancher.container.dns.priority" => match value.to_ascii_lowercase().as_str() {
            "service_last" | "none" | "default" => Ok(()),
            _ => Err(format!("{value:?}: expected service_last or None")),
        },
        "io.rancher.service.selector.link" | "io.rancher.service.selector.container" => check_selector(value),
        _ => Ok(()),
    }
}

/// `k=v`, `k!=v`, `k`, `k in (a,b)`, `k notin (a,b)`, comma = AND.
pub fn check_selector(value: &str) -> Result<(), String> {
    let mut terms = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in value.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&value[start..i]);
                start = i + 1;
            }
            _ => {}
        }
        if depth < 0 {
            return Err(format!("{value:?}: unbalanced parentheses"));
        }
    }
    if depth != 0 {
        return Err(format!("{value:?}: unbalanced parentheses"));
    }
    terms.push(&value[start..]);
    for t in terms.iter().map(|t| t.trim()) {
        let key_ok = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c));
        let ok = if let Some((k, rest)) = t.split_once(" notin ").or_else(|| t.split_once(" in ")) {
            let rest = rest.trim();
            key_ok(k.trim()) && rest.starts_with('(') && rest.ends_with(')')
        } else if let Some((k, _)) = t.split_once("!=").or_else(|| t.split_once('=')) {
            key_ok(k.trim())
        } else {
            key_ok(t)
        };
        if !ok {
            return Err(format!("{t:?}: expected key=value, key!=value, key, key in (a,b) or key notin (a,b)"));
        }
    }
    Ok(())
}

/// The shape Docker expects for a key kept verbatim (so the agent never meets `tty: maybe`).
fn check_verbatim(key: &str, v: &Node) -> Result<(), String> {
    let json = v.to_json();
    let is_str = |j: &Json| j.is_string() || j.is_number();
    let list_of_str = |j: &Json| j.as_array().is_some_and(|a| a.iter().all(is_str));
    let ok = match key {
        "read_only" | "tty" | "stdin_open" | "oom_kill_disable" | "init" => json.is_boolean(),
        "cpu_shares" | "cpu_period" | "cpu_quota" | "oom_score_adj" | "mem_swappiness" | "blkio_weight"
        | "cpu_count" | "cpu_percent" => json.is_i64() || json.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
        "cpus" => json.is_number() || json.as_str().is_some_and(|s| s.parse::<f64>().is_ok()),
        "mem_limit" | "memswap_limit" | "kernel_memory" | "shm_size" => {
            json.as_u64().is_some() || json.as_i64() == Some(-1) || json.as_str().is_some_and(size_ok)
        }
        "restart" => json.as_str().is_some_and(|r| {
            matches!(r, "no" | "always" | "unless-stopped" | "on-failure")
                || r.strip_prefix("on-failure:").is_some_and(|n| n.parse::<u32>().is_ok())
        }),
        "domainname" | "user" | "working_dir" | "cpuset" | "pid" | "ipc" | "uts" | "cgroup_parent" | "stop_signal"
        | "isolation" | "mac_address" | "stop_grace_period" | "volume_driver" | "log_driver" => is_str(&json),
        "cap_drop" | "devices" | "security_opt" | "group_add" | "dns_opt" => list_of_str(&json) || json.is_string(),
        "tmpfs" => list_of_str(&json) || json.is_string(),
        "extra_hosts" | "depends_on" | "sysctls" => list_of_str(&json) || json.is_object(),
        "ulimits" | "logging" | "log_opt" | "healthcheck" | "storage_opt" => json.is_object(),
        _ => true,
    };
    if ok {
        return Ok(());
    }
    let expected = match key {
        "read_only" | "tty" | "stdin_open" | "oom_kill_disable" | "init" => "true or false",
        "restart" => "no, always, unless-stopped, on-failure or on-failure:N",
        "mem_limit" | "memswap_limit" | "kernel_memory" | "shm_size" => "a size such as 512m",
        "ulimits" | "logging" | "log_opt" | "healthcheck" | "storage_opt" => "a map",
        "extra_hosts" | "depends_on" | "sysctls" => "a list or a map",
        "cap_drop" | "devices" | "security_opt" | "group_add" | "dns_opt" | "tmpfs" => "a list of strings",
        "cpus" => "a number",
        "cpu_shares" | "cpu_period" | "cpu_quota" | "oom_score_adj" | "mem_swappiness" | "blkio_weight"
        | "cpu_count" | "cpu_percent" => "a whole number",
        _ => "a string",
    };
    Err(format!("expected {expected}, found {}", describe(&json)))
}

fn size_ok(s: &str) -> bool {
    let s = s.to_ascii_lowercase();
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    matches!(&s[digits.len()..], "" | "b" | "k" | "kb" | "m" | "mb" | "g" | "gb") && digits.parse::<u64>().is_ok()
}

fn describe(j: &Json) -> String {
    match j {
        Json::Null => "nothing".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => n.to_string(),
        Json::String(s) => format!("{s:?}"),
        Json::Array(_) => "a list".into(),
        Json::Object(_) => "a map".into(),
    }
}

/// Rancher's special images.
pub fn kind_of(image: &str) -> ServiceKind {
    let repo = image.split(':').next().unwrap_or(image);
    match repo {
        "rancher/lb-service-haproxy" | "rancher/load-balancer-service" => ServiceKind::LoadBalancer,
        "rancher/external-service" => ServiceKind::External,
        "rancher/dns-service" => ServiceKind::Alias,
        _ => ServiceKind::Service,
    }
}

fn event_bus_service(stack: &str, name: &str) -> Service {
    Service::new(&service_id(stack, name), &stack_id(stack), name)
}

fn string(v: &Node, at: &str, p: &mut Problems) -> Option<String> {
    match &v.value {
        Value::Scalar { text, .. } => Some(text.clone()),
        Value::Null => None,
        _ => {
            p.add(v.pos, at, format!("expected a string, found {}", v.kind()));
            None
        }
    }
}

/// A string or a list of strings.
fn strings(v: &Node, at: &str, p: &mut Problems) -> Vec<String> {
    match &v.value {
        Value::Scalar { text, .. } => vec![text.clone()],
        Value::Null => vec![],
        Value::Seq(items) => items
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.value {
                Value::Scalar { text, .. } => Some(text.clone()),
                _ => {
                    p.add(n.pos, &format!("{at}[{i}]"), format!("expected a string, found {}", n.kind()));
                    None
                }
            })
            .collect(),
        Value::Map(_) => {
            p.add(v.pos, at, "expected a string or a list of strings, found a map");
            vec![]
        }
    }
}

/// A command: a list as is, or a string split the way a shell splits words.
fn words(v: &Node, at: &str, p: &mut Problems) -> Vec<String> {
    match &v.value {
        Value::Scalar { text, .. } => match split_words(text) {
            Ok(w) => w,
            Err(e) => {
                p.add(v.pos, at, e);
                vec![]
            }
        },
        _ => strings(v, at, p),
    }
}

fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some('"'), '\\') => cur.extend(chars.next()),
            (Some(_), c) => cur.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                in_word = true;
            }
            (None, '\\') => {
                cur.extend(chars.next());
                in_word = true;
            }
            (None, c) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            (None, c) => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        return Err(format!("unclosed quote in {s:?}"));
    }
    if in_word {
        out.push(cur);
    }
    Ok(out)
}

/// `environment` / `labels`: a map, or a list of `KEY=VALUE` (`KEY` alone: empty for labels,
/// from the process environment for variables, as compose).
fn pairs(v: &Node, at: &str, p: &mut Problems, env: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match &v.value {
        Value::Map(entries) => {
            for (k, val) in entries {
                let key = k.as_str().unwrap_or_default().to_string();
                let value = match &val.value {
                    Value::Null => String::new(),
                    Value::Scalar { text, .. } => text.clone(),
                    _ => {
                        p.add(val.pos, &format!("{at}.{key}"), format!("expected a string, found {}", val.kind()));
                        continue;
                    }
                };
                out.insert(key, value);
            }
        }
        Value::Seq(_) => {
            for item in strings(v, at, p) {
                match item.split_once('=') {
                    Some((k, val)) => out.insert(k.to_string(), val.to_string()),
                    None if env => out.insert(item.clone(), std::env::var(&item).unwrap_or_default()),
                    None => out.insert(item.clone(), String::new()),
                };
            }
        }
        Value::Null => {}
        Value::Scalar { .. } => p.add(v.pos, at, "expected a map or a list of KEY=VALUE"),
    }
    out
}

fn boolean(v: &Node, at: &str, p: &mut Problems) -> Option<bool> {
    match v.to_json() {
        Json::Bool(b) => Some(b),
        Json::String(s) if s == "true" || s == "false" => Some(s == "true"),
        _ => {
            p.add(v.pos, at, "expected true or false");
            None
        }
    }
}

fn integer(v: &Node, at: &str, p: &mut Problems, min: i64, max: i64) -> Option<i64> {
    let n = match v.to_json() {
        Json::Number(n) => n.as_i64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    };
    match n {
        Some(n) if (min..=max).contains(&n) => Some(n),
        Some(n) => {
            p.add(v.pos, at, format!("{n} is out of range ({min}..={max})"));
            None
        }
        None => {
            p.add(v.pos, at, "expected a whole number");
            None
        }
    }
}

/// `512m`, `1g`, `1048576` → bytes.
fn bytes(v: &Node, at: &str, p: &mut Problems) -> Option<u64> {
    let text = match v.to_json() {
        Json::Number(n) if n.as_u64().is_some() => return n.as_u64(),
        Json::String(s) => s.to_ascii_lowercase(),
        _ => String::new(),
    };
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &text[digits.len()..];
    let mult = match unit {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => 0,
    };
    match digits.parse::<u64>().ok().and_then(|n| n.checked_mul(mult)) {
        Some(n) if mult > 0 => Some(n),
        _ => {
            p.add(v.pos, at, "expected a size such as 512m, 1g or a number of bytes");
            None
        }
    }
}

/// `80`, `80/udp`, `8080:80`, `127.0.0.1:8080:80/tcp`, `8000-8010:8000-8010`.
pub fn check_port_spec(spec: &str) -> Result<(), String> {
    crate::ports::parse(spec).map(|_| ())
}

/// `KEY=VALUE` lines (`#` comments and blank lines skipped, an `export ` prefix allowed, spaces
/// around the key ignored); any other line is an error naming its number.
pub fn parse_env_lines(text: &str) -> Result<BTreeMap<String, String>, (usize, String)> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() && !k.trim().contains(char::is_whitespace) => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            _ => return Err((i + 1, format!("{line:?}: expected KEY=VALUE"))),
        }
    }
    Ok(out)
}

/// Applies rancher-compose.yml to the services; a rancher-compose service that the compose file
/// does not define is an error.
pub fn apply_rancher(rancher: &Node, files: &mut StackFiles, p: &mut Problems) {
    let Some(top) = rancher.as_map() else {
        if !matches!(rancher.value, Value::Null) {
            p.add(rancher.pos, "", format!("expected a map, found {}", rancher.kind()));
        }
        return;
    };
    let v2 = rancher.get("version").is_some();
    let services = if v2 { rancher.get("services") } else { Some(rancher) };
    if v2 {
        for (k, _) in top {
            match k.as_str() {
                Some("version" | "services" | "catalog" | ".catalog") => {}
                Some(other) => p.add(k.pos, other, "unknown top-level key (expected version, services, catalog)"),
                None => {}
            }
        }
    }
    let Some(entries) = services.and_then(Node::as_map) else { return };
    let prefix = if v2 { "services." } else { "" };
    for (k, def) in entries {
        let Some(name) = k.as_str() else { continue };
        if matches!(name, ".catalog" | "catalog") && !v2 {
            continue;
        }
        let path = format!("{prefix}{name}");
        if !files.services.iter().any(|s| s.name == name) {
            p.add(k.pos, &path, "no service of this name in the compose file");
            continue;
        }
        let Some(settings) = def.as_map() else {
            if !matches!(def.value, Value::Null) {
                p.add(def.pos, &path, format!("expected a map of settings, found {}", def.kind()));
            }
            continue;
        };
        for (sk, v) in settings {
            let Some(key) = sk.as_str() else { continue };
            let at = format!("{path}.{key}");
            files.rancher_settings.push((name.to_string(), key.to_string(), sk.pos));
            files.rancher_file = p.file.clone();
            let svc = files.services.iter_mut().find(|s| s.name == name).expect("found above");
            match key {
                "scale" => svc.scale = integer(v, &at, p, 0, 10_000).map(|n| n as u32),
                "retain_ip" => {
                    if let Some(b) = boolean(v, &at, p) {
                        svc.extra.insert("retain_ip".into(), json!(b));
                    }
                }
                "health_check" => svc.launch_config.health_check = health_check(v, &at, p),
                "lb_config" | "load_balancer_config" => svc.lb_config = lb_config(v, &at, p),
                "upgrade_strategy" => {
                    check_keys(v, &at, p, &["start_first", "batch_size", "interval_millis"]);
                    if let Some(n) = v.get("batch_size") {
                        integer(n, &format!("{at}.batch_size"), p, 1, 10_000);
                    }
                    if let Some(n) = v.get("interval_millis") {
                        integer(n, &format!("{at}.interval_millis"), p, 0, 86_400_000);
                    }
                    if let Some(n) = v.get("start_first") {
                        boolean(n, &format!("{at}.start_first"), p);
                    }
                    svc.extra.insert("upgrade_strategy".into(), v.to_json());
                }
                "metadata" => match v.value {
                    Value::Map(_) => svc.metadata = v.to_json(),
                    _ => p.add(v.pos, &at, "expected a map"),
                },
                "external_ips" => {
                    let ips = strings(v, &at, p);
                    for (i, ip) in ips.iter().enumerate() {
                        if ip.parse::<IpAddr>().is_err() {
                            p.add(item_pos(v, i), &format!("{at}[{i}]"), format!("{ip:?} is not an IP address"));
                        }
                    }
                    svc.external_ips = ips;
                }
                "hostname" => svc.hostname = string(v, &at, p),
                "start_on_create" | "scale_policy" => {
                    svc.extra.insert(key.into(), v.to_json());
                }
                other if RANCHER_KEYS.contains(&other) => {}
                other => p.add(sk.pos, &at, format!("unknown rancher-compose key `{other}`")),
            }
        }
    }
}

fn check_keys(v: &Node, at: &str, p: &mut Problems, known: &[&str]) {
    match v.as_map() {
        Some(entries) => {
            for (k, _) in entries {
                let key = k.as_str().unwrap_or_default();
                if !known.contains(&key) {
                    p.add(k.pos, &format!("{at}.{key}"), format!("unknown key (expected one of {})", known.join(", ")));
                }
            }
        }
        None => p.add(v.pos, at, format!("expected a map, found {}", v.kind())),
    }
}

fn health_check(v: &Node, at: &str, p: &mut Problems) -> Option<HealthCheck> {
    const KEYS: &[&str] = &[
        "port",
        "request_line",
        "interval",
        "response_timeout",
        "healthy_threshold",
        "unhealthy_threshold",
        "initializing_timeout",
        "reinitializing_timeout",
        "strategy",
        "recreate_on_quorum_strategy_config",
    ];
    check_keys(v, at, p, KEYS);
    let port = match v.get("port") {
        Some(n) => integer(n, &format!("{at}.port"), p, 1, 65535)? as u16,
        None => {
            p.add(v.pos, at, "`port` is required");
            return None;
        }
    };
    let ms = |key: &str, p: &mut Problems| {
        v.get(key).and_then(|n| integer(n, &format!("{at}.{key}"), p, 1, 86_400_000)).map(|n| n as u64)
    };
    let count = |key: &str, p: &mut Problems| {
        v.get(key).and_then(|n| integer(n, &format!("{at}.{key}"), p, 1, 1000)).map(|n| n as u32)
    };
    let strategy = v.get("strategy").and_then(|n| string(n, &format!("{at}.strategy"), p));
    if let Some(s) = &strategy {
        if !matches!(s.as_str(), "none" | "recreate" | "recreateOnQuorum") {
            p.add(
                v.get("strategy").map(|n| n.pos).unwrap_or(v.pos),
                &format!("{at}.strategy"),
                format!("{s:?}: expected none, recreate or recreateOnQuorum"),
            );
        }
    }
    let quorum = v.get("recreate_on_quorum_strategy_config").and_then(|q| {
        check_keys(q, &format!("{at}.recreate_on_quorum_strategy_config"), p, &["quorum"]);
        q.get("quorum")
            .and_then(|n| integer(n, &format!("{at}.recreate_on_quorum_strategy_config.quorum"), p, 1, 10_000))
    });
    if strategy.as_deref() == Some("recreateOnQuorum") && quorum.is_none() {
        p.add(v.pos, at, "strategy recreateOnQuorum needs recreate_on_quorum_strategy_config.quorum");
    }
    let request_line = v.get("request_line").and_then(|n| string(n, &format!("{at}.request_line"), p));
    if let Some(line) = request_line.as_deref().filter(|l| !l.is_empty()) {
        // What the checker can put on an `option httpchk` line as the user meant it: 2-3 words of
        // printable ASCII; a newline (or a quote, `#`, `\`) would change HAProxy's configuration.
        let printable =
            line.chars().all(|c| c.is_ascii_graphic() || c == ' ') && !line.contains(['"', '\'', '\\', '#']);
        let parts: Vec<&str> = line.split(' ').filter(|w| !w.is_empty()).collect();
        if !printable || parts.len() < 2 || parts.len() > 3 || !parts[1].starts_with('/') {
            p.add(
                v.get("request_line").map(|n| n.pos).unwrap_or(v.pos),
                &format!("{at}.request_line"),
                format!("{line:?}: expected METHOD /path [HTTP/1.x]"),
            );
        }
    }
    let hc = json!({
        "port": port,
        "request_line": request_line,
        "interval": ms("interval", p),
        "response_timeout": ms("response_timeout", p),
        "healthy_threshold": count("healthy_threshold", p),
        "unhealthy_threshold": count("unhealthy_threshold", p),
        "initializing_timeout": ms("initializing_timeout", p),
        "reinitializing_timeout": ms("reinitializing_timeout", p),
        "strategy": strategy,
        "recreate_on_quorum_strategy_config": quorum.map(|q| json!({"quorum": q})),
    });
    let hc = strip_nulls(hc);
    serde_json::from_value(hc).ok()
}

fn strip_nulls(v: Json) -> Json {
    match v {
        Json::Object(m) => {
            Json::Object(m.into_iter().filter(|(_, v)| !v.is_null()).map(|(k, v)| (k, strip_nulls(v))).collect())
        }
        other => other,
    }
}

fn lb_config(v: &Node, at: &str, p: &mut Problems) -> Option<LbConfig> {
    check_keys(v, at, p, &["port_rules", "certs", "default_cert", "config", "stickiness_policy"]);
    let mut rules = Vec::new();
    if let Some(list) = v.get("port_rules") {
        let Value::Seq(items) = &list.value else {
            p.add(list.pos, &format!("{at}.port_rules"), "expected a list of rules");
            return None;
        };
        for (i, rule) in items.iter().enumerate() {
            let rat = format!("{at}.port_rules[{i}]");
            check_keys(
                rule,
                &rat,
                p,
                &[
                    "source_port",
                    "target_port",
                    "protocol",
                    "hostname",
                    "path",
                    "service",
                    "priority",
                    "backend_name",
                    "selector",
                    "container",
                    "weight",
                ],
            );
            let mut numbers = serde_json::Map::new();
            for port in ["source_port", "target_port"] {
                if let Some(n) = rule.get(port) {
                    if let Some(v) = integer(n, &format!("{rat}.{port}"), p, 1, 65535) {
                        numbers.insert(port.into(), json!(v));
                    }
                }
            }
            for key in ["source_port", "target_port"] {
                if rule.get(key).is_none() {
                    p.add(rule.pos, &rat, format!("`{key}` is required"));
                }
            }
            if let Some(proto) = rule.get("protocol") {
                let s = proto.as_str().unwrap_or_default();
                if !matches!(s, "http" | "https" | "tcp" | "tls" | "sni" | "udp") {
                    p.add(
                        proto.pos,
                        &format!("{rat}.protocol"),
                        format!("{s:?}: expected http, https, tcp, tls, sni or udp"),
                    );
                }
            }
            if let Some(n) = rule.get("priority") {
                if let Some(v) = integer(n, &format!("{rat}.priority"), p, 1, 1_000_000) {
                    numbers.insert("priority".into(), json!(v));
                }
            }
            let mut json = strip_nulls(rule.to_json());
            if let Json::Object(m) = &mut json {
                m.extend(numbers);
            }
            rules.push(json);
        }
    }
    let mut cfg = strip_nulls(v.to_json());
    if let Json::Object(m) = &mut cfg {
        m.insert("port_rules".into(), Json::Array(rules));
    }
    match serde_json::from_value(cfg) {
        Ok(c) => Some(c),
        Err(e) => {
            p.add(v.pos, at, format!("invalid lb_config: {e}"));
            None
        }
    }
}

/// Checks across services, then folds sidekicks into their primaries: `io.rancher.sidekicks`
/// names services of this file, each the sidekick of one primary; `network_mode:
/// container:<x>` and `volumes_from` name members of the same deployment unit; `links` name
/// services of this stack.
pub fn assemble(files: &mut StackFiles, stack: &str, p: &mut Problems, positions: &dyn Fn(&str) -> Pos) {
    let names: HashSet<String> = files.services.iter().map(|s| s.name.clone()).collect();
    let mut sidekick_of: BTreeMap<String, String> = BTreeMap::new();
    for svc in &files.services {
        let Some(list) = svc.launch_config.labels.get(SIDEKICKS_LABEL) else { continue };
        for sk in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let at = format!("{}.labels.{SIDEKICKS_LABEL}", svc.name);
            if !names.contains(sk) {
                p.add(positions(&at), &at, format!("sidekick {sk:?} is not a service of this file"));
            } else if sk == svc.name {
                p.add(positions(&at), &at, "a service cannot be its own sidekick");
            } else if let Some(other) = sidekick_of.insert(sk.to_string(), svc.name.clone()) {
                p.add(positions(&at), &at, format!("{sk:?} is already a sidekick of {other:?}"));
            }
        }
    }
    for (sk, primary) in &sidekick_of {
        if sidekick_of.contains_key(primary) {
            let at = format!("{primary}.labels.{SIDEKICKS_LABEL}");
            p.add(positions(&at), &at, format!("{primary:?} is a sidekick itself and cannot have sidekicks ({sk:?})"));
        }
    }
    // Settings that belong to a deployment unit, given on a sidekick.
    for (name, key, pos) in &files.rancher_settings {
        if let Some(primary) = sidekick_of.get(name) {
            if matches!(
                key.as_str(),
                "scale"
                    | "retain_ip"
                    | "metadata"
                    | "lb_config"
                    | "load_balancer_config"
                    | "upgrade_strategy"
                    | "external_ips"
                    | "hostname"
                    | "scale_policy"
                    | "start_on_create"
            ) {
                p.list.push(crate::problem::Problem {
                    file: files.rancher_file.clone(),
                    pos: *pos,
                    path: format!("{name}.{key}"),
                    message: format!("set it on {primary:?}: a sidekick runs as part of its primary's unit"),
                });
            }
        }
    }
    let rancher_pos = |name: &str, key: &str| {
        files
            .rancher_settings
            .iter()
            .find(|(n, k, _)| n == name && k == key)
            .map(|(_, _, pos)| *pos)
            .unwrap_or_default()
    };
    for svc in &files.services {
        let at_rancher = |key: &str, message: String| crate::problem::Problem {
            file: files.rancher_file.clone(),
            pos: rancher_pos(&svc.name, key),
            path: format!("{}.{key}", svc.name),
            message,
        };
        if svc.lb_config.is_some() && svc.kind != ServiceKind::LoadBalancer {
            p.list.push(at_rancher(
                "lb_config",
                "only a load balancer (image rancher/lb-service-haproxy) has lb_config".into(),
            ));
        }
        if svc.kind != ServiceKind::External {
            if !svc.external_ips.is_empty() {
                p.list.push(at_rancher(
                    "external_ips",
                    "only an external service (image rancher/external-service) has external_ips".into(),
                ));
            }
            if svc.hostname.is_some() {
                p.list.push(at_rancher("hostname", "only an external service (image rancher/external-service) has hostname here; the container hostname goes in docker-compose.yml".into()));
            }
        }
        if let Some(lb) = &svc.lb_config {
            for (i, rule) in lb.port_rules.iter().enumerate() {
                let Some(target) = rule.service.as_deref() else { continue };
                let ok = match target.split_once('/') {
                    Some((st, sv)) => valid_name(st) && valid_name(sv),
                    None => names.contains(target) && !sidekick_of.contains_key(target),
                };
                if !ok {
                    let mut problem = at_rancher(
                        "lb_config",
                        format!("port_rules[{i}].service {target:?} is not a service of this stack (or stack/service)"),
                    );
                    problem.path = format!("{}.lb_config.port_rules[{i}].service", svc.name);
                    p.list.push(problem);
                }
            }
        }
        let unit: Vec<&str> = match sidekick_of.get(&svc.name) {
            Some(primary) => std::iter::once(primary.as_str())
                .chain(sidekick_of.iter().filter(|(_, p)| *p == primary).map(|(s, _)| s.as_str()))
                .collect(),
            None => std::iter::once(svc.name.as_str())
                .chain(sidekick_of.iter().filter(|(_, p)| **p == svc.name).map(|(s, _)| s.as_str()))
                .collect(),
        };
        if let Some(mode) = &svc.launch_config.network_mode {
            let at = format!("{}.network_mode", svc.name);
            match mode.split_once(':') {
                Some(("container", target)) if !unit.contains(&target) || target == svc.name => p.add(
                    positions(&at),
                    &at,
                    format!(
                        "container:{target} must name another member of this service's deployment unit ({})",
                        unit.join(", ")
                    ),
                ),
                Some(("container", _)) => {}
                _ if matches!(mode.as_str(), "host" | "none" | "bridge" | "managed" | "") => {}
                // A network by name (infrastructure stacks use `ipsec`).
                _ if !mode.is_empty() && mode.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {}
                _ => p.add(
                    positions(&at),
                    &at,
                    format!("{mode:?}: expected host, none, bridge, managed, a network name or container:<sidekick>"),
                ),
            }
        }
        for (i, from) in svc.launch_config.volumes_from.iter().enumerate() {
            if !unit.contains(&from.as_str()) || from == &svc.name {
                let at = format!("{}.volumes_from[{i}]", svc.name);
                p.add(
                    positions(&at),
                    &at,
                    format!("{from:?} must be another member of this service's deployment unit ({})", unit.join(", ")),
                );
            }
        }
        for target in svc.links.keys() {
            if let Some(local) = target.strip_prefix(&format!("{stack}/")) {
                let at = format!("{}.links", svc.name);
                if !names.contains(local) {
                    p.add(positions(&at), &at, format!("link to {local:?}, which is not a service of this stack"));
                } else if let Some(primary) = sidekick_of.get(local) {
                    p.add(positions(&at), &at, format!("{local:?} is a sidekick of {primary:?}: link to {primary:?}"));
                }
            }
        }
        if svc.kind == ServiceKind::External && svc.external_ips.is_empty() && svc.hostname.is_none() {
            p.add(
                positions(&svc.name),
                &svc.name,
                "an external service needs external_ips or hostname in rancher-compose.yml",
            );
        }
    }
    // Fold sidekicks into their primaries' secondary launch configs.
    let mut sidekicks: BTreeMap<String, Service> = BTreeMap::new();
    files.services.retain(|s| {
        if sidekick_of.contains_key(&s.name) {
            sidekicks.insert(s.name.clone(), s.clone());
            false
        } else {
            true
        }
    });
    for svc in files.services.iter_mut() {
        let Some(list) = svc.launch_config.labels.get(SIDEKICKS_LABEL).cloned() else { continue };
        for sk in list.split(',').map(str::trim) {
            if let Some(s) = sidekicks.remove(sk) {
                // A sidekick's links are its unit's links (rancher-compose merged them).
                for (target, alias) in s.links {
                    svc.links.entry(target).or_insert(alias);
                }
                let mut lc = s.launch_config;
                lc.name = Some(s.name.clone());
                svc.secondary_launch_configs.push(lc);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs() {
        for ok in ["80", "80/udp", "8080:80", "127.0.0.1:8080:80/tcp", "8000-8010:8000-8010", "127.0.0.1::80"] {
            assert!(check_port_spec(ok).is_ok(), "{ok}");
        }
        for bad in ["0", "70000", "80/sctp", "a:80", "x:1:2", "1-2-3"] {
            assert!(check_port_spec(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn labels() {
        assert!(check_label("io.rancher.scheduler.affinity:host_label", "zone=a,disk=ssd").is_ok());
        assert!(check_label("io.rancher.scheduler.affinity:host_label_soft_ne", "zone").is_err());
        assert!(check_label("io.rancher.scheduler.affinity:host_lable", "a=b").is_err());
        assert!(check_selector("app=web, tier in (a, b), !x").is_err());
        assert!(check_selector("app=web,tier in (a,b),env notin (dev),canary").is_ok());
        assert!(check_selector("tier in (a,b").is_err());
        assert!(check_label("io.rancher.container.requested_ip", "10.42.0.5,nope").is_err());
    }

    #[test]
    fn shell_words() {
        assert_eq!(split_words(r#"sh -c "echo 'hi there'" x\ y"#).unwrap(), ["sh", "-c", "echo 'hi there'", "x y"]);
        assert!(split_words("a 'b").is_err());
    }
}
