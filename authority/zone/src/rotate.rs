//! Round-robin answers, as CoreDNS's `loadbalance` gives them: the records of every A, AAAA, MX
//! and SRV RRset in the answer section of a finished response are rotated, on the wire bytes and
//! in place, so clients that take the first address spread over all of them. One function for
//! every server that answers: the authority's DNS port and the agent's cache hits and misses.
//!
//! No decoding and no allocation: an RRset's records are consecutive, so a rotation is
//! `rotate_left` on their byte range. Compression pointers are what make that unsafe, since a
//! pointer names an offset: a pointer after the RRset that leads into it (an SRV target that the
//! additional section's glue points at) is moved with the bytes it leads to; an RRset holding a
//! pointer into itself (a second owner name written as a pointer to the first) is left in order
//! rather than rewritten, as is a message with a pointer that does not lead backwards.

const HEADER: usize = 12;
/// Pointers followed while comparing two names, at most (a loop of pointers is malformed).
const MAX_JUMPS: usize = 64;

/// Whether the records of this type are rotated: A, AAAA, MX and SRV (CoreDNS `loadbalance`
/// turns A, AAAA and MX; SRV is the other type whose order a client takes as given).
fn rotates(rtype: u16) -> bool {
    matches!(rtype, 1 | 28 | 15 | 33)
}

/// Where names start in the RDATA of the types that may carry compressed ones, as offsets from
/// the RDATA start; `usize::MAX` is "right after the previous name" (SOA, MINFO, RP). RFC 3597
/// section 4 allows compression only in the well-known types; SRV and DNAME are here because
/// servers compress them in practice. A pointer in any other RDATA would not be seen, so it must
/// not exist: the RFC forbids it.
fn rdata_names(rtype: u16) -> &'static [usize] {
    match rtype {
        2 | 3 | 4 | 5 | 7 | 8 | 9 | 12 | 39 => &[0],
        15 | 18 | 21 => &[2],
        33 => &[6],
        6 | 14 | 17 => &[0, usize::MAX],
        _ => &[],
    }
}

fn u16_at(msg: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]))
}

/// The names in one record, walked without following pointers: `visit` is called with the
/// offset of each name's closing pointer (if it has one) and may refuse it. Returns where the
/// record starts and ends, and its type and class.
fn walk_record(msg: &[u8], at: usize, visit: &mut impl FnMut(usize) -> bool) -> Option<Record> {
    let owner_end = walk_name(msg, at, visit)?;
    let rtype = u16_at(msg, owner_end)?;
    let class = u16_at(msg, owner_end + 2)?;
    let rdlen = usize::from(u16_at(msg, owner_end + 8)?);
    let rdata = owner_end + 10;
    let end = rdata + rdlen;
    if end > msg.len() {
        return None;
    }
    let mut name_at = rdata;
    for &offset in rdata_names(rtype) {
        let from = if offset == usize::MAX { name_at } else { rdata + offset };
        name_at = walk_name(msg, from, visit)?;
        if name_at > end {
            return None;
        }
    }
    Some(Record { start: at, end, rtype, class })
}

#[derive(Debug, Clone, Copy)]
struct Record {
    start: usize,
    end: usize,
    rtype: u16,
    class: u16,
}

/// Skips the name at `at`, calling `visit` with the offset of its closing pointer; `None` if it
/// is malformed or `visit` refuses the pointer.
fn walk_name(msg: &[u8], mut at: usize, visit: &mut impl FnMut(usize) -> bool) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0xc0 => {
                msg.get(at + 1)?;
                return visit(at).then_some(at + 2);
            }
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// Where the pointer at `at` leads.
fn target(msg: &[u8], at: usize) -> usize {
    usize::from(u16::from_be_bytes([msg[at], msg[at + 1]]) & 0x3fff)
}

/// Whether the names at `a` and `b` are the same name (ASCII case aside), following pointers.
fn same_name(msg: &[u8], mut a: usize, mut b: usize) -> bool {
    let mut jumps = 0;
    loop {
        // A pointer on either side is followed before the labels are compared.
        for at in [&mut a, &mut b] {
            while msg.get(*at).is_some_and(|l| l & 0xc0 == 0xc0) {
                jumps += 1;
                if jumps > MAX_JUMPS || *at + 1 >= msg.len() {
                    return false;
                }
                *at = target(msg, *at);
            }
        }
        if a == b {
            return true;
        }
        let (Some(&la), Some(&lb)) = (msg.get(a), msg.get(b)) else { return false };
        if la != lb || la & 0xc0 != 0 {
            return false;
        }
        if la == 0 {
            return true;
        }
        let n = usize::from(la);
        let (Some(x), Some(y)) = (msg.get(a + 1..a + 1 + n), msg.get(b + 1..b + 1 + n)) else {
            return false;
        };
        if !x.eq_ignore_ascii_case(y) {
            return false;
        }
        a += 1 + n;
        b += 1 + n;
    }
}

