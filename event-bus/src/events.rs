//! Events: a Cattle-style envelope on `corral.<env>.events.<name>` (kept for a bounded time by
//! the environment's stream), request/reply on `corral.<env>.requests.<name>`, and W3C trace
//! context in the headers of every message.

use std::time::Duration;

use async_nats::jetstream::consumer::{push::OrderedConfig, DeliverPolicy};
use async_nats::HeaderMap;
use futures::{Stream, StreamExt};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::trace;

/// The envelope, modelled on Cattle's event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    /// What happened or is asked: `healthcheck.report`, `instance.recreate`, `dns.update`, …
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// The component that sent it (`healthcheck@host-1`).
    pub publisher: String,
    /// Where an answer goes, for events that ask for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// The events that led to this one, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub previous_ids: Vec<String>,
}

impl Event {
    pub fn new(name: impl Into<String>, publisher: impl Into<String>) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.into(),
            resource_type: None,
            resource_id: None,
            data: serde_json::Value::Null,
            time: OffsetDateTime::now_utc(),
            publisher: publisher.into(),
            reply_to: None,
            previous_ids: Vec::new(),
        }
    }

    pub fn resource(mut self, kind: impl Into<String>, id: impl Into<String>) -> Event {
        self.resource_type = Some(kind.into());
        self.resource_id = Some(id.into());
        self
    }

    pub fn data(mut self, data: serde_json::Value) -> Event {
        self.data = data;
        self
    }

    /// Marks this event as a consequence of `cause`.
    pub fn caused_by(mut self, cause: &Event) -> Event {
        self.previous_ids = std::iter::once(cause.id.clone()).chain(cause.previous_ids.iter().cloned()).collect();
        self
    }

    fn encode(&self) -> bytes::Bytes {
        serde_json::to_vec(self).expect("an event always serializes").into()
    }

    fn decode(subject: &str, payload: &[u8]) -> Result<Event> {
        serde_json::from_slice(payload)
            .map_err(|e| Error::InvalidEvent { subject: subject.to_string(), reason: e.to_string() })
    }
}

/// An event as it arrived, with the trace context it carried.
#[derive(Debug)]
pub struct Received {
    pub subject: String,
    pub event: Event,
    /// Stream sequence, for events read from the stream.
    pub sequence: Option<u64>,
    headers: Option<HeaderMap>,
    reply: Option<async_nats::Subject>,
}

impl Received {
    /// A span for handling this event, child of the span that published it.
    pub fn handler_span(&self) -> tracing::Span {
        let span = tracing::info_span!("corral.event.handle", event.name = %self.event.name, event.id = %self.event.id);
        trace::set_parent_from(&span, self.headers.as_ref());
        span
    }

    /// The trace context the event carried.
    pub fn trace_context(&self) -> opentelemetry::Context {
        trace::extract(self.headers.as_ref())
    }
}

/// Publishes and receives the events of one environment.
#[derive(Clone, Debug)]
pub struct Events {
    bus: Bus,
    publisher: String,
}

fn headers_with_trace() -> HeaderMap {
    let mut h = HeaderMap::new();
    trace::inject_current(&mut h);
    h
}

impl Events {
    pub fn new(bus: &Bus, publisher: impl Into<String>) -> Events {
        Events { bus: bus.clone(), publisher: publisher.into() }
    }

    /// A new event from this publisher.
    pub fn event(&self, name: impl Into<String>) -> Event {
        Event::new(name, self.publisher.clone())
    }

    /// Publishes to `corral.<env>.events.<name>` and waits until the stream stored it;
    /// returns its stream sequence. An event acknowledged here survives a server restart.
    #[tracing::instrument(name = "corral.event.publish", skip_all, fields(event.name = %event.name, event.id = %event.id))]
    pub async fn publish(&self, event: &Event) -> Result<u64> {
        let subject = self.bus.event_subject(&event.name);
        let ack = self
            .bus
            .js
            .publish_with_headers(subject, headers_with_trace(), event.encode())
            .await
            .map_err(|e| Error::nats("publish", e))?
            .await
            .map_err(|e| Error::nats("publish ack", e))?;
        Ok(ack.sequence)
    }

