//! The zone index: every record of the cluster zone, the reverse zones and the custom records'
//! zones, built from a [`ClusterState`] (and [`CustomRecords`]) whenever they change, so a lookup
//! is a walk of a few hash maps instead of a scan of objects.
//!
//! Each zone is a tree of lower-cased labels below its apex. A node that exists with no records is an
//! empty non-terminal, so NXDOMAIN versus NODATA (RFC 2308 §2) falls out of the tree's shape.
//!
//! Every object contributes a list of records and pinned names ([`Contribution`]); a full build
//! adds them all, and a change to one object takes back its old contributions and adds its new
//! ones, copying only the tree paths it touches, so a change costs microseconds, not a rebuild.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;

use crate::custom::{CustomRecords, CustomZone};
use crate::model::{ClusterState, Endpoint, EndpointSlice, Namespace, Pod, Port, Service, ServiceKind};

/// How `<dashed-ip>.<ns>.pod.<zone>` names are answered (CoreDNS `pods`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PodsMode {
    /// Only if a present pod in that namespace has the IP.
    #[default]
    Verified,
    /// Any well-formed dashed IP in an existing namespace.
    Insecure,
    /// Never.
    Disabled,
}

impl FromStr for PodsMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "verified" => Ok(Self::Verified),
            "insecure" => Ok(Self::Insecure),
            "disabled" => Ok(Self::Disabled),
            other => Err(format!("{other:?} is not one of verified, insecure, disabled")),
        }
    }
}

/// Settings that shape the zone: everything the index needs besides the cluster itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneConfig {
    /// The cluster domain, absolute (`cluster.local.`).
    pub cluster_domain: Name,
    /// TTL of every synthesized record, of the SOA and of negative answers (SOA MINIMUM).
    pub ttl: u32,
    pub pods: PodsMode,
    /// PTR answers only inside these; `None` derives them from the addresses seen (IPv4 /16 and
    /// IPv6 /64 around each service, endpoint and pod address).
    pub reverse_cidrs: Option<Vec<IpNet>>,
    /// Treat a `*` label as a wildcard (kube-dns style); off by default, where `*` is literal.
    pub wildcards: bool,
    /// Addresses of `ns.dns.<zone>`, the target of the apex NS record.
    pub ns_addresses: Vec<IpAddr>,
    /// Name an endpoint without a hostname after its pod (CoreDNS `endpoint_pod_names`) rather
    /// than its dashed address, when the pod's name is a single DNS label.
    pub endpoint_pod_names: bool,
}

impl Default for ZoneConfig {
    fn default() -> Self {
        Self {
            cluster_domain: Name::from_ascii("cluster.local.").expect("static name"),
            ttl: 5,
            pods: PodsMode::Verified,
            reverse_cidrs: None,
            wildcards: false,
            ns_addresses: Vec::new(),
            endpoint_pod_names: false,
        }
    }
}

/// TTL of the `dns-version` TXT record (spec §2.2 example; CoreDNS agrees).
pub const DNS_VERSION_TTL: u32 = 28800;
/// Kubernetes DNS schema version served in `dns-version.<zone>`.
pub const SCHEMA_VERSION: &str = "1.1.0";

/// Record data as the index keeps it: 24 bytes instead of hickory's 184-byte `RData`, with
/// target names shared between the records that point at them (SRV, PTR). Turned into `RData`
/// only for the records of an answer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Data {
    A(Ipv4Addr),
    Aaaa(Ipv6Addr),
    /// The target of a CNAME, PTR or NS record (the rrset's type says which).
    Name(Arc<Name>),
    Srv {
        weight: u16,
        port: u16,
        target: Arc<Name>,
    },
    /// Anything rare (SOA, TXT).
    Other(Box<RData>),
}

impl Data {
    pub(crate) fn to_rdata(&self, rtype: RecordType) -> RData {
        match self {
            Data::A(ip) => RData::A(A(*ip)),
            Data::Aaaa(ip) => RData::AAAA(AAAA(*ip)),
            Data::Name(n) => match rtype {
                RecordType::PTR => RData::PTR(PTR(Name::clone(n))),
                RecordType::NS => RData::NS(NS(Name::clone(n))),
                _ => RData::CNAME(CNAME(Name::clone(n))),
            },
            Data::Srv { weight, port, target } => {
                RData::SRV(SRV::new(0, *weight, *port, Name::clone(target)))
            }
            Data::Other(d) => RData::clone(d),
        }
    }

