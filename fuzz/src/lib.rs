//! Shared pieces of the nodedns fuzz targets: a reader that splits one fuzz input into fields, the
//! small fixed cluster every target answers from, and the agent set up around it without sockets.
//!
//! Input layout (what the seeds in `seeds/` follow): fixed-size fields are read first
//! ([`Input::byte`], [`Input::u16`]); variable parts are *chunks*, each a big-endian u16 length
//! then that many bytes (cut short at the end of the input). A missing field reads as zero or
//! empty, so every byte string is a valid input.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use nodedns_agent::authority_client::AuthorityLink;
use nodedns_agent::cache::{Cache, Limits};
use nodedns_agent::config::ResolvConf;
use nodedns_agent::request::{Resolver, Routes};
use nodedns_agent::upstream::Forwarder;
use nodedns_proto::v1::subscribe_response::Event;
use nodedns_proto::v1::{NodeSearch, PodEntry, Snapshot};
use nodedns_zone::file::parse_cluster;
use nodedns_zone::{ClusterStore, PodsMode, ZoneConfig};

/// Reads fields off the front of a fuzz input.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.byte(), self.byte()])
    }

    /// A length-prefixed part (see the crate docs).
    pub fn chunk(&mut self) -> &'a [u8] {
        let len = usize::from(self.u16()).min(self.data.len());
        let (chunk, rest) = self.data.split_at(len);
        self.data = rest;
        chunk
    }

    /// Every chunk left.
    pub fn chunks(mut self) -> Vec<&'a [u8]> {
        let mut out = Vec::new();
        while !self.data.is_empty() {
            out.push(self.chunk());
        }
        out
    }

    pub fn rest(self) -> &'a [u8] {
        self.data
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// The cluster every target answers from: services of each kind (ClusterIP dual-stack, headless
/// with named endpoints, ExternalName chains and a loop, a wildcard-looking name) and pods on
/// `node-a` (ClusterFirst, hostNetwork, custom dnsConfig).
pub const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns1}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns1}
spec: {clusterIP: 10.0.0.1, clusterIPs: [10.0.0.1, "fd00::1"], ports: [{name: http, port: 80}, {name: dns, protocol: UDP, port: 53}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: ns1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.1.0.1], hostname: pod-a}
- {addresses: [10.1.0.2], conditions: {ready: false}}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: ns1}
spec: {clusterIP: None, ports: [{name: pg, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: ns1, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- {addresses: [10.1.0.3], hostname: db-0}
- {addresses: [10.1.0.4]}
---
apiVersion: v1
kind: Service
metadata: {name: alias, namespace: ns1}
spec: {type: ExternalName, externalName: web.ns1.svc.cluster.local}
---
apiVersion: v1
kind: Service
metadata: {name: outside, namespace: ns1}
spec: {type: ExternalName, externalName: example.org}
---
apiVersion: v1
kind: Service
metadata: {name: loop, namespace: ns1}
spec: {type: ExternalName, externalName: loop.ns1.svc.cluster.local}
---
apiVersion: v1
kind: Pod
metadata: {name: p1, namespace: ns1}
spec: {nodeName: node-a, hostname: h1, subdomain: db}
status: {phase: Running, podIPs: [{ip: 10.1.0.9}, {ip: "fd00:1::9"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: host, namespace: ns1}
spec: {nodeName: node-a, hostNetwork: true}
status: {phase: Running, podIP: 192.168.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: custom, namespace: ns1}
spec:
  nodeName: node-a
  dnsPolicy: None
  dnsConfig: {nameservers: [10.0.0.10], searches: [corp.example, ns1.svc.cluster.local], options: [{name: ndots, value: "2"}]}
status: {phase: Running, podIP: 10.1.0.11}
"#;

/// Clients allowed zone transfers in the authority targets.
pub fn transfer_acl() -> Vec<ipnet::IpNet> {
    vec!["10.0.0.0/8".parse().expect("static CIDR")]
}

fn build_store(config: ZoneConfig) -> Arc<ClusterStore> {
    let store = ClusterStore::new(config);
    // The fixed cluster is known to parse; a failure is the harness's bug, not an input's.
    let parsed = parse_cluster(CLUSTER).expect("the fuzz cluster parses");
    store.replace(parsed.objects);
    store
}

/// The fixed cluster under two zone settings: the defaults, and wildcards with `pods insecure`.
pub fn stores() -> &'static [Arc<ClusterStore>; 2] {
    static STORES: OnceLock<[Arc<ClusterStore>; 2]> = OnceLock::new();
    STORES.get_or_init(|| {
        let ns = vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 53))];
        [
            build_store(ZoneConfig { ns_addresses: ns.clone(), ..ZoneConfig::default() }),
            build_store(ZoneConfig {
                ns_addresses: ns,
                wildcards: true,
                pods: PodsMode::Insecure,
                ..ZoneConfig::default()
            }),
        ]
    })
}

/// The authority's gRPC service over store `which` (0 or 1), never draining.
pub fn service(which: usize) -> nodedns_grpc::Service {
    let store = Arc::clone(&stores()[which % 2]);
    let never = tokio_util::sync::CancellationToken::new();
    let shutdown = nodedns_grpc::Shutdown { draining: never.clone(), stop: never, lameduck: Duration::ZERO };
    nodedns_grpc::Service::new(store, Arc::new(ArcSwap::from_pointee(transfer_acl())), shutdown)
}

/// The node's resolv.conf as the agent reads it.
pub fn node_resolv() -> ResolvConf {
    ResolvConf {
        nameservers: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10))],
        search: vec!["corp.example".into()],
        ndots: Some(1),
    }
}

