//! ExternalName targets: an authoritative answer that ends in a CNAME to a name outside the
//! cluster zones (`external.ns.svc.<zone> CNAME ext.example.`) carries only the alias; the
//! target's records come from the resolver's own routes (cache, stub domains, upstreams) and are
//! appended after it, so a client gets the whole chain in one answer as RFC 1034 section 4.3.2
//! has a recursive server give it. The wire work is here; [`crate::request::Resolver::chase`]
//! fetches the target, for the agent's cluster answers and the authority's alike.

use hickory_proto::op::{Message, ResponseCode};

use crate::wire::{self, HEADER, TYPE_CNAME};

/// CNAME hops followed in one answer before giving up (the zone engine follows at most 8).
const MAX_HOPS: usize = 16;

/// One answer record's place in a message.
struct Rr {
    owner: usize,
    rtype: u16,
    rdata: usize,
}

/// Question types whose answer is the alias itself, or every type: never chased.
fn chased(qtype: u16) -> bool {
    // CNAME; ANY (255), AXFR (252), IXFR (251).
    !matches!(qtype, TYPE_CNAME | 251..=255)
}

/// The target of the CNAME chain `response` ends in when the chain starts at the question name
/// and the answer holds no record of the target: the name still to resolve (lower case,
/// absolute). `None` for anything else: not NOERROR, truncated, no CNAME, a CNAME question, a
/// chain already complete. Allocation-free unless the answer holds a CNAME.
pub fn dangling_target(response: &[u8]) -> Option<String> {
    if response.len() < HEADER || response[3] & 0x0f != 0 || response[2] & 0x02 != 0 {
        return None;
    }
    let answers = usize::from(u16::from_be_bytes([response[6], response[7]]));
    if answers == 0 {
        return None;
    }
    let question_end = wire::parse_question_end(response)?;
    let qtype = u16::from_be_bytes([response[question_end - 4], response[question_end - 3]]);
    if !chased(qtype) {
        return None;
    }
    // First pass: is there a CNAME at all (the common answer has none)?
    let mut at = question_end;
    let mut any_cname = false;
    for _ in 0..answers {
        let (rtype, next) = record(response, at)?;
        any_cname |= rtype == TYPE_CNAME;
        at = next;
    }
    if !any_cname {
        return None;
    }
    let mut records = Vec::with_capacity(answers);
    let mut at = question_end;
    for _ in 0..answers {
        let owner = at;
        let name_end = wire::skip_name(response, at)?;
        let (rtype, next) = record(response, at)?;
        records.push(Rr { owner, rtype, rdata: name_end + 10 });
        at = next;
    }
    let mut name = wire::read_name(response, HEADER)?;
    let mut hops = 0;
    while let Some(alias) = records
        .iter()
        .find(|r| r.rtype == TYPE_CNAME && wire::read_name(response, r.owner) == Some(name.clone()))
    {
        name = wire::read_name(response, alias.rdata)?;
        hops += 1;
        if hops > MAX_HOPS {
            return None;
        }
    }
    let answered = records.iter().any(|r| wire::read_name(response, r.owner).as_deref() == Some(&name));
    (hops > 0 && !answered).then_some(name)
}

/// The type of the record at `at` and where the next one starts.
fn record(msg: &[u8], at: usize) -> Option<(u16, usize)> {
    let at = wire::skip_name(msg, at)?;
    let fixed = msg.get(at..at + 10)?;
    let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    let end = at + 10 + rdlen;
    (end <= msg.len()).then_some((rtype, end))
}

