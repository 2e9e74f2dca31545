//! Prometheus metrics. Names that mean what a CoreDNS metric means use CoreDNS's name and labels so
//! existing dashboards keep working; the rest carry the `nodedns_` prefix. No query name or client
//! address is ever a label. Handles for the per-query counters are registered once, so counting a
//! query is an atomic add, not a registry lookup.

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::PrometheusHandle;
use nodedns_zone::Transport;
use nodedns_zone::handler::DropReason;
use nodedns_zone::store::Published;

/// Installs the process-wide Prometheus recorder once and returns its handle.
pub fn prometheus() -> &'static PrometheusHandle {
    nodedns_common::telemetry::prometheus(describe)
}

fn describe() {
    nodedns_common::telemetry::describe_dns_metrics();
    describe_counter!("nodedns_dns_truncated_total", "UDP responses cut to the client's size with TC set.");
    describe_counter!("nodedns_zone_transfers_total", "Zone transfer requests by result.");
    describe_counter!("nodedns_cluster_file_reloads_total", "Cluster file (re)loads by result.");
    describe_gauge!("nodedns_zone_records", "Records in the served zones.");
    describe_gauge!("nodedns_zone_serial", "SOA serial of the served zones.");
    describe_histogram!("nodedns_zone_build_seconds", "Time to rebuild the zone index after a change.");
    describe_gauge!("nodedns_store_objects", "Cluster objects stored, by kind.");
    nodedns_common::reload::describe_metrics();
    for (name, help) in nodedns_grpc::METRICS {
        if name.ends_with("_total") {
            describe_counter!(name, help);
        } else if name.ends_with("_seconds") {
            describe_histogram!(name, help);
        } else {
            describe_gauge!(name, help);
        }
    }
}

const TYPES: [(RecordType, &str); 11] = [
    (RecordType::A, "A"),
    (RecordType::AAAA, "AAAA"),
    (RecordType::SRV, "SRV"),
    (RecordType::PTR, "PTR"),
    (RecordType::TXT, "TXT"),
    (RecordType::CNAME, "CNAME"),
    (RecordType::NS, "NS"),
    (RecordType::SOA, "SOA"),
    (RecordType::ANY, "ANY"),
    (RecordType::AXFR, "AXFR"),
    (RecordType::IXFR, "IXFR"),
];

const RCODES: [(ResponseCode, &str); 7] = [
    (ResponseCode::NoError, "NOERROR"),
    (ResponseCode::NXDomain, "NXDOMAIN"),
    (ResponseCode::Refused, "REFUSED"),
    (ResponseCode::FormErr, "FORMERR"),
    (ResponseCode::NotImp, "NOTIMP"),
    (ResponseCode::ServFail, "SERVFAIL"),
    (ResponseCode::BADVERS, "BADVERS"),
];

/// The CoreDNS name of a response code (`NOERROR`, `SERVFAIL`), as the `rcode` label and the
/// query log spell it; `OTHER` for the rest.
pub fn rcode_name(rcode: ResponseCode) -> &'static str {
    RCODES.iter().find(|r| r.0 == rcode).map_or("OTHER", |r| r.1)
}

/// Pre-registered per-query handles.
pub struct DnsMetrics {
    /// `[transport][family][type or "other"]`.
    requests: Vec<Counter>,
    responses: Vec<Counter>,
    duration: [Histogram; 2],
    dropped: [Counter; 2],
    truncated: Counter,
}

impl DnsMetrics {
    pub fn new() -> Self {
        prometheus();
        let mut requests = Vec::new();
        for proto in ["udp", "tcp"] {
            for family in ["1", "2"] {
                for t in TYPES.iter().map(|t| t.1).chain(["other"]) {
                    requests.push(counter!("coredns_dns_requests_total", "proto" => proto, "family" => family, "type" => t));
                }
            }
        }
        let responses = RCODES
            .iter()
            .map(|r| r.1)
            .chain(["other"])
            .map(|rcode| counter!("coredns_dns_responses_total", "rcode" => rcode))
            .collect();
        Self {
            requests,
            responses,
            duration: ["udp", "tcp"]
                .map(|p| histogram!("coredns_dns_request_duration_seconds", "proto" => p)),
            dropped: [DropReason::TooShort, DropReason::NotAQuery]
                .map(|r| counter!("nodedns_dns_dropped_total", "reason" => r.as_str())),
            truncated: counter!("nodedns_dns_truncated_total"),
        }
    }

    pub fn request(&self, transport: Transport, ipv6: bool, qtype: Option<RecordType>) {
        let t = qtype.and_then(|q| TYPES.iter().position(|t| t.0 == q)).unwrap_or(TYPES.len());
        let p = usize::from(transport == Transport::Tcp);
        let f = usize::from(ipv6);
        self.requests[(p * 2 + f) * (TYPES.len() + 1) + t].increment(1);
    }

    pub fn response(&self, rcode: ResponseCode, transport: Transport, took: Duration, truncated: bool) {
        let i = RCODES.iter().position(|r| r.0 == rcode).unwrap_or(RCODES.len());
        self.responses[i].increment(1);
        self.duration[usize::from(transport == Transport::Tcp)].record(took.as_secs_f64());
        if truncated {
            self.truncated.increment(1);
        }
    }

    pub fn dropped(&self, reason: DropReason) {
        self.dropped[usize::from(reason == DropReason::NotAQuery)].increment(1);
    }
}

impl Default for DnsMetrics {
    fn default() -> Self {
        Self::new()
    }
}

pub fn zone_published(p: &Published) {
    gauge!("nodedns_zone_records").set(p.stats.records as f64);
    gauge!("nodedns_zone_serial").set(f64::from(p.serial));
    histogram!("nodedns_zone_build_seconds").record(p.build_time.as_secs_f64());
}

pub fn store_counts(counts: &[(nodedns_zone::model::Kind, usize)]) {
    for (kind, n) in counts {
        gauge!("nodedns_store_objects", "kind" => kind.as_str()).set(*n as f64);
    }
}

pub fn reload(ok: bool) {
    counter!("nodedns_cluster_file_reloads_total", "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn transfer(allowed: bool) {
    counter!("nodedns_zone_transfers_total", "result" => if allowed { "sent" } else { "refused" })
        .increment(1);
}

pub fn tcp_connections(delta: f64) {
    gauge!("nodedns_tcp_connections").increment(delta);
}

pub fn tcp_rejected() {
    counter!("nodedns_tcp_rejected_total").increment(1);
}
