//! What node agents follow (the Subscribe stream): each node's pod table, with the resolver
//! settings its pods really use, and a log of changes naming the owner names whose answers changed.
//!
//! The store records one [`Change`] per published index. A subscriber holds a revision and asks
//! for what happened since ([`Feed::since`]): the changes still in the log are merged into one
//! [`Update`] for its node, or, when they are gone (or the revision is from another authority
//! instance), it gets a fresh [`Snapshot`].

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use crate::model::{ClusterState, DnsPolicy, ObjectKey, Pod};

/// Revisions carry the instance's epoch above this many generation bits.
pub const GENERATION_BITS: u32 = 40;
const GENERATION_MASK: u64 = (1 << GENERATION_BITS) - 1;
/// Changes kept for resuming subscribers.
pub const LOG_CHANGES: usize = 4096;
/// Names, subtrees and pod changes kept in the log in all (bounds its memory).
pub const LOG_WEIGHT: usize = 200_000;
/// More changed names than this in one update become "everything changed" (the zones as
/// subtrees): cheaper for an agent than evicting name by name, and the message stays small.
pub const MAX_NOTICE_NAMES: usize = 4096;
/// Kubelet keeps at most this many search domains (`MaxDNSSearchPaths`).
pub const MAX_SEARCH: usize = 32;

/// Where the node's own search domains go in a pod's search list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSearch {
    /// Not used (dnsPolicy None).
    None,
    /// First: the pod uses the node's resolv.conf (dnsPolicy Default, or ClusterFirst with
    /// hostNetwork), its dnsConfig searches after.
    Before,
    /// After the cluster's three (ClusterFirst, ClusterFirstWithHostNet).
    After,
}

/// The resolv.conf kubelet writes for a pod, as far as name expansion goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodResolver {
    /// Search domains without the node's, lower case, no trailing dot, in order.
    pub search: Vec<String>,
    pub node_search: NodeSearch,
    /// `None`: the node's resolv.conf value (dnsPolicy Default without an ndots option).
    pub ndots: Option<u8>,
}

/// The resolver settings of `pod`, following kubelet (`pkg/kubelet/network/dns`): the dnsPolicy
/// picks the base (cluster, node, or nothing), then dnsConfig searches are appended without
/// repeats and dnsConfig options override options of the same name. `cluster_domain` has no
/// trailing dot.
pub fn pod_resolver(pod: &Pod, cluster_domain: &str) -> PodResolver {
    let cluster = match pod.dns_policy {
        DnsPolicy::ClusterFirstWithHostNet => Some(true),
        DnsPolicy::ClusterFirst => Some(!pod.host_network),
        DnsPolicy::Default => Some(false),
        DnsPolicy::None => None,
    };
    let (mut search, node_search, mut ndots) = match cluster {
        Some(true) => {
            let ns = pod.namespace.to_ascii_lowercase();
            let search = vec![
                format!("{ns}.svc.{cluster_domain}"),
                format!("svc.{cluster_domain}"),
                cluster_domain.to_owned(),
            ];
            (search, NodeSearch::After, Some(5))
        }
        Some(false) => (Vec::new(), NodeSearch::Before, None),
        // The C library's default when resolv.conf sets none.
        None => (Vec::new(), NodeSearch::None, Some(1)),
    };
    if let Some(config) = &pod.dns_config {
        for s in &config.searches {
            let s = s.trim_end_matches('.').to_ascii_lowercase();
            if !s.is_empty() && !search.contains(&s) {
                search.push(s);
            }
        }
        for (name, value) in &config.options {
            if name == "ndots"
                && let Some(n) = value.as_deref().and_then(|v| v.parse::<u32>().ok())
            {
                // glibc and musl cap ndots at 15.
                ndots = Some(u8::try_from(n.min(15)).unwrap_or(15));
            }
        }
    }
    search.truncate(MAX_SEARCH);
    PodResolver { search, node_search, ndots }
}

/// One address of a pod on a node, as agents receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEntry {
    pub ip: IpAddr,
    pub namespace: String,
    pub name: String,
    pub host_network: bool,
    /// More than one pod on the node uses this address (hostNetwork pods share the node's; a
    /// finished pod's address may be reused): the entry names the first, and agents must not
    /// autopath for it.
    pub shared: bool,
    pub resolver: Arc<PodResolver>,
}

