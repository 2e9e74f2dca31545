//! The one place an answer is counted and logged. CoreDNS's metric names and labels where the
//! meaning is the same (`coredns_dns_requests_total`, `coredns_dns_responses_total`,
//! `coredns_cache_hits_total`, `coredns_cache_misses_total`), so existing dashboards keep working;
//! `nodedns_` for the rest. No query name or client address is ever a label.

use std::net::SocketAddr;
use std::time::Instant;

use metrics::{counter, histogram};

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

fn rcode_name(rcode: u8) -> &'static str {
    match rcode {
        0 => "NOERROR",
        1 => "FORMERR",
        2 => "SERVFAIL",
        3 => "NXDOMAIN",
        4 => "NOTIMP",
        5 => "REFUSED",
        _ => "OTHER",
    }
}

fn type_name(qtype: u16) -> &'static str {
    match qtype {
        1 => "A",
        28 => "AAAA",
        33 => "SRV",
        12 => "PTR",
        5 => "CNAME",
        16 => "TXT",
        15 => "MX",
        2 => "NS",
        6 => "SOA",
        65 => "HTTPS",
        255 => "ANY",
        _ => "other",
    }
}

pub fn answered(o: &Outcome, key: &[u8], log: bool) {
    let proto = match o.transport {
        Transport::Udp => "udp",
        Transport::Tcp => "tcp",
    };
    let family = if o.client.is_ipv4() { "1" } else { "2" };
    let qtype = type_name(o.qtype);
    counter!("coredns_dns_requests_total", "proto" => proto, "family" => family, "type" => qtype)
        .increment(1);
    counter!("coredns_dns_responses_total", "rcode" => rcode_name(o.rcode)).increment(1);
    match o.source {
        Source::CacheSuccess => counter!("coredns_cache_hits_total", "type" => "success").increment(1),
        Source::CacheDenial => counter!("coredns_cache_hits_total", "type" => "denial").increment(1),
        Source::Stale => counter!("nodedns_cache_stale_served_total").increment(1),
        _ => {}
    }
    let took = o.started.elapsed();
    histogram!("coredns_dns_request_duration_seconds", "proto" => proto).record(took.as_secs_f64());
    if log {
        tracing::info!(
            client = %o.client,
            proto,
            name = wire::key_name(key),
            qtype,
            rcode = rcode_name(o.rcode),
            source = o.source.as_str(),
            duration_us = took.as_micros() as u64,
            "query"
        );
    }
}

pub fn cache_miss() {
    counter!("coredns_cache_misses_total").increment(1);
}

pub fn coalesced() {
    counter!("nodedns_coalesced_total").increment(1);
}

pub fn dropped(reason: &'static str) {
    counter!("nodedns_dns_dropped_total", "reason" => reason).increment(1);
}
