//! Events over a real nats-server: publish/subscribe with trace context, request/reply, replay.

mod common;

use std::time::Duration;

use common::*;
use event_bus::testkit::NatsServer;
use event_bus::{Event, Events};
use futures::StreamExt;

#[tokio::test]
async fn request_reply_and_replay_since() {
    let nats = NatsServer::start();
    let (bus, _) = provisioned(&nats.url()).await;
    let server = Events::new(&bus, "dns@host-1");
    let client = Events::new(&bus, "cli");

    let mut requests = server.serve("dns.lookup").await.unwrap();
    let responder = tokio::spawn(async move {
        let req = requests.next().await.unwrap();
        let answer =
            server.event("dns.lookup.reply").data(serde_json::json!({"ip": "10.42.0.2"})).caused_by(&req.event);
        server.reply(&req, &answer).await.unwrap();
    });
    let ask = client.event("dns.lookup").data(serde_json::json!({"name": "web"}));
    let answer = client.request(&ask, Duration::from_secs(5)).await.unwrap();
    assert_eq!(answer.data["ip"], "10.42.0.2");
    assert_eq!(answer.previous_ids, vec![ask.id.clone()]);
    responder.await.unwrap();

    // Events published before anyone listened are replayed from the stream.
    let first = client.event("instance.recreate").resource("container", "c1");
    let second = client.event("instance.recreate").resource("container", "c2").caused_by(&first);
    let s1 = client.publish(&first).await.unwrap();
    let s2 = client.publish(&second).await.unwrap();
    assert!(s2 > s1);
    let mut replay = client.replay("instance.*", Some(Duration::from_secs(60))).await.unwrap();
    let a = tokio::time::timeout(Duration::from_secs(5), replay.next()).await.unwrap().unwrap();
    let b = tokio::time::timeout(Duration::from_secs(5), replay.next()).await.unwrap().unwrap();
    assert_eq!((a.event.id, b.event.id), (first.id.clone(), second.id.clone()));
    assert_eq!(b.sequence, Some(s2));

    // The CLI shows the same history.
    let out = event_bus(&nats.url(), &["tail", "instance.>", "--since", "1m", "--count", "2"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines: Vec<serde_json::Value> = text(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["event"]["resource_id"], "c2");
    assert_eq!(lines[1]["event"]["previous_ids"][0], first.id.as_str());
    let _: Event = serde_json::from_value(lines[0]["event"].clone()).unwrap();
}
