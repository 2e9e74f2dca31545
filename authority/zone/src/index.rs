//! The zone index: every record of the cluster zone and the reverse zones, built from a
//! [`ClusterState`] whenever the cluster changes, so a lookup is a walk of a few hash maps instead of
//! a scan of objects.
//!
//! Each zone is a tree of lower-cased labels below its apex. A node that exists with no records is an
//! empty non-terminal, so NXDOMAIN versus NODATA (RFC 2308 §2) falls out of the tree's shape.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;
use std::sync::Arc;

use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use ipnet::IpNet;

use crate::model::{ClusterState, Endpoint, Port, ServiceKind};

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
#[derive(Debug, Clone, PartialEq, Eq)]
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
}

/// A name in a zone. Owners are not stored: a lookup knows the name it walked.
#[derive(Debug, Default)]
pub(crate) struct Node {
    /// Most nodes are leaves; they pay 8 bytes here instead of an empty map's 48.
    #[allow(clippy::box_collection)]
    pub(crate) children: Option<Box<HashMap<Box<[u8]>, Node>>>,
    pub(crate) rrsets: Vec<RrSet>,
}

impl Node {
    pub(crate) fn rrset(&self, rtype: RecordType) -> Option<&RrSet> {
        self.rrsets.iter().find(|r| r.rtype == rtype)
    }

    pub(crate) fn child(&self, label: &[u8]) -> Option<&Node> {
        self.children.as_ref()?.get(label)
    }

    pub(crate) fn children(&self) -> impl Iterator<Item = (&Box<[u8]>, &Node)> {
        self.children.iter().flat_map(|c| c.iter())
    }

    fn child_mut(&mut self, lower_label: &[u8]) -> &mut Node {
        let map = self.children.get_or_insert_with(Default::default);
        if !map.contains_key(lower_label) {
            map.insert(lower_label.into(), Node::default());
        }
        map.get_mut(lower_label).expect("inserted above")
    }

    fn count(&self) -> (usize, usize) {
        let own = (1, self.rrsets.iter().map(|r| r.data.len()).sum());
        self.children().fold(own, |acc, (_, c)| {
            let (n, r) = c.count();
            (acc.0 + n, acc.1 + r)
        })
    }

