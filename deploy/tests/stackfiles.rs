//! Stack files → desired state: real-world-shaped files produce the expected services; broken
//! files produce exactly the expected errors, and `deploy up` writes nothing for them.

mod common;

use common::deploy;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use deploy::stackfile::{load, Desired, Input};
use event_bus::model::ServiceKind;
use event_bus::testkit::NatsServer;
use event_bus::{provision, Bus, NatsOptions, Provision};

fn write(dir: &Path, compose: &str, rancher: Option<&str>) -> Input {
    std::fs::write(dir.join("docker-compose.yml"), compose).unwrap();
    let rancher = rancher.map(|r| {
        let p = dir.join("rancher-compose.yml");
        std::fs::write(&p, r).unwrap();
        p
    });
    Input { compose: dir.join("docker-compose.yml"), rancher, stack: "app".into(), ..Default::default() }
}

fn ok(compose: &str, rancher: Option<&str>) -> Desired {
    let dir = tempfile::tempdir().unwrap();
    match load(&write(dir.path(), compose, rancher)) {
        Ok(d) => d,
        Err(p) => panic!("{}", p.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n")),
    }
}

/// The problems, as printed, with the temp dir taken out of the file names.
fn errors(compose: &str, rancher: Option<&str>) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let input = write(dir.path(), compose, rancher);
    let prefix = format!("{}/", dir.path().display());
    match load(&input) {
        Ok(d) => panic!("expected errors, got {d:?}"),
        Err(p) => p.iter().map(|p| p.to_string().replace(&prefix, "")).collect(),
    }
}

#[test]
fn a_v2_web_stack_with_sidekick_lb_and_health_check() {
    let d = ok(
        r#"version: '2'
services:
  web:
    image: nginx:1.25
    ports: ["8080:80/tcp"]
    links: [db:database]
    labels:
      io.rancher.sidekicks: logger
    environment: [MODE=prod]
  logger:
    image: busybox
    command: sh -c "tail -f /dev/null"
    network_mode: container:web
    volumes_from: [web]
  db:
    image: mysql:8
    mem_limit: 512m
    cpu_shares: 512
  lb:
    image: rancher/lb-service-haproxy:v0.9.1
    ports: ["80:80"]
volumes:
  data:
    driver: local
"#,
        Some(
            r#"version: '2'
services:
  web:
    scale: 3
    retain_ip: true
    health_check: {port: 80, request_line: GET /healthz HTTP/1.0, interval: 2000, healthy_threshold: 2,
                   unhealthy_threshold: 3, response_timeout: 1000, strategy: recreate}
    metadata: {tier: front}
    upgrade_strategy: {start_first: true, batch_size: 1, interval_millis: 500}
  lb:
    lb_config:
      port_rules: [{source_port: 80, target_port: 80, service: web, hostname: example.com, path: /api, priority: 1}]
"#,
        ),
    );
    assert_eq!(d.stack.name, "app");
    assert_eq!(
        d.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["web", "db", "lb"],
        "sidekicks fold into the primary"
    );
    let web = &d.services[0];
    assert_eq!(web.uuid, "app=web");
    assert_eq!(web.scale, Some(3));
    assert_eq!(web.launch_config.image, "nginx:1.25");
    assert_eq!(web.launch_config.environment["MODE"], "prod");
    assert_eq!(web.links, BTreeMap::from([("app/db".to_string(), "database".to_string())]));
    let hc = web.launch_config.health_check.as_ref().unwrap();
    assert_eq!((hc.port, hc.interval, hc.strategy.as_deref()), (80, Some(2000), Some("recreate")));
    assert_eq!(web.metadata, serde_json::json!({"tier": "front"}));
    assert_eq!(web.extra["retain_ip"], serde_json::json!(true));
    assert_eq!(web.extra["upgrade_strategy"]["batch_size"], serde_json::json!(1));
    let logger = &web.secondary_launch_configs[0];
    assert_eq!(logger.name.as_deref(), Some("logger"));
    assert_eq!(logger.command, ["sh", "-c", "tail -f /dev/null"]);
    assert_eq!(logger.network_mode.as_deref(), Some("container:web"));
    let db = &d.services[1];
    assert_eq!(db.launch_config.extra["mem_limit"], serde_json::json!("512m"), "carried verbatim");
    assert_eq!(db.launch_config.extra["cpu_shares"], serde_json::json!(512));
    let lb = &d.services[2];
    assert_eq!(lb.kind, ServiceKind::LoadBalancer);
    let rule = &lb.lb_config.as_ref().unwrap().port_rules[0];
    assert_eq!((rule.source_port, rule.hostname.as_deref(), rule.priority), (Some(80), Some("example.com"), Some(1)));
    assert_eq!(d.volumes["data"], serde_json::json!({"driver": "local"}));
}