/// Clients the request target may pick: a ClusterFirst pod (autopathed), its IPv6 address, a
/// hostNetwork pod, a pod with its own dnsConfig, and an address the agent does not know.
pub const CLIENTS: [SocketAddr; 5] = [
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 9)), 40000),
    SocketAddr::new(IpAddr::V6(Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 9)), 40000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 10)), 40000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 11)), 40000),
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000),
];

fn pod(ip: IpAddr, name: &str, search: &[&str], node_search: NodeSearch, ndots: Option<u32>) -> PodEntry {
    PodEntry {
        ip: match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        },
        namespace: "ns1".into(),
        name: name.into(),
        host_network: false,
        search: search.iter().map(|s| (*s).to_owned()).collect(),
        node_search: node_search as i32,
        ndots,
        shared: false,
    }
}

/// The Snapshot the authority sends `node-a` for [`CLUSTER`] (what the agent starts from).
pub fn snapshot() -> Event {
    const FIRST: [&str; 3] = ["ns1.svc.cluster.local", "svc.cluster.local", "cluster.local"];
    let mut host = pod(CLIENTS[2].ip(), "host", &FIRST, NodeSearch::After, Some(5));
    host.host_network = true;
    Event::Snapshot(Snapshot {
        pods: vec![
            pod(CLIENTS[0].ip(), "p1", &FIRST, NodeSearch::After, Some(5)),
            pod(CLIENTS[1].ip(), "p1", &FIRST, NodeSearch::After, Some(5)),
            host,
            pod(
                CLIENTS[3].ip(),
                "custom",
                &["corp.example", "ns1.svc.cluster.local"],
                NodeSearch::None,
                Some(2),
            ),
        ],
        zones: vec!["cluster.local.".into(), "10.in-addr.arpa.".into()],
        cluster_domain: "cluster.local.".into(),
        max_in_flight: 1024,
    })
}

/// A small cache (1 MiB, one shard) with the agent's default TTL limits.
pub fn cache() -> Arc<Cache> {
    Arc::new(Cache::new(Limits { max_bytes: 1 << 20, ..Limits::default() }))
}

/// An agent's resolver as `Agent::run` builds it, minus sockets: the authority link holds the
/// node's snapshot, upstreams are empty (a miss routed there fails at once, no packet leaves),
/// and the caller attaches the authority's Resolve stream ([`AuthorityLink::attach`]).
pub fn resolver(autopath: bool, log_queries: bool) -> Arc<Resolver> {
    let cache = cache();
    let authority = AuthorityLink::new(Duration::from_secs(2), vec!["cluster.local.".into()], node_resolv());
    authority.apply(1, Some(snapshot()), &cache);
    let routes = Routes::new(Forwarder::new(&[], Duration::from_secs(1), "upstream"), Vec::new());
    Arc::new(Resolver::new(cache, authority, routes, node_resolv(), autopath, log_queries))
}

/// Whether `name` (wire form labels, or a presentation string's bytes) uses only letters, digits,
/// hyphens (and dots): where presentation and wire forms map one to one and invariants that
/// compare them hold.
pub fn ldh(bytes: &[u8]) -> bool {
    bytes.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'.')
}

/// A single-threaded runtime with a paused clock: a query the fake authority never answers times
/// out at once instead of after seconds.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a current-thread runtime builds")
}

/// Whether a wire-form name (length-prefixed labels) has only letters, digits and hyphens in its
/// labels.
pub fn plain_wire_name(mut name: &[u8]) -> bool {
    while let Some((&len, rest)) = name.split_first() {
        let len = usize::from(len);
        if len == 0 {
            return true;
        }
        let Some(label) = rest.get(..len) else { return false };
        if !label.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-') {
            return false;
        }
        name = &rest[len..];
    }
    true
}
