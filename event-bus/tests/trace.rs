//! Trace context across a publish/subscribe hop. Alone in its test binary: tracing caches
//! per-callsite interest process-wide, and a test running in parallel without a subscriber could
//! make the publish span's callsite look uninteresting to this test's thread-local subscriber.

mod common;

use std::time::Duration;

use common::*;
use event_bus::testkit::NatsServer;
use event_bus::Events;
use futures::StreamExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn trace_context_crosses_a_publish_subscribe_hop() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let nats = NatsServer::start();
    let (bus, _) = provisioned(&nats.url()).await;
    let events = Events::new(&bus, "test@host-1");
    let mut sub = events.subscribe("healthcheck.*").await.unwrap();

    let event =
        events.event("healthcheck.report").resource("container", "c1").data(serde_json::json!({"state": "healthy"}));
    events.publish(&event).instrument(tracing::info_span!("deploy.up")).await.unwrap();

    let got = tokio::time::timeout(Duration::from_secs(5), sub.next()).await.unwrap().unwrap();
    assert_eq!(got.event, event, "the envelope arrives unchanged");
    assert_eq!(got.subject, "corral.default.events.healthcheck.report");
    async {}.instrument(got.handler_span()).await;
    drop(got);

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let find =
        |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name}: {spans:?}"));
    let publish = find("corral.event.publish");
    let root = find("deploy.up");
    let handler = find("corral.event.handle");
    assert_eq!(publish.parent_span_id, root.span_context.span_id(), "publish runs inside the caller's span");
    assert_eq!(handler.span_context.trace_id(), root.span_context.trace_id(), "one trace across the hop");
    assert_eq!(handler.parent_span_id, publish.span_context.span_id(), "the handler is a child of the publish span");
}
