//! The state store: one JetStream KV bucket per environment, typed.
//!
//! The bucket's last stream sequence is the environment's **version**: every write of any key
//! moves it, so "newer than N" is one integer comparison for every reader.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;

use crate::bus::Bus;
use crate::error::{Error, Result};
use crate::keys::{decode, encode, Document, Family, Key, Record};
use crate::model::Environment;

/// How `event-bus init` (and `event-bus server`) provision an environment.
#[derive(Debug, Clone)]
pub struct Provision {
    /// JetStream replicas for the bucket and the events stream (1, or 3/5 on a cluster).
    pub replicas: usize,
    /// Values kept per key (the newest is what readers see; older ones help debugging).
    pub history: i64,
    /// How long the events stream keeps events.
    pub events_max_age: Duration,
}

impl Default for Provision {
    fn default() -> Self {
        Provision { replicas: 1, history: 5, events_max_age: Duration::from_secs(24 * 3600) }
    }
}

/// Creates the bucket and the events stream of `bus.env()` if they are missing, and records
/// the environment itself. Safe to run again.
pub async fn provision(bus: &Bus, p: &Provision) -> Result<StateStore> {
    let bucket = bus.bucket_name();
    let kv = match StateStore::open(bus).await {
        Ok(store) => store.kv,
        Err(Error::NotProvisioned { .. }) => bus
            .js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: format!("Corral state of environment {}", bus.env()),
                history: p.history,
                num_replicas: p.replicas,
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| Error::nats("create bucket", e))?,
        Err(e) => return Err(e),
    };
    bus.js
        .get_or_create_stream(jetstream::stream::Config {
            name: bus.events_stream_name(),
            description: Some(format!("Corral events of environment {}", bus.env())),
            subjects: vec![bus.event_subject(">")],
            max_age: p.events_max_age,
            num_replicas: p.replicas,
            storage: jetstream::stream::StorageType::File,
            discard: jetstream::stream::DiscardPolicy::Old,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats("create events stream", e))?;
    let store = StateStore { kv };
    let env = Environment {
        name: bus.env().to_string(),
        uuid: uuid::Uuid::new_v4().to_string(),
        region_name: String::new(),
        extra: Default::default(),
    };
    match store.create(&env).await {
        Ok(_) | Err(Error::AlreadyExists { .. }) => Ok(store),
        Err(e) => Err(e),
    }
}

/// Looks a stream up; `NotProvisioned` only when JetStream says it does not exist.
pub(crate) async fn get_stream(bus: &Bus, name: &str, what: &'static str) -> Result<jetstream::stream::Stream> {
    use jetstream::context::GetStreamErrorKind;
    match bus.js.get_stream(name).await {
        Ok(s) => Ok(s),
        Err(e) => match e.kind() {
            GetStreamErrorKind::JetStream(js) if js.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND => {
                Err(Error::NotProvisioned { what, name: name.to_string(), env: bus.env().to_string() })
            }
            _ => Err(Error::nats("stream info", e)),
        },
    }
}

/// A value with the revision it was stored at (the input of compare-and-set).
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    pub value: T,
    pub revision: u64,
}

/// Typed access to one environment's bucket.
#[derive(Clone)]
pub struct StateStore {
    kv: kv::Store,
}

impl StateStore {
    /// Opens the bucket of `bus.env()`; it must have been provisioned.
    pub async fn open(bus: &Bus) -> Result<StateStore> {
        let name = bus.bucket_name();
        // Only "stream not found" means "not provisioned": a timeout or a cluster without a
        // leader yet is a NATS error the caller may retry.
        get_stream(bus, &format!("KV_{name}"), "bucket").await?;
        let kv = bus.js.get_key_value(&name).await.map_err(|e| Error::nats("open bucket", e))?;
        Ok(StateStore { kv })
    }

    /// The raw async-nats store, for tools and tests that need to go around the model.
    pub fn kv(&self) -> &kv::Store {
        &self.kv
    }

    pub fn bucket(&self) -> &str {
        &self.kv.name
    }

    /// The environment version: the bucket stream's last sequence.
    pub async fn version(&self) -> Result<u64> {
        let info = self.kv.stream.get_info().await.map_err(|e| Error::nats("bucket info", e))?;
        Ok(info.state.last_sequence)
    }

    pub async fn get<T: Document>(&self, id: &str) -> Result<Option<Versioned<T>>> {
        let key = Key::new(T::FAMILY, id)?;
        Ok(self.get_key(&key).await?.map(|v| Versioned {
            value: T::from_record(v.value).expect("decode returns the key's family"),
            revision: v.revision,
        }))
    }

    /// Reads and decodes any key.
    pub async fn get_key(&self, key: &Key) -> Result<Option<Versioned<Record>>> {
        match self.get_raw(key).await? {
            None => Ok(None),
            Some(v) => Ok(Some(Versioned { value: decode(key, &v.value)?, revision: v.revision })),
        }
    }

