//! The repository's `catalog/` through the CLI: list, show, deploy each template with answers
//! (version selection, `.tpl` rendering, question checks, prompting), asserting the state each
//! produces.

use std::io::Write;
use std::process::{Command, Stdio};

fn catalog() -> String {
    format!("{}/../catalog", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `deploy` with `stdin`; (exit code, stdout, stderr).
fn deploy(args: &[&str], stdin: &str) -> (i32, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(args)
        .env("CORRAL_DEPLOY_CATALOG", catalog())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// `deploy validate` output: one service per line.
fn services(out: &str) -> Vec<serde_json::Value> {
    out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn answers(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn list_and_show() {
    let (code, out, _) = deploy(&["catalog", "list"], "");
    assert_eq!(code, 0);
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert_eq!(rows.len(), 4, "{out}");
    assert!(rows[1].starts_with("hello") && rows[1].contains("0.1.0"), "{out}");
    assert!(rows[3].starts_with("web-lb") && rows[3].contains("1.1.0") && rows[3].contains("1.0.0,1.1.0"), "{out}");
    let (_, out, _) = deploy(&["catalog", "show", "two-tier"], "");
    assert!(out.contains("DB_PASSWORD") && out.contains("password") && out.contains("enum(local|convoy-nfs)"), "{out}");
    let (code, _, err) = deploy(&["catalog", "show", "web-lb:9.9"], "");
    assert_eq!(code, 2);
    assert!(err.contains("has no version \"9.9\" (it has: 1.0.0, 1.1.0)"), "{err}");
    let (code, _, err) = deploy(&["catalog", "show", "nope"], "");
    assert_eq!(code, 2);
    assert!(err.contains("no template \"nope\""), "{err}");
}

#[test]
fn web_lb_versions() {
    // Default version (config.yml says 1.1.0), defaults for every answer.
    let (code, out, err) = deploy(&["validate", "-t", "web-lb"], "");
    assert_eq!(code, 0, "{err}");
    let s = services(&out);
    assert_eq!(s[0]["uuid"], "web-lb=web");
    assert_eq!(s[0]["launch_config"]["image"], "local/nginx:1");
    assert_eq!(s[0]["launch_config"]["health_check"]["request_line"], "GET /healthz HTTP/1.0");
    assert_eq!(s[0]["launch_config"]["health_check"]["strategy"], "recreate");
    assert_eq!(s[1]["kind"], "loadBalancerService");
    assert_eq!(s[1]["launch_config"]["ports"][0], "8080:8080");
    assert_eq!(
        s[1]["lb_config"]["port_rules"][0],
        serde_json::json!({"source_port": 8080, "target_port": 80, "service": "web", "path": "/"})
    );
    // The older version, with answers, and another stack name.
    let a = answers("PUBLIC_PORT: 9000\nIMAGE_TAG: \"2\"\n");
    let (code, out, err) =
        deploy(&["validate", "-t", "web-lb:1.0.0", "--answers", a.path().to_str().unwrap(), "-p", "shop"], "");
    assert_eq!(code, 0, "{err}");
    let s = services(&out);
    assert_eq!(s[0]["uuid"], "shop=web");
    assert_eq!(s[0]["launch_config"]["image"], "local/nginx:2");
    assert!(s[0]["launch_config"]["health_check"].get("strategy").is_none());
    assert_eq!(s[1]["lb_config"]["port_rules"][0]["source_port"], 9000);
}

#[test]
fn two_tier_sidekick_and_volume() {
    let a = answers("DB_PASSWORD: correct-horse\nVOLUME_DRIVER: convoy-nfs\n");
    let (code, out, err) = deploy(&["validate", "-t", "two-tier", "--answers", a.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    let s = services(&out);
    assert_eq!(s.len(), 1, "the db sidekick folds into app");
    let db = &s[0]["secondary_launch_configs"][0];
    assert_eq!((db["name"].as_str(), db["network_mode"].as_str()), (Some("db"), Some("container:app")));
    assert_eq!(db["volume_driver"], "convoy-nfs");
    assert_eq!(db["environment"]["POSTGRES_PASSWORD"], "correct-horse");
    assert_eq!(s[0]["retain_ip"], true);
    // A short password and an unknown driver are refused where they were given.
    let bad = answers("DB_PASSWORD: short\nVOLUME_DRIVER: nfs\n");
    let (code, _, err) = deploy(&["validate", "-t", "two-tier", "--answers", bad.path().to_str().unwrap()], "");
    assert_eq!(code, 2);
    let p = bad.path().display().to_string();
    assert!(err.contains(&format!("{p}:1:14: DB_PASSWORD: at least 8 characters")), "{err}");
    assert!(err.contains(&format!("{p}:2:16: VOLUME_DRIVER: \"nfs\": expected one of local, convoy-nfs")), "{err}");
}

#[test]
fn every_question_type_and_the_template_language() {
    let a = answers("GREETING: hello\nSECRET: s3cretpass\nUPSTREAM: db/pg\nDEBUG: true\nEXTRA_HOSTS: a.example:10.0.0.1,b.example:10.0.0.2\n");
    let (code, out, err) = deploy(&["validate", "-t", "all-questions", "--answers", a.path().to_str().unwrap()], "");
    assert_eq!(code, 0, "{err}");
    let app = &services(&out)[0];
    let env = &app["launch_config"]["environment"];
    assert_eq!(env["GREETING"], "hello");
    assert_eq!(env["WORKERS"], "4", "int default");
    assert_eq!(env["DEBUG"], "1", "if eq .Values.DEBUG \"true\"");
    assert_eq!(env["MODE"], "safe");
    assert_eq!(env["CERT"], "default-cert");
    assert_eq!(app["launch_config"]["image"], "local/app:latest", "default in a pipe");
    assert_eq!(
        app["launch_config"]["extra_hosts"],
        serde_json::json!(["a.example:10.0.0.1", "b.example:10.0.0.2"]),
        "range"
    );
    assert_eq!(app["links"]["db/pg"], "upstream");

    // Missing required answers: each named; with --prompt they are asked on stdin, and a bad
    // answer is asked again.
    let partial = answers("GREETING: hello\n");
    let path = partial.path().to_str().unwrap();
    let (code, _, err) = deploy(&["validate", "-t", "all-questions", "--answers", path], "");
    assert_eq!(code, 2);
    assert!(err.contains("questions.SECRET: an answer is required (Secret)"), "{err}");
    assert!(err.contains("questions.UPSTREAM: an answer is required (Upstream service)"), "{err}");
    let (code, out, err) =
        deploy(&["validate", "-t", "all-questions", "--answers", path, "--prompt"], "has space\ns3cretpass\napp/db\n");
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("Secret (SECRET): ") && err.contains("' ' is not allowed"), "{err}");
    assert_eq!(services(&out)[0]["launch_config"]["environment"]["SECRET"], "s3cretpass");
}

#[test]
fn misspelt_answers_and_broken_templates() {
    let a = answers("PUBLC_PORT: 9000\n");
    let (code, _, err) = deploy(&["validate", "-t", "web-lb", "--answers", a.path().to_str().unwrap()], "");
    assert_eq!(code, 2);
    assert!(
        err.contains(&format!("{}:1:13: PUBLC_PORT: not a question of this template", a.path().display())),
        "{err}"
    );
    let list = answers("- a\n- b\n");
    let (code, _, err) = deploy(&["validate", "-t", "web-lb", "--answers", list.path().to_str().unwrap()], "");
    assert_eq!(code, 2);
    assert!(err.contains("expected a map of VARIABLE: answer, found a list"), "{err}");

    // A catalog with one broken template still lists and deploys the others.
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("templates/good/0");
    std::fs::create_dir_all(&good).unwrap();
    std::fs::write(dir.path().join("templates/good/config.yml"), "name: Good\n").unwrap();
    std::fs::write(good.join("docker-compose.yml"), "web:\n  image: nginx\n").unwrap();
    std::fs::create_dir_all(dir.path().join("templates/bad")).unwrap();
    std::fs::write(dir.path().join("templates/bad/config.yml"), "name: [unclosed\n").unwrap();
    let cat = dir.path().to_str().unwrap();
    let (code, out, err) = deploy(&["catalog", "list", "--catalog", cat], "");
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("good") && err.contains("skipped a template"), "{out}{err}");
    let (code, _, err) = deploy(&["validate", "-t", "good", "--catalog", cat], "");
    assert_eq!(code, 0, "{err}");
}
