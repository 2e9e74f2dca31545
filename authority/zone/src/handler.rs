//! Wire-format queries in, wire-format responses out, with no I/O: the one place that turns bytes
//! into a question, decides the response code, and renders the answer (EDNS0, truncation, AXFR
//! framing). The authority's UDP and TCP listeners and the gRPC Resolve stream all call [`serve`].

use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, Record, RecordType};
use ipnet::IpNet;

use crate::engine::Answer;
use crate::index::ZoneIndex;

/// How the query arrived; it bounds the response size and gates zone transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// Facts about the client and the server's policy that the answer depends on.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub transport: Transport,
    pub client: IpAddr,
    /// Clients allowed to transfer zones (AXFR/IXFR over TCP). Empty: nobody.
    pub transfer_from: &'a [IpNet],
    /// Fill in [`Served::qname`] (for query logs); off, no name is copied per query.
    pub describe: bool,
}

/// UDP payload size we advertise and accept at most (RFC 9715's 1232 avoids fragmentation).
pub const EDNS_PAYLOAD: u16 = 1232;
/// Records per message in a zone transfer.
const TRANSFER_CHUNK: usize = 200;

/// Why a packet got no answer at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Shorter than a DNS header: there is no id to answer.
    TooShort,
    /// QR set: a response sent to a server (reflection attempts, loops).
    NotAQuery,
}

impl DropReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::TooShort => "too_short",
            DropReason::NotAQuery => "not_a_query",
        }
    }
}

/// The outcome of one packet, for the caller to send, count and log.
#[derive(Debug)]
pub struct Served {
    /// Messages to send in order: one, or several for a zone transfer, or none when dropped.
    pub messages: Vec<Vec<u8>>,
    /// The response code sent (`None` when dropped).
    pub rcode: Option<ResponseCode>,
    pub qtype: Option<RecordType>,
    /// The question name as asked, when one was parsed and [`Context::describe`] is set (always
    /// for zone transfers, which are logged).
    pub qname: Option<Name>,
    pub dropped: Option<DropReason>,
    /// The response was cut to fit the client's UDP size (TC set).
    pub truncated: bool,
    /// What the query said of itself, for the query log.
    pub asked: Asked,
}

/// The facts of a query the query log writes beside its answer (CoreDNS `log`'s `{class}`,
/// `{size}`, `{>do}`, `{>bufsize}`); copied, never allocated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Asked {
    /// The query's class (0 when the question did not parse).
    pub qclass: u16,
    /// Bytes of the query.
    pub size: usize,
    pub dnssec_ok: bool,
    /// The UDP size the client takes: its EDNS payload size, 512 without EDNS (RFC 1035).
    pub bufsize: u16,
}

impl Served {
    fn dropped(reason: DropReason, size: usize) -> Self {
        Served {
            messages: Vec::new(),
            rcode: None,
            qtype: None,
            qname: None,
            dropped: Some(reason),
            truncated: false,
            asked: Asked { size, bufsize: 512, ..Asked::default() },
        }
    }
}

/// What the server decided to do with a parsed query: every response code is chosen here.
enum Decision {
    Answer(Answer),
    Transfer(Vec<Record>),
    Error(ResponseCode),
}

/// A query that passed the header checks.
struct Request {
    message: Message,
    query: Query,
    /// The client's EDNS, if it sent an OPT record.
    edns: Option<Edns>,
}

/// Serves one wire-format query.
pub fn serve(index: &ZoneIndex, bytes: &[u8], ctx: &Context<'_>) -> Served {
    if bytes.len() < 12 {
        return Served::dropped(DropReason::TooShort, bytes.len());
    }
    let id = u16::from_be_bytes([bytes[0], bytes[1]]);
    if bytes[2] & 0x80 != 0 {
        return Served::dropped(DropReason::NotAQuery, bytes.len());
    }
    let opcode = OpCode::from_u8((bytes[2] >> 3) & 0x0f);
    let qdcount = u16::from_be_bytes([bytes[4], bytes[5]]);
    if opcode != OpCode::Query {
        // RFC 1035 §4.1.1: NOTIMP for kinds of query we do not support.
        return header_only(id, opcode, ResponseCode::NotImp, bytes.len());
    }
    if qdcount != 1 {
        return header_only(id, opcode, ResponseCode::FormErr, bytes.len());
    }
    let message = match Message::from_vec(bytes) {
        Ok(m) => m,
        Err(_) => return header_only(id, opcode, ResponseCode::FormErr, bytes.len()),
    };
    let Some(query) = message.queries.first().cloned() else {
        return header_only(id, opcode, ResponseCode::FormErr, bytes.len());
    };
    let edns = message.edns.clone();
    let request = Request { message, query, edns };
    let decision = decide(index, &request, ctx);
    let mut served = render(&request, decision, ctx);
    served.asked = Asked {
        qclass: u16::from(request.query.query_class()),
        size: bytes.len(),
        dnssec_ok: request.edns.as_ref().is_some_and(|e| e.flags().dnssec_ok),
        bufsize: request.edns.as_ref().map_or(512, Edns::max_payload),
    };
    served
}