    /// Reads a key's bytes without decoding them.
    pub async fn get_raw(&self, key: &Key) -> Result<Option<Versioned<Bytes>>> {
        let entry = self.kv.entry(key.to_string()).await.map_err(|e| Error::nats("get", e))?;
        Ok(entry.and_then(|e| match e.operation {
            kv::Operation::Put => Some(Versioned { value: e.value, revision: e.revision }),
            kv::Operation::Delete | kv::Operation::Purge => None,
        }))
    }

    /// Writes a document unconditionally; returns the new revision.
    pub async fn put<T: Document>(&self, doc: &T) -> Result<u64> {
        self.put_raw(checked_key(doc)?, encode(doc)).await
    }

    /// Writes any record (what the CLI does after validating a user's document).
    pub async fn put_record(&self, record: &Record) -> Result<u64> {
        self.put_raw(record_key(record)?, encode(record)).await
    }

    /// Writes a document only if its key does not exist yet.
    pub async fn create<T: Document>(&self, doc: &T) -> Result<u64> {
        self.create_raw(checked_key(doc)?, encode(doc)).await
    }

    /// [`StateStore::create`] for any record.
    pub async fn create_record(&self, record: &Record) -> Result<u64> {
        self.create_raw(record_key(record)?, encode(record)).await
    }

    /// Compare-and-set: writes only if the key is still at `revision`.
    pub async fn update<T: Document>(&self, doc: &T, revision: u64) -> Result<u64> {
        self.update_raw(checked_key(doc)?, encode(doc), revision).await
    }

    /// [`StateStore::update`] for any record.
    pub async fn update_record(&self, record: &Record, revision: u64) -> Result<u64> {
        self.update_raw(record_key(record)?, encode(record), revision).await
    }

    async fn put_raw(&self, key: Key, value: Vec<u8>) -> Result<u64> {
        self.kv.put(key.to_string(), value.into()).await.map_err(|e| Error::nats("put", e))
    }

    async fn create_raw(&self, key: Key, value: Vec<u8>) -> Result<u64> {
        self.kv.create(key.to_string(), value.into()).await.map_err(|e| match e.kind() {
            kv::CreateErrorKind::AlreadyExists => Error::AlreadyExists { key: key.to_string() },
            _ => Error::nats("create", e),
        })
    }

    async fn update_raw(&self, key: Key, value: Vec<u8>, revision: u64) -> Result<u64> {
        self.kv.update(key.to_string(), value.into(), revision).await.map_err(|e| match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => {
                Error::RevisionMismatch { key: key.to_string(), expected: revision }
            }
            _ => Error::nats("update", e),
        })
    }

    /// Deletes a key (a tombstone readers see as a removal).
    pub async fn delete(&self, key: &Key) -> Result<()> {
        self.kv.delete(key.to_string()).await.map_err(|e| Error::nats("delete", e))
    }

    /// Every live key, optionally of one family.
    pub async fn keys(&self, family: Option<Family>) -> Result<Vec<Key>> {
        use futures::TryStreamExt;
        let raw: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(|e| Error::nats("keys", e))?
            .try_collect()
            .await
            .map_err(|e| Error::nats("keys", e))?;
        let mut keys: Vec<Key> =
            raw.iter().filter_map(|k| k.parse::<Key>().ok()).filter(|k| family.is_none_or(|f| k.family == f)).collect();
        keys.sort();
        Ok(keys)
    }
}

/// One change read from the bucket.
#[derive(Debug)]
pub struct Change {
    pub revision: u64,
    /// The raw key (it may be outside the key families, then `record` is an error).
    pub key: String,
    /// `Ok(Some(_))` a put, `Ok(None)` a delete, `Err(_)` a value or key that does not decode.
    pub record: Result<Option<Record>>,
}

impl StateStore {
    /// Changes in order: with `after: None` the current value of every key first, then live
    /// changes; with `Some(rev)` every change after revision `rev`.
    pub async fn watch(
        &self,
        after: Option<u64>,
    ) -> Result<impl futures::Stream<Item = Result<Change>> + Unpin + use<>> {
        use futures::StreamExt;
        let w = match after {
            Some(rev) => self.kv.watch_all_from_revision(rev + 1).await,
            None => self.kv.watch_with_history(">").await,
        }
        .map_err(|e| Error::nats("watch", e))?;
        Ok(w.map(|entry| {
            let entry = entry.map_err(|e| Error::nats("watch", e))?;
            let record = entry.key.parse::<Key>().and_then(|key| match entry.operation {
                kv::Operation::Put => decode(&key, &entry.value).map(Some),
                kv::Operation::Delete | kv::Operation::Purge => Ok(None),
            });
            Ok(Change { revision: entry.revision, key: entry.key, record })
        }))
    }
}

fn record_key(record: &Record) -> Result<Key> {
    Key::new(record.family(), record.id())
}

fn checked_key<T: Document>(doc: &T) -> Result<Key> {
    Key::new(T::FAMILY, doc.id())
}
