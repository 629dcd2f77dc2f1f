//! Every document of the README's "Run it alone" section is a valid state document, and the
//! configuration rendered from them passes `haproxy -c`.

use std::process::Command;

use event_bus::keys::decode_value;
use event_bus::{Key, Snapshot};
use lb_haproxy::render::{render_service, Settings};

fn documents(readme: &str) -> Vec<(Key, serde_json::Value)> {
    let mut out = Vec::new();
    let mut lines = readme.lines();
    while let Some(line) = lines.next() {
        let Some((_, rest)) = line.split_once("state put ") else { continue };
        let key = rest.split_whitespace().next().unwrap();
        let body: Vec<&str> = lines.by_ref().take_while(|l| *l != "EOF").collect();
        let value: serde_json::Value =
            serde_norway::from_str(&body.join("\n")).unwrap_or_else(|e| panic!("{key}: {e}"));
        out.push((key.parse().unwrap(), value));
    }
    out
}

#[test]
fn readme_example_renders_and_haproxy_accepts_it() {
    let readme = include_str!("../README.md");
    let docs = documents(readme);
    assert_eq!(docs.len(), 5, "the README's documents");
    let records: Vec<_> = docs
        .into_iter()
        .map(|(key, v)| {
            let r = decode_value(&key, v).unwrap_or_else(|e| panic!("{key}: {e}"));
            assert_eq!(r.problems(), vec![], "{key}");
            r
        })
        .collect();
    let snap = Snapshot::from_records(1, records);
    let dir = tempfile::tempdir().unwrap();
    let settings = Settings {
        run_dir: dir.path().into(),
        bind_address: "127.0.0.1".parse().unwrap(),
        stats_addr: Some("127.0.0.1:9227".parse().unwrap()),
        host_uuid: None,
    };
    let lb = lb_haproxy::apply::find_service(&snap, "demo/lb").expect("demo/lb");
    let r = render_service(&settings, &lb, &snap).unwrap();
    assert!(r.text.contains("server demo-web-1 127.0.10.1:8080"), "{}", r.text);
    assert!(r.text.contains("timeout client 1h"), "{}", r.text);
    std::fs::write(settings.config_path(), &r.text).unwrap();
    std::fs::write(settings.server_state(), "1\n").unwrap();
    let out = Command::new("haproxy").arg("-c").arg("-f").arg(settings.config_path()).output().unwrap();
    assert!(
        out.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        r.text
    );
}