    /// Drops spare capacity once the tree is complete.
    fn shrink(&mut self) {
        self.rrsets.shrink_to_fit();
        for set in &mut self.rrsets {
            set.data.shrink_to_fit();
        }
        if let Some(map) = &mut self.children {
            map.shrink_to_fit();
            for child in map.values_mut() {
                child.shrink();
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZoneKind {
    Cluster,
    Reverse,
}

#[derive(Debug)]
pub(crate) struct Zone {
    pub(crate) apex: Name,
    pub(crate) kind: ZoneKind,
    pub(crate) root: Node,
    pub(crate) soa: Record,
}

/// An immutable snapshot of every record nodedns serves.
#[derive(Debug)]
pub struct ZoneIndex {
    /// Most specific apex first, so the first zone containing a name is its zone.
    pub(crate) zones: Vec<Zone>,
    pub(crate) config: ZoneConfig,
    pub(crate) serial: u32,
    /// Built from a complete cluster. The placeholder a store starts with is not: answering
    /// NXDOMAIN from it would tell caches that every name is gone.
    pub(crate) complete: bool,
}

/// Size figures of an index, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IndexStats {
    pub zones: usize,
    pub nodes: usize,
    pub records: usize,
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

    pub fn build(state: &ClusterState, config: &ZoneConfig, serial: u32) -> Self {
        Builder::new(config, serial, state).finish(state)
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
        self.zones.iter().fold(IndexStats { zones: self.zones.len(), ..Default::default() }, |mut s, z| {
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

fn default_reverse_cidrs(state: &ClusterState) -> Vec<IpNet> {
    let mut ips: BTreeSet<IpAddr> = BTreeSet::new();
    for s in state.services.values() {
        if let ServiceKind::ClusterIp(list) = &s.kind {
            ips.extend(list);
        }
    }
    for slice in state.slices.values() {
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

struct Builder<'c> {
    config: &'c ZoneConfig,
    serial: u32,
    zones: Vec<Zone>,
    reverse_cidrs: Vec<IpNet>,
    /// SRV entries per owner before de-duplication, so the weight can follow CoreDNS
    /// (`floor(100 / entries)`).
    srv: BTreeMap<Name, Vec<(u16, Arc<Name>)>>,
}

impl<'c> Builder<'c> {
    fn new(config: &'c ZoneConfig, serial: u32, state: &ClusterState) -> Self {
        let reverse_cidrs = config.reverse_cidrs.clone().unwrap_or_else(|| default_reverse_cidrs(state));
        let mut b = Builder { config, serial, zones: Vec::new(), reverse_cidrs, srv: BTreeMap::new() };
        b.add_zone(config.cluster_domain.to_lowercase(), ZoneKind::Cluster);
        let apexes: BTreeSet<Name> = b.reverse_cidrs.iter().map(reverse_zone_of).collect();
        for apex in apexes {
            if !b.zones.iter().any(|z| z.apex == apex) {
                b.add_zone(apex, ZoneKind::Reverse);
            }
        }
        b.zones.sort_by_key(|z| std::cmp::Reverse(z.apex.iter().count()));
        b
    }

    fn add_zone(&mut self, apex: Name, kind: ZoneKind) {
        let ttl = self.config.ttl;
        let label = |l: &str| Name::from_ascii(l).expect("static label").append_domain(&apex);
        let mname = label("ns.dns").expect("apex names are short");
        let rname = label("hostmaster").expect("apex names are short");
        let soa = Record::from_rdata(
            apex.clone(),
            ttl,
            RData::SOA(SOA::new(mname.clone(), rname, self.serial, 7200, 1800, 86400, ttl)),
        );
        let mut root = Node::default();
        let soa_data = Data::Other(Box::new(soa.data.clone()));
        root.rrsets.push(RrSet { rtype: RecordType::SOA, ttl, data: vec![soa_data] });
        root.rrsets.push(RrSet { rtype: RecordType::NS, ttl, data: vec![Data::Name(Arc::new(mname))] });
        self.zones.push(Zone { apex, kind, root, soa });
    }

    /// The node for `owner` in the most specific zone holding it, created with its ancestors.
    fn node(&mut self, owner: &Name) -> Option<&mut Node> {
        let zone = self.zones.iter_mut().find(|z| z.apex.zone_of(owner))?;
        let below = crate::engine::labels_below(owner, &zone.apex);
        let labels: Vec<Vec<u8>> = owner.iter().take(below).map(<[u8]>::to_ascii_lowercase).collect();
        let mut node = &mut zone.root;
        for label in labels.iter().rev() {
            node = node.child_mut(label);
        }
        Some(node)
    }

    fn ensure(&mut self, owner: &Name) {
        self.node(owner);
    }

    fn add(&mut self, owner: &Name, rtype: RecordType, ttl: u32, data: Data) {
        let Some(node) = self.node(owner) else { return };
        match node.rrsets.iter_mut().find(|r| r.rtype == rtype) {
            Some(set) if set.data.contains(&data) => {}
            Some(set) => set.data.push(data),
            None => node.rrsets.push(RrSet { rtype, ttl, data: vec![data] }),
        }
    }

    fn add_address(&mut self, owner: &Name, ip: IpAddr) {
        let (rtype, data) = match ip {
            IpAddr::V4(v4) => (RecordType::A, Data::A(v4)),
            IpAddr::V6(v6) => (RecordType::AAAA, Data::Aaaa(v6)),
        };
        self.add(owner, rtype, self.config.ttl, data);
    }

    fn add_ptr(&mut self, ip: IpAddr, target: &Arc<Name>) {
        if !self.reverse_cidrs.iter().any(|c| c.contains(&ip)) {
            return;
        }
        self.add(&Name::from(ip), RecordType::PTR, self.config.ttl, Data::Name(Arc::clone(target)));
    }

    fn cluster_name(&self, labels: &[&str]) -> Option<Name> {
        let mut name = Name::new();
        for l in labels {
            name = name.append_label(l.to_ascii_lowercase().as_str()).ok()?;
        }
        name.append_domain(&self.config.cluster_domain.to_lowercase()).ok()
    }

    fn finish(mut self, state: &ClusterState) -> ZoneIndex {
        let ttl = self.config.ttl;
        let fixed = [["svc"].as_slice(), &["pod"], &["ns", "dns"]];
        for labels in fixed {
            if let Some(n) = self.cluster_name(labels) {
                self.ensure(&n);
            }
        }
        if let Some(ns) = self.cluster_name(&["ns", "dns"]) {
            for ip in self.config.ns_addresses.clone() {
                self.add_address(&ns, ip);
            }
        }
        if let Some(v) = self.cluster_name(&["dns-version"]) {
            let txt = RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()]));
            self.add(&v, RecordType::TXT, DNS_VERSION_TTL, Data::Other(Box::new(txt)));
        }
        for ns in state.namespaces.keys() {
            for sub in ["svc", "pod"] {
                if let Some(n) = self.cluster_name(&[ns, sub]) {
                    self.ensure(&n);
                }
            }
        }
        self.add_services(state);
        if self.config.pods == PodsMode::Verified {
            for pod in state.pods.values().filter(|p| p.is_present()) {
                for ip in &pod.ips {
                    if let Some(n) = self.cluster_name(&[&dashed(ip), &pod.namespace, "pod"]) {
                        self.add_address(&n, *ip);
                    }
                }
            }
        }
        let srv = std::mem::take(&mut self.srv);
        for (owner, entries) in srv {
            let weight = u16::try_from(100 / entries.len()).unwrap_or(0);
            for (port, target) in entries {
                self.add(&owner, RecordType::SRV, ttl, Data::Srv { weight, port, target });
            }
        }
        for zone in &mut self.zones {
            zone.root.shrink();
        }
        ZoneIndex { zones: self.zones, config: self.config.clone(), serial: self.serial, complete: true }
    }

    fn add_services(&mut self, state: &ClusterState) {
        // Slices by owning service, joined through the kubernetes.io/service-name label.
        let mut slices: HashMap<(&str, &str), Vec<&crate::model::EndpointSlice>> = HashMap::new();
        for s in state.slices.values() {
            if let Some(svc) = &s.service {
                slices.entry((s.namespace.as_str(), svc.as_str())).or_default().push(s);
            }
        }
        for svc in state.services.values() {
            let Some(svc_name) = self.cluster_name(&[&svc.name, &svc.namespace, "svc"]) else {
                continue;
            };
            let svc_name = Arc::new(svc_name);
            let own_slices = slices.get(&(svc.namespace.as_str(), svc.name.as_str()));
            // Ready endpoints: (record name, address, the slice's ports).
            let mut ready: Vec<(Arc<Name>, IpAddr, &[Port])> = Vec::new();
            // One shared name per endpoint name: its A, SRV targets and PTRs point at it.
            let mut names: HashMap<Name, Arc<Name>> = HashMap::new();
            for slice in own_slices.into_iter().flatten() {
                for ep in slice.endpoints.iter().filter(|e| e.ready) {
                    for ip in &ep.addresses {
                        if let Some(name) = self.endpoint_name(ep, ip, &svc_name) {
                            let name =
                                Arc::clone(names.entry(name.clone()).or_insert_with(|| Arc::new(name)));
                            ready.push((name, *ip, &slice.ports));
                        }
                    }
                }
            }
            match &svc.kind {
                ServiceKind::ExternalName(target) => {
                    let absolute = if target.ends_with('.') { target.clone() } else { format!("{target}.") };
                    if let Ok(t) = Name::from_ascii(&absolute) {
                        self.add(&svc_name, RecordType::CNAME, self.config.ttl, Data::Name(Arc::new(t)));
                    }
                }
                ServiceKind::ClusterIp(ips) => {
                    self.ensure(&svc_name);
                    for ip in ips {
                        self.add_address(&svc_name, *ip);
                        self.add_ptr(*ip, &svc_name);
                    }
                    for p in &svc.ports {
                        let Some(port) = p.port else { continue };
                        self.srv.entry(Name::clone(&svc_name)).or_default().push((port, svc_name.clone()));
                        if let Some(owner) = self.port_owner(p, &svc_name) {
                            self.srv.entry(owner).or_default().push((port, svc_name.clone()));
                        }
                    }
                    // Endpoint names exist under ClusterIP services too (CoreDNS extension), so
                    // the PTRs of those endpoints resolve forward.
                    for (name, ip, _) in &ready {
                        self.add_address(name, *ip);
                        self.add_ptr(*ip, name);
                    }
                }
                ServiceKind::Headless => {
                    // No ready endpoint: the name does not exist (spec §2.4.1; CoreDNS agrees).
                    for (name, ip, ports) in &ready {
                        self.add_address(&svc_name, *ip);
                        self.add_address(name, *ip);
                        self.add_ptr(*ip, name);
                        for p in ports.iter() {
                            let Some(port) = p.port else { continue };
                            self.srv.entry(Name::clone(&svc_name)).or_default().push((port, name.clone()));
                            if let Some(owner) = self.port_owner(p, &svc_name) {
                                self.srv.entry(owner).or_default().push((port, name.clone()));
                            }
                        }
                    }
                }
            }
        }
    }

    fn endpoint_name(&self, ep: &Endpoint, ip: &IpAddr, svc_name: &Name) -> Option<Name> {
        let host = ep.hostname.clone().unwrap_or_else(|| dashed(ip));
        Name::from_ascii(host.to_ascii_lowercase()).ok()?.append_domain(svc_name).ok()
    }

    /// `_<port>._<proto>.<svc>` for a named port.
    fn port_owner(&self, port: &Port, svc_name: &Name) -> Option<Name> {
        let name = port.name.as_ref()?;
        let labels = format!("_{}.{}", name.to_ascii_lowercase(), port.protocol.srv_label());
        Name::from_ascii(labels).ok()?.append_domain(svc_name).ok()
    }
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