    /// The index's form of any record data.
    pub(crate) fn from_rdata(data: &RData) -> Self {
        match data {
            RData::A(a) => Data::A(a.0),
            RData::AAAA(a) => Data::Aaaa(a.0),
            RData::CNAME(n) => Data::Name(Arc::new(n.0.clone())),
            RData::NS(n) => Data::Name(Arc::new(n.0.clone())),
            RData::PTR(n) => Data::Name(Arc::new(n.0.clone())),
            other => Data::Other(Box::new(other.clone())),
        }
    }

    /// The name this record points at (CNAME/PTR/NS target, SRV target).
    pub(crate) fn target(&self) -> Option<&Name> {
        match self {
            Data::Name(n) | Data::Srv { target: n, .. } => Some(n),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RrSet {
    pub(crate) rtype: RecordType,
    pub(crate) ttl: u32,
    pub(crate) data: Vec<Data>,
    /// How many objects contribute each record (`refs[i]` for `data[i]`): two pods on one
    /// address, one PTR target named by two services.
    refs: Vec<u32>,
}

type Children = HashMap<Box<[u8]>, Arc<Node>>;

/// A name in a zone. Owners are not stored: a lookup knows the name it walked. Nodes are shared
/// between snapshots; a change copies only the path it touches (copy-on-write).
#[derive(Debug, Default, Clone)]
pub(crate) struct Node {
    /// Most nodes are leaves; they pay 8 bytes here instead of an empty map's 48.
    pub(crate) children: Option<Arc<Children>>,
    pub(crate) rrsets: Vec<RrSet>,
    /// Objects that keep this name in existence without records (a namespace's `<ns>.svc`).
    pins: u32,
}

impl Node {
    pub(crate) fn rrset(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }

    pub(crate) fn child(&self, label: &[u8]) -> Option<&Node> {
        self.children.as_ref()?.get(label).map(|c| &**c)
    }

    pub(crate) fn children(&self) -> impl Iterator<Item = (&Box<[u8]>, &Node)> {
        self.children.iter().flat_map(|c| c.iter()).map(|(l, n)| (l, &**n))
    }

    fn is_unused(&self) -> bool {
        self.rrsets.is_empty() && self.pins == 0 && self.children.as_ref().is_none_or(|c| c.is_empty())
    }

    fn count(&self) -> (usize, usize) {
        let own = (1, self.rrsets.iter().map(|r| r.data.len()).sum());
        self.children().fold(own, |acc, (_, c)| {
            let (n, r) = c.count();
            (acc.0 + n, acc.1 + r)
        })
    }

    /// Drops spare capacity once a full build is complete (nodes are not shared yet).
    fn shrink(node: &mut Arc<Node>) {
        let node = Arc::make_mut(node);
        node.rrsets.shrink_to_fit();
        for set in &mut node.rrsets {
            set.data.shrink_to_fit();
            set.refs.shrink_to_fit();
        }
        if let Some(map) = &mut node.children {
            let map = Arc::make_mut(map);
            map.shrink_to_fit();
            for child in map.values_mut() {
                Node::shrink(child);
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneKind {
    Cluster,
    Reverse,
    /// Declared by the custom records (`--custom-records`).
    Custom,
}

#[derive(Debug, Clone)]
pub(crate) struct Zone {
    pub(crate) apex: Name,
    pub(crate) kind: ZoneKind,
    pub(crate) root: Arc<Node>,
    pub(crate) soa: Record,
    /// The SOA is the operator's (a custom zone's file gives it): its serial is theirs too.
    fixed_soa: bool,
    /// Kept as the tree changes, so stats cost nothing.
    nodes: usize,
    records: usize,
}

/// The node at `path` below `node`, created with its ancestors (counted in `created`), copied
/// where shared.
fn node_mut<'a>(node: &'a mut Arc<Node>, path: Vec<Vec<u8>>, created: &mut usize) -> &'a mut Node {
    let mut node = Arc::make_mut(node);
    for label in path {
        let map = Arc::make_mut(node.children.get_or_insert_with(Default::default));
        node = Arc::make_mut(match map.entry(label.into_boxed_slice()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                *created += 1;
                v.insert(Arc::default())
            }
        });
    }
    node
}

impl Zone {
    fn new(apex: Name, kind: ZoneKind, ttl: u32, serial: u32) -> Self {
        let label = |l: &str| {
            Name::from_ascii(l).expect("static label").append_domain(&apex).expect("apex names are short")
        };
        let mname = label("ns.dns");
        let soa = Record::from_rdata(
            apex.clone(),
            ttl,
            RData::SOA(SOA::new(mname.clone(), label("hostmaster"), serial, 7200, 1800, 86400, ttl)),
        );
        let mut root = Node { pins: 1, ..Default::default() };
        root.rrsets.push(RrSet {
            rtype: RecordType::SOA,
            ttl,
            data: vec![Data::Other(Box::new(soa.data.clone()))],
            refs: vec![1],
        });
        root.rrsets.push(RrSet {
            rtype: RecordType::NS,
            ttl,
            data: vec![Data::Name(Arc::new(mname))],
            refs: vec![1],
        });
        Zone { apex, kind, root: Arc::new(root), soa, fixed_soa: false, nodes: 1, records: 2 }
    }

    /// A zone of the custom records: the file's SOA, or one naming the cluster zone's `ns.dns`
    /// (the authority serves it) with the index's serial. Its NS records come from the file; a
    /// file that gives none gets one NS, the cluster zone's `ns.dns`, so the apex answers as
    /// every zone's does.
    fn custom(zone: &CustomZone, config: &ZoneConfig, serial: u32, has_ns: bool) -> Self {
        let cluster = config.cluster_domain.to_lowercase();
        let label = |l: &str| {
            Name::from_ascii(l).expect("static label").append_domain(&cluster).expect("apex names are short")
        };
        let mname = label("ns.dns");
        let (soa, fixed_soa) = match &zone.soa {
            Some(soa) => (soa.clone(), true),
            None => {
                let ttl = config.ttl;
                let data = SOA::new(mname.clone(), label("hostmaster"), serial, 7200, 1800, 86400, ttl);
                (Record::from_rdata(zone.apex.clone(), ttl, RData::SOA(data)), false)
            }
        };
        let mut root = Node { pins: 1, ..Default::default() };
        root.rrsets.push(RrSet {
            rtype: RecordType::SOA,
            ttl: soa.ttl,
            data: vec![Data::Other(Box::new(soa.data.clone()))],
            refs: vec![1],
        });
        if !has_ns {
            root.rrsets.push(RrSet {
                rtype: RecordType::NS,
                ttl: config.ttl,
                data: vec![Data::Name(Arc::new(mname))],
                refs: vec![1],
            });
        }
        let records = root.rrsets.len();
        Zone {
            apex: zone.apex.clone(),
            kind: ZoneKind::Custom,
            root: Arc::new(root),
            soa,
            fixed_soa,
            nodes: 1,
            records,
        }
    }

    fn set_serial(&mut self, serial: u32) {
        if self.fixed_soa {
            return;
        }
        if let RData::SOA(soa) = &mut self.soa.data {
            soa.serial = serial;
        }
        let data = Data::Other(Box::new(self.soa.data.clone()));
        if let Some(set) =
            Arc::make_mut(&mut self.root).rrsets.iter_mut().find(|s| s.rtype == RecordType::SOA)
        {
            set.data = vec![data];
        }
    }

    /// Lower-cased labels of `owner` below the apex, apex side first.
    fn path(&self, owner: &Name) -> Vec<Vec<u8>> {
        let below = crate::engine::labels_below(owner, &self.apex);
        owner.iter().take(below).map(<[u8]>::to_ascii_lowercase).rev().collect()
    }

    fn add(&mut self, c: &Contribution) {
        let (owner, record) = match c {
            Contribution::Pin(owner) => (owner, None),
            Contribution::Record { owner, rtype, ttl, data } => (owner, Some((rtype, ttl, data))),
        };
        let path = self.path(owner);
        let node = node_mut(&mut self.root, path, &mut self.nodes);
        let Some((rtype, ttl, data)) = record else {
            node.pins += 1;
            return;
        };
        match node.rrsets.iter_mut().find(|r| r.rtype == *rtype) {
            Some(set) => match set.data.iter().position(|d| d == data) {
                Some(i) => set.refs[i] += 1,
                None => {
                    set.data.push(data.clone());
                    set.refs.push(1);
                    self.records += 1;
                }
            },
            None => {
                node.rrsets.push(RrSet { rtype: *rtype, ttl: *ttl, data: vec![data.clone()], refs: vec![1] });
                self.records += 1;
            }
        }
    }

    /// Takes back one contribution; nodes left without records, pins or children disappear.
    fn remove(&mut self, c: &Contribution) {
        let owner = match c {
            Contribution::Pin(o) | Contribution::Record { owner: o, .. } => o,
        };
        let path = self.path(owner);
        /// Returns (records removed, nodes pruned).
        fn walk(node: &mut Arc<Node>, path: &[Vec<u8>], c: &Contribution) -> (usize, usize) {
            let node = Arc::make_mut(node);
            let Some((first, rest)) = path.split_first() else {
                let mut gone = 0;
                match c {
                    Contribution::Pin(_) => node.pins = node.pins.saturating_sub(1),
                    Contribution::Record { rtype, data, .. } => {
                        if let Some(set) = node.rrsets.iter_mut().find(|r| r.rtype == *rtype)
                            && let Some(i) = set.data.iter().position(|d| d == data)
                        {
                            set.refs[i] -= 1;
                            if set.refs[i] == 0 {
                                set.data.remove(i);
                                set.refs.remove(i);
                                gone = 1;
                            }
                        }
                        node.rrsets.retain(|s| !s.data.is_empty());
                    }
                }
                return (gone, 0);
            };
            let Some(map) = node.children.as_mut() else { return (0, 0) };
            let map = Arc::make_mut(map);
            let mut counts = (0, 0);
            if let Some(child) = map.get_mut(first.as_slice()) {
                counts = walk(child, rest, c);
                if child.is_unused() {
                    map.remove(first.as_slice());
                    counts.1 += 1;
                }
            }
            if map.is_empty() {
                node.children = None;
            }
            counts
        }
        let (records, nodes) = walk(&mut self.root, &path, c);
        self.records -= records;
        self.nodes -= nodes;
    }
}

/// An immutable snapshot of every record nodedns serves. Cloning is cheap: snapshots share nodes.
#[derive(Debug, Clone)]
pub struct ZoneIndex {
    /// Most specific apex first, so the first zone containing a name is its zone.
    pub(crate) zones: Vec<Zone>,
    pub(crate) config: ZoneConfig,
    pub(crate) serial: u32,
    /// Built from a complete cluster. The placeholder a store starts with is not: answering
    /// NXDOMAIN from it would tell caches that every name is gone.
    pub(crate) complete: bool,
    /// The CIDRs PTR records are served for (configured, or derived at the last full build).
    pub(crate) reverse_cidrs: Vec<IpNet>,
    /// Custom records owned by names in the cluster and reverse zones, by owner: they answer
    /// for their exact name before the zone's tree does (see [`ZoneIndex::build_with`]).
    pub(crate) overlay: Arc<HashMap<Name, Node>>,
}

/// Size figures of an index, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    pub zones: usize,
    pub nodes: usize,
    pub records: usize,
}

/// What one object puts into the zones: names it keeps in existence and records. The full build
/// adds every object's contributions; a change takes an object's old ones back and adds its new.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Contribution {
    Pin(Name),
    Record { owner: Name, rtype: RecordType, ttl: u32, data: Data },
}

impl Contribution {
    pub(crate) fn owner(&self) -> &Name {
        match self {
            Contribution::Pin(o) | Contribution::Record { owner: o, .. } => o,
        }
    }
}

/// A multiset difference: an object may contribute one record twice (an address in two slices),
/// and each copy holds a reference.
fn delta<'c>(old: &'c [Contribution], new: &'c [Contribution]) -> HashMap<&'c Contribution, i64> {
    let mut delta: HashMap<&Contribution, i64> = HashMap::new();
    for c in old {
        *delta.entry(c).or_default() -= 1;
    }
    for c in new {
        *delta.entry(c).or_default() += 1;
    }
    delta.retain(|_, n| *n != 0);
    delta
}

fn owners(delta: &HashMap<&Contribution, i64>) -> BTreeSet<String> {
    delta.keys().map(|c| c.owner().to_ascii()).collect()
}

/// The owner names whose contributions differ between `old` and `new`.
pub(crate) fn changed_owners(old: &[Contribution], new: &[Contribution]) -> BTreeSet<String> {
    owners(&delta(old, new))
}

impl ZoneIndex {
    /// An index with the fixed records only (apex, `dns-version`), used before a source has loaded.
    pub fn empty(config: &ZoneConfig) -> Self {
        Self { complete: false, ..Self::build(&ClusterState::default(), config, 0) }
    }

    /// Whether this index was built from a complete cluster (see [`ZoneIndex::empty`]).
    pub fn is_complete(&self) -> bool {
        self.complete
    }

    /// The index of `state` with no custom records.
    pub fn build(state: &ClusterState, config: &ZoneConfig, serial: u32) -> Self {
        Self::build_with(state, config, &CustomRecords::default(), serial)
    }

    /// The index of `state` and the custom records `custom`.
    ///
    /// A custom record in a zone of its own goes into that zone's tree. One in the cluster zone
    /// or a reverse zone wins over the generated records for the exact name it owns, as CoreDNS's
    /// `hosts` placed before `kubernetes` does: the name answers from the custom records only
    /// (NODATA with the zone's SOA for a type they lack, never NXDOMAIN), while names below it
    /// still come from the cluster. Its name is pinned in the tree, so the names above it exist
    /// (NODATA, not NXDOMAIN; RFC 8020). At a zone's apex, which holds the SOA and NS, custom
    /// records join the generated ones instead.
    pub fn build_with(
        state: &ClusterState,
        config: &ZoneConfig,
        custom: &CustomRecords,
        serial: u32,
    ) -> Self {
        let reverse_cidrs = config.reverse_cidrs.clone().unwrap_or_else(|| default_reverse_cidrs(state));
        let mut zones =
            vec![Zone::new(config.cluster_domain.to_lowercase(), ZoneKind::Cluster, config.ttl, serial)];
        let apexes: BTreeSet<Name> = reverse_cidrs.iter().map(reverse_zone_of).collect();
        for apex in apexes {
            if !zones.iter().any(|z| z.apex == apex) {
                zones.push(Zone::new(apex, ZoneKind::Reverse, config.ttl, serial));
            }
        }
        // A declared zone that is also a generated one stays generated; its records overlay it.
        for zone in custom.zones() {
            if !zones.iter().any(|z| z.apex == zone.apex) {
                let has_ns =
                    custom.records().iter().any(|r| r.name == zone.apex && r.record_type() == RecordType::NS);
                zones.push(Zone::custom(zone, config, serial, has_ns));
            }
        }
        zones.sort_by_key(|z| std::cmp::Reverse(z.apex.iter().count()));
        let mut index = ZoneIndex {
            zones,
            config: config.clone(),
            serial,
            complete: true,
            reverse_cidrs,
            overlay: Arc::default(),
        };
        let contributions = Contributions::new(&index.config, &index.reverse_cidrs);
        let mut all = contributions.fixed();
        for ns in state.namespaces.values() {
            all.extend(contributions.namespace(ns));
        }
        let mut slices: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
        for s in state.slices.values() {
            if let Some(svc) = &s.service {
                slices.entry((s.namespace.as_str(), svc.as_str())).or_default().push(s);
            }
        }
        for svc in state.services.values() {
            let own = slices.get(&(svc.namespace.as_str(), svc.name.as_str())).map_or(&[][..], Vec::as_slice);
            all.extend(contributions.service(svc, own));
        }
        for pod in state.pods.values() {
            all.extend(contributions.pod(pod));
        }
        for c in &all {
            index.add(c);
        }
        index.add_custom(custom);
        for zone in &mut index.zones {
            Node::shrink(&mut zone.root);
        }
        index
    }

    /// Places the custom records (see [`ZoneIndex::build_with`]).
    fn add_custom(&mut self, custom: &CustomRecords) {
        let mut overlay: HashMap<Name, Node> = HashMap::new();
        for r in custom.records() {
            let Some(zone) = self.zone_for_mut(&r.name) else { continue };
            let c = Contribution::Record {
                owner: r.name.clone(),
                rtype: r.record_type(),
                ttl: r.ttl,
                data: Data::from_rdata(&r.data),
            };
            if zone.kind == ZoneKind::Custom || zone.apex == r.name {
                zone.add(&c);
                continue;
            }
            let node = overlay.entry(r.name.clone()).or_insert_with(|| {
                zone.add(&Contribution::Pin(r.name.clone()));
                Node::default()
            });
            let Contribution::Record { rtype, ttl, data, .. } = c else { continue };
            match node.rrsets.iter_mut().find(|s| s.rtype == rtype) {
                Some(set) => {
                    set.data.push(data);
                    set.refs.push(1);
                }
                None => node.rrsets.push(RrSet { rtype, ttl, data: vec![data], refs: vec![1] }),
            }
        }
        self.overlay = Arc::new(overlay);
    }

    /// Records held by the overlay.
    fn overlay_records(&self) -> usize {
        self.overlay.values().map(|n| n.rrsets.iter().map(|s| s.data.len()).sum::<usize>()).sum()
    }

    fn zone_for_mut(&mut self, owner: &Name) -> Option<&mut Zone> {
        self.zones.iter_mut().find(|z| z.apex.zone_of(owner))
    }

    fn add(&mut self, c: &Contribution) {
        if let Some(zone) = self.zone_for_mut(c.owner()) {
            zone.add(c);
        }
    }

    /// Applies a change: `old` contributions are taken back, `new` ones added, and the serial set.
    /// Contributions present in both are left alone. Returns the owner names whose records
    /// changed (lower case, absolute).
    pub(crate) fn patch(
        &mut self,
        old: &[Contribution],
        new: &[Contribution],
        serial: u32,
    ) -> BTreeSet<String> {
        let delta = delta(old, new);
        for (c, n) in delta.iter().filter(|(_, n)| **n < 0) {
            if let Some(zone) = self.zone_for_mut(c.owner()) {
                for _ in 0..n.unsigned_abs() {
                    zone.remove(c);
                }
            }
        }
        for (c, n) in delta.iter().filter(|(_, n)| **n > 0) {
            for _ in 0..*n {
                self.add(c);
            }
        }
        self.set_serial(serial);
        owners(&delta)
    }

    pub(crate) fn set_serial(&mut self, serial: u32) {
        self.serial = serial;
        for zone in &mut self.zones {
            zone.set_serial(serial);
        }
    }

    /// Whether `ip` lies inside the CIDRs PTR records are served for.
    pub(crate) fn covers(&self, ip: &IpAddr) -> bool {
        self.reverse_cidrs.iter().any(|c| c.contains(ip))
    }

    pub fn serial(&self) -> u32 {
        self.serial
    }

    pub fn config(&self) -> &ZoneConfig {
        &self.config
    }

    /// The apexes this index is authoritative for, with their kind.
    pub fn zones(&self) -> impl Iterator<Item = (&Name, ZoneKind)> {
        self.zones.iter().map(|z| (&z.apex, z.kind))
    }

    pub fn stats(&self) -> IndexStats {
        let start =
            IndexStats { zones: self.zones.len(), records: self.overlay_records(), ..Default::default() };
        self.zones.iter().fold(start, |mut s, z| {
            s.nodes += z.nodes;
            s.records += z.records;
            s
        })
    }

    /// [`ZoneIndex::stats`] counted by walking every tree (to check the running counts).
    pub fn stats_walked(&self) -> IndexStats {
        let start =
            IndexStats { zones: self.zones.len(), records: self.overlay_records(), ..Default::default() };
        self.zones.iter().fold(start, |mut s, z| {
            let (n, r) = z.root.count();
            s.nodes += n;
            s.records += r;
            s
        })
    }
}

/// The reverse-zone apex that holds a CIDR: the CIDR's prefix rounded down to whole octets (IPv4)
/// or nibbles (IPv6), as classful delegation requires.
pub fn reverse_zone_of(cidr: &IpNet) -> Name {
    let (labels, suffix): (Vec<String>, &str) = match cidr.trunc() {
        IpNet::V4(n) => {
            let keep = usize::from(n.prefix_len() / 8);
            (n.network().octets()[..keep].iter().rev().map(u8::to_string).collect(), "in-addr.arpa.")
        }
        IpNet::V6(n) => {
            let keep = usize::from(n.prefix_len() / 4);
            let nibbles: Vec<String> = n
                .network()
                .octets()
                .iter()
                .flat_map(|b| [b >> 4, b & 0xf])
                .take(keep)
                .map(|x| format!("{x:x}"))
                .collect();
            (nibbles.into_iter().rev().collect(), "ip6.arpa.")
        }
    };
    let text = if labels.is_empty() { suffix.to_owned() } else { format!("{}.{suffix}", labels.join(".")) };
    Name::from_ascii(text).expect("reverse names are valid")
}

/// The name an endpoint or pod gets from its address: IPv4 dots or compressed IPv6 colons turned
/// into dashes (`10-0-0-1`, `5678-abcd--1`).
pub fn dashed(ip: &IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

/// Parses a dashed address label back to an address (the inverse of [`dashed`]).
pub fn undashed(label: &str) -> Option<IpAddr> {
    if label.contains(|c: char| !(c.is_ascii_hexdigit() || c == '-')) {
        return None;
    }
    let dots = label.replace('-', ".");
    if let Ok(v4) = dots.parse::<std::net::Ipv4Addr>() {
        return Some(IpAddr::V4(v4));
    }
    label.replace('-', ":").parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)
}

pub(crate) fn default_reverse_cidrs(state: &ClusterState) -> Vec<IpNet> {
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    for s in state.services.values() {
        if let ServiceKind::ClusterIp(list) = &s.kind {
            ips.extend(list);
        }
    }
    // A slice labelled for no Service contributes nothing, so it derives no zone.
    for slice in state.slices.values().filter(|s| s.service.is_some()) {
        for e in &slice.endpoints {
            ips.extend(&e.addresses);
        }
    }
    for p in state.pods.values() {
        ips.extend(&p.ips);
    }
    let nets: BTreeSet<IpNet> = ips
        .iter()
        .map(|ip| {
            let len = if ip.is_ipv4() { 16 } else { 64 };
            IpNet::new(*ip, len).expect("prefix within range").trunc()
        })
        .collect();
    nets.into_iter().collect()
}

/// Computes what each object contributes, given the zone settings.
pub(crate) struct Contributions<'c> {
    config: &'c ZoneConfig,
    reverse_cidrs: &'c [IpNet],
    domain: Name,
}

impl<'c> Contributions<'c> {
    pub(crate) fn new(config: &'c ZoneConfig, reverse_cidrs: &'c [IpNet]) -> Self {
        Self { config, reverse_cidrs, domain: config.cluster_domain.to_lowercase() }
    }

