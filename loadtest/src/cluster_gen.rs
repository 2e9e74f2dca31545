//! Synthetic clusters for benchmarks: `services` Services spread over `namespaces`, a fraction of
//! them headless with `endpoints` ready endpoints each, the rest ClusterIP with endpoints too, and
//! `pods` Running pods. Addresses come from fixed CIDRs (services 10.96.0.0/12, pods 10.64.0.0/12)
//! so reverse zones are predictable. Output is deterministic for the same parameters.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub namespaces: usize,
    pub services: usize,
    /// Every `headless_every`-th service is headless (0: none).
    pub headless_every: usize,
    /// Ready endpoints per service (headless and ClusterIP alike).
    pub endpoints: usize,
    pub pods: usize,
    /// Nodes the pods are spread over (`node0`, `node1`, ...).
    pub nodes: usize,
    /// The first pod's IP; pod `i` gets `pod_base + i`.
    pub pod_base: Ipv4Addr,
}

/// Where pod addresses start unless told otherwise.
pub const DEFAULT_POD_BASE: Ipv4Addr = Ipv4Addr::new(10, 64, 0, 10);

fn service_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 10)) + i as u32)
}

/// Pod `i`'s address.
pub fn pod_ip(s: &Shape, i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(s.pod_base).wrapping_add(i as u32))
}

/// The cluster's objects, as the API server would hold them (JSON).
pub fn objects(s: &Shape) -> Vec<Value> {
    let mut out = Vec::with_capacity(s.namespaces + 2 * s.services + s.pods);
    let ns = |i: usize| format!("ns{}", i % s.namespaces.max(1));
    for n in 0..s.namespaces.max(1) {
        out.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns{n}")}}));
    }
    let mut next_pod = 0usize;
    for i in 0..s.services {
        let namespace = ns(i);
        let headless = s.headless_every > 0 && i % s.headless_every == 0;
        let cluster_ip = if headless { "None".to_owned() } else { service_ip(i).to_string() };
        out.push(json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": format!("svc{i}"), "namespace": namespace},
            "spec": {"clusterIP": cluster_ip, "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}));
        if s.endpoints == 0 {
            continue;
        }
        let endpoints: Vec<Value> = (0..s.endpoints)
            .map(|_| {
                let ip = pod_ip(s, next_pod % s.pods.max(1));
                next_pod += 1;
                json!({"addresses": [ip.to_string()], "conditions": {"ready": true}})
            })
            .collect();
        out.push(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": format!("svc{i}-a"), "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": format!("svc{i}")}},
            "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": endpoints}));
    }
    for p in 0..s.pods {
        out.push(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": format!("pod{p}"), "namespace": ns(p)},
            "spec": {"nodeName": format!("node{}", p % s.nodes.max(1)), "containers": [{"name": "app", "image": "pause"}]},
            "status": {"phase": "Running", "podIP": pod_ip(s, p).to_string(), "podIPs": [{"ip": pod_ip(s, p).to_string()}]}}));
    }
    out
}

/// The cluster as multi-document YAML (each document in JSON form, which YAML reads too).
pub fn cluster_yaml(s: &Shape) -> String {
    let mut out = String::with_capacity(s.services * 600 + s.pods * 250);
    for object in objects(s) {
        let _ = write!(out, "---\n{object}\n");
    }
    out
}

/// A dnsperf query file: each service's A record, its SRV name, and a share of misses.
pub fn queries(s: &Shape, domain: &str) -> String {
    let mut out = String::new();
    let ns = |i: usize| format!("ns{}", i % s.namespaces.max(1));
    for i in 0..s.services {
        let _ = writeln!(out, "svc{i}.{}.svc.{domain} A", ns(i));
        if i % 4 == 0 {
            let _ = writeln!(out, "_http._tcp.svc{i}.{}.svc.{domain} SRV", ns(i));
        }
        if i % 10 == 0 {
            let _ = writeln!(out, "missing{i}.{}.svc.{domain} A", ns(i));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_clusters_parse_into_the_expected_objects() {
        let shape = Shape {
            namespaces: 3,
            services: 20,
            headless_every: 5,
            endpoints: 2,
            pods: 30,
            nodes: 4,
            pod_base: DEFAULT_POD_BASE,
        };
        let parsed =
            nodedns_zone::file::parse_cluster(&cluster_yaml(&shape)).map_err(|e| e.to_string()).unwrap();
        let state = nodedns_zone::model::ClusterState::from_objects(parsed.objects);
        assert_eq!(state.namespaces.len(), 3);
        assert_eq!(state.services.len(), 20);
        assert_eq!(state.slices.len(), 20);
        assert_eq!(state.pods.len(), 30);
        assert_eq!(queries(&shape, "cluster.local").lines().count(), 20 + 5 + 2);
    }
}
