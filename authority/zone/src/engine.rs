//! The zone engine: a question in, the records of the answer out. Sans-IO: no sockets, no clocks,
//! no globals; the index it reads is an immutable snapshot.

use std::net::IpAddr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::index::{Data, Node, PodsMode, RrSet, Zone, ZoneIndex, ZoneKind, undashed};

/// The records of an authoritative answer (AA set).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// `NoError` (with data, or NODATA) or `NXDomain`.
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The zone's SOA on negative answers (RFC 2308 §3).
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

/// CNAME chains followed inside our own zones before giving up (ExternalName to ExternalName…).
const MAX_CHASE: usize = 8;

enum Found<'a> {
    Node(&'a Node),
    /// A record made up from the name itself (`pods insecure`).
    Synth(RData),
    Missing,
}

impl ZoneIndex {
    /// The zone holding `name`, if we are authoritative for it.
    pub(crate) fn zone_of(&self, name: &Name) -> Option<&Zone> {
        self.zones.iter().find(|z| z.apex.zone_of(name))
    }

    /// Whether `name` falls in a zone this index serves.
    pub fn serves(&self, name: &Name) -> bool {
        self.zone_of(name).is_some()
    }

    /// Answers one question. `None` means the name is outside our zones (REFUSED).
    pub fn lookup(&self, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let zone = self.zone_of(qname)?;
        let mut answer = Answer::default();
        let wild = self.config.wildcards && zone.kind == ZoneKind::Cluster && has_star(zone, qname);
        if wild && !self.overlay.contains_key(qname) {
            self.wildcard(zone, qname, qtype, &mut answer);
        } else {
            self.resolve(zone, qname, qtype, &mut answer, 0);
        }
        self.add_additionals(&mut answer);
        Some(answer)
    }

    fn resolve(&self, zone: &Zone, qname: &Name, qtype: RecordType, out: &mut Answer, depth: usize) {
        let node = match self.find(zone, qname) {
            Found::Missing => return negative(zone, ResponseCode::NXDomain, out),
            Found::Synth(data) => {
                if data.record_type() == qtype || qtype == RecordType::ANY {
                    out.answers.push(Record::from_rdata(qname.to_lowercase(), self.config.ttl, data));
                    out.rcode = ResponseCode::NoError;
                } else {
                    negative(zone, ResponseCode::NoError, out);
                }
                return;
            }
            Found::Node(node) => node,
        };
        out.rcode = ResponseCode::NoError;
        // The owner is the name asked (in its spelling): the index stores no owners.
        let owner = qname;
        if qtype == RecordType::ANY && !node.rrsets.is_empty() {
            for set in &node.rrsets {
                push_set(owner, set, &mut out.answers);
            }
            return;
        }
        if let Some(set) = node.rrset(qtype) {
            push_set(owner, set, &mut out.answers);
            return;
        }
        if let Some(cname) = node.rrset(RecordType::CNAME) {
            push_set(owner, cname, &mut out.answers);
            // RFC 1034 §4.3.2: follow the alias while it stays in our zones; outside them the
            // client's resolver (or the node agent) chases it.
            if let Some(target) = cname.data.first().and_then(Data::target)
                && depth < MAX_CHASE
                && let Some(target_zone) = self.zone_of(target)
            {
                self.resolve(target_zone, target, qtype, out, depth + 1);
            }
            return;
        }
        negative(zone, ResponseCode::NoError, out);
    }

    fn find<'a>(&'a self, zone: &'a Zone, qname: &Name) -> Found<'a> {
        // Custom records own their exact name (see `ZoneIndex::build_with`). One hash of the name,
        // and only when there are any.
        if !self.overlay.is_empty()
            && let Some(node) = self.overlay.get(qname)
        {
            return Found::Node(node);
        }
        let below = labels_below(qname, &zone.apex);
        let mut labels: Vec<&[u8]> = qname.iter().take(below).collect();
        labels.reverse();
        let mut node: &Node = &zone.root;
        let mut buf = [0u8; 63];
        for (depth, label) in labels.iter().enumerate() {
            let lower = lower(label, &mut buf);
            match node.child(lower) {
                Some(child) => node = child,
                None => {
                    // `<dashed-ip>.<ns>.pod.<zone>` under `pods insecure`: the name is the data.
                    let is_pod_leaf = zone.kind == ZoneKind::Cluster
                        && self.config.pods == PodsMode::Insecure
                        && depth == 2
                        && labels.len() == 3
                        && labels[0].eq_ignore_ascii_case(b"pod");
                    if is_pod_leaf && let Some(ip) = std::str::from_utf8(label).ok().and_then(undashed) {
                        return Found::Synth(match ip {
                            IpAddr::V4(v4) => RData::A(A(v4)),
                            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                        });
                    }
                    return Found::Missing;
                }
            }
        }
        Found::Node(node)
    }

