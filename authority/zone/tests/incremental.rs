//! Incremental index updates must give exactly the zones a full build gives: random batches of
//! object changes are applied through `ClusterStore::edit` and compared, record for record, with
//! `ZoneIndex::build` of the same state after every batch.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::rr::RecordType;
use nodedns_testsupport::corpus::present;
use nodedns_zone::model::{
    ClusterState, DnsPolicy, Endpoint, EndpointSlice, Kind, Namespace, Object, Pod, PodPhase, Port, Protocol,
    Service, ServiceKind,
};
use nodedns_zone::store::Edit;
use nodedns_zone::{ClusterStore, PodsMode, ZoneConfig, ZoneIndex};

/// A small deterministic generator (xorshift): no dependency, same sequence every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const SERVICES: [&str; 4] = ["web", "db", "alias", "api"];

/// Addresses from a small pool, so reuse and duplicates happen; one in 20 outside the
/// configured reverse CIDRs and the derived ones seen so far.
fn ip(r: &mut Rng) -> IpAddr {
    match r.below(20) {
        0 => format!("192.168.{}.{}", r.below(3), r.below(4) + 1).parse().unwrap(),
        1 => format!("fd00::{}", r.below(6) + 1).parse().unwrap(),
        _ => format!("10.{}.0.{}", r.below(2), r.below(8) + 1).parse().unwrap(),
    }
}

fn random_object(r: &mut Rng) -> Object {
    let ns = r.pick(&NAMESPACES).to_string();
    match r.below(4) {
        0 => Object::Namespace(Namespace { name: ns }),
        1 => {
            let kind = match r.below(4) {
                0 => ServiceKind::Headless,
                1 => ServiceKind::ExternalName(
                    r.pick(&["example.org", "web.a.svc.cluster.local."]).to_string(),
                ),
                2 => ServiceKind::ClusterIp(vec![ip(r), ip(r)]),
                _ => ServiceKind::ClusterIp(vec![ip(r)]),
            };
            let ports = (0..r.below(3))
                .map(|i| Port {
                    name: (r.below(3) > 0).then(|| ["http", "grpc"][i as usize % 2].to_owned()),
                    protocol: if r.below(4) == 0 { Protocol::Udp } else { Protocol::Tcp },
                    port: Some([80, 443, 8080][r.below(3) as usize]),
                })
                .collect();
            Object::Service(Service { namespace: ns, name: r.pick(&SERVICES).to_string(), kind, ports })
        }
        2 => {
            let endpoints = (0..r.below(4))
                .map(|_| Endpoint {
                    addresses: vec![ip(r)],
                    hostname: (r.below(3) == 0).then(|| r.pick(&["x", "y"]).to_string()),
                    ready: r.below(4) > 0,
                    node_name: None,
                    target_pod: None,
                })
                .collect();
            Object::EndpointSlice(EndpointSlice {
                namespace: ns,
                name: format!("s{}", r.below(5)),
                service: (r.below(6) > 0).then(|| r.pick(&SERVICES).to_string()),
                ports: vec![Port { name: Some("http".into()), protocol: Protocol::Tcp, port: Some(8080) }],
                endpoints,
            })
        }
        _ => Object::Pod(Pod {
            namespace: ns,
            name: format!("p{}", r.below(6)),
            ips: vec![ip(r)],
            phase: if r.below(5) == 0 { PodPhase::Succeeded } else { PodPhase::Running },
            node_name: None,
            hostname: None,
            subdomain: None,
            host_network: false,
            dns_policy: DnsPolicy::ClusterFirst,
            dns_config: None,
            terminating: false,
        }),
    }
}

fn random_edit(r: &mut Rng) -> Edit {
    if r.below(3) == 0 {
        let kind = *r.pick(&[Kind::Namespace, Kind::Service, Kind::EndpointSlice, Kind::Pod]);
        let name = match kind {
            Kind::Namespace => r.pick(&NAMESPACES).to_string(),
            Kind::Service => r.pick(&SERVICES).to_string(),
            Kind::EndpointSlice => format!("s{}", r.below(5)),
            Kind::Pod => format!("p{}", r.below(6)),
        };
        Edit::Delete { kind, namespace: r.pick(&NAMESPACES).to_string(), name }
    } else {
        Edit::Apply(random_object(r))
    }
}

/// Every record of every zone, SOA left out (the serials differ), as sorted presentation lines.
fn dump(index: &ZoneIndex) -> BTreeMap<String, Vec<String>> {
    index
        .zones()
        .map(|(apex, _)| {
            let mut lines: Vec<String> = index
                .transfer(apex)
                .unwrap()
                .iter()
                .filter(|r| r.record_type() != RecordType::SOA)
                .map(|r| present(r).join(" "))
                .collect();
            lines.sort();
            (apex.to_string(), lines)
        })
        .collect()
}

fn run(config: ZoneConfig, seed: u64) {
    let mut r = Rng(seed);
    let store = ClusterStore::new(config.clone());
    store.replace(Vec::new());
    let mut state = ClusterState::default();
    let mut incremental = 0;
    for step in 0..400 {
        let batch: Vec<Edit> = (0..=r.below(4)).map(|_| random_edit(&mut r)).collect();
        for e in batch.clone() {
            e.apply_to(&mut state);
        }
        let published = store.edit(batch.clone());
        incremental += usize::from(published.incremental);
        let got = store.index();
        let want = ZoneIndex::build(&state, &config, 1);
        assert_eq!(dump(&got), dump(&want), "step {step} (seed {seed}) after {batch:#?}");
        assert_eq!(got.stats(), got.stats_walked(), "running counts drifted at step {step}");
        assert_eq!(got.stats(), want.stats(), "step {step}");
    }
    assert!(incremental > 300, "most batches are patched in place, not rebuilt ({incremental})");
}

#[test]
fn incremental_matches_full_build_with_fixed_reverse_cidrs() {
    let config = ZoneConfig {
        reverse_cidrs: Some(vec!["10.0.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()]),
        ..Default::default()
    };
    for seed in [1, 7, 42] {
        run(config.clone(), seed);
    }
}

#[test]
fn incremental_matches_full_build_with_derived_reverse_zones_and_other_pod_modes() {
    for (seed, pods) in [(3, PodsMode::Verified), (5, PodsMode::Insecure), (9, PodsMode::Disabled)] {
        // Derived zones: a new address outside them forces a rebuild, so fewer patches happen.
        let mut r = Rng(seed);
        let config = ZoneConfig { pods, ..Default::default() };
        let store = ClusterStore::new(config.clone());
        store.replace(Vec::new());
        let mut state = ClusterState::default();
        for step in 0..300 {
            let batch: Vec<Edit> = (0..=r.below(3)).map(|_| random_edit(&mut r)).collect();
            for e in batch.clone() {
                e.apply_to(&mut state);
            }
            store.edit(batch);
            let want = ZoneIndex::build(&state, &config, 1);
            let got = store.index();
            // Zones derived at the last rebuild may outlive their last address: compare the
            // records of the zones a fresh build has.
            let (got, want) = (dump(&got), dump(&want));
            for (apex, lines) in &want {
                assert_eq!(got.get(apex), Some(lines), "step {step} (seed {seed}) zone {apex}");
            }
        }
    }
}