#[derive(Debug, Clone, PartialEq)]
struct Member {
    host_network: bool,
    resolver: Arc<PodResolver>,
}

/// The pods using each address of one node.
type NodeTable = BTreeMap<IpAddr, BTreeMap<ObjectKey, Member>>;

fn entry_of(ip: IpAddr, members: Option<&BTreeMap<ObjectKey, Member>>) -> Option<Arc<PodEntry>> {
    let members = members?;
    let ((namespace, name), m) = members.iter().next()?;
    Some(Arc::new(PodEntry {
        ip,
        namespace: namespace.clone(),
        name: name.clone(),
        host_network: m.host_network,
        shared: members.len() > 1,
        resolver: Arc::clone(&m.resolver),
    }))
}

/// Where a pod is in the node tables: only pods placed on a node that may still send queries
/// (Pending or Running, terminating included: they query until they stop).
fn placements(pod: &Pod) -> impl Iterator<Item = (&str, IpAddr)> {
    let node = pod.node_name.as_deref().filter(|_| pod.is_present());
    node.into_iter().flat_map(|n| pod.ips.iter().map(move |ip| (n, *ip)))
}

/// A change of one address in one node's table; `entry` `None` means the address is gone.
#[derive(Debug, Clone, PartialEq)]
pub struct PodChange {
    pub node: Arc<str>,
    pub ip: IpAddr,
    pub entry: Option<Arc<PodEntry>>,
}

/// What one published index changed.
#[derive(Debug)]
pub struct Change {
    pub generation: u64,
    pub published: Instant,
    /// Owner names whose records changed (lower case, absolute).
    pub names: Vec<String>,
    /// Everything at or below these may have changed.
    pub subtrees: Vec<String>,
    /// The authoritative zones, when they changed.
    pub zones: Option<Vec<String>>,
    pub pods: Vec<PodChange>,
}

impl Change {
    fn weight(&self) -> usize {
        1 + self.names.len() + self.subtrees.len() + self.pods.len()
    }
}

/// Everything an agent needs to start from nothing.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    pub revision: u64,
    pub pods: Vec<Arc<PodEntry>>,
    pub zones: Vec<String>,
}

/// The changes since a revision, merged for one node.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Update {
    /// The revision the update brings the agent to.
    pub revision: u64,
    pub upserted: Vec<Arc<PodEntry>>,
    pub removed: Vec<IpAddr>,
    pub names: BTreeSet<String>,
    pub subtrees: BTreeSet<String>,
    pub zones: Option<Vec<String>>,
    /// When the oldest change merged in was published (for send-lag metrics).
    pub oldest: Option<Instant>,
}

impl Update {
    /// Nothing for the agent to do (only its revision would move).
    pub fn is_empty(&self) -> bool {
        self.upserted.is_empty()
            && self.removed.is_empty()
            && self.names.is_empty()
            && self.subtrees.is_empty()
            && self.zones.is_none()
    }

    /// Whether the update tells the agent to evict anything.
    pub fn has_notice(&self) -> bool {
        !self.names.is_empty() || !self.subtrees.is_empty()
    }
}

/// The revision cannot be resumed from: send a snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap;

/// What the store hands the feed with each publication.
pub(crate) enum Pending<'s> {
    /// A first complete cluster: tables rebuilt from it, the log emptied (resumes get snapshots).
    Reset(&'s ClusterState),
    /// Changed owner names and the pods whose objects changed: `(key, before, after)`.
    Changes { names: BTreeSet<String>, pods: Vec<(ObjectKey, Option<Pod>, Option<Pod>)> },
    /// New zone settings, same cluster: anything in the zones may have changed.
    Everything,
}

pub struct Feed {
    epoch: u64,
    generation: u64,
    cluster_domain: String,
    zones: Vec<String>,
    nodes: HashMap<Arc<str>, NodeTable>,
    log: VecDeque<Arc<Change>>,
    weight: usize,
}

