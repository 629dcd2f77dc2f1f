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

/// Holding the lease: its revision and the book as last written.
struct Held {
    revision: u64,
    book: Book,
}

/// Takes or renews the lease. `None`: someone else holds it.
async fn acquire(store: &StateStore, s: &Settings, held: Option<Held>) -> event_bus::Result<Option<Held>> {
    let current = store.get::<Lease>(ROLE).await?;
    match current {
        None => match store.create(&lease(&s.holder, s.lease_ttl, &Book::default())).await {
            Ok(revision) => Ok(Some(Held { revision, book: Book::default() })),
            Err(_) => Ok(None), // another controller created it first
        },
        Some(v) => {
            let ours = v.value.holder == s.holder && held.as_ref().is_some_and(|h| h.revision == v.revision);
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
                    Ok(Some(Held { revision, book }))
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
    let mut changes = cache.subscribe();
    let renew_every = s.lease_ttl / 3;
    let mut last_renew = std::time::Instant::now() - renew_every;
    loop {
        if held.is_none() || last_renew.elapsed() >= renew_every {
            held = match acquire(&store, &s, held.take()).await {
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
                match reconcile(&store, &cache, &s, h).await {
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

async fn reconcile(store: &StateStore, cache: &StateCache, s: &Settings, held: &mut Held) -> event_bus::Result<()> {
    let snap = cache.snapshot();
    let hosts = live_hosts(&snap, now_ms(), s.heartbeat_timeout.as_millis() as u64);
    let p = place(&snap, &hosts, &held.book.counters);
    let book = Book { counters: p.counters.clone(), unplaceable: p.unplaceable.clone() };
    if p.create.is_empty() && p.remove.is_empty() && book == held.book {
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
        last = store.put::<Container>(c).await?;
    }
    for uuid in &p.remove {
        store.delete(&Key::new(Family::Container, uuid.as_str())?).await?;
        last = store.version().await?;
    }
    // The next pass must see these writes, or it would place the same units again.
    if cache.version() < last && cache.wait_newer(last - 1, Duration::from_secs(10)).await.is_none() {
        tracing::warn!(revision = last, "the state cache did not catch up with our own writes in 10 s");
    }
    if !p.create.is_empty() || !p.remove.is_empty() {
        tracing::info!(created = p.create.len(), removed = p.remove.len(), "placed");
    }
    Ok(())
}
