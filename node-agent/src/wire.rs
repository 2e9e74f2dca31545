//! DNS wire format, read directly where the hit path needs speed: the header and question of a
//! query (into a reusable cache key, no allocation), and the layout of a response (where its TTLs
//! are, its OPT record, the owner names it holds) computed once when it is cached.

/// Header flags and fields (RFC 1035 section 4.1.1).
pub const HEADER: usize = 12;
const QR: u8 = 0x80;
const TC: u8 = 0x02;
const RD: u8 = 0x01;
pub const TYPE_OPT: u16 = 41;
pub const TYPE_SOA: u16 = 6;
pub const TYPE_CNAME: u16 = 5;

/// Why a packet is not a query we answer normally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than a header, or a response: dropped without an answer.
    Drop,
    /// Answered with this rcode (FORMERR 1, NOTIMP 4).
    Rcode(u8),
}

/// A parsed query: what the hit path needs, by offsets into the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    /// End of the question section (offset of the first byte after QCLASS).
    pub question_end: usize,
    pub qtype: u16,
    pub qclass: u16,
    pub rd: bool,
    pub cd: bool,
    /// The client's EDNS UDP payload size, if it sent an OPT record.
    pub edns: Option<u16>,
    /// The EDNS version the client asked for (RFC 6891: above 0 is answered BADVERS).
    pub edns_version: u8,
    pub dnssec_ok: bool,
}

impl Query {
    /// The largest UDP response the client accepts (RFC 6891 section 6.2.3; 512 without EDNS).
    pub fn udp_limit(&self) -> usize {
        self.edns.map_or(512, |s| usize::from(s.max(512)))
    }
}

/// Parses a query, writing its cache key (lower-cased question name in wire form, type, class, DO
/// and CD bits) into `key`.
pub fn parse_query(packet: &[u8], key: &mut Vec<u8>) -> Result<Query, Reject> {
    if packet.len() < HEADER || packet[2] & QR != 0 {
        return Err(Reject::Drop);
    }
    let opcode = (packet[2] >> 3) & 0x0f;
    if opcode != 0 {
        return Err(Reject::Rcode(4));
    }
    let count = |i: usize| u16::from_be_bytes([packet[i], packet[i + 1]]);
    if count(4) != 1 || count(6) != 0 || count(8) != 0 {
        return Err(Reject::Rcode(1));
    }
    key.clear();
    let mut at = HEADER;
    loop {
        let len = usize::from(*packet.get(at).ok_or(Reject::Rcode(1))?);
        if len & 0xc0 != 0 {
            // No compression in a question that starts the message; 0x40/0x80 are reserved.
            return Err(Reject::Rcode(1));
        }
        let label = packet.get(at + 1..at + 1 + len).ok_or(Reject::Rcode(1))?;
        key.push(len as u8);
        key.extend(label.iter().map(u8::to_ascii_lowercase));
        at += 1 + len;
        if key.len() > 255 {
            return Err(Reject::Rcode(1));
        }
        if len == 0 {
            break;
        }
    }
    let fixed = packet.get(at..at + 4).ok_or(Reject::Rcode(1))?;
    let qtype = u16::from_be_bytes([fixed[0], fixed[1]]);
    let qclass = u16::from_be_bytes([fixed[2], fixed[3]]);
    let question_end = at + 4;
    let mut query = Query {
        id: count(0),
        question_end,
        qtype,
        qclass,
        rd: packet[2] & RD != 0,
        cd: packet[3] & 0x10 != 0,
        edns: None,
        edns_version: 0,
        dnssec_ok: false,
    };
    match count(10) {
        0 => {}
        1 => {
            // Only an OPT record may follow a question (RFC 6891 section 6.1.1).
            let rest = &packet[question_end..];
            if rest.len() < 11 || rest[0] != 0 || u16::from_be_bytes([rest[1], rest[2]]) != TYPE_OPT {
                return Err(Reject::Rcode(1));
            }
            query.edns = Some(u16::from_be_bytes([rest[3], rest[4]]));
            query.edns_version = rest[6];
            query.dnssec_ok = rest[7] & 0x80 != 0;
        }
        _ => return Err(Reject::Rcode(1)),
    }
    if qtype == TYPE_OPT {
        return Err(Reject::Rcode(1));
    }
    key.extend_from_slice(&qtype.to_be_bytes());
    key.extend_from_slice(&qclass.to_be_bytes());
    key.push(u8::from(query.dnssec_ok) | u8::from(query.cd) << 1);
    Ok(query)
}

