//! `deploy controller`: one active per environment, through the lease `lease.deploy-controller`
//! (create-if-absent, renewed and taken over with compare-and-set). The active one places
//! containers ([`crate::schedule`]) on every state change and every second (heartbeats age
//! without a write), and writes the result: new container records, removed ones. The lease
//! record also carries what only the active controller may change: the counters that keep
//! indexes from being reused, and the reason each unplaceable service could not be placed.

use std::collections::BTreeMap;
use std::time::Duration;

use event_bus::model::{Container, Lease};
use event_bus::{Family, Key, StateCache, StateStore};

use crate::history::now_ms;
use crate::schedule::{live_hosts, place, Counters};

pub const ROLE: &str = "deploy-controller";

#[derive(Debug, Clone)]
pub struct Settings {
    /// Who we are (shown in the lease).
    pub holder: String,
    /// How long a lease lasts without renewal; a standby takes over after it.
    pub lease_ttl: Duration,
    /// A host whose heartbeat is older than this loses its containers to other hosts.
    pub heartbeat_timeout: Duration,
}

/// The controller's own state, kept in the lease record.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Book {
    #[serde(default)]
    pub counters: Counters,
    /// Service uuid → why it could not be (fully) placed.
    #[serde(default)]
    pub unplaceable: BTreeMap<String, String>,
}

impl Book {
    pub fn of(lease: &Lease) -> Book {
        lease.extra.get("book").and_then(|b| serde_json::from_value(b.clone()).ok()).unwrap_or_default()
    }
}

fn lease(holder: &str, ttl: Duration, book: &Book) -> Lease {
    let mut extra = event_bus::model::Extra::new();
    extra.insert("book".into(), serde_json::to_value(book).expect("serializable"));
    Lease { role: ROLE.into(), holder: holder.into(), expires_at_ms: now_ms() + ttl.as_millis() as u64, extra }
}

type HostKey = (String, event_bus::model::Labels, Option<String>);

/// Holding the lease: its revision and the book as last written.
struct Held {
    revision: u64,
    book: Book,
    /// What the last settled pass placed from: the snapshot and the live hosts (with the labels
    /// and subnet placement reads). While neither changes in what placement reads, a pass
    /// would place the same, so it is skipped: placement is the expensive part, and the loop
    /// runs every second (lease renewals and heartbeats alone change the snapshot's version).
    last_input: Option<(std::sync::Arc<event_bus::Snapshot>, Vec<HostKey>)>,
}

/// Takes or renews the lease. `None`: someone else holds it.
async fn acquire(store: &StateStore, s: &Settings) -> event_bus::Result<Option<Held>> {
    let current = store.get::<Lease>(ROLE).await?;
    match current {
        None => match store.create(&lease(&s.holder, s.lease_ttl, &Book::default())).await {
            Ok(revision) => Ok(Some(Held { revision, book: Book::default(), last_input: None })),
            Err(_) => Ok(None), // another controller created it first
        },
        Some(v) => {
            // Ours by name (holder names are unique per process): after an error this
            // controller renews its own lease instead of waiting for it to lapse.
            let ours = v.value.holder == s.holder;
            let expired = v.value.expires_at_ms < now_ms();
            if !ours && !expired {
                return Ok(None);
            }
            // Taking over keeps the book: counters must never go back.
            let book = Book::of(&v.value);
            match store.update(&lease(&s.holder, s.lease_ttl, &book), v.revision).await {
                Ok(revision) => {
                    if !ours {
                        tracing::info!(previous = %v.value.holder, "took over the controller lease");
                    }
                    Ok(Some(Held { revision, book, last_input: None }))
                }
                Err(_) => Ok(None),
            }
        }
    }
}

/// Runs until the process ends: standby while another controller holds the lease, active
/// otherwise.
pub async fn run(store: StateStore, cache: StateCache, s: Settings, active: tokio::sync::watch::Sender<bool>) {
    let mut held: Option<Held> = None;
    let mut liveness = Liveness::default();
    let mut changes = cache.subscribe();
    let renew_every = s.lease_ttl / 3;
    let mut last_renew = std::time::Instant::now() - renew_every;
    loop {
        if held.is_none() || last_renew.elapsed() >= renew_every {
            held = match acquire(&store, &s).await {
                Ok(h) => h,
                Err(e) => {
                    tracing::warn!(error = %e, "lease: NATS error; standing by");
                    None
                }
            };
            last_renew = std::time::Instant::now();
            active.send_replace(held.is_some());
        }
        if let Some(h) = held.as_mut() {
            if cache.is_ready() {
                match reconcile(&store, &cache, &s, h, &mut liveness).await {
                    Ok(()) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "reconcile failed; the next pass retries");
                        held = None;
                        active.send_replace(false);
                    }
                }
            }
        }
        // A state change or a second, whichever comes first (heartbeats age without writes).
        let _ = tokio::time::timeout(Duration::from_secs(1), changes.changed()).await;
    }
}