/// Whether the pointer at `p` leads backwards to after the header (RFC 1035 section 4.1.4: "a
/// prior occurrence of the same name").
fn backwards(msg: &[u8], p: usize) -> bool {
    (HEADER..p).contains(&target(msg, p))
}

/// Where the answer section starts, the answer count and the count of records after them; `None`
/// if the question is malformed.
fn sections(msg: &[u8]) -> Option<(usize, usize, usize)> {
    let qd = usize::from(u16_at(msg, 4)?);
    let an = usize::from(u16_at(msg, 6)?);
    let rest = usize::from(u16_at(msg, 8)?) + usize::from(u16_at(msg, 10)?);
    let mut at = HEADER;
    for _ in 0..qd {
        at = walk_name(msg, at, &mut |p| backwards(msg, p))? + 4;
    }
    (at <= msg.len()).then_some((at, an, rest))
}

/// Rotates every RRset of A, AAAA, MX or SRV records in the answer section of `msg` (a whole
/// response) left by `turn` modulo its size, in place: [`plan`] then [`apply`]. Returns whether
/// anything moved. A message that does not parse, or whose compression pointers do not all lead
/// backwards to after the header, is left as it was; so is an RRset with a pointer into itself.
pub fn rotate(msg: &mut [u8], turn: u32) -> bool {
    match plan(msg) {
        Some(plan) => apply(msg, &plan, turn),
        None => false,
    }
}

/// How to turn the RRsets of `msg`, worked out once: what a message's structure allows does not
/// change when its id, question case or TTLs are rewritten, so a cache stores the plan with the
/// answer and a hit only [`apply`]s it. `None` when there is nothing to turn (no RRset of two or
/// more rotated records, or a message [`rotate`] leaves alone).
///
/// The plan is 16-bit words (native byte order): per RRset, its record count `n`, the `n` record
/// starts, its end, then the count of pointers after it that lead into it and their offsets.
pub fn plan(msg: &[u8]) -> Option<Vec<u8>> {
    let (start, an, rest) = sections(msg)?;
    // Every pointer must lead backwards: then none before an RRset can lead into it, and the only
    // ones to move are those after it.
    let mut at = start;
    for _ in 0..an + rest {
        at = walk_record(msg, at, &mut |p| backwards(msg, p))?.end;
    }
    let total = an + rest;
    let mut words: Vec<u16> = Vec::new();
    let mut at = start;
    let mut i = 0;
    while i < an {
        let first = walk_record(msg, at, &mut |_| true)?;
        // The RRset: the records after `first` of its owner, type and class.
        let mut starts = vec![u16::try_from(first.start).ok()?];
        let mut end = first.end;
        while i + starts.len() < an {
            let Some(r) = walk_record(msg, end, &mut |_| true) else { break };
            if (r.rtype, r.class) != (first.rtype, first.class) || !same_name(msg, first.start, r.start) {
                break;
            }
            starts.push(u16::try_from(r.start).ok()?);
            end = r.end;
        }
        let count = starts.len();
        if count > 1 && rotates(first.rtype) {
            rrset_plan(msg, &starts, end, total - i - count, &mut words);
        }
        at = end;
        i += count;
    }
    (!words.is_empty()).then(|| words.iter().flat_map(|w| w.to_ne_bytes()).collect())
}

/// Appends the plan of the RRset whose records start at `starts` and which ends at `end`, unless
/// a pointer in it leads into it; `after` records follow it.
fn rrset_plan(msg: &[u8], starts: &[u16], end: usize, after: usize, words: &mut Vec<u16>) {
    let start = usize::from(starts[0]);
    if end > 0x3fff {
        // A pointer moved into the far part could not say where it leads (14 bits).
        return;
    }
    let inside = |p: usize| (start..end).contains(&target(msg, p));
    let mut at = start;
    for _ in starts {
        match walk_record(msg, at, &mut |p| !inside(p)) {
            Some(r) => at = r.end,
            None => return,
        }
    }
    let (Ok(n), Ok(end16)) = (u16::try_from(starts.len()), u16::try_from(end)) else { return };
    let mark = words.len();
    words.push(n);
    words.extend_from_slice(starts);
    words.push(end16);
    let count_at = words.len();
    words.push(0);
    let mut at = end;
    for _ in 0..after {
        let walked = walk_record(msg, at, &mut |p| {
            if inside(p) {
                // Offsets fit: the message is under 64 KiB.
                words.push(p as u16);
            }
            true
        });
        match walked {
            Some(r) => at = r.end,
            None => return words.truncate(mark),
        }
    }
    words[count_at] = u16::try_from(words.len() - count_at - 1).unwrap_or(0);
}

