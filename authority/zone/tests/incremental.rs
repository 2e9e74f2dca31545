//! Incremental index updates must give exactly the zones a full build gives: random batches of
//! object changes are applied through `ClusterStore::edit` and compared, record for record, with
//! `ZoneIndex::build` of the same state after every batch. The change feed agents follow is
//! checked the same way: every owner whose records changed is named, and a node's table kept up
//! to date from updates equals a fresh snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hickory_proto::rr::RecordType;
use nodedns_testsupport::corpus::present;
use nodedns_zone::feed::PodEntry;
use nodedns_zone::model::{
    ClusterState, DnsPolicy, Endpoint, EndpointSlice, Kind, Namespace, Object, Pod, PodDnsConfig, PodPhase,
    Port, Protocol, Service, ServiceKind,
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
        _ => Object::Pod(random_pod(r, ns)),
    }
}

fn random_pod(r: &mut Rng, namespace: String) -> Pod {
    let dns_policy =
        *r.pick(&[DnsPolicy::ClusterFirst, DnsPolicy::ClusterFirst, DnsPolicy::Default, DnsPolicy::None]);
    Pod {
        namespace,
        name: format!("p{}", r.below(6)),
        ips: vec![ip(r)],
        phase: if r.below(5) == 0 { PodPhase::Succeeded } else { PodPhase::Running },
        node_name: r.pick(&[Some("n1"), Some("n2"), None]).map(str::to_owned),
        hostname: None,
        subdomain: None,
        host_network: r.below(6) == 0,
        dns_policy,
        dns_config: (r.below(4) == 0).then(|| PodDnsConfig {
            nameservers: Vec::new(),
            searches: vec!["corp.example".into()],
            options: vec![("ndots".into(), Some(r.below(6).to_string()))],
        }),
        terminating: r.below(8) == 0,
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

/// Every record of every zone by owner name (SOA left out).
fn by_owner(index: &ZoneIndex) -> BTreeMap<String, Vec<String>> {
    let mut owners: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for lines in dump(index).into_values() {
        for line in lines {
            let owner = line.split(' ').next().unwrap_or_default().to_ascii_lowercase();
            owners.entry(owner).or_default().push(line);
        }
    }
    owners
}

fn under(name: &str, apex: &str) -> bool {
    name == apex || name.ends_with(&format!(".{apex}"))
}

/// What an agent keeps: its node's table and the revision it has applied.
struct Agent {
    node: &'static str,
    revision: u64,
    pods: BTreeMap<IpAddr, PodEntry>,
}

impl Agent {
    fn start(store: &ClusterStore, node: &'static str) -> Self {
        let snap = store.node_snapshot(node);
        Agent {
            node,
            revision: snap.revision,
            pods: snap.pods.iter().map(|p| (p.ip, (**p).clone())).collect(),
        }
    }

    fn table(store: &ClusterStore, node: &str) -> BTreeMap<IpAddr, PodEntry> {
        store.node_snapshot(node).pods.iter().map(|p| (p.ip, (**p).clone())).collect()
    }
}

#[test]
fn notices_name_every_changed_owner_and_agents_track_their_node() {
    let fixed = ZoneConfig {
        reverse_cidrs: Some(vec!["10.0.0.0/16".parse().unwrap(), "fd00::/64".parse().unwrap()]),
        ..Default::default()
    };
    for (seed, config) in [(11, fixed), (13, ZoneConfig::default())] {
        let mut r = Rng(seed);
        let store = ClusterStore::new(config);
        store.replace(Vec::new());
        let mut state = ClusterState::default();
        let mut agents = [Agent::start(&store, "n1"), Agent::start(&store, "n2")];
        let mut before = by_owner(&store.index());
        let (mut named, mut pod_changes) = (0, 0);
        for step in 0..300 {
            let mut batch: Vec<Edit> = (0..=r.below(3)).map(|_| random_edit(&mut r)).collect();
            if r.below(10) == 0 {
                // A relist of pods, cluster-wide or in one namespace.
                let namespace = (r.below(2) == 0).then(|| r.pick(&NAMESPACES).to_string());
                let objects = (0..r.below(5))
                    .map(|_| {
                        let ns = namespace.clone().unwrap_or_else(|| r.pick(&NAMESPACES).to_string());
                        Object::Pod(random_pod(&mut r, ns))
                    })
                    .collect();
                batch.push(Edit::Replace { kind: Kind::Pod, namespace, objects });
            }
            for e in batch.clone() {
                e.apply_to(&mut state);
            }
            if step % 7 == 0 {
                // A file reload: the whole new state, diffed against the old one.
                store.replace_state(state.clone());
            } else {
                store.edit(batch.clone());
            }
            let after = by_owner(&store.index());
            let changed: BTreeSet<&String> =
                before.keys().chain(after.keys()).filter(|o| before.get(*o) != after.get(*o)).collect();
            for agent in &mut agents {
                let update =
                    store.changes_since(agent.revision, agent.node).expect("the log holds every step");
                for owner in &changed {
                    assert!(
                        update.names.contains(*owner) || update.subtrees.iter().any(|s| under(owner, s)),
                        "step {step} (seed {seed}): {owner} changed but was not named; batch {batch:#?}"
                    );
                }
                named += update.names.len();
                pod_changes += update.upserted.len() + update.removed.len();
                for ip in &update.removed {
                    agent.pods.remove(ip);
                }
                for e in &update.upserted {
                    agent.pods.insert(e.ip, (**e).clone());
                }
                agent.revision = update.revision;
                assert_eq!(
                    agent.pods,
                    Agent::table(&store, agent.node),
                    "step {step} (seed {seed}) {}",
                    agent.node
                );
            }
            before = after;
        }
        assert!(
            named > 100 && pod_changes > 50,
            "the test exercised notices ({named}) and pods ({pod_changes})"
        );
        // The tables hold exactly the addresses of the Pending and Running pods placed on each
        // node, each naming its first pod and marked shared when several use it.
        for agent in &agents {
            let mut want: BTreeMap<IpAddr, Vec<(String, String)>> = BTreeMap::new();
            for pod in state.pods.values() {
                let placed = pod.node_name.as_deref() == Some(agent.node);
                if placed && matches!(pod.phase, PodPhase::Pending | PodPhase::Running) {
                    for ip in &pod.ips {
                        want.entry(*ip).or_default().push((pod.namespace.clone(), pod.name.clone()));
                    }
                }
            }
            let want: BTreeMap<IpAddr, ((String, String), bool)> =
                want.into_iter().map(|(ip, pods)| (ip, (pods[0].clone(), pods.len() > 1))).collect();
            let got: BTreeMap<IpAddr, ((String, String), bool)> = agent
                .pods
                .iter()
                .map(|(ip, e)| (*ip, ((e.namespace.clone(), e.name.clone()), e.shared)))
                .collect();
            assert_eq!(got, want, "seed {seed} node {}", agent.node);
        }
    }
}
