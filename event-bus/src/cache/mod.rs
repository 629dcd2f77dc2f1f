//! The state cache: load the bucket, follow its watch, keep an indexed [`Snapshot`] behind an
//! `Arc` swap, and let readers wait for "a version newer than N".
//!
//! One task owns the working snapshot. It reads every change the watch has ready, applies the
//! whole burst, then publishes once, so a burst of changes becomes one new snapshot. When NATS
//! goes away readers keep the last snapshot; the watch resumes from the next revision, so no
//! change is missed or applied twice.

mod snapshot;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_nats::jetstream::kv;
use futures::{FutureExt, StreamExt};
use prometheus_client::metrics::{counter::Counter, family::Family as MetricFamily, gauge::Gauge};
use tokio::sync::watch;

pub use snapshot::Snapshot;

use crate::bus::{Bus, Link};
use crate::error::{Error, Result};
use crate::keys::{decode, Key, Record};
use crate::runtime::metrics::Metrics;
use crate::store::StateStore;

/// The most changes folded into one snapshot; bounds the latency a huge burst adds.
const MAX_BATCH: usize = 4096;

/// Values decoded per blocking-pool job during a cold load.
const COLD_BATCH: usize = 512;

#[derive(Clone)]
struct CacheMetrics {
    applied: Counter,
    invalid: MetricFamily<Vec<(String, String)>, Counter>,
    snapshots: Counter,
    resyncs: Counter,
    version: Gauge,
}

impl CacheMetrics {
    fn new(m: &Metrics) -> Self {
        let c = CacheMetrics {
            applied: Counter::default(),
            invalid: MetricFamily::default(),
            snapshots: Counter::default(),
            resyncs: Counter::default(),
            version: Gauge::default(),
        };
        m.register("corral_state_cache_changes", "Changes applied to the state cache", c.applied.clone());
        m.register(
            "corral_state_cache_invalid_values",
            "Values skipped because they did not parse, by key family",
            c.invalid.clone(),
        );
        m.register(
            "corral_state_cache_snapshots",
            "Snapshots published (one per burst of changes)",
            c.snapshots.clone(),
        );
        m.register(
            "corral_state_cache_resyncs",
            "Times the watch was re-established after an error or reconnect",
            c.resyncs.clone(),
        );
        m.register("corral_state_cache_version", "Bucket revision the cache has applied", c.version.clone());
        c
    }
}

struct Shared {
    current: ArcSwap<Snapshot>,
    version_tx: watch::Sender<Stamp>,
    watching: AtomicBool,
    bus: Bus,
    metrics: CacheMetrics,
}

struct Task(tokio::task::JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A live, indexed, in-memory view of one environment's state. Cheap to clone; the follower
/// task stops when the last clone is dropped.
#[derive(Clone)]
pub struct StateCache {
    shared: Arc<Shared>,
    _task: Arc<Task>,
}

impl StateCache {
    /// Loads the whole bucket (returns once the snapshot is complete) and starts following it.
    pub async fn start(bus: &Bus, metrics: &Metrics) -> Result<StateCache> {
        let store = StateStore::open(bus).await?;
        let metrics = CacheMetrics::new(metrics);
        let (version_tx, _) = watch::channel(Stamp::default());
        let shared = Arc::new(Shared {
            current: ArcSwap::from_pointee(Snapshot::default()),
            version_tx,
            watching: AtomicBool::new(false),
            bus: bus.clone(),
            metrics,
        });
        let (snapshot, watcher, identity) = cold_load(&store, &shared.metrics).await?;
        shared.publish(snapshot.clone());
        shared.watching.store(true, Ordering::SeqCst);
        let task = tokio::spawn(follow(shared.clone(), store, snapshot, watcher, identity));
        Ok(StateCache { shared, _task: Arc::new(Task(task)) })
    }

    /// The newest snapshot. Never blocks; readers keep it as long as they like.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.current.load_full()
    }

    /// The version of the newest snapshot (the bucket revision it reflects).
    pub fn version(&self) -> u64 {
        self.shared.version_tx.borrow().version
    }

    /// Waits until the cache holds a version newer than `version`, up to `timeout`.
    /// Returns the snapshot, or `None` when the time ran out.
    ///
    /// Versions only go down when the server came back with a different store and the cache
    /// reloaded from it; waiters are released by such a reload too, whatever the new version.
    pub async fn wait_newer(&self, version: u64, timeout: Duration) -> Option<Arc<Snapshot>> {
        let mut rx = self.shared.version_tx.subscribe();
        let epoch = rx.borrow().epoch;
        let reached = tokio::time::timeout(timeout, rx.wait_for(|s| s.version > version || s.epoch != epoch)).await;
        match reached {
            Ok(Ok(_)) => Some(self.snapshot()),
            _ => None,
        }
    }

    /// A receiver of the version, changed once per published snapshot.
    pub fn subscribe(&self) -> watch::Receiver<Stamp> {
        self.shared.version_tx.subscribe()
    }

    /// Ready means: loaded, connected, and following the bucket. While not ready the cache
    /// still answers reads from its last snapshot.
    pub fn readiness(&self) -> std::result::Result<(), String> {
        if self.shared.bus.link() != Link::Connected {
            return Err("state cache: NATS disconnected, serving the last snapshot".into());
        }
        if !self.shared.watching.load(Ordering::SeqCst) {
            return Err("state cache: re-establishing the bucket watch".into());
        }
        Ok(())
    }

    pub fn is_ready(&self) -> bool {
        self.readiness().is_ok()
    }
}

