//! The cluster store: the one place sources write cluster objects to and the query path reads the
//! index from. Writers change the index and swap a snapshot in atomically; readers never lock.
//!
//! A whole new cluster (a file load, the end of an initial list, a relist) rebuilds the index. A
//! batch of single-object changes (watch events) patches it: each affected object's old
//! contributions are taken back and its new ones added, so a change costs time in proportion to
//! what it touches, not to the size of the cluster.
//!
//! New zone settings (a config reload: TTL, pods mode, reverse CIDRs, wildcards, NS addresses)
//! rebuild the index from the cluster held, and agents are told that everything in the zones may
//! have changed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::custom::CustomRecords;
use crate::feed::{Feed, Gap, Pending, Snapshot, Update};
use crate::index::{Contribution, Contributions, IndexStats, ZoneConfig, ZoneIndex, changed_owners};
use crate::model::{ClusterState, Kind, Object, ObjectKey, Pod, ServiceKind};

/// What one publication did, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Published {
    /// Increases by one with every index swapped in; 0 is the empty index of a new store.
    pub generation: u64,
    pub serial: u32,
    pub build_time: Duration,
    pub stats: IndexStats,
    /// Whether the index was patched in place (rather than rebuilt).
    pub incremental: bool,
}

/// One change to the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    /// Add or replace an object.
    Apply(Object),
    /// Remove an object (`namespace` is ignored for Namespaces).
    Delete { kind: Kind, namespace: String, name: String },
    /// A complete list of one kind, cluster-wide or in one namespace: every object of that kind
    /// there that it does not hold is gone.
    Replace { kind: Kind, namespace: Option<String>, objects: Vec<Object> },
}

impl Edit {
    /// Applies the edit to a cluster state (what the store does before patching its index).
    pub fn apply_to(self, state: &mut ClusterState) {
        match self {
            Edit::Apply(object) => state.apply(object),
            Edit::Delete { kind, namespace, name } => {
                state.remove(kind, &namespace, &name);
            }
            Edit::Replace { kind, namespace, objects } => {
                state.retain_kind(kind, |ns| namespace.as_deref().is_some_and(|s| s != ns));
                for object in objects {
                    state.apply(object);
                }
            }
        }
    }
}

/// The objects a batch of edits touches, whose contributions are recomputed.
#[derive(Default)]
struct Affected {
    namespaces: BTreeSet<String>,
    services: BTreeSet<ObjectKey>,
    pods: BTreeSet<ObjectKey>,
}

impl Affected {
    /// Must run before the edits are applied: a slice's old owner is affected as well.
    fn of(state: &ClusterState, edits: &[Edit]) -> Self {
        let mut a = Affected::default();
        let slice_owner = |a: &mut Affected, ns: &str, name: &str| {
            if let Some(svc) =
                state.slices.get(&(ns.to_owned(), name.to_owned())).and_then(|s| s.service.clone())
            {
                a.services.insert((ns.to_owned(), svc));
            }
        };
        for edit in edits {
            match edit {
                Edit::Apply(Object::Namespace(n)) => {
                    a.namespaces.insert(n.name.clone());
                }
                Edit::Apply(Object::Service(s)) => {
                    a.services.insert((s.namespace.clone(), s.name.clone()));
                }
                Edit::Apply(Object::EndpointSlice(s)) => {
                    slice_owner(&mut a, &s.namespace, &s.name);
                    if let Some(svc) = &s.service {
                        a.services.insert((s.namespace.clone(), svc.clone()));
                    }
                }
                Edit::Apply(Object::Pod(p)) => {
                    a.pods.insert((p.namespace.clone(), p.name.clone()));
                }
                Edit::Delete { kind, namespace, name } => match kind {
                    Kind::Namespace => {
                        a.namespaces.insert(name.clone());
                    }
                    Kind::Service => {
                        a.services.insert((namespace.clone(), name.clone()));
                    }
                    Kind::EndpointSlice => slice_owner(&mut a, namespace, name),
                    Kind::Pod => {
                        a.pods.insert((namespace.clone(), name.clone()));
                    }
                },
                Edit::Replace { kind, namespace, objects } => {
                    let in_scope = |ns: &str| namespace.as_deref().is_none_or(|s| s == ns);
                    let mut listed: HashSet<(&str, &str)> = HashSet::new();
                    for object in objects {
                        let (ns, name) = match object {
                            Object::Namespace(n) => ("", n.name.as_str()),
                            Object::Service(s) => (s.namespace.as_str(), s.name.as_str()),
                            Object::EndpointSlice(s) => (s.namespace.as_str(), s.name.as_str()),
                            Object::Pod(p) => (p.namespace.as_str(), p.name.as_str()),
                        };
                        listed.insert((ns, name));
                        if !state.holds(object) {
                            a.extend(&[Edit::Apply(object.clone())], state);
                        }
                    }
                    let gone: Vec<Edit> = state
                        .keys(*kind)
                        .filter(|(ns, name)| {
                            let scope = if *kind == Kind::Namespace { name } else { ns };
                            in_scope(scope) && !listed.contains(&(ns, name))
                        })
                        .map(|(ns, name)| Edit::Delete {
                            kind: *kind,
                            namespace: ns.to_owned(),
                            name: name.to_owned(),
                        })
                        .collect();
                    a.extend(&gone, state);
                }
            }
        }
        a
    }