impl Feed {
    /// `cluster_domain` without trailing dot; `zones` of the empty index.
    pub(crate) fn new(cluster_domain: String, zones: Vec<String>) -> Self {
        // A random epoch per instance: a revision from another authority (or an earlier run of
        // this one) never resumes here.
        let random = RandomState::new().hash_one(Instant::now());
        let epoch = random % ((1 << (64 - GENERATION_BITS)) - 1) + 1;
        Self {
            epoch,
            generation: 0,
            cluster_domain,
            zones,
            nodes: HashMap::new(),
            log: VecDeque::new(),
            weight: 0,
        }
    }

    fn revision_of(&self, generation: u64) -> u64 {
        self.epoch << GENERATION_BITS | (generation & GENERATION_MASK)
    }

    /// The revision of the last published index.
    pub fn revision(&self) -> u64 {
        self.revision_of(self.generation)
    }

    pub fn zones(&self) -> &[String] {
        &self.zones
    }

    /// Nodes with at least one pod address.
    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The pod table of `node` at the current revision.
    pub fn snapshot(&self, node: &str) -> Snapshot {
        let pods = self
            .nodes
            .get(node)
            .map(|t| t.iter().filter_map(|(ip, m)| entry_of(*ip, Some(m))).collect())
            .unwrap_or_default();
        Snapshot { revision: self.revision(), pods, zones: self.zones.clone() }
    }

    /// What changed for `node` after `revision`, or [`Gap`] when that is no longer known.
    pub fn since(&self, revision: u64, node: &str) -> Result<Update, Gap> {
        if revision >> GENERATION_BITS != self.epoch {
            return Err(Gap);
        }
        let from = revision & GENERATION_MASK;
        if from > self.generation {
            return Err(Gap);
        }
        let mut update = Update { revision: self.revision(), ..Update::default() };
        if from == self.generation {
            return Ok(update);
        }
        let first = self.log.front().map_or(u64::MAX, |c| c.generation);
        if first > from + 1 {
            return Err(Gap);
        }
        let skip = usize::try_from(from + 1 - first).map_err(|_| Gap)?;
        let mut pods: BTreeMap<IpAddr, Option<Arc<PodEntry>>> = BTreeMap::new();
        for change in self.log.iter().skip(skip) {
            update.oldest.get_or_insert(change.published);
            for p in change.pods.iter().filter(|p| &*p.node == node) {
                pods.insert(p.ip, p.entry.clone());
            }
            update.names.extend(change.names.iter().cloned());
            update.subtrees.extend(change.subtrees.iter().cloned());
            if let Some(z) = &change.zones {
                update.zones = Some(z.clone());
            }
        }
        for (ip, entry) in pods {
            match entry {
                Some(e) => update.upserted.push(e),
                None => update.removed.push(ip),
            }
        }
        if update.names.len() > MAX_NOTICE_NAMES {
            update.names.clear();
            update.subtrees.extend(self.zones.iter().cloned());
        }
        Ok(update)
    }

    /// Records the publication of `generation`, whose index serves `zones`.
    pub(crate) fn record(&mut self, generation: u64, zones: Vec<String>, pending: Pending<'_>) {
        self.generation = generation;
        let mut subtrees: Vec<String> = Vec::new();
        let zones_changed = zones != self.zones;
        if zones_changed {
            // A zone that appears was answered by upstreams until now; one that goes was ours.
            subtrees.extend(zones.iter().filter(|z| !self.zones.contains(z)).cloned());
            subtrees.extend(self.zones.iter().filter(|z| !zones.contains(z)).cloned());
            self.zones = zones;
        }
        let mut pod_changes = Vec::new();
        let names = match pending {
            Pending::Reset(state) => {
                self.nodes.clear();
                for pod in state.pods.values() {
                    self.place(pod, &mut Vec::new());
                }
                self.log.clear();
                self.weight = 0;
                return;
            }
            Pending::Changes { names, pods } => {
                for (key, before, after) in pods {
                    self.move_pod(&key, before.as_ref(), after.as_ref(), &mut pod_changes);
                }
                names
            }
            Pending::Everything => {
                subtrees.extend(self.zones.iter().cloned());
                BTreeSet::new()
            }
        };
        let names: Vec<String> = if names.len() > MAX_NOTICE_NAMES {
            subtrees.extend(self.zones.iter().cloned());
            Vec::new()
        } else {
            names.into_iter().collect()
        };
        subtrees.sort();
        subtrees.dedup();
        let change = Change {
            generation,
            published: Instant::now(),
            names,
            subtrees,
            zones: zones_changed.then(|| self.zones.clone()),
            pods: pod_changes,
        };
        self.weight += change.weight();
        self.log.push_back(Arc::new(change));
        while self.log.len() > LOG_CHANGES || (self.weight > LOG_WEIGHT && self.log.len() > 1) {
            if let Some(old) = self.log.pop_front() {
                self.weight -= old.weight();
            }
        }
    }

