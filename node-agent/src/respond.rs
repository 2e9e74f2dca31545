//! The one place an answer is counted and logged. CoreDNS's metric names and labels where the
//! meaning is the same (`coredns_dns_requests_total`, `coredns_dns_responses_total`,
//! `coredns_cache_hits_total`, `coredns_cache_misses_total`), so existing dashboards keep working;
//! `nodedns_` for the rest. No query name or client address is ever a label.

use std::net::SocketAddr;
use std::time::Instant;

use std::sync::OnceLock;

use metrics::{Counter, counter};
use nodedns_common::telemetry::{FastHistogram, render_histograms};

use crate::request::Transport;
use crate::wire;

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    CacheSuccess,
    CacheDenial,
    /// Fetched from the authority, a stub domain or an upstream.
    Fetched,
    /// Served stale because the source could not answer (RFC 8767).
    Stale,
    /// An error answer of our own (FORMERR, NOTIMP, SERVFAIL).
    Error,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::CacheSuccess => "cache",
            Source::CacheDenial => "cache-denial",
            Source::Fetched => "fetched",
            Source::Stale => "stale",
            Source::Error => "error",
        }
    }
}

pub struct Outcome {
    pub transport: Transport,
    pub qtype: u16,
    pub rcode: u8,
    pub source: Source,
    pub client: SocketAddr,
    pub started: Instant,
}

/// The `rcode` label's slot: NOERROR..REFUSED by number, then OTHER, then BADVERS (16, an
/// extended rcode the agent sends for EDNS versions above 0), as the authority labels it.
fn rcode_index(rcode: u8) -> usize {
    match rcode {
        16 => OTHER + 1,
        r => usize::from(r).min(OTHER),
    }
}

fn rcode_name(rcode: u8) -> &'static str {
    RCODE_LABELS[rcode_index(rcode)]
}

/// The slot of rcodes without a name of their own; those below it are rcodes 0..=5 by number.
const OTHER: usize = 6;
const RCODE_LABELS: [&str; 8] =
    ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "OTHER", "BADVERS"];
const TYPES: [(u16, &str); 11] = [
    (1, "A"),
    (28, "AAAA"),
    (33, "SRV"),
    (12, "PTR"),
    (5, "CNAME"),
    (16, "TXT"),
    (15, "MX"),
    (2, "NS"),
    (6, "SOA"),
    (65, "HTTPS"),
    (255, "ANY"),
];

fn type_index(qtype: u16) -> usize {
    TYPES.iter().position(|(t, _)| *t == qtype).unwrap_or(TYPES.len())
}

fn type_name(qtype: u16) -> &'static str {
    TYPES.get(type_index(qtype)).map_or("other", |(_, n)| *n)
}

/// Metric handles registered once: counting an answer is a few atomic adds, no registry lookup.
struct Handles {
    /// [proto][family][type]
    requests: Vec<Vec<Vec<Counter>>>,
    /// [rcode], the last for any other
    responses: Vec<Counter>,
    hits_success: Counter,
    hits_denial: Counter,
    stale: Counter,
    misses: Counter,
    /// [proto]: rendered by [`render`], not through the recorder (see [`FastHistogram`]).
    duration: [FastHistogram; 2],
}

fn handles() -> &'static Handles {
    static HANDLES: OnceLock<Handles> = OnceLock::new();
    HANDLES.get_or_init(|| {
        let types: Vec<&'static str> = TYPES.iter().map(|(_, n)| *n).chain(["other"]).collect();
        let requests = ["udp", "tcp"]
            .iter()
            .map(|proto| {
                ["1", "2"]
                    .iter()
                    .map(|family| {
                        types
                            .iter()
                            .map(|t| counter!("coredns_dns_requests_total", "proto" => *proto, "family" => *family, "type" => *t))
                            .collect()
                    })
                    .collect()
            })
            .collect();
        let responses =
            RCODE_LABELS.iter().map(|r| counter!("coredns_dns_responses_total", "rcode" => *r)).collect();
        Handles {
            requests,
            responses,
            hits_success: counter!("coredns_cache_hits_total", "type" => "success"),
            hits_denial: counter!("coredns_cache_hits_total", "type" => "denial"),
            stale: counter!("nodedns_cache_stale_served_total"),
            misses: counter!("coredns_cache_misses_total"),
            duration: [FastHistogram::new(&[("proto", "udp")]), FastHistogram::new(&[("proto", "tcp")])],
        }
    })
}

pub fn answered(o: &Outcome, key: &[u8], log: bool) {
    let h = handles();
    let proto = usize::from(o.transport == Transport::Tcp);
    let family = usize::from(!o.client.is_ipv4());
    h.requests[proto][family][type_index(o.qtype)].increment(1);
    h.responses[rcode_index(o.rcode)].increment(1);
    match o.source {
        Source::CacheSuccess => h.hits_success.increment(1),
        Source::CacheDenial => h.hits_denial.increment(1),
        Source::Stale => h.stale.increment(1),
        _ => {}
    }
    let took = o.started.elapsed();
    h.duration[proto].record(took);
    if log {
        tracing::info!(
            client = %o.client,
            proto = if proto == 1 { "tcp" } else { "udp" },
            name = wire::key_name(key),
            qtype = type_name(o.qtype),
            rcode = rcode_name(o.rcode),
            source = o.source.as_str(),
            duration_us = took.as_micros() as u64,
            "query"
        );
    }
}

/// Appends the series kept outside the recorder to the recorder's `/metrics` text.
pub fn render(out: &mut String) {
    let h = handles();
    render_histograms(
        "coredns_dns_request_duration_seconds",
        "Time to answer a DNS request.",
        &[&h.duration[0], &h.duration[1]],
        out,
    );
}

pub fn cache_miss() {
    handles().misses.increment(1);
}

pub fn prefetched() {
    counter!("nodedns_cache_prefetch_total").increment(1);
}

pub fn coalesced() {
    counter!("nodedns_coalesced_total").increment(1);
}

pub fn dropped(reason: &'static str) {
    counter!("nodedns_dns_dropped_total", "reason" => reason).increment(1);
}