/// The question name of a key, in presentation form (`svc.ns.svc.cluster.local.`), lower case.
pub fn key_name(key: &[u8]) -> String {
    let mut out = String::new();
    let mut at = 0;
    while let Some(&len) = key.get(at) {
        if len == 0 {
            break;
        }
        let label = key.get(at + 1..at + 1 + usize::from(len)).unwrap_or_default();
        out.push_str(&String::from_utf8_lossy(label));
        out.push('.');
        at += 1 + usize::from(len);
    }
    if out.is_empty() {
        out.push('.');
    }
    out
}

/// Where a compression pointer at `at` leads: only back to an earlier name after the header
/// (RFC 1035 section 4.1.4: "a prior occurrence of the same name"). A pointer into the header
/// would read the id and counts, which a hit rewrites, as a name; one forward could loop.
fn pointer(msg: &[u8], at: usize) -> Option<usize> {
    let target = usize::from(u16::from_be_bytes([*msg.get(at)?, *msg.get(at + 1)?]) & 0x3fff);
    (HEADER..at).contains(&target).then_some(target)
}

/// Skips a possibly compressed name at `at`, returning the offset after it.
pub(crate) fn skip_name(msg: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0xc0 => return pointer(msg, at).map(|_| at + 2),
            0 if len == 0 => return Some(at + 1),
            0 => at += 1 + usize::from(len),
            _ => return None,
        }
    }
}

/// Walks a possibly compressed name at `at` in a response being laid out for the cache, and
/// returns the offset after it. Every label written out is recorded in `starts`, and a
/// compression pointer must lead to one of those: the start of a label of a name walked before.
/// A pointer into the middle of a label, a TTL or other RDATA would read bytes a hit rewrites
/// (the question's case, TTLs) as a name, so the same cached answer would read differently.
fn walk_name(msg: &[u8], mut at: usize, starts: &mut Vec<u16>) -> Option<usize> {
    loop {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0xc0 => {
                let target = u16::try_from(pointer(msg, at)?).ok()?;
                return starts.contains(&target).then_some(at + 2);
            }
            0 if len == 0 => return Some(at + 1),
            0 => {
                starts.push(u16::try_from(at).ok()?);
                at += 1 + usize::from(len);
            }
            _ => return None,
        }
    }
}

/// Where the names in the RDATA of the types that carry compressible names start (RFC 3597
/// section 4: only the well-known types NS, CNAME, SOA, PTR, MX; SRV and DNAME are included as
/// servers compress them in practice), as offsets from the RDATA start; SOA has two, in order.
fn rdata_names(rtype: u16) -> &'static [usize] {
    match rtype {
        2 | 5 | 12 | 39 => &[0],
        15 => &[2],
        33 => &[6],
        6 => &[0, usize::MAX],
        _ => &[],
    }
}