    fn extend(&mut self, edits: &[Edit], state: &ClusterState) {
        let more = Affected::of(state, edits);
        self.namespaces.extend(more.namespaces);
        self.services.extend(more.services);
        self.pods.extend(more.pods);
    }

    /// Every object that differs between two states.
    fn between(old: &ClusterState, new: &ClusterState) -> Self {
        fn differing<'m, K: Ord + Clone, V: PartialEq>(
            a: &'m BTreeMap<K, V>,
            b: &'m BTreeMap<K, V>,
        ) -> impl Iterator<Item = &'m K> {
            let changed = a.iter().filter(|(k, v)| b.get(k) != Some(v)).map(|(k, _)| k);
            changed.chain(b.keys().filter(|k| !a.contains_key(k)))
        }
        let mut a = Affected::default();
        a.namespaces.extend(differing(&old.namespaces, &new.namespaces).cloned());
        a.services.extend(differing(&old.services, &new.services).cloned());
        for key in differing(&old.slices, &new.slices) {
            for state in [old, new] {
                if let Some(svc) = state.slices.get(key).and_then(|s| s.service.clone()) {
                    a.services.insert((key.0.clone(), svc));
                }
            }
        }
        a.pods.extend(differing(&old.pods, &new.pods).cloned());
        a
    }

    fn pods(&self, state: &ClusterState) -> BTreeMap<ObjectKey, Pod> {
        self.pods.iter().filter_map(|k| Some((k.clone(), state.pods.get(k)?.clone()))).collect()
    }

    fn contributions(&self, state: &ClusterState, c: &Contributions<'_>) -> Vec<Contribution> {
        let mut out = Vec::new();
        for ns in &self.namespaces {
            if let Some(n) = state.namespaces.get(ns) {
                out.extend(c.namespace(n));
            }
        }
        for key in &self.services {
            if let Some(svc) = state.services.get(key) {
                let slices: Vec<_> = state
                    .slices
                    .range((key.0.clone(), String::new())..)
                    .take_while(|((ns, _), _)| *ns == key.0)
                    .map(|(_, s)| s)
                    .filter(|s| s.service.as_deref() == Some(key.1.as_str()))
                    .collect();
                out.extend(c.service(svc, &slices));
            }
        }
        for key in &self.pods {
            if let Some(pod) = state.pods.get(key) {
                out.extend(c.pod(pod));
            }
        }
        out
    }

    /// Addresses the affected objects hold now (to see whether derived reverse zones still cover them).
    fn addresses<'s>(&self, state: &'s ClusterState) -> Vec<&'s IpAddr> {
        let mut out = Vec::new();
        for key in &self.services {
            if let Some(svc) = state.services.get(key)
                && let ServiceKind::ClusterIp(ips) = &svc.kind
            {
                out.extend(ips);
            }
            let in_ns =
                state.slices.range((key.0.clone(), String::new())..).take_while(|((ns, _), _)| *ns == key.0);
            for (_, slice) in in_ns.filter(|(_, s)| s.service.as_deref() == Some(key.1.as_str())) {
                out.extend(slice.endpoints.iter().flat_map(|e| &e.addresses));
            }
        }
        for key in &self.pods {
            if let Some(pod) = state.pods.get(key) {
                out.extend(&pod.ips);
            }
        }
        out
    }
}

struct Inner {
    state: ClusterState,
    /// The index being changed; snapshots of it are published (they share unchanged nodes).
    working: ZoneIndex,
    /// The custom records every full build includes.
    custom: Arc<CustomRecords>,
}

