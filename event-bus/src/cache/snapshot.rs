//! An immutable, indexed view of one environment at one version.
//!
//! Built on persistent maps: cloning a snapshot is O(1) and applying a change costs O(log n),
//! so the follower can publish a new snapshot per batch without copying the world.

use std::sync::Arc;

use imbl::{OrdMap, OrdSet};

use crate::keys::{Key, Record};
use crate::model::*;

type Table<T> = OrdMap<String, Arc<T>>;
/// An index whose key may be shared (two containers briefly holding one IP, two stacks with one
/// name): every owner is kept, and a lookup answers the smallest id among them.
type MultiBy<K> = OrdMap<K, OrdSet<String>>;
type Multi = MultiBy<String>;

/// The state of an environment at [`Snapshot::version`]. Names are indexed lowercased
/// (Rancher's 2016-07-29 API lowercases them); lookups lowercase their argument.
#[derive(Clone, Default)]
pub struct Snapshot {
    version: u64,
    environment: Option<Arc<Environment>>,
    hosts: Table<Host>,
    stacks: Table<Stack>,
    services: Table<Service>,
    containers: Table<Container>,
    statuses: Table<ContainerStatus>,
    healths: Table<ContainerHealth>,
    volumes: Table<Volume>,
    certificates: Table<Certificate>,
    fqdns: Table<Fqdn>,
    leases: Table<Lease>,
    lb_statuses: Table<LbStatus>,
    /// Keys whose newest value did not parse, with the reason (the previous value, if any, is kept).
    invalid: OrdMap<String, String>,

    host_by_name: Multi,
    stack_by_name: Multi,
    /// `(stack uuid, lowercased service name)` → service uuids.
    service_by_name: MultiBy<(String, String)>,
    services_by_stack: Multi,
    container_by_name: Multi,
    container_by_ip: Multi,
    containers_by_service: Multi,
    containers_by_host: Multi,
    containers_by_stack: Multi,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.version)
            .field("hosts", &self.hosts.len())
            .field("stacks", &self.stacks.len())
            .field("services", &self.services.len())
            .field("containers", &self.containers.len())
            .field("invalid", &self.invalid.len())
            .finish()
    }
}

fn lc(s: &str) -> String {
    s.to_lowercase()
}

fn ids<'a>(m: &'a Multi, k: &str) -> impl Iterator<Item = String> + 'a {
    m.get(k).into_iter().flat_map(|s| s.iter().cloned())
}

fn first<'m, K: Ord + Clone>(m: &'m MultiBy<K>, k: &K) -> Option<&'m String> {
    m.get(k).and_then(|set| set.get_min())
}

fn multi_add<K: Ord + Clone>(m: &mut MultiBy<K>, k: Option<&K>, id: &str) {
    if let Some(k) = k {
        m.entry(k.clone()).or_default().insert(id.to_string());
    }
}

fn multi_remove<K: Ord + Clone>(m: &mut MultiBy<K>, k: Option<&K>, id: &str) {
    if let Some(k) = k {
        if let Some(set) = m.get_mut(k) {
            set.remove(id);
            if set.is_empty() {
                m.remove(k);
            }
        }
    }
}

/// The primary IP and the other IPs, each once (the primary is usually also in `ips`).
fn container_ips(c: &Container) -> impl Iterator<Item = &String> {
    let primary = c.primary_ip.as_ref().filter(|ip| !ip.is_empty());
    primary.into_iter().chain(c.ips.iter().filter(move |ip| !ip.is_empty() && Some(*ip) != primary))
}

impl Snapshot {
    /// The bucket revision this snapshot reflects.
    pub fn version(&self) -> u64 {
        self.version
    }
    pub fn environment(&self) -> Option<&Arc<Environment>> {
        self.environment.as_ref()
    }

