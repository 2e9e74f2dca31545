//! The agent's query parser (`wire::parse_query`) and cache key on any bytes: no panic, and for
//! every query it accepts: the question it found is where `parse_question_end` finds it, the key
//! ignores the letter case of the name (0x20 randomisation must hit the same entry), and the error
//! and truncated answers built from it are well-formed responses to it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodedns_agent::wire::{self, HEADER};
use nodedns_fuzz::Input;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let case_mask = input.u16();
    let packet = input.rest();
    let mut key = Vec::new();
    let mut out = Vec::new();
    let query = match wire::parse_query(packet, &mut key) {
        Ok(q) => q,
        Err(wire::Reject::Drop) => {
            assert!(packet.len() < HEADER || packet[2] & 0x80 != 0);
            return;
        }
        Err(wire::Reject::Rcode(rcode)) => {
            wire::error_response(packet, None, rcode, &mut out);
            assert_eq!(out.len(), HEADER);
            assert_eq!(out[..2], packet[..2]);
            return;
        }
    };
    assert!(query.question_end <= packet.len());
    assert_eq!(wire::parse_question_end(packet), Some(query.question_end));
    assert!(key.len() <= 255 + 5);
    let _ = wire::key_name(&key);
    assert!(query.udp_limit() >= 512);

    // The same question in other letter case: the same key.
    let mut flipped = packet.to_vec();
    for (i, b) in flipped[HEADER..query.question_end - 4].iter_mut().enumerate() {
        if b.is_ascii_alphabetic() && case_mask & (1 << (i % 16)) != 0 {
            *b ^= 0x20;
        }
    }
    let mut key2 = Vec::new();
    let query2 = wire::parse_query(&flipped, &mut key2).expect("a case change keeps a query valid");
    assert_eq!(key, key2, "letter case must not change the cache key");
    assert_eq!(query.question_end, query2.question_end);

    // Error answers (FORMERR, SERVFAIL, NOTIMP, BADVERS): a response to this question.
    for rcode in [1u8, 2, 4, 16] {
        wire::error_response(packet, Some(&query), rcode, &mut out);
        assert_eq!(out[..2], packet[..2]);
        assert!(out[2] & 0x80 != 0, "QR set");
        assert_eq!(wire::parse_question_end(&out), Some(query.question_end));
        assert_eq!(out[HEADER..query.question_end], packet[HEADER..query.question_end]);
        let layout = wire::layout(&out).expect("an error answer we build parses");
        assert_eq!(layout.rcode, rcode & 0x0f);
        assert_eq!(layout.opt.is_some(), query.edns.is_some());
        assert!(out.len() <= query.udp_limit());
    }

    // Truncating an answer (here: the query itself, padded) keeps header, question and OPT.
    let mut long = packet.to_vec();
    long.resize(query.udp_limit() + 1, 0);
    wire::truncate(&mut long, &query);
    assert!(long[2] & 0x02 != 0, "TC set");
    assert!(long.len() <= query.udp_limit());
    assert_eq!(wire::parse_question_end(&long), Some(query.question_end));
});