/// What a batch of edits changes, taken before it is applied.
struct Before {
    affected: Affected,
    contributions: Vec<Contribution>,
    pods: BTreeMap<ObjectKey, Pod>,
}

pub struct ClusterStore {
    /// Written only with the state lock held (by [`ClusterStore::reconfigure`]).
    config: ArcSwap<ZoneConfig>,
    inner: Mutex<Inner>,
    index: ArcSwap<ZoneIndex>,
    generation: watch::Sender<u64>,
    synced: AtomicBool,
    /// Node pod tables and the change log. Its own lock, taken only briefly, so subscribers never
    /// wait for an index build.
    feed: RwLock<Feed>,
}

fn zone_names(index: &ZoneIndex) -> Vec<String> {
    index.zones().map(|(apex, _)| apex.to_ascii()).collect()
}

impl ClusterStore {
    pub fn new(config: ZoneConfig) -> Arc<Self> {
        let index = ZoneIndex::empty(&config);
        let domain = config.cluster_domain.to_lowercase().to_ascii();
        let feed = Feed::new(domain.trim_end_matches('.').to_owned(), zone_names(&index));
        Arc::new(Self {
            inner: Mutex::new(Inner {
                state: ClusterState::default(),
                working: index.clone(),
                custom: Arc::default(),
            }),
            config: ArcSwap::from_pointee(config),
            index: ArcSwap::from_pointee(index),
            generation: watch::channel(0).0,
            synced: AtomicBool::new(false),
            feed: RwLock::new(feed),
        })
    }

    pub fn config(&self) -> Arc<ZoneConfig> {
        self.config.load_full()
    }

    /// Serves the cluster with new zone settings: the index is rebuilt from the cluster held and
    /// published with a notice that everything in the zones may have changed (a new TTL changes
    /// every record; a pods mode or wildcards change, answers no record names), so agents drop
    /// the cluster answers they cached. The cluster domain is kept: agents route by it and the
    /// feed's pod search lists are built with it. Returns `None` when nothing changed, or when no
    /// complete cluster is loaded yet (the first one is built with the new settings).
    pub fn reconfigure(&self, mut config: ZoneConfig) -> Option<Published> {
        let started = Instant::now();
        let mut inner = self.lock();
        let current = self.config.load_full();
        config.cluster_domain = current.cluster_domain.clone();
        if *current == config {
            return None;
        }
        self.config.store(Arc::new(config));
        let config = self.config.load_full();
        if !self.is_synced() {
            inner.working = ZoneIndex::empty(&config);
            self.index.store(Arc::new(inner.working.clone()));
            return None;
        }
        inner.working = ZoneIndex::build_with(&inner.state, &config, &inner.custom, self.next_serial());
        let index = Arc::new(inner.working.clone());
        Some(self.publish(index, false, started, false, Pending::Everything))
    }

    /// The current index. Cheap: one atomic load and a reference count.
    pub fn index(&self) -> Arc<ZoneIndex> {
        self.index.load_full()
    }

    /// Whether a source has delivered a complete cluster at least once. Until then the store
    /// serves only the fixed records and `/ready` must stay false.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Notifies on every index swapped in (the value is the generation). The feed already holds
    /// the change when the notification arrives.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The revision of the current index: the generation, tagged with this instance's epoch so
    /// revisions of different authority instances never match.
    pub fn revision(&self) -> u64 {
        self.feed().revision()
    }

    /// The pod table of `node` and the zones, at the current revision.
    pub fn node_snapshot(&self, node: &str) -> Snapshot {
        self.feed().snapshot(node)
    }

    /// What changed for `node` after `revision` (see [`Feed::since`]).
    pub fn changes_since(&self, revision: u64, node: &str) -> Result<Update, Gap> {
        self.feed().since(revision, node)
    }

    /// Nodes with at least one pod address in the tables.
    pub fn node_count(&self) -> usize {
        self.feed().node_count()
    }

    /// Object counts per kind of the current state.
    pub fn counts(&self) -> [(Kind, usize); 4] {
        self.lock().state.counts()
    }

    /// Replaces the whole cluster (a file reload) and marks the store synced. Returns `None` when
    /// nothing changed, so no index is rebuilt.
    pub fn replace(&self, objects: Vec<Object>) -> Option<Published> {
        self.replace_state(ClusterState::from_objects(objects))
    }

