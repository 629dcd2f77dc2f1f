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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_run_on_docker() {
    require_image();
    let pid = std::process::id();
    let host = format!("h{pid}");
    let network = format!("corral-test-{pid}");
    // A /24 no Docker network uses yet.
    let taken = docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", "bridge", "host"]);
    let all_nets = docker(&["network", "ls", "-q"]);
    let mut used = taken;
    for id in all_nets.split_whitespace() {
        used.push(' ');
        used.push_str(&docker(&["network", "inspect", "-f", "{{range .IPAM.Config}}{{.Subnet}} {{end}}", id]));
    }
    let third = (0..100)
        .map(|i| 100 + (pid + i) % 100)
        .find(|t| !used.contains(&format!("10.42.{t}.0/24")))
        .expect("a free /24");
    let _cleanup = DockerCleanup { host: host.clone(), network: network.clone() };
    let nats = NatsServer::start();
    let url = nats.url();
    let bus = Bus::connect(&NatsOptions::new(url.clone()), "default", Duration::from_secs(10)).await.unwrap();
    let store = provision(&bus, &Provision::default()).await.unwrap();

    let _controller = Terminate(
        Command::new(env!("CARGO_BIN_EXE_deploy"))
            .args(["controller", "--lease-ttl", "2s", "--admin-addr", &format!("127.0.0.1:{}", free_port())])
            .env("CORRAL_NATS_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let agent = || {
        Terminate(
            Command::new(env!("CARGO_BIN_EXE_deploy"))
                .args(["agent", "--host-uuid", &host, "--host-name", &host, "--subnet", &format!("10.42.{third}.0/24")])
                .args([
                    "--network",
                    &network,
                    "--heartbeat",
                    "1s",
                    "--admin-addr",
                    &format!("127.0.0.1:{}", free_port()),
                ])
                .env("CORRAL_NATS_URL", &url)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap(),
        )
    };
    let mut running_agent = Some(agent());

    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("docker-compose.yml");
    let stack = format!("e2e{pid}");
    std::fs::write(
        &f,
        format!(
            "version: '2'\nservices:\n  web:\n    image: {IMAGE}\n    command: /bin/httpd -f -p 8080 -h /www\n    environment: {{MODE: test}}\n    labels:\n      io.rancher.sidekicks: side\n  side:\n    image: {IMAGE}\n    command: /bin/sleep 3600\n    network_mode: container:web\n"
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
