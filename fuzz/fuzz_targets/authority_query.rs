//! The authority's query handling on any bytes, against a zone index built from a small fixed
//! cluster (default zone settings, and wildcards with `pods insecure`): `nodedns_zone::serve`, the
//! one bytes-to-bytes entry point its UDP and TCP listeners call, over both transports from a
//! client inside and one outside the transfer ACL; and the gRPC Resolve entry point
//! (`Service::answer`) with the same bytes as the query of a `ResolveRequest`, or the rest of the
//! input decoded as a whole `ResolveRequest`. No panic, and: dropped exactly when shorter than a
//! header or a response; otherwise every message carries the query's id, is a DNS message we can
//! parse back, and a UDP answer fits the client's size (512 without EDNS, at most 1232); zone
//! transfers only over TCP from inside the ACL; Resolve echoes the request id.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use hickory_proto::op::{Message as DnsMessage, ResponseCode};
use hickory_proto::rr::RecordType;
use libfuzzer_sys::fuzz_target;
use nodedns_fuzz::Input;
use nodedns_proto::v1::{ResolveRequest, ResolveStatus};
use nodedns_zone::handler::EDNS_PAYLOAD;
use nodedns_zone::{Context, Transport, serve};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let which = usize::from(flags & 1);
    let tcp = flags & 2 != 0;
    let inside = flags & 4 != 0;
    let bytes = input.rest();
    let store = &nodedns_fuzz::stores()[which];
    let index = store.index();
    let acl = nodedns_fuzz::transfer_acl();
    let client =
        if inside { IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)) } else { IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)) };
    let transport = if tcp { Transport::Tcp } else { Transport::Udp };
    let ctx = Context { transport, client, transfer_from: &acl, describe: flags & 8 != 0 };
    let served = serve(&index, bytes, &ctx);

    let droppable = bytes.len() < 12 || bytes[2] & 0x80 != 0;
    assert_eq!(served.dropped.is_some(), droppable);
    assert_eq!(served.messages.is_empty(), droppable);
    if !droppable {
        let asked = DnsMessage::from_vec(bytes).ok();
        let limit = match asked.as_ref().and_then(|m| m.edns.as_ref()) {
            Some(e) => usize::from(e.max_payload().clamp(512, EDNS_PAYLOAD)),
            None => 512,
        };
        for msg in &served.messages {
            assert_eq!(msg[..2], bytes[..2], "the query's id");
            let parsed = DnsMessage::from_vec(msg).expect("every answer parses back");
            assert!(parsed.metadata.message_type == hickory_proto::op::MessageType::Response);
            if !tcp {
                assert!(msg.len() <= limit, "{} bytes over UDP, limit {limit}", msg.len());
            }
        }
        if matches!(served.qtype, Some(RecordType::AXFR | RecordType::IXFR))
            && served.rcode == Some(ResponseCode::NoError)
        {
            assert!(tcp && inside, "a transfer only over TCP from inside the ACL");
        }
    }

    // The same bytes over the agents' Resolve stream.
    let service = nodedns_fuzz::service(which);
    let transport = if tcp { 2 } else { 1 };
    let req = ResolveRequest { id: 7, query: bytes.to_vec(), client_ip: vec![10, 1, 0, 9], transport };
    let answer = service.answer(&req);
    assert_eq!(answer.id, 7);
    let status = if droppable { ResolveStatus::Dropped } else { ResolveStatus::Ok };
    assert_eq!(answer.status, status as i32);
    // And as a whole request (any id, client address and transport).
    if let Ok(req) = ResolveRequest::decode(bytes) {
        let answer = service.answer(&req);
        assert_eq!(answer.id, req.id);
    }
});