/// `response` (ending in a dangling CNAME) with the answer records of `tail` (the target's
/// response) after its own, and the target's rcode and authority section: an NXDOMAIN target
/// keeps the CNAME (RFC 6604 section 2). The tail's authority records (its SOA on a negative
/// answer) live no longer than the alias, so a cache never keeps the combined denial past the
/// CNAME's TTL (RFC 2308 section 5: the negative TTL is the SOA's TTL or MINIMUM, the lower).
/// Positive tail records keep their TTLs: a cache takes the lowest of the answer anyway.
/// `None` when the tail is not NOERROR or NXDOMAIN (the alias alone is answered then).
pub fn append(response: &[u8], tail: &[u8]) -> Option<Vec<u8>> {
    let mut msg = Message::from_vec(response).ok()?;
    let tail = Message::from_vec(tail).ok()?;
    let rcode = tail.metadata.response_code;
    if rcode != ResponseCode::NoError && rcode != ResponseCode::NXDomain {
        return None;
    }
    let cap = msg.answers.iter().map(|r| r.ttl).min()?;
    msg.answers.extend(tail.answers);
    msg.authorities = tail
        .authorities
        .into_iter()
        .map(|mut r| {
            r.ttl = r.ttl.min(cap);
            r
        })
        .collect();
    msg.metadata.response_code = rcode;
    msg.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use hickory_proto::op::{MessageType, OpCode, Query};
    use hickory_proto::rr::rdata::{A, CNAME, SOA};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    use super::*;

    fn name(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(qname: &str, qtype: RecordType, answers: Vec<Record>) -> Message {
        let mut m = Message::new(7, MessageType::Response, OpCode::Query);
        m.metadata.authoritative = true;
        m.queries.push(Query::query(name(qname), qtype));
        m.answers = answers;
        m
    }

    fn cname(owner: &str, target: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::CNAME(CNAME(name(target))))
    }

    fn a(owner: &str, ttl: u32) -> Record {
        Record::from_rdata(name(owner), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
    }

    const EXT: &str = "External.testns.svc.cluster.local.";

    #[test]
    fn only_a_chain_ending_without_the_targets_records_dangles() {
        let alias = cname(EXT, "Ext.Interwebs.test.", 5);
        let bytes = |m: Message| m.to_vec().unwrap();
        assert_eq!(
            dangling_target(&bytes(response(EXT, RecordType::A, vec![alias.clone()]))).as_deref(),
            Some("ext.interwebs.test.")
        );
        // Two hops, the second still dangling.
        let chain = vec![
            cname(EXT, "x.testns.svc.cluster.local.", 5),
            cname("x.testns.svc.cluster.local.", "y.example.", 5),
        ];
        assert_eq!(
            dangling_target(&bytes(response(EXT, RecordType::AAAA, chain))).as_deref(),
            Some("y.example.")
        );
        // Complete, asked for the alias itself, no alias, or not NOERROR: nothing to chase.
        let done = vec![alias.clone(), a("ext.interwebs.test.", 300)];
        assert_eq!(dangling_target(&bytes(response(EXT, RecordType::A, done))), None);
        assert_eq!(dangling_target(&bytes(response(EXT, RecordType::CNAME, vec![alias.clone()]))), None);
        assert_eq!(dangling_target(&bytes(response(EXT, RecordType::A, vec![a(EXT, 5)]))), None);
        let mut nx = response(EXT, RecordType::A, vec![alias.clone()]);
        nx.metadata.response_code = ResponseCode::NXDomain;
        assert_eq!(dangling_target(&bytes(nx)), None);
        // A loop of aliases ends.
        let looped = vec![cname(EXT, "b.example.", 5), cname("b.example.", EXT, 5)];
        assert_eq!(dangling_target(&bytes(response(EXT, RecordType::A, looped))), None);
        // Cut anywhere: never a panic.
        let whole = bytes(response(EXT, RecordType::A, vec![alias]));
        for cut in 0..whole.len() {
            let _ = dangling_target(&whole[..cut]);
        }
    }

    #[test]
    fn the_tail_follows_the_alias_with_its_rcode_and_a_denial_no_longer_than_the_alias() {
        let original =
            response(EXT, RecordType::A, vec![cname(EXT, "ext.interwebs.test.", 5)]).to_vec().unwrap();
        let mut tail = response("ext.interwebs.test.", RecordType::A, vec![a("ext.interwebs.test.", 300)]);
        tail.metadata.authoritative = false;
        let out = Message::from_vec(&append(&original, &tail.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(out.metadata.id, 7);
        assert_eq!(out.queries[0].name().to_ascii(), EXT, "the question as asked");
        let types: Vec<_> = out.answers.iter().map(|r| (r.record_type(), r.ttl)).collect();
        assert_eq!(types, [(RecordType::CNAME, 5), (RecordType::A, 300)]);

        let mut nx = response("ext.interwebs.test.", RecordType::A, vec![]);
        nx.metadata.response_code = ResponseCode::NXDomain;
        let soa = SOA::new(name("ns.test."), name("h.test."), 1, 60, 60, 60, 60);
        nx.authorities.push(Record::from_rdata(name("test."), 60, RData::SOA(soa)));
        let out = Message::from_vec(&append(&original, &nx.to_vec().unwrap()).unwrap()).unwrap();
        assert_eq!(out.metadata.response_code, ResponseCode::NXDomain);
        assert_eq!(out.answers.len(), 1, "the CNAME stays");
        assert_eq!(out.authorities[0].ttl, 5, "the denial lives as long as the alias");

        let mut fail = response("ext.interwebs.test.", RecordType::A, vec![]);
        fail.metadata.response_code = ResponseCode::ServFail;
        assert_eq!(append(&original, &fail.to_vec().unwrap()), None);
        assert_eq!(append(&original, b"garbage"), None);
    }
}