/// What [`StateCache::subscribe`] carries: the version of the newest snapshot, and how many
/// times the cache reloaded from a different store (after which versions restart lower).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    pub epoch: u64,
    pub version: u64,
}

impl Shared {
    fn publish(&self, snapshot: Snapshot) {
        self.publish_with(snapshot, false);
    }

    fn publish_with(&self, snapshot: Snapshot, reloaded: bool) {
        let v = snapshot.version();
        self.current.store(Arc::new(snapshot));
        self.metrics.version.set(v as i64);
        self.metrics.snapshots.inc();
        self.version_tx.send_modify(|s| {
            s.version = v;
            s.epoch += u64::from(reloaded);
        });
    }
}

/// Reads the latest value of every key, then keeps the same watch for what follows.
/// What tells one bucket from another of the same name (a server restarted on a fresh store).
type StoreIdentity = time::OffsetDateTime;

async fn cold_load(store: &StateStore, metrics: &CacheMetrics) -> Result<(Snapshot, kv::Watch, StoreIdentity)> {
    let info = store.kv().stream.get_info().await.map_err(|e| Error::nats("bucket info", e))?;
    let identity = info.created;
    let mut watcher = store.kv().watch_with_history(">").await.map_err(|e| Error::nats("watch", e))?;
    let mut snap = Snapshot::default();
    snap.set_version(info.state.last_sequence);
    if info.state.messages == 0 {
        return Ok((snap, watcher, identity));
    }
    // A cold load is thousands of values at once: decode batches on the blocking pool while
    // this task applies the batches already decoded, in order.
    let mut pending: std::collections::VecDeque<tokio::task::JoinHandle<Vec<Decoded>>> = Default::default();
    let mut batch = Vec::with_capacity(COLD_BATCH);
    while let Some(entry) = watcher.next().await {
        let entry = entry.map_err(|e| Error::nats("watch", e))?;
        let caught_up = entry.delta == 0;
        batch.push(entry);
        if batch.len() == COLD_BATCH || caught_up {
            let entries = std::mem::replace(&mut batch, Vec::with_capacity(COLD_BATCH));
            pending.push_back(tokio::task::spawn_blocking(move || entries.iter().map(decode_entry).collect()));
        }
        while pending.front().is_some_and(|h| h.is_finished()) || (caught_up && !pending.is_empty()) {
            let decoded = pending.pop_front().expect("checked").await.map_err(|e| Error::nats("decode", e))?;
            decoded.into_iter().for_each(|d| apply_decoded(&mut snap, d, metrics));
        }
        if caught_up {
            return Ok((snap, watcher, identity));
        }
    }
    Err(Error::nats("watch", "the bucket watch ended during the initial load"))
}

async fn follow(
    shared: Arc<Shared>,
    store: StateStore,
    mut snap: Snapshot,
    watcher: kv::Watch,
    identity: StoreIdentity,
) {
    let mut watcher = Some(watcher);
    let mut identity = identity;
    let mut link = shared.bus.link_watch();
    // The connection the cache was loaded over is not a reconnect.
    link.borrow_and_update();
    let mut attempt = 0u32;
    loop {
        let mut w = match watcher.take() {
            Some(w) => w,
            None => match resume(&store, &shared, &mut snap, &mut identity).await {
                Ok(w) => w,
                Err(e) => {
                    attempt += 1;
                    tracing::warn!(error = %e, attempt, "state cache: cannot resume the bucket watch; retrying");
                    tokio::time::sleep(retry_delay(attempt)).await;
                    continue;
                }
            },
        };
        attempt = 0;
        shared.watching.store(true, Ordering::SeqCst);
        let why = loop {
            tokio::select! {
                next = w.next() => match next {
                    Some(Ok(entry)) => {
                        apply_entry(&mut snap, &entry, &shared.metrics);
                        // Fold in everything else that is already here: one snapshot per burst.
                        let mut trouble = None;
                        for _ in 1..MAX_BATCH {
                            match w.next().now_or_never() {
                                Some(Some(Ok(entry))) => apply_entry(&mut snap, &entry, &shared.metrics),
                                Some(Some(Err(e))) => { trouble = Some(format!("watch error: {e}")); break; }
                                Some(None) => { trouble = Some("watch ended".to_string()); break; }
                                None => break,
                            }
                        }
                        shared.publish(snap.clone());
                        if let Some(t) = trouble { break t; }
                    }
                    Some(Err(e)) => break format!("watch error: {e}"),
                    None => break "watch ended".to_string(),
                },
                changed = link.changed() => {
                    if changed.is_err() { return; }
                    let now = *link.borrow_and_update();
                    // The watch's ordered consumer recovers by itself after a reconnect, but only
                    // if the server kept its store. Until that is known, the cache is not ready.
                    if now == Link::Connected {
                        shared.watching.store(false, Ordering::SeqCst);
                        if !same_store(&store, &identity, &snap, &link).await {
                            break "the server came back with a different store".to_string();
                        }
                        // Same store: open a fresh watch from the next revision now, rather than
                        // wait for the old consumer to notice (after losing a cluster node that
                        // took up to tens of seconds).
                        break "reconnected: resuming the watch from the next revision".to_string();
                    }
                }
            }
        };
        tracing::warn!(reason = %why, version = snap.version(), "state cache: resynchronising");
        shared.watching.store(false, Ordering::SeqCst);
        shared.metrics.resyncs.inc();
        tokio::time::sleep(retry_delay(1)).await;
    }
}

