//! A container on the host's network asks the `rancher-metadata` binary who it is: real Docker
//! (the test image, `busybox wget` inside), a real nats-server, the server as an operator runs it.
//! Its address is the host's, which names no container; the server finds it by the Docker
//! container its socket was made in (the socket's cgroup, from the kernel).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use event_bus::model::Container;
use event_bus::testkit::{fixtures, free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, NatsOptions, Provision, StateStore};

const IMAGE: &str = "corral-test/busybox:1";

/// `docker args…`: (succeeded, stdout, stderr).
fn docker(args: &[&str]) -> (bool, String, String) {
    let out = Command::new("docker").args(args).output().expect("docker not found: install docker.io");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// Removes the containers a test made, whatever happens.
struct Containers(Vec<String>);
impl Drop for Containers {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            let _ = Command::new("docker").arg("rm").arg("-f").args(&self.0).output();
        }
    }
}

/// A container of the test image on the host's network running `script` as an unprivileged
/// user, created but not started, so that its Docker id can be put in the state first.
fn create(script: &str, made: &mut Containers) -> String {
    let (ok, id, err) = docker(&["create", "--network", "host", "--user", "1000:1000", IMAGE, "sh", "-c", script]);
    assert!(ok, "docker create: {err}");
    made.0.push(id.clone());
    id
}

/// Starts a created container and returns what it printed once it exits.
fn run(id: &str) -> String {
    let (_, out, err) = docker(&["start", "-a", id]);
    format!("{out}\n{err}")
}

fn host_network_container(uuid: &str, name: &str) -> Container {
    let mut c = fixtures::container(uuid, name, "sv-web", "st-app", "h1", "");
    c.primary_ip = None;
    c.ips.clear();
    c
}

async fn put_running(store: &StateStore, uuid: &str, docker_id: &str) {
    let mut st = fixtures::status(uuid, "h1", "running");
    st.external_id = Some(docker_id.into());
    store.put(&st).await.unwrap();
}

