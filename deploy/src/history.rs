//! Every applied revision of every stack, in deploy's own KV bucket `corral-deploy-<env>` (apart
//! from the state bucket, so no other component reads it):
//! - `<stack>.r<N>`: revision N as applied — the stack and all its services, byte for byte;
//! - `<stack>.head`: the latest revision, and whether an apply is under way. Taking the head with
//!   compare-and-set is what keeps two `deploy` runs on one stack from interleaving.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use event_bus::model::{Service, Stack};
use event_bus::Bus;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

/// An apply that has not finished within this time is taken to have died with its process.
pub const STALE_CLAIM: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HistoryError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error("stack {stack}: another deploy is applying revision {revision} (started {age_secs} s ago); try again when it is done")]
    Busy { stack: String, revision: u64, age_secs: u64 },
    #[error("stack {stack}: changed by another deploy while this one was planning; run it again")]
    Conflict { stack: String },
    #[error("stack {stack}: no revision {revision} (see `deploy history {stack}`)")]
    NoRevision { stack: String, revision: u64 },
    #[error("stored history is unreadable: {0}")]
    Corrupt(String),
}

/// One applied revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub revision: u64,
    /// Milliseconds since the Unix epoch.
    pub applied_at_ms: u64,
    /// What made it: `up`, `scale web=3`, `rollback 2`, `rm`.
    pub command: String,
    /// `None` once the stack was removed.
    pub stack: Option<Stack>,
    pub services: Vec<Service>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub revision: u64,
    /// Set while an apply is under way: when it started (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applying_since_ms: Option<u64>,
}

/// A claim on a stack: release it when the apply is done.
#[derive(Debug)]
pub struct Claim {
    pub stack: String,
    pub revision: u64,
    kv_revision: u64,
}

pub struct History {
    kv: kv::Store,
}

pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn nats(e: impl std::fmt::Display) -> HistoryError {
    HistoryError::Nats(e.to_string())
}

impl History {
    pub fn bucket_name(bus: &Bus) -> String {
        format!("corral-deploy-{}", bus.env())
    }

    /// Opens the bucket, creating it on first use.
    pub async fn open(bus: &Bus) -> Result<History, HistoryError> {
        let name = History::bucket_name(bus);
        let kv = match bus.js.get_key_value(&name).await {
            Ok(kv) => kv,
            Err(_) => bus
                .js
                .create_key_value(kv::Config {
                    bucket: name.clone(),
                    description: format!("deploy's revisions of the stacks of environment {}", bus.env()),
                    history: 1,
                    ..Default::default()
                })
                .await
                .map_err(nats)?,
        };
        Ok(History { kv })
    }

    pub async fn head(&self, stack: &str) -> Result<Option<(Head, u64)>, HistoryError> {
        match self.kv.entry(format!("{stack}.head")).await.map_err(nats)? {
            Some(e) if e.operation == kv::Operation::Put => {
                let head: Head = serde_json::from_slice(&e.value).map_err(|e| HistoryError::Corrupt(e.to_string()))?;
                Ok(Some((head, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Takes the stack for the next revision, unless another apply holds it. `seen` is the head
    /// as read before planning: if it moved since, the plan is stale and this is a conflict.
    pub async fn claim(&self, stack: &str, seen: Option<&(Head, u64)>) -> Result<Claim, HistoryError> {
        if let Some((head, _)) = seen {
            if let Some(since) = head.applying_since_ms {
                let age = now_ms().saturating_sub(since);
                if age < STALE_CLAIM.as_millis() as u64 {
                    return Err(HistoryError::Busy {
                        stack: stack.into(),
                        revision: head.revision + 1,
                        age_secs: age / 1000,
                    });
                }
            }
        }
        let revision = seen.map(|(h, _)| h.revision).unwrap_or(0) + 1;
        let value = serde_json::to_vec(&Head {
            revision: seen.map(|(h, _)| h.revision).unwrap_or(0),
            applying_since_ms: Some(now_ms()),
        })
        .expect("serializable");
        let key = format!("{stack}.head");
        let conflict = || HistoryError::Conflict { stack: stack.into() };
        let kv_revision = match seen {
            None => self.kv.create(&key, value.into()).await.map_err(|_| conflict())?,
            Some((_, rev)) => self.kv.update(&key, value.into(), *rev).await.map_err(|_| conflict())?,
        };
        Ok(Claim { stack: stack.into(), revision, kv_revision })
    }

    /// Stores the revision being applied under the claim's number.
    pub async fn record(&self, claim: &Claim, rev: &Revision) -> Result<(), HistoryError> {
        let body = serde_json::to_vec(rev).expect("serializable");
        self.kv.put(format!("{}.r{}", claim.stack, claim.revision), body.into()).await.map_err(nats)?;
        Ok(())
    }

    /// Makes the recorded revision the head.
    pub async fn commit(&self, claim: Claim) -> Result<(), HistoryError> {
        let head =
            serde_json::to_vec(&Head { revision: claim.revision, applying_since_ms: None }).expect("serializable");
        self.kv
            .update(format!("{}.head", claim.stack), head.into(), claim.kv_revision)
            .await
            .map_err(|_| HistoryError::Conflict { stack: claim.stack.clone() })?;
        Ok(())
    }

    /// Gives the stack back without a new revision; a record written under the claim is
    /// removed (the next revision will reuse its number).
    pub async fn release(&self, claim: Claim) -> Result<(), HistoryError> {
        let _ = self.kv.purge(format!("{}.r{}", claim.stack, claim.revision)).await;
        let head =
            serde_json::to_vec(&Head { revision: claim.revision - 1, applying_since_ms: None }).expect("serializable");
        self.kv
            .update(format!("{}.head", claim.stack), head.into(), claim.kv_revision)
            .await
            .map_err(|_| HistoryError::Conflict { stack: claim.stack.clone() })?;
        Ok(())
    }

    pub async fn get(&self, stack: &str, revision: u64) -> Result<Revision, HistoryError> {
        match self.kv.get(format!("{stack}.r{revision}")).await.map_err(nats)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| HistoryError::Corrupt(e.to_string())),
            None => Err(HistoryError::NoRevision { stack: stack.into(), revision }),
        }
    }

    /// Every stored revision of a stack, oldest first.
    pub async fn list(&self, stack: &str) -> Result<Vec<Revision>, HistoryError> {
        let prefix = format!("{stack}.r");
        let mut keys = self.kv.keys().await.map_err(nats)?;
        let mut numbers = Vec::new();
        while let Some(k) = keys.next().await {
            let k = k.map_err(nats)?;
            if let Some(n) = k.strip_prefix(&prefix).and_then(|n| n.parse::<u64>().ok()) {
                numbers.push(n);
            }
        }
        numbers.sort();
        let mut out = Vec::with_capacity(numbers.len());
        for n in numbers {
            out.push(self.get(stack, n).await?);
        }
        Ok(out)
    }
}