    fn name(&self, labels: &[&str]) -> Option<Name> {
        let mut name = Name::new();
        for l in labels {
            name = name.append_label(l.to_ascii_lowercase().as_str()).ok()?;
        }
        name.append_domain(&self.domain).ok()
    }

    fn record(&self, owner: &Name, rtype: RecordType, data: Data) -> Contribution {
        Contribution::Record { owner: owner.clone(), rtype, ttl: self.config.ttl, data }
    }

    fn address(&self, owner: &Name, ip: IpAddr) -> Contribution {
        match ip {
            IpAddr::V4(v4) => self.record(owner, RecordType::A, Data::A(v4)),
            IpAddr::V6(v6) => self.record(owner, RecordType::AAAA, Data::Aaaa(v6)),
        }
    }

    fn ptr(&self, ip: IpAddr, target: &Arc<Name>, out: &mut Vec<Contribution>) {
        if self.reverse_cidrs.iter().any(|c| c.contains(&ip)) {
            out.push(self.record(&Name::from(ip), RecordType::PTR, Data::Name(Arc::clone(target))));
        }
    }

    /// Records every cluster has: `svc`, `pod`, `ns.dns` (with `ns_addresses`), `dns-version`.
    pub(crate) fn fixed(&self) -> Vec<Contribution> {
        let mut out = Vec::new();
        for labels in [["svc"].as_slice(), &["pod"], &["ns", "dns"]] {
            if let Some(n) = self.name(labels) {
                out.push(Contribution::Pin(n));
            }
        }
        if let Some(ns) = self.name(&["ns", "dns"]) {
            out.extend(self.config.ns_addresses.iter().map(|ip| self.address(&ns, *ip)));
        }
        if let Some(v) = self.name(&["dns-version"]) {
            let txt = RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()]));
            out.push(Contribution::Record {
                owner: v,
                rtype: RecordType::TXT,
                ttl: DNS_VERSION_TTL,
                data: Data::Other(Box::new(txt)),
            });
        }
        out
    }

    /// An existing namespace exists under `svc` and `pod` even when empty (NODATA, not NXDOMAIN).
    pub(crate) fn namespace(&self, ns: &Namespace) -> Vec<Contribution> {
        ["svc", "pod"].iter().filter_map(|sub| self.name(&[&ns.name, sub])).map(Contribution::Pin).collect()
    }

    /// A present pod's address records under `pods verified`.
    pub(crate) fn pod(&self, pod: &Pod) -> Vec<Contribution> {
        if self.config.pods != PodsMode::Verified || !pod.is_present() {
            return Vec::new();
        }
        pod.ips
            .iter()
            .filter_map(|ip| Some(self.address(&self.name(&[&dashed(ip), &pod.namespace, "pod"])?, *ip)))
            .collect()
    }

    /// A Service with the EndpointSlices labelled for it.
    pub(crate) fn service(&self, svc: &Service, slices: &[&EndpointSlice]) -> Vec<Contribution> {
        let mut out = Vec::new();
        let Some(svc_name) = self.name(&[&svc.name, &svc.namespace, "svc"]) else { return out };
        let svc_name = Arc::new(svc_name);
        // Ready endpoints: (record name, address, the slice's ports); one shared name per
        // endpoint name, which its A record, SRV targets and PTRs point at.
        let mut ready: Vec<(Arc<Name>, IpAddr, &[Port])> = Vec::new();
        let mut names: HashMap<Name, Arc<Name>> = HashMap::new();
        for slice in slices {
            for ep in slice.endpoints.iter().filter(|e| e.ready) {
                for ip in &ep.addresses {
                    if let Some(name) = endpoint_name(ep, ip, &svc_name, self.config.endpoint_pod_names) {
                        let name = Arc::clone(names.entry(name.clone()).or_insert_with(|| Arc::new(name)));
                        ready.push((name, *ip, &slice.ports));
                    }
                }
            }
        }
        // SRV entries per owner before de-duplication: the weight follows CoreDNS,
        // floor(100 / entries); identical entries then count as one record.
        let mut srv: BTreeMap<Name, Vec<(u16, Arc<Name>)>> = BTreeMap::new();
        match &svc.kind {
            ServiceKind::ExternalName(target) => {
                let absolute = if target.ends_with('.') { target.clone() } else { format!("{target}.") };
                if let Ok(t) = Name::from_ascii(&absolute) {
                    out.push(self.record(&svc_name, RecordType::CNAME, Data::Name(Arc::new(t))));
                }
            }
            ServiceKind::ClusterIp(ips) => {
                out.push(Contribution::Pin(Name::clone(&svc_name)));
                for ip in ips {
                    out.push(self.address(&svc_name, *ip));
                    self.ptr(*ip, &svc_name, &mut out);
                }
                for p in &svc.ports {
                    let Some(port) = p.port else { continue };
                    srv.entry(Name::clone(&svc_name)).or_default().push((port, Arc::clone(&svc_name)));
                    if let Some(owner) = port_owner(p, &svc_name) {
                        srv.entry(owner).or_default().push((port, Arc::clone(&svc_name)));
                    }
                }
                // Endpoint names exist under ClusterIP services too (CoreDNS extension), so the
                // PTRs of those endpoints resolve forward.
                for (name, ip, _) in &ready {
                    out.push(self.address(name, *ip));
                    self.ptr(*ip, name, &mut out);
                }
            }
            ServiceKind::Headless => {
                // No ready endpoint: the name does not exist (spec §2.4.1; CoreDNS agrees).
                for (name, ip, ports) in &ready {
                    out.push(self.address(&svc_name, *ip));
                    out.push(self.address(name, *ip));
                    self.ptr(*ip, name, &mut out);
                    for p in ports.iter() {
                        let Some(port) = p.port else { continue };
                        srv.entry(Name::clone(&svc_name)).or_default().push((port, Arc::clone(name)));
                        if let Some(owner) = port_owner(p, &svc_name) {
                            srv.entry(owner).or_default().push((port, Arc::clone(name)));
                        }
                    }
                }
            }
        }
        for (owner, entries) in srv {
            let weight = u16::try_from(100 / entries.len()).unwrap_or(0);
            for (port, target) in entries {
                out.push(self.record(&owner, RecordType::SRV, Data::Srv { weight, port, target }));
            }
        }
        out
    }
}