/// Which hosts are alive, judged by this controller's own clock: a host is dead when its
/// heartbeat has not changed for `heartbeat_timeout` since this controller first saw it. So a
/// NATS outage, a controller restart or clocks that disagree never make every host look dead.
#[derive(Default)]
struct Liveness {
    seen: std::collections::HashMap<String, (Option<u64>, std::time::Instant)>,
}

impl Liveness {
    fn live(&mut self, snap: &event_bus::Snapshot, timeout: Duration) -> Vec<std::sync::Arc<event_bus::model::Host>> {
        let now = std::time::Instant::now();
        let mut out: Vec<_> = live_hosts(snap, 0, u64::MAX)
            .into_iter()
            .filter(|h| {
                let entry = self.seen.entry(h.uuid.clone()).or_insert((h.heartbeat_ms, now));
                if entry.0 != h.heartbeat_ms {
                    *entry = (h.heartbeat_ms, now);
                }
                h.heartbeat_ms.is_none() || now.duration_since(entry.1) <= timeout
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }
}

/// Gives the lease up (on shutdown), so a standby takes over at once.
pub async fn release(store: &StateStore, holder: &str) {
    if let Ok(Some(v)) = store.get::<Lease>(ROLE).await {
        if v.value.holder == holder {
            let mut l = v.value.clone();
            l.expires_at_ms = 0;
            let _ = store.update(&l, v.revision).await;
        }
    }
}

async fn reconcile(
    store: &StateStore,
    cache: &StateCache,
    s: &Settings,
    held: &mut Held,
    liveness: &mut Liveness,
) -> event_bus::Result<()> {
    let snap = cache.snapshot();
    let hosts = liveness.live(&snap, s.heartbeat_timeout);
    let host_keys: Vec<HostKey> = hosts.iter().map(|h| (h.uuid.clone(), h.labels.clone(), h.subnet.clone())).collect();
    // An upgrade waits on time (its interval) as well as on state: no skipping while one runs.
    if let Some((old, keys)) = held.last_input.as_ref().filter(|_| held.book.counters.batches.is_empty()) {
        use event_bus::Family as F;
        if *keys == host_keys && !snap.differs_from(old, &[F::Stack, F::Service, F::Container, F::Status]) {
            return Ok(());
        }
    }
    let p = place(&snap, &hosts, &held.book.counters, now_ms());
    let book = Book { counters: p.counters.clone(), unplaceable: p.unplaceable.clone() };
    if p.create.is_empty() && p.remove.is_empty() && p.update.is_empty() && book == held.book {
        held.last_input = Some((snap.clone(), host_keys));
        return Ok(());
    }
    for (svc, why) in &p.unplaceable {
        if held.book.unplaceable.get(svc) != Some(why) {
            tracing::warn!(service = %svc, reason = %why, "service cannot be placed");
        }
    }
    // The book first, with compare-and-set: a controller that lost the lease writes nothing.
    held.revision = store.update(&lease(&s.holder, s.lease_ttl, &book), held.revision).await?;
    held.book = book;
    let mut last = held.revision;
    for c in &p.create {
        // Create, not put: a record that exists already means another controller wrote it.
        last = store.create::<Container>(c).await?;
    }
    for c in &p.update {
        last = store.put::<Container>(c).await?;
    }
    for uuid in &p.remove {
        store.delete(&Key::new(Family::Container, uuid.as_str())?).await?;
        last = store.version().await?;
    }
    // The next pass must see these writes, or it would place the same units again.
    // (Bounded by a third of the lease, so the lease is renewed in time even if it lags.)
    if cache.version() < last && cache.wait_newer(last - 1, s.lease_ttl / 3).await.is_none() {
        tracing::warn!(revision = last, "the state cache has not caught up with our own writes yet");
    }
    if !p.create.is_empty() || !p.remove.is_empty() || !p.update.is_empty() {
        tracing::info!(created = p.create.len(), removed = p.remove.len(), changed = p.update.len(), "placed");
    }
    Ok(())
}
