//! The instance's verdict in the state: `lbstatus.<instance>` says which service it serves, on
//! which host, whether HAProxy serves it and why the newest `lb_config` was refused, so `deploy
//! ps` (and anyone reading the state) sees a refusal next to the service instead of only in this
//! process's log and an event that may have had no listener.
//!
//! Writes happen in a task of their own: the controller only hands over what it wants said, so a
//! NATS outage never stalls HAProxy's updates. A failed write is retried with backoff (1 s
//! doubling to 30 s) until it lands; the key is deleted when the instance stops gracefully
//! (before HAProxy drains). A key left by an instance that was killed names its container, so
//! readers can tell it is stale once that container is gone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use event_bus::model::LbStatus;
use event_bus::{Family, Key, StateStore};
use tokio::sync::watch;
use tokio::task::JoinHandle;

#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    service_uuid: String,
    serving: bool,
    refused: Option<String>,
}

pub struct Reporter {
    tx: watch::Sender<Option<Verdict>>,
    task: JoinHandle<()>,
}

/// Who this instance is, as written into every status.
#[derive(Debug, Clone)]
pub struct Instance {
    /// The key id (`lbstatus.<id>`).
    pub id: String,
    pub host_uuid: Option<String>,
    /// The load balancer container it runs in, when the deploy agent started it.
    pub container_uuid: Option<String>,
}

impl Reporter {
    pub fn start(store: StateStore, instance: Instance) -> Reporter {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(write_loop(store, instance, rx));
        Reporter { tx, task }
    }

    /// What the instance makes of `service_uuid`'s configuration now (written if it changed).
    pub fn set(&self, service_uuid: &str, serving: bool, refused: Option<&str>) {
        let v = Verdict { service_uuid: service_uuid.to_string(), serving, refused: refused.map(String::from) };
        self.tx.send_if_modified(|cur| {
            if cur.as_ref() == Some(&v) {
                return false;
            }
            *cur = Some(v);
            true
        });
    }

    /// Deletes the key (best effort, bounded) and ends the writer.
    pub async fn stop(self) {
        drop(self.tx);
        if tokio::time::timeout(Duration::from_secs(5), self.task).await.is_err() {
            tracing::warn!("could not remove this instance's lbstatus key in time");
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

async fn write_loop(store: StateStore, instance: Instance, mut rx: watch::Receiver<Option<Verdict>>) {
    let key = Key { family: Family::LbStatus, id: instance.id.clone() };
    let mut since: Option<(Verdict, u64)> = None;
    let mut written: Option<Verdict> = None;
    // Whether a write was sent at all: one that timed out may still have landed.
    let mut attempted = false;
    let mut delay = Duration::ZERO;
    loop {
        let pending = since.as_ref().is_some_and(|(v, _)| written.as_ref() != Some(v));
        let closed = if pending {
            tokio::select! {
                r = rx.changed() => r.is_err(),
                _ = tokio::time::sleep(delay) => false,
            }
        } else {
            rx.changed().await.is_err()
        };
        if closed {
            break;
        }
        if let Some(v) = rx.borrow_and_update().clone() {
            if since.as_ref().is_none_or(|(old, _)| *old != v) {
                since = Some((v, now_ms()));
            }
        }
        let Some((v, at)) = since.clone() else { continue };
        if written.as_ref() == Some(&v) {
            continue;
        }
        let doc = LbStatus {
            instance: instance.id.clone(),
            service_uuid: v.service_uuid.clone(),
            host_uuid: instance.host_uuid.clone(),
            container_uuid: instance.container_uuid.clone(),
            serving: v.serving,
            refused: v.refused.clone(),
            since_ms: at,
            extra: Default::default(),
        };
        attempted = true;
        let outcome = tokio::time::timeout(Duration::from_secs(5), store.put(&doc)).await;
        if let Ok(Ok(_)) = outcome {
            written = Some(v);
            delay = Duration::ZERO;
            continue;
        }
        delay = (delay * 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
        match outcome {
            Ok(Err(e)) => {
                tracing::warn!(error = %e, key = %key, retry_in = ?delay, "could not write the load balancer status")
            }
            _ => tracing::warn!(key = %key, retry_in = ?delay, "writing the load balancer status timed out"),
        }
    }
    if attempted {
        match tokio::time::timeout(Duration::from_secs(3), store.delete(&key)).await {
            Ok(Ok(())) => tracing::debug!(key = %key, "load balancer status removed"),
            Ok(Err(e)) => tracing::warn!(error = %e, key = %key, "could not remove the load balancer status"),
            Err(_) => tracing::warn!(key = %key, "removing the load balancer status timed out"),
        }
    }
}

/// The instance name used when none is given: host and service, with every character a key id
/// does not allow replaced by `_` (`web01_demo_lb`).
pub fn default_instance(host: &str, service: &str) -> String {
    let raw = format!("{host}_{service}");
    let mut id: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '=') { c } else { '_' }).collect();
    id.truncate(200);
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_instance_is_a_valid_key_id() {
        let id = default_instance("web01.example.com", "demo/lb");
        assert_eq!(id, "web01_example_com_demo_lb");
        assert!(format!("lbstatus.{id}").parse::<Key>().is_ok());
        let long = default_instance(&"h".repeat(300), "s/l");
        assert!(format!("lbstatus.{long}").parse::<Key>().is_ok());
    }
}