#[test]
fn a_v1_flat_file_with_external_and_alias_services_and_variables() {
    std::env::set_var("CORRAL_TEST_FROM_ENV", "from-env");
    let dir = tempfile::tempdir().unwrap();
    let mut input = write(
        dir.path(),
        r#"app:
  image: "registry.local/app:${TAG}"
  environment:
    A: $FROM_ANSWERS
    B: ${CORRAL_TEST_FROM_ENV}
    C: ${UNSET_WITH_DEFAULT:-fallback}
    D: $$literal
  labels:
    io.rancher.scheduler.affinity:host_label: zone=a
  external_links: [shared/cache:cache]
ext:
  image: rancher/external-service
alias:
  image: rancher/dns-service
  links: [app, ext]
"#,
        Some(
            r#"ext:
  external_ips: [192.0.2.1, 192.0.2.2]
alias:
  scale: 1
"#,
        ),
    );
    input.answers.insert("FROM_ANSWERS".into(), "from-answers".into());
    input.answers.insert("TAG".into(), "2.0".into());
    input.env_file.insert("FROM_ANSWERS".into(), "loses to answers".into());
    let d = load(&input).unwrap();
    let app = &d.services[0];
    assert_eq!(app.launch_config.image, "registry.local/app:2.0");
    let env = &app.launch_config.environment;
    assert_eq!(
        (env["A"].as_str(), env["B"].as_str(), env["C"].as_str(), env["D"].as_str()),
        ("from-answers", "from-env", "fallback", "$literal")
    );
    assert_eq!(app.links["shared/cache"], "cache");
    assert_eq!(app.launch_config.labels["io.rancher.scheduler.affinity:host_label"], "zone=a");
    assert_eq!(d.services[1].kind, ServiceKind::External);
    assert_eq!(d.services[1].external_ips, ["192.0.2.1", "192.0.2.2"]);
    assert_eq!(d.services[2].kind, ServiceKind::Alias);
    assert_eq!(d.services[2].links.keys().collect::<Vec<_>>(), ["app/app", "app/ext"]);
}

