//! What the agent does with the authority's gRPC messages, decoded from any bytes: Subscribe
//! messages (Snapshot, Update, Draining) applied to its cluster view and cache
//! (`AuthorityLink::apply`: pod table, autopath contexts, zones, evictions by name and subtree),
//! and Resolve answers (`AuthorityLink::deliver` with nobody waiting, then the answer bytes cached
//! and served as `Resolver` does with a cluster answer). The cache starts with cluster and
//! upstream answers to evict. No panic, and: every autopath context belongs to a known pod that
//! is neither hostNetwork nor shared; the last revision applied is the one reported.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nodedns_agent::authority_client::AuthorityLink;
use nodedns_agent::cache::Lookup;
use nodedns_agent::wire;
use nodedns_fuzz::Input;
use nodedns_proto::v1::{ResolveRequest, ResolveResponse, SubscribeResponse};
use prost::Message;

/// Queries whose real answers seed the cache (cluster ones indexed for notices).
const NAMES: [(&str, u16); 6] = [
    ("web.ns1.svc.cluster.local.", 1),
    ("alias.ns1.svc.cluster.local.", 1),
    ("_http._tcp.web.ns1.svc.cluster.local.", 33),
    ("nope.ns1.svc.cluster.local.", 1),
    ("1.0.0.10.in-addr.arpa.", 12),
    ("db.ns1.svc.cluster.local.", 28),
];

fn query(name: &str, qtype: u16) -> Vec<u8> {
    let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    q.extend(wire::encode_name(name).unwrap_or_else(|| vec![0]));
    q.extend_from_slice(&qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    q
}

fuzz_target!(|data: &[u8]| {
    let service = nodedns_fuzz::service(0);
    let cache = nodedns_fuzz::cache();
    let link = AuthorityLink::new(
        Duration::from_secs(1),
        vec!["cluster.local.".into()],
        nodedns_fuzz::node_resolv(),
    );
    let t0 = Instant::now();
    let mut keys = Vec::new();
    for (i, (name, qtype)) in NAMES.iter().enumerate() {
        let q = query(name, *qtype);
        let mut key = Vec::new();
        let Ok(_) = wire::parse_query(&q, &mut key) else { continue };
        let answer = service.answer(&ResolveRequest {
            id: 1,
            query: q.clone(),
            client_ip: vec![10, 1, 0, 9],
            transport: 1,
        });
        cache.insert(&key, &answer.response, t0, i % 3 != 2);
        keys.push((key, q));
    }
    let mut applied = link.applied();
    let mut last_revision = None;
    for frame in Input::new(data).chunks() {
        let Some((&kind, bytes)) = frame.split_first() else { continue };
        if kind & 1 == 0 {
            let Ok(msg) = SubscribeResponse::decode(bytes) else { continue };
            let draining =
                matches!(msg.event, Some(nodedns_proto::v1::subscribe_response::Event::Draining(_)));
            let revision = msg.revision;
            let stop = link.apply(msg.revision, msg.event, &cache);
            assert_eq!(stop, draining);
            if !draining {
                last_revision = Some(revision);
            }
        } else {
            let Ok(answer) = ResolveResponse::decode(bytes) else { continue };
            // Nobody waits for it: dropped.
            link.deliver(answer.clone());
            // What the request path does with an OK answer: cache it, serve it.
            if let Some((key, q)) = keys.get(usize::from(kind >> 1) % keys.len().max(1)) {
                let mut k = Vec::new();
                if let (Ok(parsed), Some(entry)) =
                    (wire::parse_query(q, &mut k), cache.insert(key, &answer.response, t0, true))
                {
                    let mut out = Vec::new();
                    entry.write(q, &parsed, t0, false, true, &mut out);
                    assert!(out.len() <= parsed.udp_limit());
                }
            }
        }
        let view = link.view();
        for (ip, _) in view.contexts.iter() {
            let pod = view.pods.get(ip).expect("a context belongs to a known pod");
            assert!(!pod.host_network && !pod.shared);
        }
    }
    if let Some(revision) = last_revision {
        assert_eq!(*applied.borrow_and_update(), revision);
    }
    for (key, _) in &keys {
        let _ = matches!(cache.lookup(key, t0), Lookup::Fresh(_));
    }
    cache.sweep(t0 + Duration::from_secs(7201));
});
