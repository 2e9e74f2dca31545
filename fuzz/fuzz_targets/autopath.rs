//! Autopath detection on any pod entry, node resolv.conf and query: the search list, the pod's
//! context (`autopath::context`), the hit path's cheap test (`may_apply`), the names a walk tries
//! (`candidates`), the candidate queries built from the client's (`candidate_query`) and the
//! CNAME answer built from any hit bytes (`cname_answer`). No panic, and: a walk never starts for
//! hostNetwork or shared addresses; when the names are plain (letters, digits, hyphens) the cheap
//! test passes every query that has a walk; every candidate query is a query the agent parses back
//! to the candidate's name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodedns_agent::autopath;
use nodedns_agent::config::ResolvConf;
use nodedns_agent::wire;
use nodedns_fuzz::{Input, ldh, plain_wire_name};
use nodedns_proto::v1::PodEntry;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let ndots = input.byte();
    let node_ndots = input.byte();
    let counts = input.byte();
    let packet = input.chunk();
    let hit = input.chunk();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let pod_search: Vec<String> = (0..counts & 0x0f).map(|_| text(input.chunk())).collect();
    let node_search: Vec<String> = (0..counts >> 4).map(|_| text(input.chunk())).collect();
    let pod = PodEntry {
        ip: vec![10, 1, 0, 9],
        namespace: "ns1".into(),
        name: "p".into(),
        host_network: flags & 1 != 0,
        search: pod_search,
        // Out-of-range values too: the agent reads them as "none".
        node_search: i32::from((flags >> 2) & 0x07),
        ndots: (flags & 0x20 != 0).then_some(u32::from(ndots) * 0x0101_0101),
        shared: flags & 2 != 0,
    };
    let node = ResolvConf {
        nameservers: Vec::new(),
        search: node_search,
        ndots: (flags & 0x40 != 0).then_some(node_ndots),
    };

    let search = autopath::search_list(&pod, &node);
    assert!(search.len() <= 32);
    let ctx = autopath::context(&pod, &node);
    let mut key = Vec::new();
    let Ok(query) = wire::parse_query(packet, &mut key) else { return };
    let qname = wire::key_name(&key);
    let applies = ctx.as_ref().is_some_and(|c| autopath::may_apply(&key, c));
    let candidates = autopath::candidates(&qname, &pod, &node);
    if pod.host_network || pod.shared {
        assert!(ctx.is_none() && candidates.is_none(), "never autopathed");
    }
    let plain = plain_wire_name(&packet[wire::HEADER..query.question_end - 4])
        && search.iter().all(|s| ldh(s.as_bytes()) && !s.contains(".."));
    if plain && ctx.is_some() && candidates.is_some() {
        // The hit path's cheap test must not miss a walk (it may pass one with nothing to try).
        assert!(applies, "may_apply misses the walk of {qname}");
    }
    // The tagged key's plain part is the asked key.
    if let Some(c) = &ctx {
        let mut tagged = key.clone();
        tagged.extend_from_slice(&c.tag);
        assert_eq!(autopath::untagged(&tagged, true), &key[..]);
    }
    for name in candidates.unwrap_or_default() {
        let Some(cq) =
            autopath::candidate_query(packet, query.question_end, query.qtype, query.qclass, &name)
        else {
            continue;
        };
        let mut ckey = Vec::new();
        let parsed = wire::parse_query(&cq, &mut ckey).expect("a candidate query parses");
        assert_eq!((parsed.qtype, parsed.qclass, parsed.edns), (query.qtype, query.qclass, query.edns));
        if ldh(name.as_bytes()) && !name.contains("..") {
            assert_eq!(wire::key_name(&ckey), name.to_ascii_lowercase());
        }
        if let Some(answer) = autopath::cname_answer(&qname, query.qtype, &name, hit) {
            assert!(wire::layout(&answer).is_some(), "a CNAME answer we build is well-formed");
        }
    }
});