    fn member(&self, pod: &Pod) -> Member {
        Member { host_network: pod.host_network, resolver: Arc::new(pod_resolver(pod, &self.cluster_domain)) }
    }

    /// Adds `pod` to the tables, noting the addresses whose entry changed.
    fn place(&mut self, pod: &Pod, touched: &mut Vec<(Arc<str>, IpAddr)>) {
        let member = self.member(pod);
        for (node, ip) in placements(pod) {
            let node: Arc<str> = match self.nodes.get_key_value(node) {
                Some((k, _)) => Arc::clone(k),
                None => Arc::from(node),
            };
            let table = self.nodes.entry(Arc::clone(&node)).or_default();
            table.entry(ip).or_default().insert((pod.namespace.clone(), pod.name.clone()), member.clone());
            touched.push((node, ip));
        }
    }

    fn move_pod(
        &mut self,
        key: &ObjectKey,
        before: Option<&Pod>,
        after: Option<&Pod>,
        out: &mut Vec<PodChange>,
    ) {
        let mut touched: Vec<(Arc<str>, IpAddr)> = Vec::new();
        if let Some(pod) = before {
            for (node, ip) in placements(pod) {
                if let Some((node, _)) = self.nodes.get_key_value(node) {
                    touched.push((Arc::clone(node), ip));
                }
            }
        }
        if let Some(pod) = after {
            for (node, ip) in placements(pod) {
                let node: Arc<str> =
                    self.nodes.get_key_value(node).map_or_else(|| Arc::from(node), |(k, _)| Arc::clone(k));
                touched.push((node, ip));
            }
        }
        touched.sort();
        touched.dedup();
        let was: Vec<Option<Arc<PodEntry>>> = touched
            .iter()
            .map(|(node, ip)| entry_of(*ip, self.nodes.get(&**node).and_then(|t| t.get(ip))))
            .collect();
        if let Some(pod) = before {
            for (node, ip) in placements(pod) {
                let Some(table) = self.nodes.get_mut(node) else { continue };
                if let Some(members) = table.get_mut(&ip) {
                    members.remove(key);
                    if members.is_empty() {
                        table.remove(&ip);
                    }
                }
                if table.is_empty() {
                    self.nodes.remove(node);
                }
            }
        }
        if let Some(pod) = after {
            self.place(pod, &mut Vec::new());
        }
        for ((node, ip), was) in touched.into_iter().zip(was) {
            let now = entry_of(ip, self.nodes.get(&*node).and_then(|t| t.get(&ip)));
            if now != was {
                out.push(PodChange { node, ip, entry: now });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PodDnsConfig, PodPhase};

    fn pod(policy: DnsPolicy, host_network: bool, config: Option<PodDnsConfig>) -> Pod {
        Pod {
            namespace: "Team-A".into(),
            name: "p".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
            phase: PodPhase::Running,
            node_name: Some("n1".into()),
            hostname: None,
            subdomain: None,
            host_network,
            dns_policy: policy,
            dns_config: config,
            terminating: false,
        }
    }

    fn config(searches: &[&str], options: &[(&str, Option<&str>)]) -> Option<PodDnsConfig> {
        Some(PodDnsConfig {
            nameservers: Vec::new(),
            searches: searches.iter().map(|s| s.to_string()).collect(),
            options: options.iter().map(|(n, v)| (n.to_string(), v.map(str::to_owned))).collect(),
        })
    }

    #[test]
    fn resolver_settings_follow_kubelet() {
        use DnsPolicy as P;
        use NodeSearch::{After, Before};
        let cluster = ["team-a.svc.cluster.local", "svc.cluster.local", "cluster.local"];
        // (policy, hostNetwork, dnsConfig, search, node search, ndots)
        type Case<'a> = (DnsPolicy, bool, Option<PodDnsConfig>, Vec<&'a str>, NodeSearch, Option<u8>);
        let cases: Vec<Case> = vec![
            (P::ClusterFirst, false, None, cluster.to_vec(), After, Some(5)),
            // hostNetwork with ClusterFirst falls back to the node's resolv.conf.
            (P::ClusterFirst, true, None, vec![], Before, None),
            (P::ClusterFirstWithHostNet, true, None, cluster.to_vec(), After, Some(5)),
            (P::Default, false, None, vec![], Before, None),
            (P::None, false, None, vec![], NodeSearch::None, Some(1)),
            // dnsConfig searches are appended without repeats; ndots overrides.
            (
                P::ClusterFirst,
                false,
                config(
                    &["Extra.Example.", "svc.cluster.local", ""],
                    &[("ndots", Some("2")), ("edns0", None)],
                ),
                vec!["team-a.svc.cluster.local", "svc.cluster.local", "cluster.local", "extra.example"],
                After,
                Some(2),
            ),
            (
                P::None,
                false,
                config(&["a.example"], &[("ndots", Some("99"))]),
                vec!["a.example"],
                NodeSearch::None,
                Some(15),
            ),
            (
                P::Default,
                false,
                config(&["b.example"], &[("ndots", Some("x"))]),
                vec!["b.example"],
                Before,
                None,
            ),
        ];
        for (i, (policy, host, config, search, node_search, ndots)) in cases.into_iter().enumerate() {
            let got = pod_resolver(&pod(policy, host, config), "cluster.local");
            assert_eq!(got.search, search, "case {i}");
            assert_eq!(got.node_search, node_search, "case {i}");
            assert_eq!(got.ndots, ndots, "case {i}");
        }
    }

    #[test]
    fn search_list_is_capped() {
        let many: Vec<String> = (0..40).map(|i| format!("d{i}.example")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let got = pod_resolver(&pod(DnsPolicy::None, false, config(&refs, &[])), "cluster.local");
        assert_eq!(got.search.len(), MAX_SEARCH);
    }

    #[test]
    fn shared_addresses_and_resume_gaps() {
        let mut feed = Feed::new("cluster.local".into(), vec!["cluster.local.".into()]);
        let state = ClusterState::default();
        feed.record(1, vec!["cluster.local.".into()], Pending::Reset(&state));
        let start = feed.revision();
        let mut a = pod(DnsPolicy::ClusterFirst, true, None);
        a.name = "a".into();
        let mut b = a.clone();
        b.name = "b".into();
        let key = |p: &Pod| (p.namespace.clone(), p.name.clone());
        feed.record(
            2,
            vec!["cluster.local.".into()],
            Pending::Changes { names: BTreeSet::new(), pods: vec![(key(&a), Option::None, Some(a.clone()))] },
        );
        feed.record(
            3,
            vec!["cluster.local.".into()],
            Pending::Changes {
                names: ["x.cluster.local.".to_owned()].into(),
                pods: vec![(key(&b), Option::None, Some(b.clone()))],
            },
        );
        let snap = feed.snapshot("n1");
        assert_eq!(snap.pods.len(), 1);
        assert!(snap.pods[0].shared && snap.pods[0].name == "a");
        let update = feed.since(start, "n1").unwrap();
        assert_eq!(update.upserted, snap.pods, "merged: the last state of each address");
        assert_eq!(update.names.len(), 1);
        assert!(feed.since(start, "n2").unwrap().upserted.is_empty(), "other nodes see no pods");
        // From another instance, or from the future: snapshot.
        assert_eq!(feed.since(start ^ (1 << 50), "n1"), Err(Gap));
        assert_eq!(feed.since(feed.revision() + 1, "n1"), Err(Gap));
        // A reset empties the log.
        feed.record(4, vec!["cluster.local.".into()], Pending::Reset(&state));
        assert_eq!(feed.since(start, "n1"), Err(Gap));
        assert!(feed.snapshot("n1").pods.is_empty());
    }
}
