//! The agent's whole request path without sockets: a client's packet (any bytes) through
//! `Resolver::answer` (parse, reject, refusals, loop probe, autopath context, cache hit), and on a
//! miss `Resolver::miss` (route, coalescing, the authority's Resolve stream, the autopath walk,
//! caching, stale or SERVFAIL) or `Resolver::prefetch`, three times over at advancing clocks so
//! later rounds hit what earlier ones stored. The authority at the other end of the Resolve
//! stream answers each query with the next frame of the input, decoded as a `ResolveResponse`
//! (any id, status and bytes), or, when the frame is empty or the frames have run out, as the
//! real authority over the fixed cluster answers it. Upstream names fail at once (no upstream
//! servers). No panic, no hang, and every answer sent carries the client's id and fits its UDP
//! size.
#![no_main]

use std::cell::RefCell;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use nodedns_agent::request::{Step, Transport};
use nodedns_agent::wire;
use nodedns_fuzz::{CLIENTS, Input};
use nodedns_proto::v1::ResolveResponse;
use prost::Message;

thread_local! {
    static RUNTIME: RefCell<Option<tokio::runtime::Runtime>> = const { RefCell::new(None) };
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input::new(data);
    let flags = input.byte();
    let client = CLIENTS[usize::from(input.byte()) % CLIENTS.len()];
    let ages = [0u64, u64::from(input.byte()), u64::from(input.u16())];
    let packet = input.chunk().to_vec();
    let frames: Vec<Vec<u8>> = input.chunks().into_iter().map(<[u8]>::to_vec).collect();
    let transport = if flags & 4 != 0 { Transport::Tcp } else { Transport::Udp };
    let keep_ids = flags & 8 != 0;
    let service = nodedns_fuzz::service(usize::from(flags >> 7));
    let resolver = nodedns_fuzz::resolver(flags & 1 != 0, flags & 2 != 0);

    RUNTIME.with_borrow_mut(|rt| {
        let rt = rt.get_or_insert_with(nodedns_fuzz::runtime);
        rt.block_on(async {
            // The authority's side of the Resolve stream.
            let mut requests = resolver.authority.attach();
            let link = std::sync::Arc::clone(&resolver.authority);
            let authority = tokio::spawn(async move {
                let mut frames = frames.into_iter();
                while let Some(request) = requests.recv().await {
                    let answer = match frames.next() {
                        Some(frame) if !frame.is_empty() => match ResolveResponse::decode(&frame[..]) {
                            Ok(mut a) => {
                                if !keep_ids {
                                    a.id = request.id;
                                }
                                a
                            }
                            // Undecodable: the stream would have failed; the query times out.
                            Err(_) => continue,
                        },
                        _ => service.answer(&request),
                    };
                    link.deliver(answer);
                }
            });
            let t0 = Instant::now();
            let mut out = Vec::new();
            for age in ages {
                let now = t0 + Duration::from_secs(age);
                let step = resolver.answer(&packet, client, transport, now, &mut out);
                let sent = match step {
                    Step::Drop => false,
                    Step::Answer => true,
                    Step::AnswerAndPrefetch(miss) => {
                        check(&packet, transport, &out);
                        resolver.prefetch(miss, client, transport).await;
                        continue;
                    }
                    Step::Miss(miss) => {
                        resolver.miss(miss, client, transport, now, &mut out).await;
                        true
                    }
                };
                if sent {
                    check(&packet, transport, &out);
                }
            }
            authority.abort();
        });
    });
});

/// What every answer sent to a client must satisfy.
fn check(packet: &[u8], transport: Transport, out: &[u8]) {
    assert!(out.len() >= wire::HEADER, "an answer has a header");
    assert_eq!(out[..2], packet[..2], "the client's id");
    if transport == Transport::Udp {
        let mut key = Vec::new();
        let limit = wire::parse_query(packet, &mut key).map_or(512, |q| q.udp_limit());
        assert!(out.len() <= limit, "{} bytes over UDP, limit {limit}", out.len());
    }
}
