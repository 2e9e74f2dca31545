//! Server-side autopath. A pod's resolver expands a name with fewer dots than its ndots through
//! its whole search list, A and AAAA separately: up to five round trips per lookup. From the
//! client's address the agent knows the pod and the search list it really uses (streamed by the
//! authority); when a query is the pod's first expansion of a name (`<name>.<ns>.svc.<zone>`), the
//! agent walks the rest of the list itself and answers the first name that is not NXDOMAIN as a
//! CNAME from the asked name followed by that name's answer (a NODATA hit too, so the A and AAAA
//! walks of one lookup agree). Unknown, hostNetwork and shared addresses are never autopathed.

use std::time::Instant;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::rdata::CNAME;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use nodedns_proto::v1::{NodeSearch, PodEntry};

use crate::config::ResolvConf;

/// Kubelet keeps at most this many search domains.
const MAX_SEARCH: usize = 32;

/// The search list a pod's resolv.conf holds: its own domains and the node's, joined as kubelet
/// joins them, without repeats, absolute (`testns.svc.cluster.local.`).
pub fn search_list(pod: &PodEntry, node: &ResolvConf) -> Vec<String> {
    let own = pod.search.iter();
    let node_search = node.search.iter();
    let joined: Vec<&String> = match NodeSearch::try_from(pod.node_search).unwrap_or(NodeSearch::None) {
        NodeSearch::None => own.collect(),
        NodeSearch::Before => node_search.chain(own).collect(),
        NodeSearch::After => own.chain(node_search).collect(),
    };
    let mut out: Vec<String> = Vec::new();
    for s in joined {
        let s = format!("{}.", s.trim_end_matches('.').to_ascii_lowercase());
        if s != "." && !out.contains(&s) {
            out.push(s);
        }
    }
    out.truncate(MAX_SEARCH);
    out
}

/// What the hit path needs to know of an autopath client: the wire form of its first search
/// domain (a query ending in it may be a first expansion) and a tag that keys its walked answers
/// apart from everyone else's (another search list walks to other answers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodContext {
    pub first: Box<[u8]>,
    pub tag: [u8; TAG_LEN],
}

/// Bytes a search-context tag adds to a cache key (a marker byte and a 64-bit hash).
pub const TAG_LEN: usize = 9;

/// The asked key without the tag an autopath client's key carries.
pub fn untagged(key: &[u8], tagged: bool) -> &[u8] {
    &key[..key.len() - if tagged { TAG_LEN } else { 0 }]
}

/// The autopath context of `pod`, `None` when it is never autopathed.
pub fn context(pod: &PodEntry, node: &ResolvConf) -> Option<PodContext> {
    use std::hash::{Hash, Hasher};
    if pod.host_network || pod.shared {
        return None;
    }
    let search = search_list(pod, node);
    let wire = crate::wire::encode_name(search.first()?)?;
    let ndots = pod.ndots.map_or(node.ndots.unwrap_or(1), |n| u8::try_from(n.min(15)).unwrap_or(15));
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (&search, ndots).hash(&mut hasher);
    let mut tag = [0xffu8; TAG_LEN];
    tag[1..].copy_from_slice(&hasher.finish().to_be_bytes());
    Some(PodContext { first: wire.into_boxed_slice(), tag })
}

/// Whether the question in `key` (a cache key) may be `ctx`'s first search expansion: its name
/// ends in the first search domain and has labels before it. Cheap: the hit path asks it.
pub fn may_apply(key: &[u8], ctx: &PodContext) -> bool {
    let name = &key[..key.len().saturating_sub(5)];
    name.len() > ctx.first.len() && name.ends_with(&ctx.first)
}

/// The names left to try after `qname` (absolute, lower case), when it is `pod`'s first search
/// expansion of some name; `None` when autopath does not apply.
pub fn candidates(qname: &str, pod: &PodEntry, node: &ResolvConf) -> Option<Vec<String>> {
    if pod.host_network || pod.shared {
        return None;
    }
    let search = search_list(pod, node);
    let first = search.first()?;
    let base = qname.strip_suffix(first.as_str())?.strip_suffix('.')?;
    if base.is_empty() {
        return None;
    }
    let ndots = pod.ndots.map_or(node.ndots.unwrap_or(1), |n| u8::try_from(n.min(15)).unwrap_or(15));
    let dots = base.bytes().filter(|b| *b == b'.').count();
    let mut out: Vec<String> = search[1..].iter().map(|s| format!("{base}.{s}")).collect();
    // With fewer dots than ndots the resolver tries the bare name last; with more it tried it
    // first, before any expansion, so it already failed.
    if dots < usize::from(ndots) {
        out.push(format!("{base}."));
    }
    (!out.is_empty()).then_some(out)
}

/// A query for `name` shaped like the client's: its header flags, type, class and OPT record.
pub fn candidate_query(
    packet: &[u8],
    question_end: usize,
    qtype: u16,
    qclass: u16,
    name: &str,
) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(packet.len() + name.len());
    out.extend_from_slice(packet.get(..crate::wire::HEADER)?);
    out.extend(crate::wire::encode_name(name)?);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&qclass.to_be_bytes());
    out.extend_from_slice(packet.get(question_end..)?);
    Some(out)
}

