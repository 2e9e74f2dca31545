//! The agent's cache on any answer: a response from the authority or an upstream (any bytes) is
//! laid out and stored under a query's key (`Cache::insert`: OPT stripped, TTL picked), then a hit
//! is rewritten for a client (`Entry::write`: id, question case, RD, TTLs aged or stale, OPT,
//! truncation) at some age, and turned round-robin (`Entry::rotate`). Then eviction by name, and
//! the sweep. No panic, and: the hit carries the client's id and RD, fits the client's UDP size,
//! is a well-formed response when the stored question is the client's, with every TTL at the
//! stale TTL when served stale; turning keeps what parses parsing, with as many records; a cluster
//! answer is gone after a notice for its question name; nothing outlives ttl + stale window.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nodedns_agent::cache::{Lookup, STALE_TTL};
use nodedns_agent::wire::{self, HEADER};
use nodedns_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let age = u64::from(input.u16());
    let packet = input.chunk();
    let response = input.chunk();
    let mut key = Vec::new();
    let Ok(query) = wire::parse_query(packet, &mut key) else { return };
    let cluster = flags & 1 != 0;
    let stale = flags & 2 != 0;
    let udp = flags & 4 != 0;

    let cache = nodedns_fuzz::cache();
    let t0 = Instant::now();
    let before = wire::layout(response);
    let Some(_entry) = cache.insert(&key, response, t0, cluster) else { return };
    let before = before.expect("a stored response has a layout");

    let now = t0 + Duration::from_secs(age);
    let entry = match cache.lookup(&key, now) {
        Lookup::Fresh(e) | Lookup::Stale(e) => e,
        Lookup::Miss => return,
    };
    let mut out = Vec::new();
    entry.write(packet, &query, now, stale, udp, &mut out);
    assert_eq!(out[..2], packet[..2], "the client's id");
    assert_eq!(out[2] & 0x01, packet[2] & 0x01, "the client's RD");
    if udp {
        assert!(out.len() <= query.udp_limit(), "{} > {}", out.len(), query.udp_limit());
    }
    // The stored question is the client's (names compared case-insensitively, as the upstream
    // forwarder checks before anything is cached; the authority answers the question asked).
    let same_question = wire::parse_question_end(response) == Some(query.question_end)
        && response[HEADER..query.question_end].eq_ignore_ascii_case(&packet[HEADER..query.question_end]);
    if same_question {
        let layout = wire::layout(&out).expect("a hit for the same question is well-formed");
        // What a client's parser (hickory here) reads in the stored response, it reads in the hit.
        if hickory_proto::op::Message::from_vec(response).is_ok() {
            let hit = hickory_proto::op::Message::from_vec(&out);
            assert!(hit.is_ok(), "the stored response parses, the hit does not: {hit:?}");
        }
        assert_eq!(layout.opt.is_some(), query.edns.is_some());
        assert_eq!(wire::parse_question_end(&out), Some(query.question_end));
        // The client's spelling of the name.
        assert_eq!(out[HEADER..query.question_end], packet[HEADER..query.question_end]);
        if !layout.truncated {
            for at in layout.ttl_offsets {
                let at = usize::from(at);
                let ttl = u32::from_be_bytes([out[at], out[at + 1], out[at + 2], out[at + 3]]);
                if stale {
                    assert_eq!(ttl, STALE_TTL);
                }
            }
        }
    }
    // The round-robin turn of the hit (as `--no-rotate` off does): the same records, moved in
    // place; what parsed before still parses, a few turns on.
    let parsed = hickory_proto::op::Message::from_vec(&out).map(|m| m.answers.len());
    for _ in 0..3 {
        entry.rotate(&mut out);
        assert_eq!(out[..2], packet[..2], "the client's id after a turn");
        if let Ok(answers) = &parsed {
            let turned = hickory_proto::op::Message::from_vec(&out);
            assert_eq!(turned.as_ref().map(|m| m.answers.len()).ok(), Some(*answers), "{turned:?}");
        }
    }
    let _ = entry.hit_wants_prefetch(now);

    if cluster {
        let evicted = cache.evict_names([wire::key_name(&key).as_str()]);
        assert!(evicted >= 1, "a notice for the question name evicts its answer");
        assert!(matches!(cache.lookup(&key, t0), Lookup::Miss));
        // Owner names of whatever else; the index must stay consistent.
        for owner in &before.owners {
            cache.evict_names([owner.as_str()]);
        }
    }
    cache.insert(&key, response, t0, cluster);
    cache.evict_subtrees(&[".".into()]);
    cache.insert(&key, response, t0, cluster);
    // max TTL 3600 + stale window 3600 s by default.
    cache.sweep(t0 + Duration::from_secs(7201));
    assert_eq!(cache.entry_count(), 0, "nothing outlives ttl + stale window");
});