/// Carries out `plan` (from [`plan`] on this message, or one laid out the same) with `turn`:
/// each RRset of `n` records turns left by `turn % n`, and the pointers after it that lead into
/// it move with the bytes they lead to. No allocation. A plan that does not fit `msg` moves
/// nothing it does not fit. Returns whether anything moved.
pub fn apply(msg: &mut [u8], plan: &[u8], turn: u32) -> bool {
    let word = |i: usize| plan.get(2 * i..2 * i + 2).map(|w| usize::from(u16::from_ne_bytes([w[0], w[1]])));
    let mut moved = false;
    let mut i = 0;
    while let Some(n) = word(i) {
        let (Some(start), Some(end), Some(pointers)) = (word(i + 1), word(i + 1 + n), word(i + 2 + n)) else {
            return moved;
        };
        let first_pointer = i + 3 + n;
        let k = usize::try_from(turn).unwrap_or(0) % n.max(1);
        let split = word(i + 1 + k).unwrap_or(start);
        i = first_pointer + pointers;
        if k == 0 || !(start <= split && split <= end && end <= msg.len()) {
            continue;
        }
        // The records [start, split) move right by end - split, those of [split, end) left by
        // split - start; a pointer into them moves with them (it still leads backwards: the
        // whole range is before it).
        for j in first_pointer..i {
            let Some(p) = word(j).filter(|p| p + 1 < msg.len()) else { continue };
            let t = target(msg, p);
            if (start..end).contains(&t) {
                let t = if t < split { t + (end - split) } else { t - (split - start) };
                msg[p..p + 2].copy_from_slice(&(t as u16 | 0xc000).to_be_bytes());
            }
        }
        msg[start..end].rotate_left(split - start);
        moved = true;
    }
    moved
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record to build: owner (`None`: a pointer to the question), type, RDATA.
    type Rr<'a> = (Option<&'a [u8]>, u16, &'a [u8]);

    /// A response to `svc.ns.`/`qtype` with `answers` and `additional` records.
    fn packet(qtype: u16, answers: &[Rr<'_>], additional: &[Rr<'_>]) -> Vec<u8> {
        let mut m = vec![0, 1, 0x81, 0x80, 0, 1, 0, answers.len() as u8, 0, 0, 0, additional.len() as u8];
        m.extend_from_slice(b"\x03svc\x02ns\x00");
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
        for (owner, rtype, rdata) in answers.iter().chain(additional) {
            m.extend_from_slice(owner.unwrap_or(&[0xc0, 12]));
            m.extend_from_slice(&rtype.to_be_bytes());
            m.extend_from_slice(&[0, 1, 0, 0, 0, 30]);
            m.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
            m.extend_from_slice(rdata);
        }
        m
    }

    /// The RDATA of the answers, parsed by hickory (which follows every pointer).
    fn parsed(msg: &[u8]) -> Vec<String> {
        let m = hickory_proto::op::Message::from_vec(msg).expect("still a valid message");
        m.answers.iter().chain(&m.additionals).map(|r| format!("{} {}", r.name, r.data)).collect()
    }

    #[test]
    fn a_records_turn_one_step_per_turn_and_come_back() {
        let a = |n: u8| [10, 0, 0, n];
        let (x, y, z) = (a(1), a(2), a(3));
        let original = packet(1, &[(None, 1, &x), (None, 1, &y), (None, 1, &z)], &[]);
        let mut msg = original.clone();
        assert!(!rotate(&mut msg, 0) && msg == original, "turn 0 keeps the order");
        let firsts: Vec<String> = (1..=3)
            .map(|turn| {
                let mut m = original.clone();
                assert_eq!(rotate(&mut m, turn), turn % 3 != 0, "a whole turn moves nothing");
                parsed(&m)[0].clone()
            })
            .collect();
        assert_eq!(firsts, ["svc.ns. 10.0.0.2", "svc.ns. 10.0.0.3", "svc.ns. 10.0.0.1"]);
        let mut m = original.clone();
        rotate(&mut m, 2);
        assert_eq!(parsed(&m), ["svc.ns. 10.0.0.3", "svc.ns. 10.0.0.1", "svc.ns. 10.0.0.2"]);
        assert!(plan(&original).is_some());
    }

    #[test]
    fn only_rotated_types_and_each_rrset_on_its_own() {
        // A CNAME, then two AAAA (owner: the CNAME target, at 36), then one A: the AAAA pair
        // turns, the rest stays; TXT pairs never turn.
        let cname = b"\x01t\xc0\x10";
        let six = |n: u8| {
            let mut v = [0u8; 16];
            v[15] = n;
            v
        };
        let (s1, s2) = (six(1), six(2));
        let original = packet(
            28,
            &[
                (None, 5, cname),
                (Some(&[0xc0, 36]), 28, &s1),
                (Some(&[0xc0, 36]), 28, &s2),
                (None, 1, &[10, 0, 0, 9]),
            ],
            &[],
        );
        let before = parsed(&original);
        let mut m = original.clone();
        assert!(rotate(&mut m, 1));
        let after = parsed(&m);
        assert_eq!(after[0], before[0]);
        assert_eq!((&after[1], &after[2]), (&before[2], &before[1]));
        assert_eq!(after[3], before[3]);

        let txt = packet(16, &[(None, 16, b"\x01a"), (None, 16, b"\x01b")], &[]);
        let mut m = txt.clone();
        assert!(!rotate(&mut m, 1) && m == txt);
        assert!(plan(&txt).is_none());
        let single = packet(1, &[(None, 1, &[10, 0, 0, 1])], &[]);
        assert!(plan(&single).is_none());
    }

    #[test]
    fn pointers_into_a_rotated_rrset_move_with_it() {
        // SRV targets written in full; the additional A records' owners point at them.
        let srv = |prio: u8, host: &[u8]| {
            let mut v = vec![0, prio, 0, 10, 0, 80];
            v.extend_from_slice(host);
            v
        };
        let (s1, s2) = (srv(1, b"\x02h1\xc0\x0c"), srv(2, b"\x04host\x012\xc0\x0c"));
        // Offsets: question ends at 12 + 8 + 4 = 24; first SRV record at 24, RDATA at 36, target
        // at 42; second SRV at 36 + 11 = 47, RDATA at 59, target at 65.
        let original = packet(
            33,
            &[(None, 33, &s1), (None, 33, &s2)],
            &[(Some(&[0xc0, 42]), 1, &[10, 0, 0, 1]), (Some(&[0xc0, 65]), 1, &[10, 0, 0, 2])],
        );
        let before = parsed(&original);
        assert_eq!(before[2], "h1.svc.ns. 10.0.0.1");
        let mut m = original.clone();
        assert!(rotate(&mut m, 1));
        let after = parsed(&m);
        assert_eq!((&after[0], &after[1]), (&before[1], &before[0]));
        assert_eq!(&after[2..], &before[2..], "the glue still names its targets");
        let mut back = m.clone();
        assert!(rotate(&mut back, 1));
        assert_eq!(back, original, "two turns of two records are where they started");
    }

    #[test]
    fn an_rrset_pointing_into_itself_or_a_forward_pointer_is_left_alone() {
        // The first A's owner written in full, the second's a pointer to it.
        let original = packet(
            1,
            &[(Some(b"\x01x\xc0\x0c"), 1, &[10, 0, 0, 1]), (Some(&[0xc0, 24]), 1, &[10, 0, 0, 2])],
            &[],
        );
        assert_eq!(parsed(&original)[1], "x.svc.ns. 10.0.0.2");
        assert!(plan(&original).is_none(), "one RRset (the names are the same) that cannot turn");
        let mut m = original.clone();
        assert!(!rotate(&mut m, 1));
        assert_eq!(m, original);
        // A pointer ahead of itself.
        let forward = packet(1, &[(Some(&[0xc0, 40]), 1, &[10, 0, 0, 1]), (None, 1, &[10, 0, 0, 2])], &[]);
        let mut m = forward.clone();
        assert!(!rotate(&mut m, 1));
        assert_eq!(m, forward);
    }

    #[test]
    fn malformed_or_cut_messages_never_panic_and_stay_unchanged() {
        let whole = packet(1, &[(None, 1, &[10, 0, 0, 1]), (None, 1, &[10, 0, 0, 2])], &[]);
        for cut in 0..whole.len() {
            let mut m = whole[..cut].to_vec();
            let copy = m.clone();
            assert!(!rotate(&mut m, 1), "cut at {cut}");
            assert_eq!(m, copy);
            assert!(plan(&m).is_none(), "cut at {cut}");
        }
        // A plan that does not fit the message: no panic, whatever it does.
        for garbage in [&[0xff_u8; 7][..], &[2, 0, 0, 0, 0xff, 0xff, 0x40, 0, 9, 0], &[5, 0], &[]] {
            let mut m = whole.clone();
            for turn in 0..4 {
                apply(&mut m, garbage, turn);
            }
        }
        let mut looped = whole.clone();
        looped[12] = 0xc0;
        looped[13] = 12;
        assert!(!rotate(&mut looped, 1));
        assert_eq!(&looped[14..], &whole[14..]);
    }

    /// A small deterministic generator (xorshift), so the property tests need no crate.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn turned_answers_hold_the_same_records_and_glue_for_any_mix_hickory_builds() {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::rdata::{A, AAAA, MX, SRV};
        use hickory_proto::rr::{Name, RData, Record, RecordType};
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let records = |m: &Message| {
            let all = m.answers.iter().chain(&m.authorities).chain(&m.additionals);
            sorted(all.map(|r| format!("{} {} {}", r.name, r.record_type(), r.data)).collect())
        };
        let mut moved = 0;
        for case in 0..300 {
            let qname = Name::from_ascii(format!("s{case}.ns.svc.cluster.local.")).unwrap();
            let mut m = Message::new(7, MessageType::Response, OpCode::Query);
            m.queries.push(Query::query(qname.clone(), RecordType::SRV));
            // Up to four runs of records of one random type (an RRset, or part of one with the
            // run before), MX and SRV targets in the zone, half of them with glue.
            for set in 0..=rng.below(3) {
                let (kind, count) = (rng.below(4), 1 + rng.below(5));
                for i in 0..count {
                    let host = Name::from_ascii(format!("h{set}-{i}.s{case}.ns.svc.cluster.local.")).unwrap();
                    let n = u8::try_from(i).unwrap();
                    let data = match kind {
                        0 => RData::A(A::new(10, 0, u8::try_from(set).unwrap(), n)),
                        1 => RData::AAAA(AAAA::new(0xfd, 0, 0, 0, 0, 0, 0, u16::from(n))),
                        2 => RData::MX(MX::new(u16::from(n), host.clone())),
                        _ => RData::SRV(SRV::new(0, 10, 80, host.clone())),
                    };
                    m.answers.push(Record::from_rdata(qname.clone(), 30, data));
                    if rng.below(2) == 0 {
                        m.additionals.push(Record::from_rdata(host, 30, RData::A(A::new(10, 1, 0, n))));
                    }
                }
            }
            let original = m.to_vec().unwrap();
            for turn in 0..6 {
                let mut turned = original.clone();
                moved += usize::from(rotate(&mut turned, turn));
                let parsed =
                    Message::from_vec(&turned).unwrap_or_else(|e| panic!("case {case}, turn {turn}: {e}"));
                assert_eq!(records(&parsed), records(&m), "case {case}, turn {turn}");
            }
        }
        assert!(moved > 500, "most cases have an RRset to turn: {moved} of 1800");
    }

    #[test]
    fn random_bytes_and_flipped_bits_never_panic() {
        let mut rng = Rng(42);
        let base = packet(
            1,
            &[(None, 1, &[10, 0, 0, 1]), (None, 1, &[10, 0, 0, 2]), (None, 1, &[10, 0, 0, 3])],
            &[],
        );
        for _ in 0..20_000 {
            let mut m = base.clone();
            for _ in 0..=rng.below(4) {
                let at = usize::try_from(rng.below(m.len() as u64)).unwrap();
                m[at] ^= 1 << rng.below(8);
            }
            let len = m.len();
            rotate(&mut m, u32::try_from(rng.below(7)).unwrap());
            assert_eq!(m.len(), len);
        }
        for _ in 0..5_000 {
            let len = usize::try_from(rng.below(120)).unwrap();
            let mut m: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            if m.len() > 12 {
                m[4..12].copy_from_slice(&[0, 1, 0, 3, 0, 0, 0, 1]);
            }
            rotate(&mut m, 1);
        }
    }
}