    /// [`ClusterStore::replace`] with a state assembled elsewhere (the end of an initial list).
    pub fn replace_state(&self, new: ClusterState) -> Option<Published> {
        let started = Instant::now();
        let mut inner = self.lock();
        if !self.is_synced() {
            // The first complete cluster: no agent follows an earlier one, so no diff.
            inner.state = new;
            inner.working =
                ZoneIndex::build_with(&inner.state, &self.config.load(), &inner.custom, self.next_serial());
            let index = Arc::new(inner.working.clone());
            return Some(self.publish(index, true, started, false, Pending::Reset(&inner.state)));
        }
        if inner.state == new {
            return None;
        }
        let affected = Affected::between(&inner.state, &new);
        let before = self.before(&inner, affected);
        inner.state = new;
        Some(self.finish(&mut inner, before, true, started))
    }

    /// Serves new custom records (`--custom-records`): the index is rebuilt with them and agents
    /// are told the owner names whose records changed; zones that appear or go reach them with
    /// the new zone list (the feed sees the index's zones change). Returns `None` when the
    /// records are the ones served, or when no complete cluster is loaded yet (the first one is
    /// built with them).
    pub fn set_custom(&self, custom: Arc<CustomRecords>) -> Option<Published> {
        let started = Instant::now();
        let mut inner = self.lock();
        if inner.custom == custom {
            return None;
        }
        let (old, new) = (inner.custom.by_owner(), custom.by_owner());
        let changed = old.iter().filter(|(owner, records)| new.get(*owner) != Some(records));
        let added = new.keys().filter(|owner| !old.contains_key(*owner));
        let names: BTreeSet<String> = changed.map(|(owner, _)| owner).chain(added).cloned().collect();
        drop((old, new));
        inner.custom = custom;
        if !self.is_synced() {
            return None;
        }
        let serial = self.next_serial();
        inner.working = ZoneIndex::build_with(&inner.state, &self.config.load(), &inner.custom, serial);
        let index = Arc::new(inner.working.clone());
        Some(self.publish(index, false, started, false, Pending::Changes { names, pods: Vec::new() }))
    }

    /// Applies a batch of changes: patched in place when every edit is about single objects,
    /// rebuilt when a whole kind is replaced or a new address falls outside the reverse zones
    /// derived so far. Either way the feed learns exactly which owner names and pods changed.
    pub fn edit(&self, edits: Vec<Edit>) -> Published {
        let started = Instant::now();
        let mut inner = self.lock();
        let replace = edits.iter().any(|e| matches!(e, Edit::Replace { .. }));
        let before = self.before(&inner, Affected::of(&inner.state, &edits));
        for e in edits {
            e.apply_to(&mut inner.state);
        }
        let uncovered = self.config.load().reverse_cidrs.is_none()
            && before.affected.addresses(&inner.state).iter().any(|ip| !inner.working.covers(ip));
        self.finish(&mut inner, before, replace || uncovered, started)
    }

    fn before(&self, inner: &Inner, affected: Affected) -> Before {
        let config = self.config.load();
        let contributions = Contributions::new(&config, &inner.working.reverse_cidrs);
        Before {
            contributions: affected.contributions(&inner.state, &contributions),
            pods: affected.pods(&inner.state),
            affected,
        }
    }