/// A presentation name (`a.example.` or `a.example`) in wire form, lower case as given; `None`
/// for an empty or over-long label or a name over 255 bytes.
pub fn encode_name(name: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(name.len() + 2);
    let bare = name.trim_end_matches('.');
    if !bare.is_empty() {
        for label in bare.split('.') {
            out.push(u8::try_from(label.len()).ok().filter(|l| *l > 0 && *l < 64)?);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    (out.len() <= 255).then_some(out)
}

/// The end of the (single) question of a message.
pub fn parse_question_end(msg: &[u8]) -> Option<usize> {
    if msg.len() < HEADER || u16::from_be_bytes([msg[4], msg[5]]) != 1 {
        return None;
    }
    let end = skip_name(msg, HEADER)? + 4;
    (end <= msg.len()).then_some(end)
}

/// Reads a possibly compressed name at `at` in presentation form, lower case.
pub fn read_name(msg: &[u8], mut at: usize) -> Option<String> {
    let mut out = String::new();
    let mut jumps = 0;
    loop {
        let len = *msg.get(at)?;
        match len & 0xc0 {
            0xc0 => {
                jumps += 1;
                if jumps > 64 {
                    return None;
                }
                at = pointer(msg, at)?;
            }
            0 if len == 0 => break,
            0 => {
                let label = msg.get(at + 1..at + 1 + usize::from(len))?;
                out.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
                out.push('.');
                at += 1 + usize::from(len);
                if out.len() > 255 {
                    return None;
                }
            }
            _ => return None,
        }
    }
    if out.is_empty() {
        out.push('.');
    }
    Some(out)
}

/// The layout of a response, for caching it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub rcode: u8,
    pub truncated: bool,
    /// Offsets of the TTL field of every record but OPT.
    pub ttl_offsets: Vec<u16>,
    /// The smallest TTL of the answer and authority records; `None` without any.
    pub min_ttl: Option<u32>,
    /// For a negative answer: min(SOA TTL, SOA MINIMUM) of the authority SOA (RFC 2308 section 5).
    pub negative_ttl: Option<u32>,
    pub answers: u16,
    /// Owner names of every record (lower case, presentation form), and CNAME targets.
    pub owners: Vec<String>,
    /// Where the OPT record starts, if the response has one (it is the last record we keep).
    pub opt: Option<(usize, usize)>,
    /// Where the last record ends: bytes after it are no part of the message.
    pub end: usize,
}

/// Walks a response. `None` if it is malformed.
pub fn layout(msg: &[u8]) -> Option<Layout> {
    if msg.len() < HEADER {
        return None;
    }
    let count = |i: usize| u16::from_be_bytes([msg[i], msg[i + 1]]);
    let (qd, an, ns, ar) = (count(4), count(6), count(8), count(10));
    let mut at = HEADER;
    let mut starts = Vec::with_capacity(16);
    for _ in 0..qd {
        at = walk_name(msg, at, &mut starts)? + 4;
    }
    let mut out = Layout {
        rcode: msg[3] & 0x0f,
        truncated: msg[2] & TC != 0,
        ttl_offsets: Vec::new(),
        min_ttl: None,
        negative_ttl: None,
        answers: an,
        owners: Vec::new(),
        opt: None,
        end: 0,
    };
    let total = usize::from(an) + usize::from(ns) + usize::from(ar);
    for i in 0..total {
        let start = at;
        let owner_at = at;
        at = walk_name(msg, at, &mut starts)?;
        let fixed = msg.get(at..at + 10)?;
        let rtype = u16::from_be_bytes([fixed[0], fixed[1]]);
        let ttl = u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
        let rdlen = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
        let rdata = at + 10;
        let end = rdata.checked_add(rdlen)?;
        if end > msg.len() {
            return None;
        }
        // Names in RDATA are walked like owners: later names may point into them, and they
        // must not run past their RDATA.
        let mut name_at = rdata;
        for &offset in rdata_names(rtype) {
            let from = if offset == usize::MAX { name_at } else { rdata + offset };
            name_at = walk_name(msg, from, &mut starts)?;
            if name_at > end {
                return None;
            }
        }
        if rtype == TYPE_OPT {
            // One OPT at most, in the additional section (RFC 6891 section 6.1.1): a second one
            // would stay in the stored answer when the first is stripped.
            if out.opt.is_some() || i < usize::from(an) + usize::from(ns) {
                return None;
            }
            out.opt = Some((start, end));
        } else {
            out.ttl_offsets.push(u16::try_from(at + 4).ok()?);
            let section_an_ns = i < usize::from(an) + usize::from(ns);
            if section_an_ns {
                out.min_ttl = Some(out.min_ttl.map_or(ttl, |m| m.min(ttl)));
            }
            out.owners.push(read_name(msg, owner_at)?);
            if rtype == TYPE_CNAME {
                // The target is the whole RDATA: a name running past it is malformed.
                if skip_name(msg, rdata)? > end {
                    return None;
                }
                out.owners.push(read_name(msg, rdata)?);
            }
            if rtype == TYPE_SOA && i >= usize::from(an) && i < usize::from(an) + usize::from(ns) {
                // MINIMUM is the last 4 bytes of SOA RDATA, after two names (at least 22 bytes).
                if rdlen < 22 {
                    return None;
                }
                let min = msg.get(end - 4..end)?;
                let minimum = u32::from_be_bytes([min[0], min[1], min[2], min[3]]);
                out.negative_ttl = Some(ttl.min(minimum));
            }
        }
        at = end;
    }
    // A question cut short is malformed too.
    out.end = (at <= msg.len()).then_some(at)?;
    Some(out)
}

/// Writes a minimal response to `query` with `rcode` into `out`: the header and, when it parsed,
/// the question, plus an OPT record if the client sent one. An extended rcode (16 = BADVERS)
/// keeps its low 4 bits in the header and the rest in the OPT record (RFC 6891 section 6.1.3).
pub fn error_response(packet: &[u8], query: Option<&Query>, rcode: u8, out: &mut Vec<u8>) {
    out.clear();
    let mut header = [0u8; HEADER];
    header[..2].copy_from_slice(packet.get(..2).unwrap_or(&[0, 0]));
    header[2] = QR | (packet.get(2).copied().unwrap_or(0) & 0x79); // opcode and RD kept
    header[3] = 0x80 | (rcode & 0x0f); // RA
    out.extend_from_slice(&header);
    if let Some(q) = query {
        out[5] = 1;
        out.extend_from_slice(&packet[HEADER..q.question_end]);
        if q.edns.is_some() {
            push_opt(out, q.dnssec_ok);
            let len = out.len();
            out[len - 6] = rcode >> 4;
        }
    }
}

/// The UDP payload size we announce in OPT records.
pub const OUR_UDP_SIZE: u16 = 1232;

/// Appends an OPT record (no options) and counts it in ARCOUNT.
pub fn push_opt(out: &mut Vec<u8>, dnssec_ok: bool) {
    out.extend_from_slice(&[0, 0, 41]);
    out.extend_from_slice(&OUR_UDP_SIZE.to_be_bytes());
    out.extend_from_slice(&[0, 0, if dnssec_ok { 0x80 } else { 0 }, 0, 0, 0]);
    let ar = u16::from_be_bytes([out[10], out[11]]).wrapping_add(1);
    out[10..12].copy_from_slice(&ar.to_be_bytes());
}

/// Cuts `out` (a full response) to its header and question with TC set, for a UDP client whose
/// limit it exceeds (RFC 2181 section 9), keeping an OPT record if the client sent one.
pub fn truncate(out: &mut Vec<u8>, query: &Query) {
    out.truncate(query.question_end);
    out[2] |= TC;
    out[6..12].fill(0);
    if query.edns.is_some() {
        push_opt(out, query.dnssec_ok);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_opt_record_outside_the_additional_section_or_a_second_one_is_malformed() {
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 1];
        msg.extend_from_slice(&[1, b'a', 0, 0, 1, 0, 1]);
        let a = [0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1];
        let opt = [0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0];
        let with = |records: &[&[u8]]| {
            let mut m = msg.clone();
            records.iter().for_each(|r| m.extend_from_slice(r));
            m
        };
        assert!(super::layout(&with(&[&a, &opt])).is_some_and(|l| l.opt.is_some()));
        assert_eq!(super::layout(&with(&[&opt, &a])), None, "OPT as the answer");
        let mut two = with(&[&a, &opt, &opt]);
        two[11] = 2;
        assert_eq!(super::layout(&two), None, "two OPT records");
    }

    #[test]
    fn a_pointer_must_lead_to_the_start_of_an_earlier_label() {
        // Question: a 3-byte label holding 01 'A' 00, then the root: offset 13 reads as "A.".
        let mut msg = vec![0, 1, 0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0];
        msg.extend_from_slice(&[3, 1, b'A', 0, 0, 0, 1, 0, 1]);
        let answer = |owner: [u8; 2]| {
            let mut m = msg.clone();
            m.extend_from_slice(&owner);
            m.extend_from_slice(&[0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
            m
        };
        assert!(super::layout(&answer([0xc0, 12])).is_some(), "a pointer to the question's label");
        assert_eq!(super::layout(&answer([0xc0, 13])), None, "a pointer into the middle of a label");
        // An MX whose exchange points at the owner's first label, then a record pointing into the
        // exchange: both lead to label starts.
        let mut mx = msg.clone();
        mx[7] = 2;
        mx.extend_from_slice(&[0xc0, 12, 0, 15, 0, 1, 0, 0, 0, 60, 0, 7, 0, 10, 2, b'm', b'x', 0xc0, 12]);
        mx.extend_from_slice(&[0xc0, 35, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4, 192, 0, 2, 1]);
        assert!(super::layout(&mx).is_some());
        // A pointer at a TTL instead.
        let last = mx.len() - 16;
        mx[last + 1] = 27;
        assert_eq!(super::layout(&mx), None);
    }

    use super::*;

    fn query(name: &str, qtype: u16, edns: bool) -> Vec<u8> {
        let mut q = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)];
        // Encoded by hand: the tests need names encode_name refuses (over 255 bytes).
        for label in name.trim_end_matches('.').split('.') {
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
        }
        q.push(0);
        q.extend_from_slice(&qtype.to_be_bytes());
        q.extend_from_slice(&[0, 1]);
        if edns {
            q.extend_from_slice(&[0, 0, 41, 0x10, 0, 0, 0, 0x80, 0, 0, 0]);
        }
        q
    }

    #[test]
    fn queries_parse_into_lower_case_keys() {
        let mut key = Vec::new();
        let q = parse_query(&query("Svc.NS.svc.cluster.local", 1, true), &mut key).unwrap();
        assert_eq!(key_name(&key), "svc.ns.svc.cluster.local.");
        assert_eq!(
            (q.id, q.qtype, q.qclass, q.rd, q.edns, q.dnssec_ok),
            (0x1234, 1, 1, true, Some(4096), true)
        );
        assert_eq!(q.udp_limit(), 4096);
        let mut other = Vec::new();
        parse_query(&query("svc.ns.svc.cluster.local", 1, false), &mut other).unwrap();
        assert_ne!(key, other, "the DO bit is part of the key");
    }

    #[test]
    fn malformed_queries_are_rejected_not_panicking() {
        let mut key = Vec::new();
        let good = query("a.example", 1, false);
        assert_eq!(parse_query(&good[..5], &mut key), Err(Reject::Drop));
        let mut response = good.clone();
        response[2] |= 0x80;
        assert_eq!(parse_query(&response, &mut key), Err(Reject::Drop));
        let mut notify = good.clone();
        notify[2] = 4 << 3;
        assert_eq!(parse_query(&notify, &mut key), Err(Reject::Rcode(4)));
        let mut two = good.clone();
        two[5] = 2;
        assert_eq!(parse_query(&two, &mut key), Err(Reject::Rcode(1)));
        for cut in HEADER..good.len() {
            assert_eq!(parse_query(&good[..cut], &mut key), Err(Reject::Rcode(1)), "cut at {cut}");
        }
        let mut pointer = good.clone();
        pointer[HEADER] = 0xc0;
        assert_eq!(parse_query(&pointer, &mut key), Err(Reject::Rcode(1)));
        let long = format!("{}.example", vec!["a".repeat(60); 5].join("."));
        assert_eq!(parse_query(&query(&long, 1, false), &mut key), Err(Reject::Rcode(1)));
    }
}