/// Asks, until it gets an answer (or the link drops again), whether the bucket is still the one
/// the cache was loaded from: same creation time and not behind the cache's version.
async fn same_store(
    store: &StateStore,
    identity: &StoreIdentity,
    snap: &Snapshot,
    link: &tokio::sync::watch::Receiver<Link>,
) -> bool {
    let mut attempt = 0;
    loop {
        match store.kv().stream.get_info().await {
            Ok(info) => return is_same_store(&info, identity, snap),
            Err(e) => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "state cache: checking the bucket after a reconnect");
                if *link.borrow() != Link::Connected {
                    // Disconnected again: the next reconnect checks afresh.
                    return true;
                }
                tokio::time::sleep(retry_delay(attempt)).await;
            }
        }
    }
}

/// The bucket is the one the cache was loaded from: same creation time, not behind the cache.
fn is_same_store(info: &async_nats::jetstream::stream::Info, identity: &StoreIdentity, snap: &Snapshot) -> bool {
    info.created == *identity && info.state.last_sequence >= snap.version()
}

/// Continues from the next revision, or reloads from scratch if the bucket is not the one the
/// cache holds (recreated, or behind it).
async fn resume(
    store: &StateStore,
    shared: &Shared,
    snap: &mut Snapshot,
    identity: &mut StoreIdentity,
) -> Result<kv::Watch> {
    let info = store.kv().stream.get_info().await.map_err(|e| Error::nats("bucket info", e))?;
    if !is_same_store(&info, identity, snap) {
        let (fresh, w, id) = cold_load(store, &shared.metrics).await?;
        tracing::warn!(old = snap.version(), new = fresh.version(), "state cache: reloaded from a different store");
        *snap = fresh;
        *identity = id;
        shared.publish_with(snap.clone(), true);
        return Ok(w);
    }
    store.kv().watch_all_from_revision(snap.version() + 1).await.map_err(|e| Error::nats("watch", e))
}

fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(3_000))
}

/// One change read from the bucket, decoded (the costly half, which can run off the cache task).
struct Decoded {
    revision: u64,
    raw_key: String,
    change: std::result::Result<(Key, Option<Record>), (Option<Key>, Error)>,
}

fn decode_entry(entry: &kv::Entry) -> Decoded {
    let change = match entry.key.parse::<Key>() {
        Err(e) => Err((None, e)),
        Ok(key) => match entry.operation {
            kv::Operation::Put => match decode(&key, &entry.value) {
                Ok(record) => Ok((key, Some(record))),
                Err(e) => Err((Some(key), e)),
            },
            kv::Operation::Delete | kv::Operation::Purge => Ok((key, None)),
        },
    };
    Decoded { revision: entry.revision, raw_key: entry.key.clone(), change }
}

fn apply_decoded(snap: &mut Snapshot, d: Decoded, metrics: &CacheMetrics) {
    snap.set_version(d.revision);
    match d.change {
        Ok((key, change)) => {
            snap.apply(&key, change);
            metrics.applied.inc();
        }
        Err((None, e)) => {
            tracing::warn!(key = %d.raw_key, error = %e, "state cache: skipping a key outside the key families");
            metrics.invalid.get_or_create(&vec![("family".into(), "unknown".into())]).inc();
        }
        Err((Some(key), e)) => {
            tracing::warn!(%key, revision = d.revision, error = %e, "state cache: skipping a value that does not parse; keeping the previous one");
            metrics.invalid.get_or_create(&vec![("family".into(), key.family.to_string())]).inc();
            snap.mark_invalid(&key, e.to_string());
        }
    }
}

fn apply_entry(snap: &mut Snapshot, entry: &kv::Entry, metrics: &CacheMetrics) {
    apply_decoded(snap, decode_entry(entry), metrics);
}
