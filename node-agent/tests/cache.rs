//! The cache against real responses: the zone engine answers the conformance fixture, the cache
//! stores those bytes, and hits are checked by parsing what a client would receive. The clock is
//! passed in, so aging and expiry need no sleeping.

use std::time::{Duration, Instant};

use hickory_proto::op::{Message, ResponseCode};
use nodedns_agent::cache::{Cache, Limits, Lookup, STALE_TTL};
use nodedns_agent::wire::{self, Query};
use nodedns_testsupport::client::build;
use nodedns_testsupport::shared_dir;
use nodedns_zone::file::parse_cluster;
use nodedns_zone::model::ClusterState;
use nodedns_zone::{Context, Transport, ZoneConfig, ZoneIndex, serve};

fn index() -> ZoneIndex {
    let text = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    let state = ClusterState::from_objects(parse_cluster(&text).unwrap().objects);
    ZoneIndex::build(&state, &ZoneConfig { ttl: 30, ..Default::default() }, 1)
}

/// A query's bytes, key and parse.
fn query(name: &str, qtype: &str, id: u16, edns: Option<u16>) -> (Vec<u8>, Vec<u8>, Query) {
    let bytes = build(name, qtype, id, edns).unwrap().bytes;
    let mut key = Vec::new();
    let q = wire::parse_query(&bytes, &mut key).unwrap();
    (bytes, key, q)
}

fn answer(index: &ZoneIndex, bytes: &[u8]) -> Vec<u8> {
    let ctx = Context {
        transport: Transport::Udp,
        client: [127, 0, 0, 1].into(),
        transfer_from: &[],
        describe: false,
    };
    serve(index, bytes, &ctx).messages.remove(0)
}

/// Stores the authority's answer to `name`/`qtype`; returns the key.
fn cached(cache: &Cache, index: &ZoneIndex, name: &str, qtype: &str, now: Instant) -> Vec<u8> {
    let (bytes, key, _) = query(name, qtype, 1, Some(1232));
    assert!(cache.insert(&key, &answer(index, &bytes), now, true).is_some(), "{name} {qtype} is cacheable");
    key
}

fn fresh(cache: &Cache, key: &[u8], now: Instant) -> bool {
    matches!(cache.lookup(key, now), Lookup::Fresh(_))
}