/// An endpoint's record name: its hostname, else (with `pod_names`) its pod's name when that is one
/// label of at most 63 characters (pod names may hold dots), else its dashed address.
fn endpoint_name(ep: &Endpoint, ip: &IpAddr, svc_name: &Name, pod_names: bool) -> Option<Name> {
    let pod =
        ep.target_pod.as_ref().filter(|p| pod_names && p.len() <= 63 && !p.is_empty() && !p.contains('.'));
    let host = ep.hostname.clone().or_else(|| pod.cloned()).unwrap_or_else(|| dashed(ip));
    Name::from_ascii(host.to_ascii_lowercase()).ok()?.append_domain(svc_name).ok()
}

/// `_<port>._<proto>.<svc>` for a named port.
fn port_owner(port: &Port, svc_name: &Name) -> Option<Name> {
    let name = port.name.as_ref()?;
    let labels = format!("_{}.{}", name.to_ascii_lowercase(), port.protocol.srv_label());
    Name::from_ascii(labels).ok()?.append_domain(svc_name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reverse_zone_apexes_round_down_to_label_boundaries() {
        let cases = [
            ("10.0.0.0/16", "0.10.in-addr.arpa."),
            ("10.0.0.0/12", "10.in-addr.arpa."),
            ("172.0.0.0/24", "0.0.172.in-addr.arpa."),
            ("1234:abcd::/64", "0.0.0.0.0.0.0.0.d.c.b.a.4.3.2.1.ip6.arpa."),
            ("10::/64", "0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.ip6.arpa."),
            ("fd00::/7", "f.ip6.arpa."),
        ];
        for (cidr, apex) in cases {
            assert_eq!(reverse_zone_of(&cidr.parse().unwrap()).to_ascii(), apex, "{cidr}");
        }
    }

    #[test]
    fn dashed_names_round_trip() {
        for ip in ["10.240.0.1", "5678:abcd::1", "::1", "fd00:1:2:3:4:5:6:7"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(undashed(&dashed(&ip)), Some(ip));
        }
        assert_eq!(undashed("blah"), None);
        assert_eq!(undashed("1-2-3"), None);
        assert_eq!(undashed("1-2-3-400"), None);
    }
}