/// GET from the test process itself (a process on the host, in no container): (status, body).
fn get(port: u16, path: &str) -> (u16, String) {
    let r = reqwest::blocking::get(format!("http://127.0.0.1:{port}{path}")).unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

#[test]
fn a_container_on_the_host_network_gets_its_own_self() {
    assert!(
        Command::new("docker").args(["image", "inspect", IMAGE]).output().map(|o| o.status.success()).unwrap_or(false),
        "Docker or image {IMAGE} missing: run scripts/setup (installs docker.io and busybox-static, builds the image)"
    );
    let nats = NatsServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let store = rt.block_on(async {
        let bus = Bus::connect(&NatsOptions::new(nats.url()), "default", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision::default()).await.unwrap();
        store.put(&fixtures::host("h1", "host-one", "127.0.0.1")).await.unwrap();
        store.put(&fixtures::stack("st-app", "app")).await.unwrap();
        let mut web = fixtures::service("sv-web", "st-app", "web");
        web.token = Some("s3cr3t-token".into());
        store.put(&web).await.unwrap();
        store
    });
    // As deployed; with --xff (a proxy's own identity must not pass to those it forwards for);
    // without --host-uuid (the Docker id must be one this host's agent reports).
    let (_main, port) = start_server(&nats.url(), &["--host-uuid", "h1"]);
    let (_xff, xff_port) = start_server(&nats.url(), &["--host-uuid", "h1", "--xff"]);
    let (_hostless, hostless_port) = start_server(&nats.url(), &[]);

    let mut made = Containers(Vec::new());
    let url = format!("http://127.0.0.1:{port}/latest");
    let mut script = Vec::new();
    for (label, p) in [("", port), ("xff:", xff_port), ("hostless:", hostless_port)] {
        for path in
            ["/self/container/name", "/self/service/name", "/self/service/token", "/self/stack/name", "/self/host/uuid"]
        {
            script.push(format!("echo \"{label}{path}=$(wget -qO- http://127.0.0.1:{p}/latest{path} 2>&1)\""));
        }
    }
    let script = script.join("; ");

    // A container of app/web on the host's network, known to the state by its Docker id.
    let web1 = create(&script, &mut made);
    rt.block_on(async {
        store.put(&host_network_container("c1", "app-web-1")).await.unwrap();
        put_running(&store, "c1", &web1).await;
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(port, "/latest/containers/app-web-1/state").1 != "running" {
        assert!(Instant::now() < deadline, "the container's status never reached the server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(&web1);
    for line in [
        "/self/container/name=app-web-1",
        "/self/service/name=web",
        "/self/service/token=s3cr3t-token",
        "/self/stack/name=app",
        "/self/host/uuid=h1",
        "xff:/self/host/uuid=h1",
    ] {
        assert!(out.lines().any(|l| l == line), "expected {line:?} in what the container saw:\n{out}");
    }
    for line in
        out.lines().filter(|l| l.starts_with("hostless:") || (l.starts_with("xff:") && !l.contains("/self/host/")))
    {
        assert!(line.contains("404"), "with --xff or without --host-uuid, {line:?}:\n{out}");
    }

    // A container on the host's network that Corral does not run is an unknown caller, as in
    // Rancher: its host, nothing else, and never another container's token.
    let stranger = create(&script, &mut made);
    let out = run(&stranger);
    assert!(out.lines().any(|l| l == "/self/host/uuid=h1"), "{out}");
    for line in out.lines().filter(|l| !l.starts_with("/self/host/") && !l.starts_with("xff:/self/host/")) {
        assert!(line.contains("404"), "an unknown container was answered {line:?}:\n{out}");
    }

    // So is a process on the host that is in no container (here, this test).
    assert_eq!(get(port, "/latest/self/container/name").0, 404);
    assert_eq!(get(port, "/latest/self/host/uuid"), (200, "h1".to_string()));

    // And a host process in a cgroup named after the container, outside Docker's own directories
    // (what a user could make under a subtree delegated to them).
    let forged = ForgedCgroup::new(&web1);
    let out = forged.run(&format!("busybox wget -qO- {url}/self/service/token 2>&1; echo"));
    assert!(out.contains("404") && !out.contains("s3cr3t-token"), "a forged cgroup was answered: {out}");

    // Once its container record is removed from the state, the Docker id names nobody, though a
    // status still carries it.
    let web1_again = create(&script, &mut made);
    rt.block_on(async {
        put_running(&store, "c1", &web1_again).await;
        store.delete(&"container.c1".parse().unwrap()).await.unwrap();
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while get(port, "/latest/containers/app-web-1").0 != 404 {
        assert!(Instant::now() < deadline, "the removal never reached the server");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = run(&web1_again);
    assert!(out.lines().any(|l| l == "/self/host/uuid=h1"), "{out}");
    for line in out.lines().filter(|l| !l.starts_with("/self/host/") && !l.starts_with("xff:/self/host/")) {
        assert!(line.contains("404"), "a removed container was answered {line:?}:\n{out}");
    }
}

/// The binary on a free port, as an operator runs it, once ready; (process, port).
fn start_server(nats_url: &str, args: &[&str]) -> (Terminate, u16) {
    let (port, admin) = (free_port(), free_port());
    let server = Terminate(
        Command::new(env!("CARGO_BIN_EXE_rancher-metadata"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--log", "warn"])
            .args(args)
            .env("CORRAL_NATS_URL", nats_url)
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::blocking::get(format!("http://127.0.0.1:{admin}/readyz")).map(|r| r.status() != 200).unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "rancher-metadata never became ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, port)
}

/// Cgroup v2 groups `<root>/corral-forged-<pid>/<id>` and `…/docker/<id>`, removed on drop.
struct ForgedCgroup {
    top: std::path::PathBuf,
    leaves: Vec<std::path::PathBuf>,
}

impl ForgedCgroup {
    fn new(docker_id: &str) -> ForgedCgroup {
        let callers = rancher_metadata::local_caller::LocalCallers::detect()
            .unwrap_or_else(|why| panic!("the feature under test needs the host's cgroup v2 hierarchy: {why}"));
        let root = callers.root();
        let top = root.join(format!("corral-forged-{}", std::process::id()));
        let leaves = vec![top.join(docker_id), top.join("docker").join(docker_id)];
        for l in &leaves {
            std::fs::create_dir_all(l)
                .unwrap_or_else(|e| panic!("making {}: {e} (the test runs as root)", l.display()));
        }
        ForgedCgroup { top, leaves }
    }

    /// Runs `script` on the host in each forged group in turn; what it printed.
    fn run(&self, script: &str) -> String {
        let mut out = String::new();
        for l in &self.leaves {
            let o = Command::new("sh")
                .arg("-c")
                .arg(format!("echo $$ > {}/cgroup.procs && {script}", l.display()))
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            out += &String::from_utf8_lossy(&o.stdout);
        }
        out
    }
}

impl Drop for ForgedCgroup {
    fn drop(&mut self) {
        for l in &self.leaves {
            let _ = std::fs::remove_dir(l);
        }
        let _ = std::fs::remove_dir(self.top.join("docker"));
        let _ = std::fs::remove_dir(&self.top);
    }
}