    /// Live events whose name matches `pattern` (NATS wildcards: `healthcheck.*`, `>`).
    /// Undecodable messages are logged and skipped.
    pub async fn subscribe(&self, pattern: &str) -> Result<impl Stream<Item = Received> + Unpin + use<>> {
        validate_pattern(pattern)?;
        let sub = self
            .bus
            .client
            .subscribe(self.bus.event_subject(pattern))
            .await
            .map_err(|e| Error::nats("subscribe", e))?;
        Ok(sub
            .filter_map(|m| async move { received(m.subject.to_string(), &m.payload, m.headers, m.reply, None) })
            .boxed())
    }

    /// Events from the stream: those of the last `since` (or only new ones with `None`), then live.
    pub async fn replay(
        &self,
        pattern: &str,
        since: Option<Duration>,
    ) -> Result<impl Stream<Item = Received> + Unpin + use<>> {
        validate_pattern(pattern)?;
        let stream = crate::store::get_stream(&self.bus, &self.bus.events_stream_name(), "stream").await?;
        let deliver_policy = match since {
            Some(d) => DeliverPolicy::ByStartTime { start_time: OffsetDateTime::now_utc() - d },
            None => DeliverPolicy::New,
        };
        let consumer = stream
            .create_consumer(OrderedConfig {
                deliver_subject: self.bus.client.new_inbox(),
                filter_subject: self.bus.event_subject(pattern),
                deliver_policy,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("create consumer", e))?;
        let messages = consumer.messages().await.map_err(|e| Error::nats("consume", e))?;
        Ok(messages
            .filter_map(|m| async move {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "event replay: consumer error");
                        return None;
                    }
                };
                let seq = m.info().ok().map(|i| i.stream_sequence);
                let m = m.message;
                received(m.subject.to_string(), &m.payload, m.headers, None, seq)
            })
            .boxed())
    }

    /// Sends a request to whoever serves `name` and waits for the reply event.
    #[tracing::instrument(name = "corral.event.request", skip_all, fields(event.name = %event.name, event.id = %event.id))]
    pub async fn request(&self, event: &Event, timeout: Duration) -> Result<Event> {
        let subject = self.bus.request_subject(&event.name);
        let req = self.bus.client.request_with_headers(subject.clone(), headers_with_trace(), event.encode());
        let msg = tokio::time::timeout(timeout, req)
            .await
            .map_err(|_| Error::nats("request", format!("no reply on {subject} within {timeout:?}")))?
            .map_err(|e| Error::nats("request", e))?;
        Event::decode(&msg.subject, &msg.payload)
    }

    /// Requests sent to `name`; answer each with [`Events::reply`].
    pub async fn serve(&self, name: &str) -> Result<impl Stream<Item = Received> + Unpin + use<>> {
        let sub =
            self.bus.client.subscribe(self.bus.request_subject(name)).await.map_err(|e| Error::nats("subscribe", e))?;
        Ok(sub
            .filter_map(|m| async move { received(m.subject.to_string(), &m.payload, m.headers, m.reply, None) })
            .boxed())
    }

    /// Answers a request received from [`Events::serve`].
    pub async fn reply(&self, request: &Received, answer: &Event) -> Result<()> {
        let to = request.reply.clone().ok_or_else(|| Error::InvalidEvent {
            subject: request.subject.clone(),
            reason: "the message has no reply subject".into(),
        })?;
        self.bus
            .client
            .publish_with_headers(to, headers_with_trace(), answer.encode())
            .await
            .map_err(|e| Error::nats("reply", e))
    }
}

/// Event names are dot-separated tokens; `*` matches one token and `>` the rest.
fn validate_pattern(pattern: &str) -> Result<()> {
    let tokens: Vec<&str> = pattern.split('.').collect();
    let ok = tokens.iter().enumerate().all(|(i, t)| {
        !t.is_empty()
            && !t.contains(char::is_whitespace)
            && (*t == "*" || *t == ">" || !t.contains(['*', '>']))
            && (*t != ">" || i == tokens.len() - 1)
    });
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidEvent {
            subject: pattern.to_string(),
            reason: "an event pattern is dot-separated names; `*` stands for one name, `>` (last) for the rest".into(),
        })
    }
}

fn received(
    subject: String,
    payload: &[u8],
    headers: Option<HeaderMap>,
    reply: Option<async_nats::Subject>,
    sequence: Option<u64>,
) -> Option<Received> {
    match Event::decode(&subject, payload) {
        Ok(event) => Some(Received { subject, event, sequence, headers, reply }),
        Err(e) => {
            tracing::warn!(error = %e, "skipping a message that is not a Corral event");
            None
        }
    }
}
