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
use crate::wire::{self, Query};

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
    /// The query as parsed; `None` when it did not parse (FORMERR, NOTIMP).
    pub query: Option<Query>,
    /// Bytes of the query.
    pub request_len: usize,
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

/// A query type for the query log: its name if it is one of [`TYPES`], else `TYPE<n>` (RFC
/// 3597), unlike the metric label's `other`.
struct TypeName(u16);

impl std::fmt::Display for TypeName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match TYPES.get(type_index(self.0)) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "TYPE{}", self.0),
        }
    }
}

/// A query type by name, for log lines.
pub fn qtype_name(qtype: u16) -> impl std::fmt::Display {
    TypeName(qtype)
}

/// A query class for the query log (`IN`, else its name or `CLASS<n>`).
struct ClassName(u16);

impl std::fmt::Display for ClassName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            1 => f.write_str("IN"),
            3 => f.write_str("CH"),
            4 => f.write_str("HS"),
            255 => f.write_str("ANY"),
            n => write!(f, "CLASS{n}"),
        }
    }
}

/// The header flags of a response as CoreDNS's `log` writes `{>rflags}`: `qr,aa,tc,rd,ra,ad,cd`,
/// those set only; from the third and fourth header bytes. The authority's query log writes them
/// with this too.
pub struct ResponseFlags(pub u8, pub u8);

impl std::fmt::Display for ResponseFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = [
            (self.0 & 0x80, "qr"),
            (self.0 & 0x04, "aa"),
            (self.0 & 0x02, "tc"),
            (self.0 & 0x01, "rd"),
            (self.1 & 0x80, "ra"),
            (self.1 & 0x20, "ad"),
            (self.1 & 0x10, "cd"),
        ];
        let mut sep = "";
        for (_, name) in bits.iter().filter(|(set, _)| *set != 0) {
            write!(f, "{sep}{name}")?;
            sep = ",";
        }
        Ok(())
    }
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

/// Counts the answer `response` (as sent) to the query of `o` (cache key `key`), and writes the
/// query log line when `log`: the fields of CoreDNS's `log` plugin (`{remote}:{port} {>id}
/// {type} {class} {name} {proto} {size} {>do} {>bufsize} {rcode} {>rflags} {rsize} {duration}`)
/// as fields, so `--log-format json` has them as keys.
pub fn answered(o: &Outcome, key: &[u8], response: &[u8], log: bool) {
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
        let header = |i: usize| response.get(i).copied().unwrap_or(0);
        let name = match o.query {
            Some(_) => wire::key_name(key),
            None => String::new(),
        };
        tracing::info!(
            client = %o.client,
            id = u16::from_be_bytes([header(0), header(1)]),
            qtype = %TypeName(o.qtype),
            qclass = %ClassName(o.query.map_or(0, |q| q.qclass)),
            name,
            proto = if proto == 1 { "tcp" } else { "udp" },
            size = o.request_len,
            dnssec_ok = o.query.is_some_and(|q| q.dnssec_ok),
            // What the client said it takes over UDP: 512 without EDNS (RFC 1035).
            bufsize = o.query.map_or(512, |q| q.edns.unwrap_or(512)),
            rcode = rcode_name(o.rcode),
            rflags = %ResponseFlags(header(2), header(3)),
            rsize = response.len(),
            duration_us = took.as_micros() as u64,
            source = o.source.as_str(),
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