fn decide(index: &ZoneIndex, req: &Request, ctx: &Context<'_>) -> Decision {
    let q = &req.query;
    if req.edns.as_ref().is_some_and(|e| e.version() > 0) {
        // RFC 6891 §6.1.3.
        return Decision::Error(ResponseCode::BADVERS);
    }
    if q.query_class() != DNSClass::IN {
        return Decision::Error(ResponseCode::Refused);
    }
    if !index.is_complete() && index.serves(q.name()) {
        // Before the first complete cluster has loaded, our names are unknown, not absent.
        return Decision::Error(ResponseCode::ServFail);
    }
    match q.query_type() {
        RecordType::AXFR | RecordType::IXFR => {
            let allowed = ctx.transport == Transport::Tcp
                && ctx.transfer_from.iter().any(|net| net.contains(&ctx.client));
            // An IXFR is answered with the whole zone (RFC 1995 §4 allows it).
            match index.transfer(q.name()) {
                Some(records) if allowed => Decision::Transfer(records),
                _ => Decision::Error(ResponseCode::Refused),
            }
        }
        RecordType::OPT => Decision::Error(ResponseCode::FormErr),
        qtype => match index.lookup(q.name(), qtype) {
            Some(answer) => Decision::Answer(answer),
            // The node agent owns forwarding; the authority only answers its zones.
            None => Decision::Error(ResponseCode::Refused),
        },
    }
}

fn render(req: &Request, decision: Decision, ctx: &Context<'_>) -> Served {
    let qtype = req.query.query_type();
    let mut served = Served {
        messages: Vec::with_capacity(1),
        rcode: None,
        qtype: Some(qtype),
        // Error answers are logged whether or not queries are, and name the query.
        qname: (ctx.describe
            || matches!(qtype, RecordType::AXFR | RecordType::IXFR)
            || matches!(decision, Decision::Error(_)))
        .then(|| req.query.name().clone()),
        dropped: None,
        truncated: false,
        asked: Asked::default(),
    };
    let mut msg = response_to(req);
    match decision {
        Decision::Error(rcode) => {
            msg.metadata.response_code = rcode;
        }
        Decision::Answer(answer) => {
            msg.metadata.authoritative = true;
            msg.metadata.response_code = answer.rcode;
            let asked = req.query.name();
            // Answers owned by the asked name echo its spelling (0x20 case randomisation).
            msg.answers = answer
                .answers
                .into_iter()
                .map(|mut r| {
                    if &r.name == asked {
                        r.name = asked.clone();
                    }
                    r
                })
                .collect();
            msg.authorities = answer.authorities;
            msg.additionals = answer.additionals;
        }
        Decision::Transfer(records) => {
            msg.metadata.authoritative = true;
            for chunk in records.chunks(TRANSFER_CHUNK) {
                let mut part = msg.clone();
                part.answers = chunk.to_vec();
                served.messages.push(encode(&part));
            }
            served.rcode = Some(ResponseCode::NoError);
            return served;
        }
    }
    served.rcode = Some(msg.metadata.response_code);
    let limit = match ctx.transport {
        Transport::Tcp => usize::from(u16::MAX),
        Transport::Udp => {
            usize::from(req.edns.as_ref().map_or(512, |e| e.max_payload().clamp(512, EDNS_PAYLOAD)))
        }
    };
    let mut bytes = encode(&msg);
    if bytes.len() > limit {
        // RFC 2181 §9: set TC and send what certainly fits, the header and the question; the
        // client retries over TCP and gets everything.
        msg.metadata.truncation = true;
        msg.answers.clear();
        msg.authorities.clear();
        msg.additionals.clear();
        bytes = encode(&msg);
        served.truncated = true;
    }
    served.messages.push(bytes);
    served
}

/// A response skeleton for `req`: same id, opcode, question, RD and CD; our OPT if it sent one.
fn response_to(req: &Request) -> Message {
    let m = &req.message.metadata;
    let mut msg = Message::new(m.id, MessageType::Response, m.op_code);
    msg.metadata.recursion_desired = m.recursion_desired;
    msg.metadata.checking_disabled = m.checking_disabled;
    msg.queries.push(req.query.clone());
    if let Some(their) = &req.edns {
        let mut ours = Edns::new();
        ours.set_max_payload(EDNS_PAYLOAD);
        ours.set_version(0);
        // RFC 3225 §3: the DO bit of the query is copied to the response.
        ours.set_dnssec_ok(their.flags().dnssec_ok);
        msg.edns = Some(ours);
    }
    msg
}

fn header_only(id: u16, opcode: OpCode, rcode: ResponseCode, size: usize) -> Served {
    let mut msg = Message::new(id, MessageType::Response, opcode);
    msg.metadata.response_code = rcode;
    Served {
        messages: vec![encode(&msg)],
        rcode: Some(rcode),
        qtype: None,
        qname: None,
        dropped: None,
        truncated: false,
        asked: Asked { size, bufsize: 512, ..Asked::default() },
    }
}

fn encode(msg: &Message) -> Vec<u8> {
    match msg.to_vec() {
        Ok(bytes) => bytes,
        Err(_) => {
            // Only reachable with records the encoder refuses; answer SERVFAIL rather than nothing.
            let mut fail = Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
            fail.metadata.response_code = ResponseCode::ServFail;
            fail.queries = msg.queries.clone();
            fail.to_vec().unwrap_or_default()
        }
    }
}