#[test]
fn a_hit_rewrites_id_case_and_aged_ttls_only() {
    let index = index();
    let cache = Cache::new(Limits::default());
    let t0 = Instant::now();
    cached(&cache, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    let (bytes, key, q) = query("SVC1.TestNS.svc.cluster.local.", "A", 0xbeef, None);
    let Lookup::Fresh(entry) = cache.lookup(&key, t0 + Duration::from_secs(12)) else { panic!("a hit") };
    let mut out = Vec::new();
    entry.write(&bytes, &q, t0 + Duration::from_secs(12), false, true, &mut out);
    let msg = Message::from_vec(&out).unwrap();
    assert_eq!(msg.metadata.id, 0xbeef);
    assert_eq!(msg.queries[0].name().to_string(), "SVC1.TestNS.svc.cluster.local.", "the client's case");
    assert_eq!(msg.answers.len(), 1);
    assert_eq!(msg.answers[0].ttl, 18, "30 s aged by 12");
    assert!(msg.edns.is_none(), "no OPT for a client that sent none");
    // The same bytes as the authority's, but for id, case and TTL.
    let mut fresh_answer = answer(&index, &bytes);
    assert_eq!(out.len(), fresh_answer.len());
    let ttl_at = out.len() - 10;
    fresh_answer[ttl_at..ttl_at + 4].copy_from_slice(&18u32.to_be_bytes());
    assert_eq!(out, fresh_answer, "byte for byte what the authority sends now, but for the aged TTL");

    // An EDNS client gets an OPT record back, with its DO bit.
    let (bytes, key2, q) = query("svc1.testns.svc.cluster.local.", "A", 7, Some(4096));
    assert_eq!(key, key2, "EDNS without DO shares the entry");
    entry.write(&bytes, &q, t0, false, true, &mut out);
    assert!(Message::from_vec(&out).unwrap().edns.is_some());
}

#[test]
fn negative_answers_live_for_the_soa_minimum_then_go_stale_then_miss() {
    let index = index();
    let limits = Limits { stale_for: Duration::from_secs(60), ..Limits::default() };
    let cache = Cache::new(limits);
    let t0 = Instant::now();
    let key = cached(&cache, &index, "nope.testns.svc.cluster.local.", "A", t0);
    let Lookup::Fresh(e) = cache.lookup(&key, t0) else { panic!("fresh") };
    assert!(e.negative);
    assert_eq!(e.remaining(t0), 30, "min(SOA TTL, SOA MINIMUM), RFC 2308 section 5");
    assert!(fresh(&cache, &key, t0 + Duration::from_secs(29)));
    let Lookup::Stale(e) = cache.lookup(&key, t0 + Duration::from_secs(31)) else { panic!("stale") };
    let (bytes, _, q) = query("nope.testns.svc.cluster.local.", "A", 9, None);
    let mut out = Vec::new();
    e.write(&bytes, &q, t0 + Duration::from_secs(31), true, true, &mut out);
    let msg = Message::from_vec(&out).unwrap();
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert!(msg.authorities.iter().all(|r| r.ttl == STALE_TTL), "stale answers carry 30 s (RFC 8767)");
    assert!(matches!(cache.lookup(&key, t0 + Duration::from_secs(91)), Lookup::Miss));
}

#[test]
fn ttl_caps_and_what_is_not_cached() {
    let index = index();
    let t0 = Instant::now();
    let capped = Cache::new(Limits { max_ttl: 4, ..Limits::default() });
    let key = cached(&capped, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    assert!(
        fresh(&capped, &key, t0 + Duration::from_secs(3))
            && !fresh(&capped, &key, t0 + Duration::from_secs(4))
    );
    let floored = Cache::new(Limits { min_ttl: 120, ..Limits::default() });
    let key = cached(&floored, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    assert!(fresh(&floored, &key, t0 + Duration::from_secs(100)));

    let cache = Cache::new(Limits::default());
    let (bytes, key, q) = query("svc1.testns.svc.cluster.local.", "A", 1, None);
    let mut servfail = Vec::new();
    wire::error_response(&bytes, Some(&q), 2, &mut servfail);
    assert!(cache.insert(&key, &servfail, t0, false).is_none(), "SERVFAIL is not cached");
    let mut truncated = answer(&index, &bytes);
    truncated[2] |= 0x02;
    assert!(cache.insert(&key, &truncated, t0, false).is_none(), "TC is not cached");
    assert!(cache.insert(&key, &[1, 2, 3], t0, false).is_none(), "garbage is not cached");
}

#[test]
fn change_notices_evict_exactly_the_answers_they_make_wrong() {
    let index = index();
    let cache = Cache::new(Limits::default());
    let t0 = Instant::now();
    let svc = cached(&cache, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    let srv = cached(&cache, &index, "_http._tcp.svc1.testns.svc.cluster.local.", "SRV", t0);
    let other = cached(&cache, &index, "svc2.testns.svc.cluster.local.", "A", t0);
    let below = cached(&cache, &index, "x.y.nope.testns.svc.cluster.local.", "A", t0);
    let above = cached(&cache, &index, "_tcp.fresh.testns.svc.cluster.local.", "A", t0);
    let ext = cached(&cache, &index, "external.testns.svc.cluster.local.", "A", t0);
    let external = {
        // An upstream's NXDOMAIN (no SOA: cached for 5 s).
        let (bytes, key, q) = query("example.com.", "A", 1, None);
        let mut out = Vec::new();
        wire::error_response(&bytes, Some(&q), 3, &mut out);
        assert!(cache.insert(&key, &out, t0, false).is_some());
        key
    };
    // svc1's address changed: its A answer goes, and so does the SRV answer, whose target is
    // svc1 and whose additional section holds svc1's A record.
    let evicted = cache.evict_names(["svc1.testns.svc.cluster.local."]);
    assert!(evicted >= 1);
    assert!(!fresh(&cache, &svc, t0), "the answer owned by the changed name");
    assert!(fresh(&cache, &other, t0), "another service's answer stays");
    assert!(!fresh(&cache, &srv, t0), "answers holding the name in any section go");
    // A new service `nope` appears: negative answers below it go.
    cache.evict_names(["nope.testns.svc.cluster.local."]);
    assert!(!fresh(&cache, &below, t0));
    // `_http._tcp.fresh` appears: the NXDOMAIN cached for its parent `_tcp.fresh` is now wrong.
    cache.evict_names(["_http._tcp.fresh.testns.svc.cluster.local."]);
    assert!(!fresh(&cache, &above, t0));
    assert!(fresh(&cache, &ext, t0), "unrelated cluster answers stay");
    // An ExternalName's target changing is the service's own record: notified by its owner.
    cache.evict_names(["external.testns.svc.cluster.local."]);
    assert!(!fresh(&cache, &ext, t0));
    // Subtrees: everything cluster under them, nothing else.
    let svc = cached(&cache, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    assert_eq!(cache.evict_subtrees(&["cluster.local.".to_owned()]), 2, "svc1 and svc2");
    assert!(!fresh(&cache, &svc, t0));
    assert!(fresh(&cache, &external, t0), "upstream answers are never evicted by notices");
}

#[test]
fn the_byte_bound_holds_under_a_flood_of_unique_names() {
    let index = index();
    let cache = Cache::new(Limits { max_bytes: 64 << 10, ..Limits::default() });
    let t0 = Instant::now();
    for i in 0..5000 {
        cached(&cache, &index, &format!("n{i}.testns.svc.cluster.local."), "A", t0);
    }
    assert!(cache.weighted_size() <= 64 << 10, "{} bytes", cache.weighted_size());
    assert!(cache.entry_count() > 50 && cache.entry_count() < 5000, "{} entries", cache.entry_count());
    // Evicted entries left the notice index: a notice for all of them finds only live ones.
    let names: Vec<String> = (0..5000).map(|i| format!("n{i}.testns.svc.cluster.local.")).collect();
    let live = cache.entry_count();
    let evicted = cache.evict_names(names.iter().map(String::as_str));
    assert_eq!(evicted as u64, live);
}

#[test]
fn popular_entries_ask_for_one_refresh_in_their_last_tenth() {
    let index = index();
    let cache = Cache::new(Limits::default());
    let t0 = Instant::now();
    let key = cached(&cache, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    let Lookup::Fresh(e) = cache.lookup(&key, t0) else { panic!("fresh") };
    // TTL 30: the last tenth is the last 3 s.
    assert!(!e.hit_wants_prefetch(t0 + Duration::from_secs(28)), "not popular yet (1 hit)");
    assert!(!e.hit_wants_prefetch(t0 + Duration::from_secs(1)), "popular enough? not yet (2 hits)");
    assert!(!e.hit_wants_prefetch(t0 + Duration::from_secs(2)), "popular, but early in its life");
    assert!(e.hit_wants_prefetch(t0 + Duration::from_secs(27)), "popular and in its last tenth");
    assert!(!e.hit_wants_prefetch(t0 + Duration::from_secs(28)), "one refresh at a time");
}

#[test]
fn the_sweep_drops_entries_past_their_stale_window_and_their_index_names() {
    let index = index();
    let cache = Cache::new(Limits { stale_for: Duration::from_secs(60), ..Limits::default() });
    let t0 = Instant::now();
    // TTL 30 (the index's), kept stale for 60 more.
    let old = cached(&cache, &index, "svc1.testns.svc.cluster.local.", "A", t0);
    let young = cached(&cache, &index, "svc2.testns.svc.cluster.local.", "A", t0 + Duration::from_secs(60));
    assert_eq!(cache.sweep(t0 + Duration::from_secs(89)), 0, "both still within their stale window");
    assert_eq!(cache.entry_count(), 2);
    assert_eq!(cache.sweep(t0 + Duration::from_secs(91)), 1, "svc1 is past 30 + 60 s");
    assert_eq!(cache.entry_count(), 1);
    assert!(matches!(cache.lookup(&old, t0 + Duration::from_secs(91)), Lookup::Miss));
    assert!(matches!(cache.lookup(&young, t0 + Duration::from_secs(91)), Lookup::Stale(_)));
    assert!(cache.weighted_size() > 0);
    // The swept entry left the notice index: a notice naming both finds only the live one.
    assert_eq!(cache.evict_names(["svc1.testns.svc.cluster.local.", "svc2.testns.svc.cluster.local."]), 1);
    assert_eq!(cache.entry_count(), 0);
}

/// Found by fuzzing (`fuzz/` target `cache_hit`): bytes after the last record were stored with
/// the answer, and the OPT record a hit appends landed after them, where no parser finds it.
#[test]
fn bytes_after_the_last_record_are_not_stored_so_a_hits_opt_record_parses() {
    let index = index();
    let cache = Cache::new(Limits::default());
    let t0 = Instant::now();
    let (bytes, key, q) = query("svc1.testns.svc.cluster.local.", "A", 3, Some(1232));
    let clean = answer(&index, &bytes);
    let mut padded = clean.clone();
    padded.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0, 0, 0]);
    let entry = cache.insert(&key, &padded, t0, true).expect("cacheable");
    let mut out = Vec::new();
    entry.write(&bytes, &q, t0, false, true, &mut out);
    let msg = Message::from_vec(&out).expect("the hit parses");
    assert!(msg.edns.is_some(), "the client's OPT record is where its parser looks");
    assert_eq!(msg.answers.len(), 1);
    assert_eq!(out, clean, "what the authority sent, without the trailing bytes");
}

/// Found by fuzzing (`fuzz/` target `cache_hit`): a CNAME whose RDATA is shorter than its target
/// (read from the bytes after the record) was cached, as was an SOA too short for its MINIMUM
/// (read from the record's fixed fields). Both are malformed: not cached.
#[test]
fn a_cname_running_past_its_rdata_or_a_short_soa_is_not_cached() {
    let cache = Cache::new(Limits::default());
    let t0 = Instant::now();
    let (bytes, key, _) = query("alias.testns.svc.cluster.local.", "A", 5, None);
    let mut cname = bytes.clone();
    cname[2] |= 0x80;
    cname[7] = 1; // ANCOUNT
    // Owner: the question's name; CNAME IN, TTL 30, RDLENGTH 0; then a name outside the record.
    cname.extend_from_slice(&[0xc0, 0x0c, 0, 5, 0, 1, 0, 0, 0, 30, 0, 0]);
    cname.extend(wire::encode_name("svc1.testns.svc.cluster.local.").unwrap());
    assert_eq!(wire::layout(&cname), None);
    assert!(cache.insert(&key, &cname, t0, true).is_none());

    let mut soa = bytes.clone();
    soa[2] |= 0x80;
    soa[3] |= 3; // NXDOMAIN
    soa[9] = 1; // NSCOUNT
    // Owner: the root; SOA IN, TTL 30, RDLENGTH 4 (a real SOA has two names and 20 bytes).
    soa.extend_from_slice(&[0, 0, 6, 0, 1, 0, 0, 0, 30, 0, 4, 0, 0, 0, 5]);
    assert_eq!(wire::layout(&soa), None);
    assert!(cache.insert(&key, &soa, t0, true).is_none());
}

/// Found by fuzzing (`fuzz/` target `cache_hit`): an owner name compressed as a pointer into the
/// header read the id and counts as labels, so the same entry's names changed with each client's
/// id. Pointers must lead back to an earlier name (RFC 1035 section 4.1.4): not cached.
#[test]
fn a_compression_pointer_into_the_header_or_forward_is_not_cached() {
    let cache = Cache::new(Limits::default());
    let t0 = Instant::now();
    let (bytes, key, _) = query("svc1.testns.svc.cluster.local.", "A", 0, None);
    for target in [1u8, 200] {
        let mut r = bytes.clone();
        r[2] |= 0x80;
        r[7] = 1; // ANCOUNT
        // Owner: a pointer to `target`; A IN, TTL 30, 10.0.0.1.
        r.extend_from_slice(&[0xc0, target, 0, 1, 0, 1, 0, 0, 0, 30, 0, 4, 10, 0, 0, 1]);
        r.resize(r.len().max(usize::from(target) + 8), 0);
        assert_eq!(wire::layout(&r), None, "pointer to {target}");
        assert!(cache.insert(&key, &r, t0, true).is_none(), "pointer to {target}");
    }
}