    /// With `inner.state` changed: rebuilds or patches the index, then publishes the change.
    fn finish(&self, inner: &mut Inner, mut before: Before, rebuild: bool, started: Instant) -> Published {
        let serial = self.next_serial();
        let config = self.config.load();
        if rebuild {
            inner.working = ZoneIndex::build_with(&inner.state, &config, &inner.custom, serial);
        }
        let reverse = inner.working.reverse_cidrs.clone();
        let contributions = Contributions::new(&config, &reverse);
        let new = before.affected.contributions(&inner.state, &contributions);
        let names: BTreeSet<String> = if rebuild {
            changed_owners(&before.contributions, &new)
        } else {
            inner.working.patch(&before.contributions, &new, serial)
        };
        let pods = before
            .affected
            .pods
            .iter()
            .map(|k| (k.clone(), before.pods.remove(k), inner.state.pods.get(k).cloned()))
            .collect();
        let index = Arc::new(inner.working.clone());
        self.publish(index, false, started, !rebuild, Pending::Changes { names, pods })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves a consistent state (every change is a whole
        // insert/remove), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn feed(&self) -> RwLockReadGuard<'_, Feed> {
        self.feed.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn feed_mut(&self) -> RwLockWriteGuard<'_, Feed> {
        self.feed.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// SOA serials only grow (RFC 1982): seconds since the epoch, or one more than the last.
    fn next_serial(&self) -> u32 {
        let previous = self.index.load().serial();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        u32::try_from(now).unwrap_or(u32::MAX).max(previous.wrapping_add(1))
    }

    /// Swaps in `index`, marks the store synced if `synced`, records the change in the feed,
    /// then notifies: whoever wakes on the new generation sees the index, the readiness it
    /// implies and the change.
    fn publish(
        &self,
        index: Arc<ZoneIndex>,
        synced: bool,
        started: Instant,
        incremental: bool,
        pending: Pending<'_>,
    ) -> Published {
        let stats = index.stats();
        let serial = index.serial();
        let zones = zone_names(&index);
        self.index.store(index);
        if synced {
            self.synced.store(true, Ordering::Release);
        }
        // Writers are serialised by the state lock, so the next generation is known here.
        let generation = *self.generation.borrow() + 1;
        self.feed_mut().record(generation, zones, pending);
        self.generation.send_replace(generation);
        Published { generation, serial, build_time: started.elapsed(), stats, incremental }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::{Name, RecordType};

    #[test]
    fn new_zone_settings_rebuild_the_index_and_tell_agents_everything_changed() {
        let text =
            "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {clusterIP: 10.0.0.1}\n";
        let store = ClusterStore::new(ZoneConfig::default());
        let ttl9 = ZoneConfig { ttl: 9, ..ZoneConfig::default() };
        assert!(store.reconfigure(ttl9.clone()).is_none(), "nothing loaded: nothing to publish");
        store.replace(crate::file::parse_cluster(text).unwrap().objects).unwrap();
        let name = Name::from_ascii("s.a.svc.cluster.local.").unwrap();
        let ttl = |store: &ClusterStore| store.index().lookup(&name, RecordType::A).unwrap().answers[0].ttl;
        assert_eq!(ttl(&store), 9, "the first cluster is built with the settings given before it");
        let revision = store.revision();
        assert!(store.reconfigure(ttl9).is_none(), "the same settings change nothing");

        let other_domain = Name::from_ascii("other.local.").unwrap();
        let p =
            store.reconfigure(ZoneConfig { ttl: 30, cluster_domain: other_domain, ..ZoneConfig::default() });
        assert!(p.is_some_and(|p| !p.incremental));
        assert_eq!(ttl(&store), 30);
        assert_eq!(store.config().cluster_domain.to_ascii(), "cluster.local.", "the cluster domain stays");
        let update = store.changes_since(revision, "node-1").unwrap();
        assert!(update.subtrees.contains("cluster.local."), "{update:?}");
    }

    #[test]
    fn new_custom_records_name_their_owners_and_announce_their_zones() {
        let store = ClusterStore::new(ZoneConfig::default());
        let domain = store.config().cluster_domain.clone();
        let custom = |text: &str| Arc::new(crate::custom::parse_custom(text, &domain, 5).unwrap());
        let first = custom("a.cluster.local. A 10.9.0.1\n");
        assert!(store.set_custom(Arc::clone(&first)).is_none(), "nothing loaded: kept for the first build");
        store.replace(Vec::new()).unwrap();
        let a = Name::from_ascii("a.cluster.local.").unwrap();
        assert_eq!(store.index().lookup(&a, RecordType::A).unwrap().answers.len(), 1);
        assert!(store.set_custom(first).is_none(), "the same records change nothing");

        let revision = store.revision();
        let p = store.set_custom(custom(
            "a.cluster.local. A 10.9.0.1\nb.cluster.local. A 10.9.0.2\n$ORIGIN corp.example.\nwww A 192.0.2.1\n",
        ));
        assert!(p.is_some_and(|p| !p.incremental));
        let update = store.changes_since(revision, "node-1").unwrap();
        let names: Vec<&str> = update.names.iter().map(String::as_str).collect();
        assert_eq!(names, ["b.cluster.local.", "www.corp.example."], "a.cluster.local. did not change");
        let zones = update.zones.expect("the zone list changed");
        assert!(zones.contains(&"corp.example.".to_owned()) && zones.contains(&"cluster.local.".to_owned()));
        assert!(update.subtrees.contains("corp.example."), "answers cached from upstreams go");

        let revision = store.revision();
        store.set_custom(custom("")).unwrap();
        let update = store.changes_since(revision, "node-1").unwrap();
        assert!(update.names.contains("a.cluster.local."), "{update:?}");
        assert!(!update.zones.unwrap().contains(&"corp.example.".to_owned()));
        assert!(store.index().lookup(&a, RecordType::A).unwrap().answers.is_empty());
    }
}
