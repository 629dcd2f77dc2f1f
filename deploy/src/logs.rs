//! `deploy logs STACK[/SERVICE] [-f] [--tail N]`: asks the agent of each container's host for the
//! container's output (see [`crate::agent::LogsRequest`]) and prints it line by line, prefixed
//! with the container's name, as `docker-compose logs` does.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt as _;

use crate::agent::{logs_subject, LogsRequest, LOGS_ALIVE, LOGS_END};

pub async fn run(bus: &event_bus::Bus, target: &str, follow: bool, tail: Option<u64>) -> anyhow::Result<ExitCode> {
    let (stack, service) = match target.split_once('/') {
        Some((st, sv)) => (st, Some(sv)),
        None => (target, None),
    };
    let metrics = event_bus::runtime::metrics::Metrics::new();
    let cache = event_bus::StateCache::start(bus, &metrics).await?;
    let snap = cache.snapshot();
    let Some(st) = snap.stacks().find(|s| s.name == stack) else {
        eprintln!("no stack {stack:?}");
        return Ok(ExitCode::from(2));
    };
    let mut services: Vec<_> =
        snap.services_in_stack(&st.uuid).filter(|s| service.is_none_or(|n| n == s.name)).collect();
    if services.is_empty() {
        eprintln!("stack {stack:?} has no service {:?}", service.unwrap_or_default());
        return Ok(ExitCode::from(2));
    }
    services.sort_by(|a, b| a.name.cmp(&b.name));
    let mut containers: Vec<_> = services
        .iter()
        .flat_map(|s| snap.containers_of_service(&s.uuid))
        .filter(|c| c.desired_state != "removed" && c.host_uuid.is_some())
        .collect();
    containers.sort_by(|a, b| a.name.cmp(&b.name));
    if containers.is_empty() {
        eprintln!("{target}: no containers");
        return Ok(ExitCode::SUCCESS);
    }
    let width = containers.iter().map(|c| c.name.len()).max().unwrap_or(0);
    let inbox = bus.client.new_inbox();
    let mut output = bus.client.subscribe(format!("{inbox}.*")).await?;
    let mut names: BTreeMap<String, String> = BTreeMap::new();
    let mut failed = false;
    for (i, c) in containers.iter().enumerate() {
        let host = c.host_uuid.as_deref().unwrap_or_default();
        let stream_to = format!("{inbox}.{i}");
        let req = LogsRequest { container: c.uuid.clone(), stream_to: stream_to.clone(), follow, tail };
        let answer = tokio::time::timeout(
            Duration::from_secs(5),
            bus.client.request(logs_subject(bus, host), serde_json::to_vec(&req)?.into()),
        )
        .await;
        match answer {
            Ok(Ok(m)) if &m.payload[..] == b"ok" => {
                names.insert(stream_to, c.name.clone());
            }
            Ok(Ok(m)) => {
                eprintln!("{}: the agent of host {host} refused: {}", c.name, String::from_utf8_lossy(&m.payload));
                failed = true;
            }
            Ok(Err(e)) => {
                eprintln!("{}: no agent of host {host} answers ({e})", c.name);
                failed = true;
            }
            Err(_) => {
                eprintln!("{}: the agent of host {host} did not answer within 5 s", c.name);
                failed = true;
            }
        }
    }
    if follow {
        let client = bus.client.clone();
        let streams: Vec<String> = names.keys().cloned().collect();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(LOGS_ALIVE);
            loop {
                tick.tick().await;
                for s in &streams {
                    let _ = client.publish(format!("{s}.alive"), bytes::Bytes::new()).await;
                }
            }
        });
    }
    // Partial lines wait for the rest of their line.
    let mut pending: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut open = names.len();
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    while open > 0 {
        let msg = if follow {
            output.next().await
        } else {
            // Without -f an agent sends what there is and ends; silence this long means it is gone.
            match tokio::time::timeout(Duration::from_secs(30), output.next()).await {
                Ok(m) => m,
                Err(_) => {
                    eprintln!("no more output from the agents within 30 s; stopping");
                    failed = true;
                    break;
                }
            }
        };
        let Some(msg) = msg else { break };
        let subject = msg.subject.to_string();
        let Some(name) = names.get(&subject) else { continue };
        let buf = pending.entry(subject.clone()).or_default();
        buf.extend_from_slice(&msg.payload);
        let end = msg.headers.as_ref().and_then(|h| h.get(LOGS_END)).map(|v| v.as_str().to_string());
        while let Some(nl) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let _ = writeln!(stdout, "{name:<width$} | {}", String::from_utf8_lossy(&line[..line.len() - 1]));
        }
        if let Some(err) = end {
            if !buf.is_empty() {
                let _ = writeln!(stdout, "{name:<width$} | {}", String::from_utf8_lossy(buf));
                buf.clear();
            }
            if !err.is_empty() {
                eprintln!("{name}: {err}");
                failed = true;
            }
            open -= 1;
        }
        let _ = stdout.flush();
    }
    Ok(if failed { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
