//! End to end on the real Docker engine: `deploy up`, the controller places, the agent runs the
//! containers with their names, labels and addresses, restarts one that is killed, and removes
//! them on `deploy rm`. Needs Docker and the image `scripts/test-image` builds.

mod common;

use common::{deploy, docker, require_image, until, DockerCleanup, IMAGE};

use std::process::{Command, Stdio};
use std::time::Duration;

use event_bus::model::{Container, ContainerStatus};
use event_bus::testkit::{free_port, NatsServer, Terminate};
use event_bus::{provision, Bus, Family, NatsOptions, Provision, StateStore};

async fn statuses(store: &StateStore) -> Vec<(Container, Option<ContainerStatus>)> {
    let mut out = Vec::new();
    for key in store.keys(Some(Family::Container)).await.unwrap() {
        if let Some(c) = store.get::<Container>(&key.id).await.unwrap() {
            let st = store.get::<ContainerStatus>(&key.id).await.unwrap().map(|v| v.value);
            out.push((c.value, st));
        }
    }
    out
}

/// One host on the real Docker engine: a private NATS, a controller, an agent with a /24 that no
/// Docker network uses yet, and clean-up of what the test made.
struct Host1 {
    host: String,
    network: String,
    subnet: String,
    url: String,
    store: StateStore,
    _controller: Terminate,
    _nats: NatsServer,
    _cleanup: DockerCleanup,
}

impl Host1 {
    async fn start(tag: &str) -> Host1 {
        Self::start_with(tag, &[]).await
    }