    pub fn host(&self, uuid: &str) -> Option<&Arc<Host>> {
        self.hosts.get(uuid)
    }
    pub fn host_by_name(&self, name: &str) -> Option<&Arc<Host>> {
        first(&self.host_by_name, &lc(name)).and_then(|id| self.hosts.get(id))
    }
    pub fn hosts(&self) -> impl Iterator<Item = &Arc<Host>> {
        self.hosts.values()
    }

    pub fn stack(&self, uuid: &str) -> Option<&Arc<Stack>> {
        self.stacks.get(uuid)
    }
    pub fn stack_by_name(&self, name: &str) -> Option<&Arc<Stack>> {
        first(&self.stack_by_name, &lc(name)).and_then(|id| self.stacks.get(id))
    }
    pub fn stacks(&self) -> impl Iterator<Item = &Arc<Stack>> {
        self.stacks.values()
    }

    pub fn service(&self, uuid: &str) -> Option<&Arc<Service>> {
        self.services.get(uuid)
    }
    pub fn service_by_name(&self, stack_uuid: &str, name: &str) -> Option<&Arc<Service>> {
        first(&self.service_by_name, &(stack_uuid.to_string(), lc(name))).and_then(|id| self.services.get(id))
    }
    /// A service as links, load balancer rules and aliases name it: `<stack>/<service>`, or
    /// `<service>` in the stack `from_stack_uuid` (the naming service's own).
    pub fn service_by_ref(&self, from_stack_uuid: &str, reference: &str) -> Option<&Arc<Service>> {
        match reference.split_once('/') {
            Some((stack, name)) => self.service_by_name(&self.stack_by_name(stack)?.uuid, name),
            None => self.service_by_name(from_stack_uuid, reference),
        }
    }
    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.services.values()
    }
    pub fn services_in_stack<'a>(&'a self, stack_uuid: &'a str) -> impl Iterator<Item = &'a Arc<Service>> + 'a {
        ids(&self.services_by_stack, stack_uuid).filter_map(move |id| self.services.get(&id))
    }

    pub fn container(&self, uuid: &str) -> Option<&Arc<Container>> {
        self.containers.get(uuid)
    }
    pub fn container_by_name(&self, name: &str) -> Option<&Arc<Container>> {
        first(&self.container_by_name, &lc(name)).and_then(|id| self.containers.get(id))
    }
    /// The container that holds `ip` (its primary IP or one of its `ips`).
    pub fn container_by_ip(&self, ip: &str) -> Option<&Arc<Container>> {
        first(&self.container_by_ip, &ip.to_string()).and_then(|id| self.containers.get(id))
    }
    pub fn containers(&self) -> impl Iterator<Item = &Arc<Container>> {
        self.containers.values()
    }
    pub fn containers_of_service<'a>(&'a self, service_uuid: &'a str) -> impl Iterator<Item = &'a Arc<Container>> + 'a {
        ids(&self.containers_by_service, service_uuid).filter_map(move |id| self.containers.get(&id))
    }
    pub fn containers_on_host<'a>(&'a self, host_uuid: &'a str) -> impl Iterator<Item = &'a Arc<Container>> + 'a {
        ids(&self.containers_by_host, host_uuid).filter_map(move |id| self.containers.get(&id))
    }
    pub fn containers_in_stack<'a>(&'a self, stack_uuid: &'a str) -> impl Iterator<Item = &'a Arc<Container>> + 'a {
        ids(&self.containers_by_stack, stack_uuid).filter_map(move |id| self.containers.get(&id))
    }
    /// Observed state of a container, from its host's agent.
    pub fn status(&self, container_uuid: &str) -> Option<&Arc<ContainerStatus>> {
        self.statuses.get(container_uuid)
    }
    /// The container whose agent (on `host_uuid`, when given) reports it as Docker container
    /// `docker_id` (the status's `external_id`, full length), unless removed. A scan of the
    /// statuses: for the rare caller that can be known only this way (a container on the host's
    /// network, see rancher-metadata).
    pub fn container_by_docker_id(&self, docker_id: &str, host_uuid: Option<&str>) -> Option<&Arc<Container>> {
        let st = self.statuses.values().find(|st| {
            st.external_id.as_deref() == Some(docker_id)
                && st.state != "removed"
                && host_uuid.is_none_or(|h| st.host_uuid == h)
        })?;
        self.containers.get(&st.uuid)
    }
    /// Health verdict of a container.
    pub fn health(&self, container_uuid: &str) -> Option<&Arc<ContainerHealth>> {
        self.healths.get(container_uuid)
    }
    /// Every health verdict (including any whose container is gone).
    pub fn healths(&self) -> impl Iterator<Item = &Arc<ContainerHealth>> {
        self.healths.values()
    }

    pub fn volume(&self, uuid: &str) -> Option<&Arc<Volume>> {
        self.volumes.get(uuid)
    }
    pub fn volumes(&self) -> impl Iterator<Item = &Arc<Volume>> {
        self.volumes.values()
    }
    pub fn certificate(&self, uuid: &str) -> Option<&Arc<Certificate>> {
        self.certificates.get(uuid)
    }
    pub fn certificates(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        self.certificates.values()
    }
    pub fn fqdn(&self, service_uuid: &str) -> Option<&Arc<Fqdn>> {
        self.fqdns.get(service_uuid)
    }
    pub fn lease(&self, role: &str) -> Option<&Arc<Lease>> {
        self.leases.get(role)
    }
    /// What each lb-haproxy instance made of its service's configuration (few: one per replica).
    pub fn lb_statuses(&self) -> impl Iterator<Item = &Arc<LbStatus>> {
        self.lb_statuses.values()
    }
    /// Keys skipped because their newest value did not parse, with why.
    pub fn invalid(&self) -> impl Iterator<Item = (&String, &String)> {
        self.invalid.iter()
    }

    /// The records of `families` that differ between `older` and this snapshot, by content, as
    /// (before, after) pairs (`None` for absent). A document written again unchanged is not in
    /// the list. Cheap when little changed: the persistent maps share their untouched parts,
    /// which the comparison skips.
    pub fn changes_since(
        &self,
        older: &Snapshot,
        families: &[crate::keys::Family],
    ) -> Vec<(Option<Record>, Option<Record>)> {
        use crate::keys::Family as F;
        fn table<T: PartialEq + Clone>(
            a: &Table<T>,
            b: &Table<T>,
            wrap: fn(T) -> Record,
            out: &mut Vec<(Option<Record>, Option<Record>)>,
        ) {
            for d in a.diff(b) {
                match d {
                    imbl::ordmap::DiffItem::Update { old, new } if old.1 != new.1 => {
                        out.push((Some(wrap((*old.1).as_ref().clone())), Some(wrap((*new.1).as_ref().clone()))))
                    }
                    imbl::ordmap::DiffItem::Update { .. } => {}
                    imbl::ordmap::DiffItem::Add(_, v) => out.push((None, Some(wrap(v.as_ref().clone())))),
                    imbl::ordmap::DiffItem::Remove(_, v) => out.push((Some(wrap(v.as_ref().clone())), None)),
                }
            }
        }
        let mut out = Vec::new();
        for f in families {
            match f {
                F::Environment => {
                    if older.environment != self.environment {
                        let w = |e: &Option<Arc<Environment>>| e.as_ref().map(|e| Record::Environment((**e).clone()));
                        out.push((w(&older.environment), w(&self.environment)));
                    }
                }
                F::Host => table(&older.hosts, &self.hosts, Record::Host, &mut out),
                F::Stack => table(&older.stacks, &self.stacks, Record::Stack, &mut out),
                F::Service => table(&older.services, &self.services, Record::Service, &mut out),
                F::Container => table(&older.containers, &self.containers, Record::Container, &mut out),
                F::Status => table(&older.statuses, &self.statuses, Record::Status, &mut out),
                F::Health => table(&older.healths, &self.healths, Record::Health, &mut out),
                F::Volume => table(&older.volumes, &self.volumes, Record::Volume, &mut out),
                F::Certificate => table(&older.certificates, &self.certificates, Record::Certificate, &mut out),
                F::Fqdn => table(&older.fqdns, &self.fqdns, Record::Fqdn, &mut out),
                F::Lease => table(&older.leases, &self.leases, Record::Lease, &mut out),
                F::LbStatus => table(&older.lb_statuses, &self.lb_statuses, Record::LbStatus, &mut out),
            }
        }
        out
    }

    /// Whether any record of `families` differs (see [`Snapshot::changes_since`]).
    pub fn differs_from(&self, older: &Snapshot, families: &[crate::keys::Family]) -> bool {
        !self.changes_since(older, families).is_empty()
    }

    /// Every record, in key order, with its key (what `event-bus state dump` prints).
    pub fn records(&self) -> Vec<(Key, Record)> {
        let mut out = Vec::new();
        let mut push = |r: Record| out.push((Key { family: r.family(), id: r.id().to_string() }, r));
        self.environment.iter().for_each(|d| push(Record::Environment((**d).clone())));
        self.hosts.values().for_each(|d| push(Record::Host((**d).clone())));
        self.stacks.values().for_each(|d| push(Record::Stack((**d).clone())));
        self.services.values().for_each(|d| push(Record::Service((**d).clone())));
        self.containers.values().for_each(|d| push(Record::Container((**d).clone())));
        self.statuses.values().for_each(|d| push(Record::Status((**d).clone())));
        self.healths.values().for_each(|d| push(Record::Health((**d).clone())));
        self.volumes.values().for_each(|d| push(Record::Volume((**d).clone())));
        self.certificates.values().for_each(|d| push(Record::Certificate((**d).clone())));
        self.fqdns.values().for_each(|d| push(Record::Fqdn((**d).clone())));
        self.leases.values().for_each(|d| push(Record::Lease((**d).clone())));
        self.lb_statuses.values().for_each(|d| push(Record::LbStatus((**d).clone())));
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    pub(crate) fn set_version(&mut self, v: u64) {
        self.version = self.version.max(v);
    }

    pub(crate) fn mark_invalid(&mut self, key: &Key, reason: String) {
        self.invalid.insert(key.to_string(), reason);
    }

    /// A snapshot holding `records` at `version`: what components' pure tests build their
    /// input from, without NATS.
    pub fn from_records(version: u64, records: impl IntoIterator<Item = Record>) -> Snapshot {
        let mut s = Snapshot { version, ..Default::default() };
        for r in records {
            let key = Key { family: r.family(), id: r.id().to_string() };
            s.apply(&key, Some(r));
        }
        s
    }

    /// Applies one change: `Some(record)` is a put, `None` a delete. (The cache calls this for
    /// every change it reads; it is public so tests and benchmarks can build snapshots.)
    pub fn apply(&mut self, key: &Key, new: Option<Record>) {
        if !self.invalid.is_empty() {
            self.invalid.remove(&key.to_string());
        }
        let id = key.id.as_str();
        match new {
            None => self.remove(key),
            Some(Record::Environment(d)) => self.environment = Some(Arc::new(d)),
            Some(Record::Host(d)) => {
                self.remove(key);
                multi_add(&mut self.host_by_name, Some(&lc(&d.name)), id);
                self.hosts.insert(id.to_string(), Arc::new(d));
            }
            Some(Record::Stack(d)) => {
                self.remove(key);
                multi_add(&mut self.stack_by_name, Some(&lc(&d.name)), id);
                self.stacks.insert(id.to_string(), Arc::new(d));
            }
            Some(Record::Service(d)) => {
                self.remove(key);
                multi_add(&mut self.service_by_name, Some(&(d.stack_uuid.clone(), lc(&d.name))), id);
                multi_add(&mut self.services_by_stack, Some(&d.stack_uuid), id);
                self.services.insert(id.to_string(), Arc::new(d));
            }
            Some(Record::Container(d)) => {
                self.remove(key);
                multi_add(&mut self.container_by_name, Some(&lc(&d.name)), id);
                for ip in container_ips(&d) {
                    multi_add(&mut self.container_by_ip, Some(ip), id);
                }
                multi_add(&mut self.containers_by_service, d.service_uuid.as_ref(), id);
                multi_add(&mut self.containers_by_host, d.host_uuid.as_ref(), id);
                multi_add(&mut self.containers_by_stack, d.stack_uuid.as_ref(), id);
                self.containers.insert(id.to_string(), Arc::new(d));
            }
            Some(Record::Status(d)) => drop(self.statuses.insert(id.to_string(), Arc::new(d))),
            Some(Record::Health(d)) => drop(self.healths.insert(id.to_string(), Arc::new(d))),
            Some(Record::Volume(d)) => drop(self.volumes.insert(id.to_string(), Arc::new(d))),
            Some(Record::Certificate(d)) => drop(self.certificates.insert(id.to_string(), Arc::new(d))),
            Some(Record::Fqdn(d)) => drop(self.fqdns.insert(id.to_string(), Arc::new(d))),
            Some(Record::Lease(d)) => drop(self.leases.insert(id.to_string(), Arc::new(d))),
            Some(Record::LbStatus(d)) => drop(self.lb_statuses.insert(id.to_string(), Arc::new(d))),
        }
    }

    /// Removes a key and every index entry that points at it.
    fn remove(&mut self, key: &Key) {
        use crate::keys::Family as F;
        let id = key.id.as_str();
        match key.family {
            F::Environment => self.environment = None,
            F::Host => {
                if let Some(old) = self.hosts.remove(id) {
                    multi_remove(&mut self.host_by_name, Some(&lc(&old.name)), id);
                }
            }
            F::Stack => {
                if let Some(old) = self.stacks.remove(id) {
                    multi_remove(&mut self.stack_by_name, Some(&lc(&old.name)), id);
                }
            }
            F::Service => {
                if let Some(old) = self.services.remove(id) {
                    multi_remove(&mut self.service_by_name, Some(&(old.stack_uuid.clone(), lc(&old.name))), id);
                    multi_remove(&mut self.services_by_stack, Some(&old.stack_uuid), id);
                }
            }
            F::Container => {
                if let Some(old) = self.containers.remove(id) {
                    multi_remove(&mut self.container_by_name, Some(&lc(&old.name)), id);
                    for ip in container_ips(&old) {
                        multi_remove(&mut self.container_by_ip, Some(ip), id);
                    }
                    multi_remove(&mut self.containers_by_service, old.service_uuid.as_ref(), id);
                    multi_remove(&mut self.containers_by_host, old.host_uuid.as_ref(), id);
                    multi_remove(&mut self.containers_by_stack, old.stack_uuid.as_ref(), id);
                }
            }
            F::Status => drop(self.statuses.remove(id)),
            F::Health => drop(self.healths.remove(id)),
            F::Volume => drop(self.volumes.remove(id)),
            F::Certificate => drop(self.certificates.remove(id)),
            F::Fqdn => drop(self.fqdns.remove(id)),
            F::Lease => drop(self.leases.remove(id)),
            F::LbStatus => drop(self.lb_statuses.remove(id)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::fixtures;

    fn put(s: &mut Snapshot, r: Record) {
        let key = Key { family: r.family(), id: r.id().to_string() };
        s.apply(&key, Some(r));
    }

    #[test]
    fn indexes_follow_updates_and_deletes() {
        let mut s = Snapshot::default();
        put(&mut s, Record::Stack(fixtures::stack("st1", "App")));
        put(&mut s, Record::Service(fixtures::service("sv1", "st1", "Web")));
        let mut c = fixtures::container("c1", "App-Web-1", "sv1", "st1", "h1", "10.42.0.5");
        put(&mut s, Record::Container(c.clone()));

        assert_eq!(s.stack_by_name("app").unwrap().uuid, "st1");
        assert_eq!(s.service_by_name("st1", "WEB").unwrap().uuid, "sv1");
        assert_eq!(s.container_by_ip("10.42.0.5").unwrap().uuid, "c1");
        assert_eq!(s.containers_of_service("sv1").count(), 1);
        assert_eq!(s.containers_on_host("h1").count(), 1);

        // Moving the container to another host and IP re-indexes it.
        c.host_uuid = Some("h2".into());
        c.primary_ip = Some("10.42.1.9".into());
        c.ips = vec!["10.42.1.9".into()];
        put(&mut s, Record::Container(c));
        assert!(s.container_by_ip("10.42.0.5").is_none());
        assert_eq!(s.container_by_ip("10.42.1.9").unwrap().uuid, "c1");
        assert_eq!(s.containers_on_host("h1").count(), 0);
        assert_eq!(s.containers_on_host("h2").count(), 1);

        // By the Docker id its agent reports, while that container is not removed.
        assert!(s.container_by_docker_id("d0c", None).is_none());
        let mut st = fixtures::status("c1", "h2", "running");
        st.external_id = Some("d0c".into());
        put(&mut s, Record::Status(st.clone()));
        assert_eq!(s.container_by_docker_id("d0c", None).unwrap().uuid, "c1");
        assert_eq!(s.container_by_docker_id("d0c", Some("h2")).unwrap().uuid, "c1");
        assert!(s.container_by_docker_id("d0c", Some("h1")).is_none());
        st.state = "removed".into();
        put(&mut s, Record::Status(st));
        assert!(s.container_by_docker_id("d0c", None).is_none());

        let before = s.clone();
        s.apply(&"container.c1".parse().unwrap(), None);
        assert!(s.container_by_name("app-web-1").is_none());
        assert_eq!(s.containers_of_service("sv1").count(), 0);
        // An older snapshot is untouched by changes to a newer one.
        assert_eq!(before.containers_of_service("sv1").count(), 1);
    }

    #[test]
    fn differs_from_compares_content_not_writes() {
        use crate::keys::Family;
        let mut a = Snapshot::default();
        put(&mut a, Record::Stack(fixtures::stack("s1", "app")));
        put(&mut a, Record::Container(fixtures::container("c1", "app-web-1", "sv1", "s1", "h1", "10.42.0.2")));
        let mut b = a.clone();
        put(&mut b, Record::Stack(fixtures::stack("s1", "app"))); // the same document again
        assert!(!b.differs_from(&a, Family::ALL));
        put(
            &mut b,
            Record::Lease(crate::model::Lease {
                role: "x".into(),
                holder: "h".into(),
                expires_at_ms: 1,
                extra: Default::default(),
            }),
        );
        assert!(!b.differs_from(&a, &[Family::Stack, Family::Container]), "other families are not looked at");
        assert!(b.differs_from(&a, &[Family::Lease]));
        put(&mut b, Record::Container(fixtures::container("c1", "app-web-1", "sv1", "s1", "h2", "10.42.0.2")));
        assert!(b.differs_from(&a, &[Family::Container]));
    }

    #[test]
    fn a_shared_ip_or_name_keeps_its_other_owner() {
        let mut s = Snapshot::default();
        put(&mut s, Record::Container(fixtures::container("a", "web-1", "sv1", "st1", "h1", "10.42.0.5")));
        put(&mut s, Record::Container(fixtures::container("b", "web-1", "sv1", "st1", "h1", "10.42.0.5")));
        assert_eq!(s.container_by_ip("10.42.0.5").unwrap().uuid, "a", "the smallest id answers");
        s.apply(&"container.a".parse().unwrap(), None);
        assert_eq!(s.container_by_ip("10.42.0.5").unwrap().uuid, "b");
        assert_eq!(s.container_by_name("web-1").unwrap().uuid, "b");
        put(&mut s, Record::Stack(fixtures::stack("s1", "app")));
        put(&mut s, Record::Stack(fixtures::stack("s2", "App")));
        s.apply(&"stack.s1".parse().unwrap(), None);
        assert_eq!(s.stack_by_name("app").unwrap().uuid, "s2");
    }
}