    /// kube-dns style wildcards (`--wildcards`): a `*` label matches any one label (other than the
    /// `_port`/`_proto` labels), and the answer carries the asked name as owner.
    fn wildcard(&self, zone: &Zone, qname: &Name, qtype: RecordType, out: &mut Answer) {
        let below = labels_below(qname, &zone.apex);
        let mut labels: Vec<Vec<u8>> = qname.iter().take(below).map(|l| l.to_ascii_lowercase()).collect();
        labels.reverse();
        let mut matched: Vec<&Node> = Vec::new();
        collect(&zone.root, &labels, &mut matched);
        if matched.is_empty() {
            return negative(zone, ResponseCode::NXDomain, out);
        }
        out.rcode = ResponseCode::NoError;
        let mut seen: Vec<&Data> = Vec::new();
        for node in matched {
            for set in node.rrsets.iter().filter(|s| s.rtype == qtype || qtype == RecordType::ANY) {
                for data in &set.data {
                    if !seen.contains(&data) {
                        seen.push(data);
                        let rdata = data.to_rdata(set.rtype);
                        out.answers.push(Record::from_rdata(qname.clone(), set.ttl, rdata));
                    }
                }
            }
        }
        if out.answers.is_empty() {
            negative(zone, ResponseCode::NoError, out);
        }
    }

    /// Addresses of SRV targets and of the apex NS target, when they are ours (RFC 2782 suggests
    /// them; CoreDNS sends them).
    fn add_additionals(&self, answer: &mut Answer) {
        let mut targets: Vec<&Name> = Vec::new();
        for r in &answer.answers {
            let target = match &r.data {
                RData::SRV(srv) => &srv.target,
                RData::NS(ns) => &ns.0,
                _ => continue,
            };
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        let mut extra = Vec::new();
        for target in targets {
            let Some(zone) = self.zone_of(target) else {
                continue;
            };
            if let Found::Node(node) = self.find(zone, target) {
                for rtype in [RecordType::A, RecordType::AAAA] {
                    if let Some(set) = node.rrset(rtype) {
                        push_set(target, set, &mut extra);
                    }
                }
            }
        }
        answer.additionals.extend(extra);
    }

    /// Every record of the zone whose apex is `apex`, framed by its SOA as AXFR wants (RFC 5936
    /// §2.2). `None` if `apex` is not one of our apexes.
    pub fn transfer(&self, apex: &Name) -> Option<Vec<Record>> {
        let zone = self.zones.iter().find(|z| &z.apex == apex)?;
        let mut out = vec![zone.soa.clone()];
        walk(&zone.root, &zone.apex, &mut |owner, node| {
            if self.overlay.contains_key(owner) {
                return;
            }
            for set in node.rrsets.iter().filter(|s| s.rtype != RecordType::SOA) {
                push_set(owner, set, &mut out);
            }
        });
        // The custom records that own names of this zone, in place of what they hide.
        let mut custom: Vec<(&Name, &Node)> = self
            .overlay
            .iter()
            .filter(|(owner, _)| self.zone_of(owner).is_some_and(|z| z.apex == zone.apex))
            .collect();
        custom.sort_by(|a, b| a.0.cmp(b.0));
        for (owner, node) in custom {
            for set in &node.rrsets {
                push_set(owner, set, &mut out);
            }
        }
        out.push(zone.soa.clone());
        Some(out)
    }
}

/// Visits every node with records, depth first in label order, with its owner name.
fn walk(node: &Node, owner: &Name, f: &mut impl FnMut(&Name, &Node)) {
    if !node.rrsets.is_empty() {
        f(owner, node);
    }
    let mut children: Vec<(&Box<[u8]>, &Node)> = node.children().collect();
    children.sort_by(|a, b| a.0.cmp(b.0));
    for (label, child) in children {
        if let Ok(name) = owner.prepend_label(&**label) {
            walk(child, &name, f);
        }
    }
}

fn collect<'a>(node: &'a Node, labels: &[Vec<u8>], out: &mut Vec<&'a Node>) {
    let Some((first, rest)) = labels.split_first() else {
        out.push(node);
        return;
    };
    if first.as_slice() == b"*" {
        for (label, child) in node.children() {
            if !label.starts_with(b"_") {
                collect(child, rest, out);
            }
        }
    } else if let Some(child) = node.child(first) {
        collect(child, rest, out);
    }
}

/// Labels of `name` below `apex` (which must hold it). Counted by hand: hickory's `num_labels`
/// leaves out a leading `*`, as RRSIG label counts do.
pub(crate) fn labels_below(name: &Name, apex: &Name) -> usize {
    name.iter().count().saturating_sub(apex.iter().count())
}

fn has_star(zone: &Zone, qname: &Name) -> bool {
    let below = labels_below(qname, &zone.apex);
    qname.iter().take(below).any(|l| l == b"*")
}

fn lower<'b>(label: &[u8], buf: &'b mut [u8; 63]) -> &'b [u8] {
    let n = label.len().min(63);
    for (d, s) in buf.iter_mut().zip(&label[..n]) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..n]
}

fn push_set(owner: &Name, set: &RrSet, out: &mut Vec<Record>) {
    out.extend(set.data.iter().map(|d| Record::from_rdata(owner.clone(), set.ttl, d.to_rdata(set.rtype))));
}

/// NXDOMAIN or NODATA with the zone's SOA in the authority section (RFC 2308 §2, §3).
fn negative(zone: &Zone, rcode: ResponseCode, out: &mut Answer) {
    // After a CNAME the answer keeps its records; the rcode is that of the last name (RFC 6604).
    out.rcode = rcode;
    out.authorities.push(zone.soa.clone());
}