    /// With extra controller flags.
    async fn start_with(tag: &str, controller_args: &[&str]) -> Host1 {
        require_image();
        let pid = std::process::id();
        let host = format!("{tag}{pid}");
        let network = format!("corral-test-{tag}{pid}");
        let mut used =
            docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", "bridge", "host"]);
        for id in docker(&["network", "ls", "-q"]).split_whitespace() {
            used.push(' ');
            used.push_str(&docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", id]));
        }
        let third = (0..100)
            .map(|i| 100 + (pid + i + tag.bytes().map(u32::from).sum::<u32>() * 7) % 100)
            .find(|t| !used.contains(&format!("10.42.{t}.0/24")))
            .expect("a free /24");
        let cleanup = DockerCleanup { host: host.clone(), network: network.clone() };
        let nats = NatsServer::start();
        let url = nats.url();
        let bus = Bus::connect(&NatsOptions::new(url.clone()), "default", Duration::from_secs(10)).await.unwrap();
        let store = provision(&bus, &Provision::default()).await.unwrap();
        let controller = Terminate(
            Command::new(env!("CARGO_BIN_EXE_deploy"))
                .args(["controller", "--lease-ttl", "2s", "--admin-addr", &format!("127.0.0.1:{}", free_port())])
                .args(controller_args)
                .env("CORRAL_NATS_URL", &url)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        Host1 {
            host,
            network,
            subnet: format!("10.42.{third}.0/24"),
            url,
            store,
            _controller: controller,
            _nats: nats,
            _cleanup: cleanup,
        }
    }

    fn agent(&self) -> Terminate {
        self.agent_as(&self.host, &self.subnet, &self.network, "")
    }

    /// An agent for another host on the same Docker engine (its own subnet and network).
    fn agent_as(&self, host: &str, subnet: &str, network: &str, labels: &str) -> Terminate {
        Terminate(
            Command::new(env!("CARGO_BIN_EXE_deploy"))
                .args(["agent", "--host-uuid", host, "--host-name", host, "--subnet", subnet, "--labels", labels])
                .args(["--network", network, "--heartbeat", "1s", "--stop-timeout", "1s"])
                .args(["--admin-addr", &format!("127.0.0.1:{}", free_port())])
                .env("CORRAL_NATS_URL", &self.url)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_run_on_docker() {
    let env = Host1::start("h").await;
    let pid = std::process::id();
    let (host, url, store) = (env.host.clone(), env.url.clone(), env.store.clone());
    let agent = || env.agent();
    let mut running_agent = Some(agent());

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    let stack = format!("e2e{pid}");
    let volume = format!("corral-test-{pid}");
    struct VolumeCleanup(String);
    impl Drop for VolumeCleanup {
        fn drop(&mut self) {
            let _ = Command::new("docker").args(["volume", "rm", "-f", &self.0]).output();
        }
    }
    let _volume = VolumeCleanup(volume.clone());
    std::fs::write(
        &f,
        format!(
            "version: '2'\nservices:\n  web:\n    image: {IMAGE}\n    command: /bin/httpd -f -p 8080 -h /www\n    environment: {{MODE: test}}\n    working_dir: /www\n    volumes: ['{volume}:/data']\n    volume_driver: local\n    extra_hosts: ['db.example:10.1.2.3']\n    labels:\n      io.rancher.sidekicks: side\n  side:\n    image: {IMAGE}\n    command: /bin/sleep 3600\n    network_mode: container:web\n"
        ),
    )
    .unwrap();
    std::fs::write(dir.path().join("rancher-compose.yml"), "version: '2'\nservices:\n  web:\n    scale: 2\n").unwrap();
    let (code, _, err) = deploy(&["up", "-f", f.to_str().unwrap(), "-p", &stack], &url);
    assert_eq!(code, 0, "{err}");

    // Four containers (2 web + 2 sidekicks), all running on Docker.
    let started = until(Duration::from_secs(60), "4 running containers", || async {
        let s = statuses(&store).await;
        s.len() == 4 && s.iter().all(|(_, st)| st.as_ref().is_some_and(|st| st.state == "running"))
    })
    .await;
    eprintln!("stack running {started:?} after deploy up");
    for (c, _) in statuses(&store).await {
        let name = &c.name;
        assert_eq!(docker(&["inspect", "-f", "{{.State.Running}}", name]), "true", "{name}");
        assert_eq!(
            docker(&["inspect", "-f", "{{index .Config.Labels \"io.rancher.stack_service.name\"}}", name]),
            format!("{stack}/web")
        );
        match c.launch_config_name.as_deref() {
            None => {
                let ip = docker(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name]);
                assert_eq!(Some(ip), c.primary_ip, "{name}: Docker's address is the state's");
                assert!(docker(&["inspect", "-f", "{{range .Config.Env}}{{.}} {{end}}", name]).contains("MODE=test"));
                // Compose keys the agent passes to Docker: the named volume from its driver,
                // the working directory, extra hosts.
                assert_eq!(
                    docker(&["inspect", "-f", "{{.HostConfig.VolumeDriver}} {{.Config.WorkingDir}}", name]),
                    "local /www"
                );
                assert!(docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}:{{.Destination}} {{end}}", name])
                    .contains(&format!("{volume}:/data")));
                assert_eq!(docker(&["inspect", "-f", "{{.HostConfig.ExtraHosts}}", name]), "[db.example:10.1.2.3]");
            }
            Some("side") => {
                let mode = docker(&["inspect", "-f", "{{.HostConfig.NetworkMode}}", name]);
                assert!(mode.starts_with("container:"), "{name}: {mode}");
            }
            other => panic!("unexpected launch config {other:?}"),
        }
    }
    let (_, ps, _) = deploy(&["ps", &stack], &url);
    assert_eq!(ps.matches("running").count(), 4, "{ps}");

    // Killed: running again, with a new start count, within 5 s.
    let web1 = format!("{stack}-web-1");
    docker(&["kill", &web1]);
    let back =
        until(Duration::from_secs(5), "killed container running again", || async {
            statuses(&store).await.iter().any(|(c, st)| {
                c.name == web1 && st.as_ref().is_some_and(|st| st.state == "running" && st.start_count >= 2)
            }) && docker(&["inspect", "-f", "{{.State.Running}}", &web1]) == "true"
        })
        .await;
    eprintln!("killed container running again after {back:?}");

    // Removed behind our back: the unit is replaced by a new one, with new indexes.
    let web2 = format!("{stack}-web-2");
    docker(&["rm", "-f", &web2]);
    let replaced = until(Duration::from_secs(15), "a new unit replaces the removed one", || async {
        let s = statuses(&store).await;
        let names: Vec<&str> = s.iter().map(|(c, _)| c.name.as_str()).collect();
        !names.contains(&web2.as_str())
            && s.len() == 4
            && s.iter().all(|(_, st)| st.as_ref().is_some_and(|st| st.state == "running"))
    })
    .await;
    let names: std::collections::BTreeSet<String> = statuses(&store).await.into_iter().map(|(c, _)| c.name).collect();
    assert!(names.contains(&format!("{stack}-web-3")), "{names:?}");
    eprintln!("removed container replaced by a new unit after {replaced:?}");

    // A restarted agent adopts what runs: same Docker containers, not restarted.
    let ids = || docker(&["ps", "-q", "--no-trunc", "--filter", &format!("label=io.corral.agent.host={host}")]);
    // (The replaced unit's sidekick may still be on its way out of Docker.)
    until(Duration::from_secs(15), "4 containers in Docker", || async { ids().split_whitespace().count() == 4 }).await;
    let before: std::collections::BTreeSet<String> = ids().split_whitespace().map(String::from).collect();
    drop(running_agent.take());
    running_agent = Some(agent());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after: std::collections::BTreeSet<String> = ids().split_whitespace().map(String::from).collect();
    assert_eq!(before, after, "the restarted agent kept the running containers");
    assert_eq!(before.len(), 4);

    // Removed with the stack.
    let (code, _, err) = deploy(&["rm", &stack], &url);
    assert_eq!(code, 0, "{err}");
    until(Duration::from_secs(20), "containers removed from Docker", || async {
        docker(&["ps", "-aq", "--filter", &format!("label=io.corral.agent.host={host}")]).is_empty()
    })
    .await;
    // …and the agent cleaned up the status records it wrote.
    until(Duration::from_secs(10), "status records removed", || async {
        store.keys(Some(Family::Status)).await.unwrap().is_empty()
    })
    .await;
    drop(running_agent);
}

/// `deploy up --upgrade` on Docker: old containers stop one batch at a time while new ones
/// start (never none running), `--rollback` starts the old ones again and removes the new ones,
/// and after a second upgrade `--confirm-upgrade` removes the old ones from Docker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_in_batches_roll_back_and_confirm() {
    let env = Host1::start("u").await;
    let _agent = env.agent();
    let stack = format!("up{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    let write = |version: u32| {
        std::fs::write(
            &f,
            format!("version: '2'\nservices:\n  web:\n    image: {IMAGE}\n    command: [sh, -c, 'echo v{version} > /www/index.html; exec httpd -f -p 80 -h /www']\n"),
        )
        .unwrap();
    };
    std::fs::write(dir.path().join("rancher-compose.yml"), "version: '2'\nservices:\n  web:\n    scale: 3\n").unwrap();
    write(1);
    let up = |extra: &[&str]| {
        let mut args = vec!["up", "-f", f.to_str().unwrap(), "-p", &stack];
        args.extend_from_slice(extra);
        deploy(&args, &env.url)
    };
    let (code, _, err) = up(&[]);
    assert_eq!(code, 0, "{err}");
    // (name, desired, observed) of every container.
    let units = || async {
        let mut v: Vec<(String, String, String)> = statuses(&env.store)
            .await
            .into_iter()
            .map(|(c, st)| (c.name, c.desired_state, st.map(|s| s.state).unwrap_or_default()))
            .collect();
        v.sort();
        v
    };
    let page = |name: &str| docker(&["exec", name, "cat", "/www/index.html"]);
    until(Duration::from_secs(60), "3 running", || async {
        let u = units().await;
        u.len() == 3 && u.iter().all(|(_, _, st)| st == "running")
    })
    .await;

    write(2);
    let (code, out, err) = up(&["--upgrade", "--batch-size", "1", "--interval", "200"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state: \"active\" -> \"upgrading\"") && out.contains("upgrading web"), "{out}");
    // Until it is done, at least two of three run at every moment (batch size 1, stop first).
    let started = std::time::Instant::now();
    loop {
        let u = units().await;
        let running = u.iter().filter(|(_, d, st)| d == "running" && st == "running").count();
        assert!(running >= 2, "only {running} running during the upgrade: {u:?}");
        let new_running =
            u.iter().filter(|(n, _, st)| st == "running" && n.as_str() > format!("{stack}-web-3").as_str()).count();
        if new_running == 3 && u.iter().filter(|(_, d, _)| d == "stopped").count() == 3 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(90), "upgrade not done: {u:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("upgrade of 3 containers, batch 1: {:?}", started.elapsed());
    for n in 4..=6 {
        assert_eq!(page(&format!("{stack}-web-{n}")), "v2");
    }
    // `upgraded` once Docker has stopped the old ones too (stops run in the background).
    until(Duration::from_secs(30), "ps says upgraded", || async {
        deploy(&["ps", &stack], &env.url).1.contains("upgraded")
    })
    .await;
    assert_eq!(
        docker(&["inspect", "-f", "{{.State.Running}}", &format!("{stack}-web-1")]),
        "false",
        "old ones stopped, kept"
    );

    // Rollback: the old three run again (same containers, v1), the new ones are gone.
    let (code, out, err) = up(&["--rollback"]);
    assert_eq!(code, 0, "{out}{err}");
    until(Duration::from_secs(60), "the old containers back", || async {
        let u = units().await;
        u.len() == 3
            && u.iter()
                .all(|(n, d, st)| d == "running" && st == "running" && n.as_str() <= format!("{stack}-web-3").as_str())
    })
    .await;
    assert_eq!(page(&format!("{stack}-web-1")), "v1");
    until(Duration::from_secs(20), "new containers removed from Docker", || async {
        docker(&["ps", "-aq", "--filter", &format!("label=io.corral.agent.host={}", env.host)])
            .split_whitespace()
            .count()
            == 3
    })
    .await;

    // Upgrade again, then confirm: only the new containers remain, in Docker too.
    let (code, _, err) = up(&["--confirm-upgrade"]);
    assert_eq!(code, 2, "nothing to confirm after a rollback");
    assert!(err.contains("no service being upgraded"), "{err}");
    let (code, _, err) = up(&["--upgrade", "--batch-size", "3", "--interval", "0"]);
    assert_eq!(code, 0, "{err}");
    until(Duration::from_secs(60), "the second upgrade done", || async {
        deploy(&["ps", &stack], &env.url).1.contains("upgraded")
    })
    .await;
    let (code, out, err) = up(&["--confirm-upgrade"]);
    assert_eq!(code, 0, "{out}{err}");
    until(Duration::from_secs(20), "old containers removed from Docker", || async {
        let names = docker(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}",
            "--filter",
            &format!("label=io.corral.agent.host={}", env.host),
        ]);
        let mut names: Vec<&str> = names.lines().collect();
        names.sort();
        names == [format!("{stack}-web-7"), format!("{stack}-web-8"), format!("{stack}-web-9")]
    })
    .await;
    assert_eq!(page(&format!("{stack}-web-9")), "v2");
}

/// Two hosts (two agents on one Docker engine, each with its own subnet): units spread over
/// both, a host-label rule keeps a service on its host, and when one agent stops its heartbeat
/// its units are placed on the other host within the heartbeat timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_spread_and_fail_over() {
    let env = Host1::start_with("f", &["--heartbeat-timeout", "3s"]).await;
    // The second host's /24: the next one after the first's that no network uses.
    let third: u32 = env.subnet.split('.').nth(2).unwrap().parse().unwrap();
    let nets = docker(&["network", "ls", "-q"]);
    let mut used = String::new();
    for id in nets.split_whitespace() {
        used.push_str(&docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", id]));
    }
    let third_b =
        (1..100).map(|i| 100 + (third + i) % 100).find(|t| !used.contains(&format!("10.42.{t}.0/24"))).unwrap();
    let host_b = format!("{}b", env.host);
    let network_b = format!("{}b", env.network);
    let _cleanup_b = DockerCleanup { host: host_b.clone(), network: network_b.clone() };
    let agent_a = env.agent_as(&env.host, &env.subnet, &env.network, "zone=a");
    let _agent_b = env.agent_as(&host_b, &format!("10.42.{third_b}.0/24"), &network_b, "zone=b,disk=ssd");

    // Placement sees the hosts that have registered: wait for both.
    until(Duration::from_secs(20), "both hosts registered", || async {
        env.store.keys(Some(Family::Host)).await.unwrap().len() == 2
    })
    .await;
    let stack = format!("two{}", std::process::id());
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    std::fs::write(
        &f,
        format!("version: '2'\nservices:\n  web:\n    image: {IMAGE}\n    command: /bin/httpd -f -p 80 -h /www\n  db:\n    image: {IMAGE}\n    command: /bin/sleep 3600\n    labels:\n      io.rancher.scheduler.affinity:host_label: disk=ssd\n  mon:\n    image: {IMAGE}\n    command: /bin/sleep 3600\n    labels:\n      io.rancher.scheduler.global: 'true'\n"),
    )
    .unwrap();
    std::fs::write(dir.path().join("rancher-compose.yml"), "version: '2'\nservices:\n  web:\n    scale: 2\n").unwrap();
    let (code, _, err) = deploy(&["up", "-f", f.to_str().unwrap(), "-p", &stack], &env.url);
    assert_eq!(code, 0, "{err}");
    // (name, host, observed state) of every container.
    let placed = || async {
        let mut v: Vec<(String, String, String)> = statuses(&env.store)
            .await
            .into_iter()
            .map(|(c, st)| (c.name, c.host_uuid.unwrap_or_default(), st.map(|s| s.state).unwrap_or_default()))
            .collect();
        v.sort();
        v
    };
    until(Duration::from_secs(60), "5 containers running", || async {
        let p = placed().await;
        p.len() == 5 && p.iter().all(|(_, _, st)| st == "running")
    })
    .await;
    let p = placed().await;
    let web_hosts: std::collections::BTreeSet<&str> =
        p.iter().filter(|(n, _, _)| n.contains("-web-")).map(|(_, h, _)| h.as_str()).collect();
    assert_eq!(web_hosts.len(), 2, "web spread over both hosts: {p:?}");
    assert!(p.iter().any(|(n, h, _)| n.contains("-db-") && *h == host_b), "db on the ssd host: {p:?}");
    let mon_hosts: std::collections::BTreeSet<&str> =
        p.iter().filter(|(n, _, _)| n.contains("-mon-")).map(|(_, h, _)| h.as_str()).collect();
    assert_eq!(mon_hosts.len(), 2, "global: one on each host: {p:?}");
    // Each host's containers run in its own network, with an address from its own subnet.
    for (name, host, _) in &p {
        let net = docker(&["inspect", "-f", "{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{end}}", name]);
        assert_eq!(net, if *host == host_b { network_b.clone() } else { env.network.clone() }, "{name}");
    }

    // Host A's agent dies: its heartbeat stops; after the timeout its web unit runs on B.
    drop(agent_a);
    let moved = until(Duration::from_secs(30), "host A's unit placed on host B and running", || async {
        let p = placed().await;
        let web: Vec<_> = p.iter().filter(|(n, _, _)| n.contains("-web-")).collect();
        web.len() == 2 && web.iter().all(|(_, h, st)| *h == host_b && st == "running")
    })
    .await;
    eprintln!("failover: host A's unit running on host B {moved:?} after its agent died (heartbeat timeout 3 s)");
    let (_, ps, _) = deploy(&["ps", &stack], &env.url);
    assert!(ps.contains(&format!("{stack}-web-3")), "a new unit, new index: {ps}");
}