/// Each broken file gives exactly these errors (file:line:column: path: message), and `deploy
/// up` with it exits 2 leaving the bucket as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_files_report_every_problem_with_its_position() {
    let table: Vec<(&str, Option<&str>, Vec<&str>)> = vec![
        ("web: [1, 2\n", None, vec!["docker-compose.yml:2:1: YAML: while parsing a flow sequence, expected ',' or ']'"]),
        ("web:\n  image: a\nweb:\n  image: b\n", None, vec![r#"docker-compose.yml:3:1: YAML: duplicate key "web" (each key may appear once in a map)"#]),
        ("web:\n  command: x\n", None, vec!["docker-compose.yml:2:3: web: `image` is required"]),
        ("web:\n  image: a\n  imagee: b\n", None, vec!["docker-compose.yml:3:3: web.imagee: unknown compose key"]),
        ("web:\n  image: foo:$TAG\n", None, vec!["docker-compose.yml:2:10: web.image: variable TAG is not set (give it in the answers, --env-file or the environment, or write ${TAG:-default})"]),
        ("web:\n  image: a\n  build: .\n", None, vec!["docker-compose.yml:3:3: web.build: building images is not supported (there is no registry to push to): build the image on the hosts and give `image`"]),
        ("web:\n  image: a\n  container_name: x\n", None, vec!["docker-compose.yml:3:3: web.container_name: Corral names containers <stack>-<service>-<n> so that DNS and metadata can find them; remove `container_name`"]),
        ("web:\n  image: a\n  ports: [\"80:80\", \"70000:80\"]\n", None, vec![r#"docker-compose.yml:3:20: web.ports[1]: "70000:80": ports are numbers from 1 to 65535"#]),
        ("web:\n  image: a\n  ports: [\"80/sctp\"]\n", None, vec![r#"docker-compose.yml:3:11: web.ports[0]: "80/sctp": protocol must be tcp or udp"#]),
        ("web:\n  image: a\n  links: [db]\n", None, vec![r#"docker-compose.yml:3:3: web.links: link to "db", which is not a service of this stack"#]),
        ("web:\n  image: a\n  labels:\n    io.rancher.sidekicks: side\n", None, vec![r#"docker-compose.yml:4:5: web.labels.io.rancher.sidekicks: sidekick "side" is not a service of this file"#]),
        ("web:\n  image: a\n  network_mode: container:db\ndb:\n  image: b\n", None, vec![r#"docker-compose.yml:3:3: web.network_mode: container:db must name another member of this service's deployment unit (web)"#]),
        ("web:\n  image: a\n  volumes_from: [db]\ndb:\n  image: b\n", None, vec![r#"docker-compose.yml:3:18: web.volumes_from[0]: "db" must be another member of this service's deployment unit (web)"#]),
        ("web:\n  image: a\n  network_mode: my net\n", None, vec![r#"docker-compose.yml:3:3: web.network_mode: "my net": expected host, none, bridge, managed, a network name or container:<sidekick>"#]),
        ("", None, vec!["docker-compose.yml:1:1: the file is empty: a stack file defines at least one service"]),
        ("version: '2'\n", None, vec!["docker-compose.yml:1:1: services: no services: a stack file defines at least one (an empty file would remove every service of the stack)"]),
        ("web:\n  image: a\n---\nweb:\n  image: b\n", None, vec!["docker-compose.yml:3:1: YAML: more than one YAML document (`---`): a stack file is one document"]),
        ("web:\n  image: a\n  links: [db:a, db:b]\ndb:\n  image: b\n", None, vec!["docker-compose.yml:3:17: web.links[1]: app/db is linked twice (one alias per linked service)"]),
        ("web:\n  image: a\n  labels: {io.rancher.sidekicks: side}\n  links: [side]\nside:\n  image: b\n", None, vec![r#"docker-compose.yml:4:3: web.links: "side" is a sidekick of "web": link to "web""#]),
        ("web:\n  image: a\n  labels: {io.rancher.sidekicks: side}\nside:\n  image: b\n", Some("side:\n  scale: 2\n"), vec![r#"rancher-compose.yml:2:3: side.scale: set it on "web": a sidekick runs as part of its primary's unit"#]),
        ("web:\n  image: a\n", Some("web:\n  lb_config: {port_rules: []}\n"), vec!["rancher-compose.yml:2:3: web.lb_config: only a load balancer (image rancher/lb-service-haproxy) has lb_config"]),
        ("lb:\n  image: rancher/lb-service-haproxy\nweb:\n  image: a\n", Some("lb:\n  lb_config:\n    port_rules: [{source_port: 80, target_port: 80, service: wbe}]\n"), vec![r#"rancher-compose.yml:2:3: lb.lb_config.port_rules[0].service: port_rules[0].service "wbe" is not a service of this stack (or stack/service)"#]),
        ("lb:\n  image: rancher/load-balancer-service\n", None, vec!["docker-compose.yml:2:10: lb.image: the legacy load balancer (rancher/load-balancer-service) is not converted: use rancher/lb-service-haproxy with lb_config.port_rules in rancher-compose.yml"]),
        ("web:\n  image: a\n  mem_reservation: 99999999999999999g\n", None, vec!["docker-compose.yml:3:20: web.mem_reservation: expected a size such as 512m, 1g or a number of bytes"]),
        ("web_1:\n  image: a\n", None, vec!["docker-compose.yml:1:1: web_1: service names are 1-63 letters, digits and dashes, not starting or ending with a dash"]),
        ("version: '3'\nservices:\n  web:\n    image: a\n", None, vec![r#"docker-compose.yml:1:10: version: unsupported version "3": Rancher 1.6 read versions 1 (no `version`) and 2"#]),
        ("version: '2'\nservices:\n  web:\n    image: a\nnetworks: {}\n", None, vec!["docker-compose.yml:5:1: networks: top-level `networks` is not supported by Corral"]),
        ("web:\n  image: a\n  privileged: maybe\n", None, vec!["docker-compose.yml:3:15: web.privileged: expected true or false"]),
        ("web:\n  image: a\n  mem_reservation: lots\n", None, vec!["docker-compose.yml:3:20: web.mem_reservation: expected a size such as 512m, 1g or a number of bytes"]),
        ("web:\n  image: a\n  command: sh -c 'x\n", None, vec![r#"docker-compose.yml:3:12: web.command: unclosed quote in "sh -c 'x""#]),
        ("web:\n  image: a\n", Some("web:\n  scale: -1\n"), vec!["rancher-compose.yml:2:10: web.scale: -1 is out of range (0..=10000)"]),
        ("web:\n  image: a\n", Some("db:\n  scale: 1\n"), vec!["rancher-compose.yml:1:1: db: no service of this name in the compose file"]),
        ("web:\n  image: a\n", Some("web:\n  health_check: {interval: 2000}\n"), vec!["rancher-compose.yml:2:17: web.health_check: `port` is required"]),
        ("web:\n  image: a\n", Some("web:\n  health_check: {port: 80, strategy: sometimes}\n"), vec![r#"rancher-compose.yml:2:38: web.health_check.strategy: "sometimes": expected none, recreate or recreateOnQuorum"#]),
        ("web:\n  image: a\n", Some("web:\n  health_check: {port: 80, strategy: recreateOnQuorum}\n"), vec!["rancher-compose.yml:2:17: web.health_check: strategy recreateOnQuorum needs recreate_on_quorum_strategy_config.quorum"]),
        ("web:\n  image: a\n", Some("web:\n  health_check: {port: 80, request_line: healthz}\n"), vec![r#"rancher-compose.yml:2:42: web.health_check.request_line: "healthz": expected METHOD /path [HTTP/1.x]"#]),
        ("lb:\n  image: rancher/lb-service-haproxy\n", Some("lb:\n  lb_config:\n    port_rules: [{source_port: 80, target_port: 8, protocol: quic}]\n"), vec![r#"rancher-compose.yml:3:62: lb.lb_config.port_rules[0].protocol: "quic": expected http, https, tcp, tls, sni or udp"#]),
        ("web:\n  image: rancher/external-service\n", Some("web:\n  external_ips: [not-an-ip]\n"), vec![r#"rancher-compose.yml:2:18: web.external_ips[0]: "not-an-ip" is not an IP address"#]),
        ("ext:\n  image: rancher/external-service\n", None, vec!["docker-compose.yml:1:1: ext: an external service needs external_ips or hostname in rancher-compose.yml"]),
        ("web:\n  image: a\n", Some("web:\n  scael: 2\n"), vec!["rancher-compose.yml:2:3: web.scael: unknown rancher-compose key `scael`"]),
        ("web:\n  image: a\n  labels:\n    io.rancher.scheduler.affinity:host_label: zone\n", None, vec![r#"docker-compose.yml:4:47: web.labels.io.rancher.scheduler.affinity:host_label: "zone": expected key=value pairs separated by commas"#]),
        ("web:\n  image: a\n  labels:\n    io.rancher.service.selector.link: tier in (a,b\n", None, vec![r#"docker-compose.yml:4:39: web.labels.io.rancher.service.selector.link: "tier in (a,b": unbalanced parentheses"#]),
        ("web:\n  image: a\n  labels:\n    io.rancher.scheduler.global: yes\n", None, vec![r#"docker-compose.yml:4:34: web.labels.io.rancher.scheduler.global: "yes": expected 'true' or 'false'"#]),
        ("web:\n  image: a\n  tty: maybe\n  restart: sometimes\n  mem_limit: lots\n  ulimits: 5\n", None, vec![
            r#"docker-compose.yml:3:8: web.tty: expected true or false, found "maybe""#,
            r#"docker-compose.yml:4:12: web.restart: expected no, always, unless-stopped, on-failure or on-failure:N, found "sometimes""#,
            r#"docker-compose.yml:5:14: web.mem_limit: expected a size such as 512m, found "lots""#,
            "docker-compose.yml:6:12: web.ulimits: expected a map, found 5",
        ]),
        ("web:\n  image: a\n  dns: [10.0.0.2, resolver.local]\n", None, vec![r#"docker-compose.yml:3:19: web.dns[1]: "resolver.local": expected an IP address, optionally with :port"#]),
        // Every problem at once, across both files, in file order.
        (
            "web:\n  image: a\n  imagee: b\n  ports: [\"0\"]\n",
            Some("web:\n  scale: x\n"),
            vec![
                "docker-compose.yml:3:3: web.imagee: unknown compose key",
                r#"docker-compose.yml:4:11: web.ports[0]: "0": ports are numbers from 1 to 65535"#,
                "rancher-compose.yml:2:10: web.scale: expected a whole number",
            ],
        ),
    ];
    assert!(table.len() >= 25);
    let mut failures = Vec::new();
    for (compose, rancher, expected) in &table {
        let got = errors(compose, *rancher);
        if got != *expected {
            failures.push(format!("{compose:?}\n  expected {expected:#?}\n  got      {got:#?}"));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), table.len(), failures.join("\n"));

    // The same files through the CLI against a live NATS: exit 2, the same first error, and
    // not one write.
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    let before = store.version().await.unwrap();
    for (compose, rancher, expected) in &table {
        let dir = tempfile::tempdir().unwrap();
        let input = write(dir.path(), compose, *rancher);
        let mut args = vec!["up", "-f", input.compose.to_str().unwrap(), "-p", "app"];
        if let Some(r) = &input.rancher {
            args.extend(["-r", r.to_str().unwrap()]);
        }
        let (code, _, err) = deploy(&args, &nats.url());
        assert_eq!(code, 2, "{compose:?}: {err}");
        let first = expected[0].split_once(": ").map(|(_, rest)| rest).unwrap_or(expected[0]);
        assert!(err.contains(first), "{compose:?}: {err}");
    }
    assert_eq!(store.version().await.unwrap(), before, "no broken file wrote anything");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_plans_applies_is_idempotent_and_writes_nothing_for_broken_files() {
    let nats = NatsServer::start();
    let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    let f = f.to_str().unwrap();
    std::fs::write(f, "web:\n  image: nginx:1.25\n  ports: [\"80\"]\ndb:\n  image: mysql:8\n").unwrap();

    // A broken file: exit 2, the errors, and the bucket untouched — also with NATS unreachable.
    std::fs::write(dir.path().join("bad.yml"), "web:\n  image: a\n  imagee: b\n").unwrap();
    let bad = dir.path().join("bad.yml");
    let before = store.version().await.unwrap();
    let (code, _, err) = deploy(&["up", "-f", bad.to_str().unwrap(), "-p", "app"], &nats.url());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("bad.yml:3:3: web.imagee: unknown compose key"), "{err}");
    assert_eq!(store.version().await.unwrap(), before, "nothing written");
    let (code, _, err) = deploy(&["up", "-f", bad.to_str().unwrap(), "-p", "app"], "nats://127.0.0.1:1");
    assert_eq!(code, 2, "the same answer without NATS: {err}");

    // First up: a plan that creates everything, applied.
    let (code, out, err) = deploy(&["up", "-f", f, "-p", "app"], &nats.url());
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "stack app: create\n  + service web (create)\n  + service db (create)\napplied as revision 1\n");
    let web = store.get::<event_bus::model::Service>("app=web").await.unwrap().unwrap().value;
    assert_eq!(web.launch_config.image, "nginx:1.25");
    assert!(store.get::<event_bus::model::Stack>("app").await.unwrap().is_some());

    // Again: nothing to do, nothing written.
    let v = store.version().await.unwrap();
    let (_, out, _) = deploy(&["up", "-f", f, "-p", "app"], &nats.url());
    assert_eq!(out, "stack app: up to date\n");
    assert_eq!(store.version().await.unwrap(), v);

    // A changed file: --dry-run shows exactly the changed fields and writes nothing.
    std::fs::write(f, "web:\n  image: nginx:1.27\n  ports: [\"80\"]\n").unwrap();
    let (_, out, err) = deploy(&["up", "-f", f, "-p", "app", "--dry-run"], &nats.url());
    assert_eq!(out, "stack app\n  ~ service web (update)\n      launch_config.image: \"nginx:1.25\" -> \"nginx:1.27\"\n  - service db (delete)\n");
    assert!(err.contains("the launch config of web changed; its running containers keep the old one"), "{err}");
    assert_eq!(store.version().await.unwrap(), v);
    let (_, out, _) = deploy(&["up", "-f", f, "-p", "app"], &nats.url());
    assert!(out.ends_with("applied as revision 2\n"), "{out}");
    assert!(store.get::<event_bus::model::Service>("app=db").await.unwrap().is_none());
    assert_eq!(
        store.get::<event_bus::model::Service>("app=web").await.unwrap().unwrap().value.launch_config.image,
        "nginx:1.27"
    );
}

/// More real-world shapes: each file, and what it must produce.
#[test]
fn real_world_shapes() {
    // Wordpress-like: v1, env list, links with aliases, volumes, restart policy kept verbatim.
    let d = ok(
        "wordpress:\n  image: wordpress:6\n  links: [\"mysql:db\"]\n  environment: [\"WORDPRESS_DB_HOST=db\"]\n  ports: [\"80:80\"]\n  restart: always\nmysql:\n  image: mysql:5.7\n  volumes: [\"/data/mysql:/var/lib/mysql\"]\n  environment:\n    MYSQL_ROOT_PASSWORD: example\n",
        Some("wordpress:\n  scale: 2\n"),
    );
    assert_eq!(d.services[0].links["app/mysql"], "db");
    assert_eq!(d.services[0].launch_config.extra["restart"], serde_json::json!("always"));
    assert_eq!(d.services[1].launch_config.volumes, ["/data/mysql:/var/lib/mysql"]);

    // A global monitoring agent on the host network with privileges and capabilities.
    let d = ok(
        "agent:\n  image: local/agent:1\n  network_mode: host\n  privileged: true\n  cap_add: [NET_ADMIN]\n  pid: host\n  labels:\n    io.rancher.scheduler.global: 'true'\n    io.rancher.scheduler.affinity:host_label_ne: role=edge\n",
        None,
    );
    let lc = &d.services[0].launch_config;
    assert_eq!(
        (lc.network_mode.as_deref(), lc.privileged, lc.cap_add.as_slice()),
        (Some("host"), true, ["NET_ADMIN".to_string()].as_slice())
    );
    assert_eq!(lc.extra["pid"], serde_json::json!("host"));

    // A data-volume sidekick that runs once (Rancher's minecraft idiom).
    let d = ok(
        "server:\n  image: local/mc:1\n  volumes_from: [data]\n  labels:\n    io.rancher.sidekicks: data\ndata:\n  image: busybox\n  net: none\n  volumes: [/data]\n  labels:\n    io.rancher.container.start_once: 'true'\n",
        Some("server:\n  scale: 1\n  health_check: {port: 25565, interval: 5000}\n"),
    );
    assert_eq!(d.services.len(), 1);
    assert_eq!(d.services[0].secondary_launch_configs[0].network_mode.as_deref(), Some("none"));
    assert_eq!(d.services[0].launch_config.volumes_from, ["data"]);

    // An external service by hostname, and an alias over two services.
    let d = ok(
        "db:\n  image: rancher/external-service\nweb1:\n  image: nginx\nweb2:\n  image: nginx\nweb:\n  image: rancher/dns-service\n  links: [web1, web2]\n",
        Some("db:\n  hostname: db.example.com\n"),
    );
    assert_eq!(d.services[0].hostname.as_deref(), Some("db.example.com"));
    assert_eq!(d.services[3].kind, ServiceKind::Alias);

    // A TLS load balancer with certificates, stickiness and a raw haproxy snippet.
    let d = ok(
        "lb:\n  image: rancher/lb-service-haproxy:v0.9.1\n  ports: [\"443:443\"]\napp:\n  image: local/app:1\n",
        Some("lb:\n  lb_config:\n    certs: [site]\n    default_cert: site\n    config: |\n      defaults\n        timeout client 1m\n    stickiness_policy: {name: SRV, cookie: SRV, mode: insert, indirect: true}\n    port_rules:\n      - {source_port: 443, target_port: 8080, protocol: https, service: app, hostname: '*.example.com'}\n"),
    );
    let lb = d.services[0].lb_config.as_ref().unwrap();
    assert_eq!((lb.default_cert.as_deref(), lb.certs.as_slice()), (Some("site"), ["site".to_string()].as_slice()));
    assert!(lb.config.as_deref().unwrap().contains("timeout client 1m"));
    assert_eq!(lb.port_rules[0].hostname.as_deref(), Some("*.example.com"));

    // Docker options carried verbatim: ulimits, logging, extra_hosts, healthcheck, sysctls.
    let d = ok(
        "app:\n  image: local/app:1\n  ulimits: {nofile: {soft: 1024, hard: 2048}}\n  logging: {driver: json-file, options: {max-size: 10m}}\n  extra_hosts: [\"db:10.0.0.5\"]\n  healthcheck: {test: [CMD, true], interval: 10s}\n  sysctls: {net.core.somaxconn: 1024}\n  user: \"1000\"\n  working_dir: /srv\n",
        None,
    );
    let extra = &d.services[0].launch_config.extra;
    assert_eq!(extra["ulimits"]["nofile"]["hard"], serde_json::json!(2048));
    assert_eq!(extra["logging"]["options"]["max-size"], serde_json::json!("10m"));
    assert_eq!(extra["user"], serde_json::json!("1000"), "quoted numbers stay strings");

    // Upgrade strategy, scale policy and a recreateOnQuorum health check.
    let d = ok(
        "api:\n  image: local/api:2\n  mem_reservation: 256m\n",
        Some("api:\n  scale: 5\n  upgrade_strategy: {start_first: true, batch_size: 2, interval_millis: 1000}\n  scale_policy: {min: 2, max: 10, increment: 1}\n  health_check:\n    port: 8080\n    request_line: GET /health HTTP/1.1\n    strategy: recreateOnQuorum\n    recreate_on_quorum_strategy_config: {quorum: 3}\n"),
    );
    let api = &d.services[0];
    assert_eq!(api.launch_config.memory_reservation, Some(256 << 20));
    assert_eq!(
        api.launch_config.health_check.as_ref().unwrap().recreate_on_quorum_strategy_config.as_ref().unwrap().quorum,
        3
    );
    assert_eq!(api.extra["scale_policy"]["max"], serde_json::json!(10));
}
