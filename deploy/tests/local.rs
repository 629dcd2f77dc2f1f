//! `deploy local up` / `down` as a user runs them: one command starts a private NATS, the
//! controller, an agent on the real Docker engine, rancher-dns and rancher-metadata, deploys the
//! `hello` catalog template and waits; then the published port answers, the front container
//! reaches `web` by its service name, and rancher-metadata knows who is asking. `down` stops it
//! all and a second `up` brings the same containers back. Needs Docker, the test image, root
//! (rancher-dns answers containers on port 53) and rancher-dns/rancher-metadata built (a
//! workspace test run builds them).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{docker, require_image, DockerCleanup};
use event_bus::testkit::free_port;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `deploy local …` with the test's own directory, host and ports; (code, stdout, stderr).
fn local(args: &[&str], state: &Path, host: &str) -> (i32, String, String) {
    let nats = event_bus::testkit::find_nats_server().expect("nats-server");
    let out = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .arg("local")
        .args(args)
        .args(["--state-dir", state.to_str().unwrap(), "--host-uuid", host])
        .env_remove("CORRAL_NATS_URL")
        .env("NATS_SERVER_BIN", nats)
        .current_dir(workspace())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn local_up_runs_a_catalog_stack_and_down_stops_it() {
    require_image();
    for bin in ["rancher-dns", "rancher-metadata", "healthcheck", "lb-haproxy"] {
        let path = Path::new(env!("CARGO_BIN_EXE_deploy")).with_file_name(bin);
        assert!(path.is_file(), "{} missing: build the workspace (cargo build --workspace)", path.display());
    }
    assert_eq!(unsafe { libc::geteuid() }, 0, "rancher-dns must bind port 53 on the network's gateway: run as root");
    let pid = std::process::id();
    let host = format!("lt{pid}");
    let _cleanup = DockerCleanup { host: host.clone(), network: format!("corral-{host}") };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("local");
    let public = free_port();
    let lb_port = free_port();
    let answers = dir.path().join("answers.yml");
    std::fs::write(&answers, format!("PUBLIC_PORT: {public}\nLB_PORT: {lb_port}\n")).unwrap();
    // The load balancer's image, from the lb-haproxy built beside deploy.
    let lb = Path::new(env!("CARGO_BIN_EXE_deploy")).with_file_name("lb-haproxy");
    let built = Command::new(workspace().join("scripts/lb-image"))
        .args([lb.to_str().unwrap(), "corral/lb-haproxy:test"])
        .status()
        .expect("scripts/lb-image");
    assert!(built.success(), "scripts/lb-image failed");
    // A subnet of its own per run, so parallel runs and a developer's own local stack differ.
    let subnet = format!("10.42.{}.0/24", 100 + pid % 100);
    let gateway = subnet.replace(".0/24", ".1");
    let nats_port = free_port().to_string();
    let up_args = |target: &str| -> Vec<String> {
        let v: Vec<String> = vec![
            "up".into(),
            target.into(),
            "-p".into(),
            format!("lt{pid}"),
            "--answers".into(),
            answers.display().to_string(),
            "--subnet".into(),
            subnet.clone(),
            "--nats-port".into(),
            nats_port.clone(),
            "--admin-base-port".into(),
            "0".into(),
            // Only loopback upstreams: nothing leaves the machine even if a lookup misses.
            "--upstream".into(),
            "127.0.0.1:9".into(),
            "--wait".into(),
            "90s".into(),
            "--lb-image".into(),
            "corral/lb-haproxy:test".into(),
        ];
        v
    };
    let stop = || local(&["down", "--stop-timeout", "1s"], &state, &host);
    struct Down<F: Fn() -> (i32, String, String)>(F);
    impl<F: Fn() -> (i32, String, String)> Drop for Down<F> {
        fn drop(&mut self) {
            (self.0)();
        }
    }
    let _down = Down(stop);

    let args = up_args("hello");
    let (code, out, err) = local(&args.iter().map(String::as_str).collect::<Vec<_>>(), &state, &host);
    assert_eq!(code, 0, "local up failed:\n{out}\n{err}");
    let stack = format!("lt{pid}");
    for expected in [
        "nats-server        started",
        "controller         started",
        "agent              started",
        "rancher-dns        started",
        "rancher-metadata   started",
        "healthcheck        started",
        "+ service web (create)",
        &format!("{stack}-web-1"),
        &format!("stack {stack} is running"),
        &format!("curl http://127.0.0.1:{public}/"),
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    // Progress is shown as it happens: the containers were seen starting, then running, and
    // the health-checked web containers initializing, then healthy.
    assert!(out.contains("starting") && out.contains(" running"), "{out}");
    assert!(out.contains("running, initializing") && out.contains("running, healthy"), "{out}");

    // The load balancer (lb-haproxy in its container) spreads requests over both web containers.
    let mut answered = std::collections::BTreeSet::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while answered.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the load balancer did not reach both web containers: {answered:?}"
        );
        if let Some(page) = try_http_get(lb_port, "/") {
            answered.insert(page.trim().to_string());
        } else {
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }
    assert_eq!(answered, [format!("hello from {stack}-web-1"), format!("hello from {stack}-web-2")].into());

    // The published port, and through it the front's CGI asking `web` by its service name.
    let page = http_get(public, "/cgi-bin/hello");
    assert!(page.contains(&format!("hello from {stack}-web-")), "{page}");
    // Docker's embedded DNS forwards from the container's own address: rancher-dns answers a
    // bare `web` by the caller's stack, which it can only know from the source address.
    let front = format!("{stack}-front-1");
    let looked_up = docker(&["exec", &front, "nslookup", "web"]);
    assert!(looked_up.contains(&subnet.replace(".0/24", ".")), "{looked_up}");
    // rancher-metadata's `self` is the asking container.
    let me = docker(&["exec", &front, "wget", "-qO-", "http://rancher-metadata/latest/self/container/name"]);
    assert_eq!(me, front);
    assert!(out.contains(&format!("dig @{gateway} ")), "{out}");

    // `deploy logs`: each container's output from the agent, prefixed with its name.
    let nats_url = format!("nats://127.0.0.1:{nats_port}");
    let (code, logs, err) = common::deploy(&["logs", &format!("{stack}/web")], &nats_url);
    assert_eq!(code, 0, "{err}");
    for n in 1..=2 {
        let name = format!("{stack}-web-{n}");
        assert!(logs.contains(&format!("{name} | {name} serves port 80")), "{logs}");
    }
    // `-f --tail 0`: only what comes next: the request the front makes to a web container.
    let mut follow = Command::new(env!("CARGO_BIN_EXE_deploy"))
        .args(["logs", "-f", "--tail", "0", &format!("{stack}/web")])
        .env("CORRAL_NATS_URL", &nats_url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(lines).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut seen = Vec::new();
    let found = loop {
        // Asked again until the streams are open (the first request may come before they are).
        http_get(public, "/cgi-bin/hello");
        if let Ok(line) = rx.recv_timeout(std::time::Duration::from_millis(500)) {
            seen.push(line.clone());
            if line.starts_with(&format!("{stack}-web-")) && line.contains("response:200") {
                break true;
            }
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
    };
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(found, "no request logged by a web container within 30 s; saw {seen:?}");
    assert!(!seen.iter().any(|l| l.contains("serves port 80")), "--tail 0 printed old lines: {seen:?}");

    // An in-service upgrade (the template's upgrade_strategy: start_first, batch 1; the web
    // containers are health-checked) while a client polls the load balancer: not one failed
    // request, the new greeting served; then a rollback brings the old containers back.
    let answers2 = dir.path().join("answers2.yml");
    std::fs::write(&answers2, format!("PUBLIC_PORT: {public}\nLB_PORT: {lb_port}\nGREETING: hi\n")).unwrap();
    let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let polling = polling.clone();
        std::thread::spawn(move || {
            let (mut ok, mut failed, mut said) = (0u32, 0u32, std::collections::BTreeSet::new());
            // The first failures, with when they happened, for the assertion message.
            let (started, mut why) = (std::time::Instant::now(), Vec::new());
            while polling.load(std::sync::atomic::Ordering::Relaxed) {
                match http_get_result(lb_port, "/") {
                    Ok(body) => {
                        ok += 1;
                        said.insert(body.split(" from").next().unwrap_or_default().to_string());
                    }
                    Err(e) => {
                        failed += 1;
                        if why.len() < 5 {
                            why.push(format!("{:.1?} after the poller started: {e}", started.elapsed()));
                        }
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            (ok, failed, said, why)
        })
    };
    let catalog = workspace().join("catalog");
    let template_up = |answers: &Path, flag: Option<&str>| {
        let args = ["up", "-t", "hello", "--catalog", catalog.to_str().unwrap(), "-p", &stack];
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--answers", answers.to_str().unwrap()]);
        args.extend(flag);
        common::deploy(&args, &nats_url)
    };
    let web_state = || {
        let (_, ps, _) = common::deploy(&["ps", &stack], &nats_url);
        ps.lines()
            .find(|l| l.split_whitespace().nth(1) == Some("web"))
            .and_then(|l| l.split_whitespace().last())
            .unwrap_or_default()
            .to_string()
    };
    let wait_state = |want: &str| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
        while web_state() != want {
            assert!(
                std::time::Instant::now() < deadline,
                "web never {want}: {}",
                common::deploy(&["ps", &stack], &nats_url).1
            );
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
    };
    let (code, out, err) = template_up(&answers2, Some("--upgrade"));
    assert_eq!(code, 0, "{out}{err}");
    // Rancher's health states while a service is upgraded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !common::deploy(&["ps", &stack], &nats_url).1.contains("updating-healthy") {
        assert!(std::time::Instant::now() < deadline, "no updating-healthy container during the upgrade");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    wait_state("upgraded");
    let (code, out, err) = template_up(&answers2, Some("--rollback"));
    assert_eq!(code, 0, "{out}{err}");
    wait_state("active");
    std::thread::sleep(std::time::Duration::from_millis(500));
    polling.store(false, std::sync::atomic::Ordering::Relaxed);
    let (ok, failed, said, why) = poller.join().unwrap();
    eprintln!("upgrade and rollback under polling: {ok} requests answered, {failed} failed");
    assert_eq!(failed, 0, "requests failed during the upgrade ({ok} answered): {why:#?}");
    assert!(said.contains("hi") && said.contains("hello"), "{said:?}");
    assert_eq!(try_http_get(lb_port, "/").map(|b| b.starts_with("hello from")), Some(true));

    // A load balancer configuration its lb-haproxy refuses (the new port is held by another
    // process): `deploy ps` says why under the service, and the old port keeps serving. The
    // previous answers again clear it.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let answers3 = dir.path().join("answers3.yml");
    std::fs::write(&answers3, format!("PUBLIC_PORT: {public}\nLB_PORT: {taken_port}\n")).unwrap();
    let (code, out, err) = template_up(&answers3, None);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, ps, _) = common::deploy(&["ps", &stack], &nats_url);
        if ps.contains("load balancer configuration refused on ")
            && ps.contains(&format!("{taken_port} is already in use"))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no refusal in deploy ps:\n{ps}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert_eq!(try_http_get(lb_port, "/").map(|b| b.starts_with("hello from")), Some(true));
    let (code, out, err) = template_up(&answers, None);
    assert_eq!(code, 0, "{out}{err}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while common::deploy(&["ps", &stack], &nats_url).1.contains("refused") {
        assert!(std::time::Instant::now() < deadline, "the refusal stayed after the old configuration came back");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    drop(taken);

    // A web container stops serving its page: healthcheck (HAProxy) reports it down, the
    // controller marks it unhealthy, it leaves DNS and the load balancer, and `strategy:
    // recreate` replaces it with a new container (a new create index) that becomes healthy.
    let web1 = format!("{stack}-web-1");
    docker(&["exec", &web1, "busybox", "rm", "/www/index.html"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let replaced = loop {
        let (_, ps, _) = common::deploy(&["ps", &stack], &nats_url);
        let webs: Vec<&str> = ps.lines().filter(|l| l.trim_start().starts_with(&format!("{stack}-web-"))).collect();
        if !ps.contains(&web1)
            && webs.len() == 2
            && webs.iter().all(|l| l.contains("running") && l.ends_with("healthy"))
        {
            break webs.iter().map(|l| l.split_whitespace().next().unwrap_or_default().to_string()).collect::<Vec<_>>();
        }
        assert!(std::time::Instant::now() < deadline, "{web1} not replaced by a healthy container:\n{ps}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    let new_web = replaced.iter().find(|n| **n != format!("{stack}-web-2")).cloned().expect("a new web container");
    assert!(new_web.as_str() > format!("{stack}-web-4").as_str(), "a new index: {replaced:?}");
    assert_eq!(try_http_get(lb_port, "/").map(|b| b.contains("from")), Some(true));

    // Down: nothing of ours runs; the state stays.
    let (code, out, err) = local(&["down", "--stop-timeout", "1s"], &state, &host);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("stopped 4 container(s)") && out.contains("stopped nats"), "{out}");
    let running = docker(&["ps", "-q", "--filter", &format!("label=io.corral.agent.host={host}")]);
    assert!(running.is_empty(), "containers still run: {running}");
    assert!(state.join("nats/jetstream").is_dir());

    // Up again: the same containers (same names, no new ones) run again.
    let (code, out, err) = local(&args.iter().map(String::as_str).collect::<Vec<_>>(), &state, &host);
    assert_eq!(code, 0, "second local up failed:\n{out}\n{err}");
    assert!(out.contains("up to date") || !out.contains("(create)"), "{out}");
    assert!(out.contains("stopped") && out.contains(&format!("stack {stack} is running")), "{out}");
    let names = docker(&["ps", "--format", "{{.Names}}", "--filter", &format!("label=io.corral.agent.host={host}")]);
    let mut names: Vec<&str> = names.lines().collect();
    names.sort();
    assert_eq!(names, [front.as_str(), &format!("{stack}-lb-1"), &format!("{stack}-web-2"), new_web.as_str()]);
    assert!(http_get(public, "/").contains("front page"));
}

/// A GET that may fail (the load balancer may not listen yet): the body of a 200.
fn try_http_get(port: u16, path: &str) -> Option<String> {
    http_get_result(port, path).ok()
}

/// A GET on loopback: the body of a 200, or what went wrong.
fn http_get_result(port: u16, path: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text).map_err(|e| format!("read: {e}"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("no header end in {text:?}"))?;
    if head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200") {
        Ok(body.to_string())
    } else {
        Err(head.lines().next().unwrap_or_default().to_string())
    }
}

/// A plain HTTP/1.0 GET on loopback; the body.
fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the published port");
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(body)
}