/// The walk's answer: `asked CNAME hit` in front of the hit's response (`hit`, wire format).
pub fn cname_answer(asked: &str, qtype: u16, hit_name: &str, hit: &[u8]) -> Option<Vec<u8>> {
    let mut msg = Message::from_vec(hit).ok()?;
    let asked_name = Name::from_ascii(asked).ok()?;
    let target = Name::from_ascii(hit_name).ok()?;
    // The CNAME lives as long as what it leads to: the first answer, or the negative TTL.
    let ttl = msg.answers.first().map(|r| r.ttl).or_else(|| {
        msg.authorities.iter().find_map(|r| match &r.data {
            RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
            _ => None,
        })
    })?;
    let mut query = Query::query(asked_name.clone(), RecordType::from(qtype));
    query.set_query_class(DNSClass::IN);
    msg.queries = vec![query];
    msg.answers.insert(0, Record::from_rdata(asked_name, ttl, RData::CNAME(CNAME(target))));
    msg.edns = None;
    msg.to_vec().ok()
}

/// Counts a walk's outcome.
pub fn count(result: &'static str, started: Instant) {
    metrics::counter!("nodedns_autopath_total", "result" => result).increment(1);
    metrics::histogram!("nodedns_autopath_duration_seconds").record(started.elapsed().as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(search: &[&str], node_search: NodeSearch, ndots: Option<u32>) -> PodEntry {
        PodEntry {
            ip: vec![10, 0, 0, 1],
            namespace: "testns".into(),
            name: "p".into(),
            host_network: false,
            search: search.iter().map(|s| s.to_string()).collect(),
            node_search: node_search as i32,
            ndots,
            shared: false,
        }
    }

    const CLUSTER: [&str; 3] = ["testns.svc.cluster.local", "svc.cluster.local", "cluster.local"];

    #[test]
    fn the_walk_follows_the_pods_real_search_list_and_ndots() {
        let node = ResolvConf { search: vec!["corp.example".into()], ndots: Some(1), ..Default::default() };
        let p = pod(&CLUSTER, NodeSearch::After, Some(5));
        assert_eq!(
            candidates("example.com.testns.svc.cluster.local.", &p, &node).unwrap(),
            [
                "example.com.svc.cluster.local.",
                "example.com.cluster.local.",
                "example.com.corp.example.",
                "example.com."
            ]
        );
        // Not the first expansion: no walk.
        assert_eq!(candidates("example.com.svc.cluster.local.", &p, &node), None);
        assert_eq!(candidates("testns.svc.cluster.local.", &p, &node), None);
        // ndots 1 and a dotted name: the resolver tried the bare name first, so it is not retried.
        let p1 = pod(&CLUSTER, NodeSearch::After, Some(1));
        let c = candidates("example.com.testns.svc.cluster.local.", &p1, &node).unwrap();
        assert_eq!(c.last().unwrap(), "example.com.corp.example.");
        // dnsPolicy Default: the node's list first, its ndots.
        let d = pod(&[], NodeSearch::Before, None);
        assert_eq!(candidates("web.corp.example.", &d, &node).unwrap(), ["web."]);
        // hostNetwork and shared addresses are never autopathed.
        let mut h = p.clone();
        h.host_network = true;
        assert_eq!(candidates("x.testns.svc.cluster.local.", &h, &node), None);
        h.host_network = false;
        h.shared = true;
        assert_eq!(candidates("x.testns.svc.cluster.local.", &h, &node), None);
    }

    #[test]
    fn candidate_queries_keep_the_clients_shape() {
        let q = nodedns_testsupport_query();
        let mut key = Vec::new();
        let parsed = crate::wire::parse_query(&q, &mut key).unwrap();
        let c = candidate_query(&q, parsed.question_end, parsed.qtype, parsed.qclass, "a.example.").unwrap();
        let mut key2 = Vec::new();
        let p2 = crate::wire::parse_query(&c, &mut key2).unwrap();
        assert_eq!(crate::wire::key_name(&key2), "a.example.");
        assert_eq!((p2.qtype, p2.edns, p2.rd), (parsed.qtype, parsed.edns, parsed.rd));
        assert_eq!(candidate_query(&q, parsed.question_end, 1, 1, &format!("{}.x.", "a".repeat(64))), None);
    }

    /// `www.testns.svc.cluster.local. A` with an OPT record.
    fn nodedns_testsupport_query() -> Vec<u8> {
        let mut q = vec![0, 7, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1];
        for l in ["www", "testns", "svc", "cluster", "local"] {
            q.push(l.len() as u8);
            q.extend_from_slice(l.as_bytes());
        }
        q.extend_from_slice(&[0, 0, 1, 0, 1, 0, 0, 41, 4, 0, 0, 0, 0, 0, 0, 0]);
        q
    }
}
