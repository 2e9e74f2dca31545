//! Table tests of the zone engine in zone-file text (CoreDNS `handler_test.go` style): a small
//! cluster, a question, and the expected sections as presentation-format records.

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{Name, RecordType};
use nodedns_testsupport::corpus::present;
use nodedns_zone::file::parse_cluster;
use nodedns_zone::model::ClusterState;
use nodedns_zone::{PodsMode, ZoneConfig, ZoneIndex, ZoneKind, parse_custom};
use std::str::FromStr;

const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns1}
---
apiVersion: v1
kind: Namespace
metadata: {name: empty}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns1}
spec: {clusterIP: 10.0.0.1, clusterIPs: [10.0.0.1, "fd00::1"], ports: [{name: http, port: 80}, {name: dns, protocol: UDP, port: 53}, {port: 9000}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-a, namespace: ns1, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- {addresses: [10.1.0.1], hostname: Pod-A}
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
metadata: {name: alias2, namespace: ns1}
spec: {type: ExternalName, externalName: alias.ns1.svc.cluster.local.}
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
status: {phase: Running, podIPs: [{ip: 10.1.0.9}, {ip: "fd00:1::9"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: gone, namespace: ns1}
status: {phase: Failed, podIP: 10.1.0.10}
"#;

fn index(config: ZoneConfig) -> ZoneIndex {
    let parsed = parse_cluster(CLUSTER).map_err(|e| e.to_string()).unwrap();
    ZoneIndex::build(&ClusterState::from_objects(parsed.objects), &config, 42)
}

fn config() -> ZoneConfig {
    ZoneConfig { ns_addresses: vec!["10.0.0.53".parse().unwrap()], ..Default::default() }
}

struct Case {
    q: &'static str,
    rcode: ResponseCode,
    answer: &'static [&'static str],
    authority: &'static [&'static str],
    additional: &'static [&'static str],
}

const fn case(
    q: &'static str,
    rcode: ResponseCode,
    answer: &'static [&'static str],
    authority: &'static [&'static str],
) -> Case {
    Case { q, rcode, answer, authority, additional: &[] }
}

const SOA: &str =
    "cluster.local. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5";
use ResponseCode::{NXDomain as NX, NoError as OK};

fn run(idx: &ZoneIndex, cases: &[Case]) {
    let mut failures = Vec::new();
    for c in cases {
        let (name, qtype) = c.q.split_once(' ').unwrap();
        let qname = Name::from_ascii(name).unwrap();
        let Some(got) = idx.lookup(&qname, RecordType::from_str(qtype).unwrap()) else {
            failures.push(format!("{}: REFUSED", c.q));
            continue;
        };
        let text = |rs: &[hickory_proto::rr::Record]| -> Vec<String> {
            rs.iter().map(|r| present(r).join(" ")).collect()
        };
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        let want = |v: &[&str]| {
            sorted(v.iter().map(|s| s.split_whitespace().collect::<Vec<_>>().join(" ")).collect())
        };
        let (a, au, ad) =
            (sorted(text(&got.answers)), sorted(text(&got.authorities)), sorted(text(&got.additionals)));
        if got.rcode != c.rcode || a != want(c.answer) || au != want(c.authority) || ad != want(c.additional)
        {
            failures.push(format!(
                "{}:\n  got  {:?} {a:?} auth {au:?} add {ad:?}\n  want {:?} {:?} auth {:?} add {:?}",
                c.q,
                got.rcode,
                c.rcode,
                want(c.answer),
                want(c.authority),
                want(c.additional)
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn services_endpoints_and_names() {
    run(
        &index(config()),
        &[
            case("web.ns1.svc.cluster.local. A", OK, &["web.ns1.svc.cluster.local. 5 IN A 10.0.0.1"], &[]),
            case(
                "web.ns1.svc.cluster.local. AAAA",
                OK,
                &["web.ns1.svc.cluster.local. 5 IN AAAA fd00::1"],
                &[],
            ),
            case("web.ns1.svc.cluster.local. TXT", OK, &[], &[SOA]),
            // Endpoint names exist under ClusterIP services; the hostname is matched in lower case.
            case(
                "pod-a.web.ns1.svc.cluster.local. A",
                OK,
                &["pod-a.web.ns1.svc.cluster.local. 5 IN A 10.1.0.1"],
                &[],
            ),
            case("10-1-0-2.web.ns1.svc.cluster.local. A", NX, &[], &[SOA]),
            // `_tcp.<svc>` is an empty non-terminal: NODATA, not NXDOMAIN (RFC 8020).
            case("_tcp.web.ns1.svc.cluster.local. A", OK, &[], &[SOA]),
            case("empty.svc.cluster.local. A", OK, &[], &[SOA]),
            case("nope.svc.cluster.local. A", NX, &[], &[SOA]),
            case("svc.cluster.local. SRV", OK, &[], &[SOA]),
            case("dns-version.cluster.local. A", OK, &[], &[SOA]),
        ],
    );
}

#[test]
fn srv_weights_follow_entry_counts_and_carry_addresses() {
    run(
        &index(config()),
        &[
            Case {
                q: "web.ns1.svc.cluster.local. SRV",
                rcode: OK,
                answer: &[
                    "web.ns1.svc.cluster.local. 5 IN SRV 0 33 80 web.ns1.svc.cluster.local.",
                    "web.ns1.svc.cluster.local. 5 IN SRV 0 33 53 web.ns1.svc.cluster.local.",
                    "web.ns1.svc.cluster.local. 5 IN SRV 0 33 9000 web.ns1.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[
                    "web.ns1.svc.cluster.local. 5 IN A 10.0.0.1",
                    "web.ns1.svc.cluster.local. 5 IN AAAA fd00::1",
                ],
            },
            Case {
                q: "_dns._udp.web.ns1.svc.cluster.local. SRV",
                rcode: OK,
                answer: &[
                    "_dns._udp.web.ns1.svc.cluster.local. 5 IN SRV 0 100 53 web.ns1.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[
                    "web.ns1.svc.cluster.local. 5 IN A 10.0.0.1",
                    "web.ns1.svc.cluster.local. 5 IN AAAA fd00::1",
                ],
            },
            case("_dns._tcp.web.ns1.svc.cluster.local. SRV", NX, &[], &[SOA]),
            Case {
                q: "_pg._tcp.db.ns1.svc.cluster.local. SRV",
                rcode: OK,
                answer: &[
                    "_pg._tcp.db.ns1.svc.cluster.local. 5 IN SRV 0 50 5432 db-0.db.ns1.svc.cluster.local.",
                    "_pg._tcp.db.ns1.svc.cluster.local. 5 IN SRV 0 50 5432 10-1-0-4.db.ns1.svc.cluster.local.",
                ],
                authority: &[],
                additional: &[
                    "db-0.db.ns1.svc.cluster.local. 5 IN A 10.1.0.3",
                    "10-1-0-4.db.ns1.svc.cluster.local. 5 IN A 10.1.0.4",
                ],
            },
        ],
    );
}

#[test]
fn external_names_chase_inside_the_zone_only() {
    run(
        &index(config()),
        &[
            case(
                "alias.ns1.svc.cluster.local. A",
                OK,
                &[
                    "alias.ns1.svc.cluster.local. 5 IN CNAME web.ns1.svc.cluster.local.",
                    "web.ns1.svc.cluster.local. 5 IN A 10.0.0.1",
                ],
                &[],
            ),
            case(
                "alias2.ns1.svc.cluster.local. A",
                OK,
                &[
                    "alias2.ns1.svc.cluster.local. 5 IN CNAME alias.ns1.svc.cluster.local.",
                    "alias.ns1.svc.cluster.local. 5 IN CNAME web.ns1.svc.cluster.local.",
                    "web.ns1.svc.cluster.local. 5 IN A 10.0.0.1",
                ],
                &[],
            ),
            // The target lacks the type: the CNAME stays, NODATA with the SOA (RFC 2308 §2.2).
            case(
                "alias.ns1.svc.cluster.local. MX",
                OK,
                &["alias.ns1.svc.cluster.local. 5 IN CNAME web.ns1.svc.cluster.local."],
                &[SOA],
            ),
            case(
                "outside.ns1.svc.cluster.local. A",
                OK,
                &["outside.ns1.svc.cluster.local. 5 IN CNAME example.org."],
                &[],
            ),
            case(
                "outside.ns1.svc.cluster.local. CNAME",
                OK,
                &["outside.ns1.svc.cluster.local. 5 IN CNAME example.org."],
                &[],
            ),
        ],
    );
    // A self-referencing alias ends after the chase limit instead of looping.
    let idx = index(config());
    let got = idx.lookup(&Name::from_ascii("loop.ns1.svc.cluster.local.").unwrap(), RecordType::A).unwrap();
    assert_eq!(got.answers.len(), 9, "the original and 8 followed CNAMEs");
}

#[test]
fn apex_reverse_and_pods() {
    run(
        &index(config()),
        &[
            case("cluster.local. SOA", OK, &[SOA], &[]),
            Case {
                q: "cluster.local. NS",
                rcode: OK,
                answer: &["cluster.local. 5 IN NS ns.dns.cluster.local."],
                authority: &[],
                additional: &["ns.dns.cluster.local. 5 IN A 10.0.0.53"],
            },
            case("ns.dns.cluster.local. A", OK, &["ns.dns.cluster.local. 5 IN A 10.0.0.53"], &[]),
            // Default reverse zones: the /16 (or /64) around every address seen.
            case(
                "1.0.0.10.in-addr.arpa. PTR",
                OK,
                &["1.0.0.10.in-addr.arpa. 5 IN PTR web.ns1.svc.cluster.local."],
                &[],
            ),
            case(
                "1.0.1.10.in-addr.arpa. PTR",
                OK,
                &["1.0.1.10.in-addr.arpa. 5 IN PTR pod-a.web.ns1.svc.cluster.local."],
                &[],
            ),
            case(
                "4.0.1.10.in-addr.arpa. PTR",
                OK,
                &["4.0.1.10.in-addr.arpa. 5 IN PTR 10-1-0-4.db.ns1.svc.cluster.local."],
                &[],
            ),
            case(
                "2.0.1.10.in-addr.arpa. PTR",
                NX,
                &[],
                &[
                    "1.10.in-addr.arpa. 5 IN SOA ns.dns.1.10.in-addr.arpa. hostmaster.1.10.in-addr.arpa. 42 7200 1800 86400 5",
                ],
            ),
            // pods verified: present pods only, both families; failed pods are gone.
            case(
                "10-1-0-9.ns1.pod.cluster.local. A",
                OK,
                &["10-1-0-9.ns1.pod.cluster.local. 5 IN A 10.1.0.9"],
                &[],
            ),
            case(
                "fd00-1--9.ns1.pod.cluster.local. AAAA",
                OK,
                &["fd00-1--9.ns1.pod.cluster.local. 5 IN AAAA fd00:1::9"],
                &[],
            ),
            case("10-1-0-10.ns1.pod.cluster.local. A", NX, &[], &[SOA]),
            case("ns1.pod.cluster.local. A", OK, &[], &[SOA]),
        ],
    );
    assert!(
        index(config())
            .lookup(&Name::from_ascii("1.0.0.11.in-addr.arpa.").unwrap(), RecordType::PTR)
            .is_none(),
        "outside every reverse zone: REFUSED"
    );
    assert!(index(config()).lookup(&Name::from_ascii("example.org.").unwrap(), RecordType::A).is_none());
}

#[test]
fn pods_modes() {
    let insecure = index(ZoneConfig { pods: PodsMode::Insecure, ..config() });
    run(
        &insecure,
        &[
            case(
                "1-2-3-4.ns1.pod.cluster.local. A",
                OK,
                &["1-2-3-4.ns1.pod.cluster.local. 5 IN A 1.2.3.4"],
                &[],
            ),
            case("1-2-3-4.ns1.pod.cluster.local. AAAA", OK, &[], &[SOA]),
            case("1-2-3-4.nons.pod.cluster.local. A", NX, &[], &[SOA]),
            case("x.1-2-3-4.ns1.pod.cluster.local. A", NX, &[], &[SOA]),
        ],
    );
    let disabled = index(ZoneConfig { pods: PodsMode::Disabled, ..config() });
    run(&disabled, &[case("10-1-0-9.ns1.pod.cluster.local. A", NX, &[], &[SOA])]);
}

#[test]
fn wildcards_when_enabled() {
    let idx = index(ZoneConfig { wildcards: true, ..config() });
    run(
        &idx,
        &[
            case(
                "*.ns1.svc.cluster.local. A",
                OK,
                &[
                    "*.ns1.svc.cluster.local. 5 IN A 10.0.0.1",
                    "*.ns1.svc.cluster.local. 5 IN A 10.1.0.3",
                    "*.ns1.svc.cluster.local. 5 IN A 10.1.0.4",
                ],
                &[],
            ),
            case("web.*.svc.cluster.local. A", OK, &["web.*.svc.cluster.local. 5 IN A 10.0.0.1"], &[]),
            case(
                "*.db.ns1.svc.cluster.local. A",
                OK,
                &[
                    "*.db.ns1.svc.cluster.local. 5 IN A 10.1.0.3",
                    "*.db.ns1.svc.cluster.local. 5 IN A 10.1.0.4",
                ],
                &[],
            ),
            case("*.empty.svc.cluster.local. A", NX, &[], &[SOA]),
        ],
    );
    // Off (the default), `*` is an ordinary label.
    run(&index(config()), &[case("*.ns1.svc.cluster.local. A", NX, &[], &[SOA])]);
}

#[test]
fn transfer_lists_every_record_between_soas() {
    let idx = index(config());
    let records = idx.transfer(&Name::from_ascii("cluster.local.").unwrap()).unwrap();
    assert_eq!(records.first().map(|r| r.record_type()), Some(RecordType::SOA));
    assert_eq!(records.last().map(|r| r.record_type()), Some(RecordType::SOA));
    let text: Vec<String> = records.iter().map(|r| present(r).join(" ")).collect();
    for want in [
        "web.ns1.svc.cluster.local. 5 IN A 10.0.0.1",
        "_http._tcp.web.ns1.svc.cluster.local. 5 IN SRV 0 100 80 web.ns1.svc.cluster.local.",
        "dns-version.cluster.local. 28800 IN TXT \"1.1.0\"",
        "10-1-0-9.ns1.pod.cluster.local. 5 IN A 10.1.0.9",
    ] {
        assert!(text.iter().any(|t| t == want), "missing {want}");
    }
    assert_eq!(text.iter().filter(|t| t.contains(" SOA ")).count(), 2);
    assert!(idx.transfer(&Name::from_ascii("svc.cluster.local.").unwrap()).is_none(), "not an apex");
}

/// Custom records (`--custom-records`) in the cluster zone and in zones of their own.
const CUSTOM: &str = r#"
; hosts-style: a name of its own, and an existing service's name taken over.
registry.cluster.local.         A     10.9.0.1
web.ns1.svc.cluster.local.      TXT   "custom"
deep.extra.ns1.svc.cluster.local. A   10.9.0.2
$ORIGIN corp.example.
@        MX    10 mail
mail     60    A     192.0.2.25
www            CNAME mail
txt            TXT   "v=spf1 -all"
a.b            A     192.0.2.7
$ORIGIN example.org.
@   3600 SOA   ns1.example.org. admin.example.org. 2024010101 7200 900 1209600 30
@        NS    ns1.example.org.
ns1      A     192.0.2.53
"#;

fn custom_index(config: ZoneConfig) -> ZoneIndex {
    let parsed = parse_cluster(CLUSTER).map_err(|e| e.to_string()).unwrap();
    let custom = parse_custom(CUSTOM, &config.cluster_domain, config.ttl).map_err(|e| e.to_string()).unwrap();
    ZoneIndex::build_with(&ClusterState::from_objects(parsed.objects), &config, &custom, 42)
}

const CORP_SOA: &str =
    "corp.example. 5 IN SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5";
const ORG_SOA: &str =
    "example.org. 3600 IN SOA ns1.example.org. admin.example.org. 2024010101 7200 900 1209600 30";

#[test]
fn custom_records_in_the_cluster_zone_win_for_their_exact_name() {
    run(
        &custom_index(config()),
        &[
            case("registry.cluster.local. A", OK, &["registry.cluster.local. 5 IN A 10.9.0.1"], &[]),
            case("registry.cluster.local. AAAA", OK, &[], &[SOA]),
            // The name's custom records answer alone: the service's A is hidden (NODATA).
            case(
                "web.ns1.svc.cluster.local. TXT",
                OK,
                &["web.ns1.svc.cluster.local. 5 IN TXT \"custom\""],
                &[],
            ),
            case("web.ns1.svc.cluster.local. A", OK, &[], &[SOA]),
            // Names below it still come from the cluster.
            case(
                "pod-a.web.ns1.svc.cluster.local. A",
                OK,
                &["pod-a.web.ns1.svc.cluster.local. 5 IN A 10.1.0.1"],
                &[],
            ),
            // Above a custom name: an empty non-terminal (NODATA), not NXDOMAIN.
            case("extra.ns1.svc.cluster.local. A", OK, &[], &[SOA]),
            case(
                "deep.extra.ns1.svc.cluster.local. A",
                OK,
                &["deep.extra.ns1.svc.cluster.local. 5 IN A 10.9.0.2"],
                &[],
            ),
            case("other.cluster.local. A", NX, &[], &[SOA]),
        ],
    );
}

#[test]
fn custom_zones_answer_with_their_own_soa() {
    let idx = custom_index(config());
    let zones: Vec<(String, ZoneKind)> = idx.zones().map(|(n, k)| (n.to_ascii(), k)).collect();
    assert!(zones.contains(&("corp.example.".into(), ZoneKind::Custom)), "{zones:?}");
    assert!(zones.contains(&("example.org.".into(), ZoneKind::Custom)), "{zones:?}");
    run(
        &idx,
        &[
            Case {
                q: "corp.example. MX",
                rcode: OK,
                answer: &["corp.example. 5 IN MX 10 mail.corp.example."],
                authority: &[],
                additional: &[],
            },
            case("mail.corp.example. A", OK, &["mail.corp.example. 60 IN A 192.0.2.25"], &[]),
            case(
                "WWW.corp.example. A",
                OK,
                &[
                    "WWW.corp.example. 60 IN CNAME mail.corp.example.",
                    "mail.corp.example. 60 IN A 192.0.2.25",
                ],
                &[],
            ),
            // A TTL left out is the last one written (RFC 1035 §5.1), else `--ttl`.
            case("txt.corp.example. TXT", OK, &["txt.corp.example. 60 IN TXT \"v=spf1 -all\""], &[]),
            case("mail.corp.example. TXT", OK, &[], &[CORP_SOA]),
            case("b.corp.example. A", OK, &[], &[CORP_SOA]),
            case("missing.corp.example. A", NX, &[], &[CORP_SOA]),
            // No SOA or NS in the file: the authority's own, the cluster zone's name server.
            case("corp.example. SOA", OK, &[CORP_SOA], &[]),
            Case {
                q: "corp.example. NS",
                rcode: OK,
                answer: &["corp.example. 5 IN NS ns.dns.cluster.local."],
                authority: &[],
                additional: &["ns.dns.cluster.local. 5 IN A 10.0.0.53"],
            },
            // The file's SOA and NS, serial included.
            case("example.org. SOA", OK, &[ORG_SOA], &[]),
            Case {
                q: "example.org. NS",
                rcode: OK,
                answer: &["example.org. 3600 IN NS ns1.example.org."],
                authority: &[],
                additional: &["ns1.example.org. 3600 IN A 192.0.2.53"],
            },
            case("nope.example.org. A", NX, &[], &[ORG_SOA]),
        ],
    );
    assert!(idx.lookup(&Name::from_ascii("example.com.").unwrap(), RecordType::A).is_none(), "REFUSED");
    let transfer: Vec<String> = idx
        .transfer(&Name::from_ascii("corp.example.").unwrap())
        .unwrap()
        .iter()
        .map(|r| present(r).join(" "))
        .collect();
    assert_eq!(transfer.first().map(String::as_str), Some(CORP_SOA));
    assert!(transfer.contains(&"a.b.corp.example. 60 IN A 192.0.2.7".to_owned()), "{transfer:?}");
    let cluster: Vec<String> = idx
        .transfer(&Name::from_ascii("cluster.local.").unwrap())
        .unwrap()
        .iter()
        .map(|r| present(r).join(" "))
        .collect();
    assert!(cluster.contains(&"web.ns1.svc.cluster.local. 5 IN TXT \"custom\"".to_owned()), "{cluster:?}");
    assert!(
        !cluster.contains(&"web.ns1.svc.cluster.local. 5 IN A 10.0.0.1".to_owned()),
        "hidden by the custom record"
    );
}

#[test]
fn endpoint_pod_names_name_endpoints_without_a_hostname_after_their_pod() {
    let cluster = r#"
apiVersion: v1
kind: Namespace
metadata: {name: ns1}
---
apiVersion: v1
kind: Service
metadata: {name: pg, namespace: ns1}
spec: {clusterIP: None, ports: [{name: db, port: 5432}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: pg-1, namespace: ns1, labels: {kubernetes.io/service-name: pg}}
addressType: IPv4
ports: [{name: db, port: 5432}]
endpoints:
- {addresses: [10.2.0.1], targetRef: {kind: Pod, name: pg-7d9f8-abcde, namespace: ns1}}
- {addresses: [10.2.0.2], hostname: pg-0, targetRef: {kind: Pod, name: pg-0-pod, namespace: ns1}}
- {addresses: [10.2.0.3], targetRef: {kind: Pod, name: dotted.pod.name, namespace: ns1}}
- {addresses: [10.2.0.4]}
"#;
    let parsed = parse_cluster(cluster).map_err(|e| e.to_string()).unwrap();
    let state = ClusterState::from_objects(parsed.objects);
    let on = ZoneIndex::build(&state, &ZoneConfig { endpoint_pod_names: true, ..config() }, 42);
    run(
        &on,
        &[
            case(
                "pg-7d9f8-abcde.pg.ns1.svc.cluster.local. A",
                OK,
                &["pg-7d9f8-abcde.pg.ns1.svc.cluster.local. 5 IN A 10.2.0.1"],
                &[],
            ),
            case("10-2-0-1.pg.ns1.svc.cluster.local. A", NX, &[], &[SOA]),
            // The hostname still wins; a pod name that is not one label, and no pod, keep the address.
            case(
                "pg-0.pg.ns1.svc.cluster.local. A",
                OK,
                &["pg-0.pg.ns1.svc.cluster.local. 5 IN A 10.2.0.2"],
                &[],
            ),
            case("pg-0-pod.pg.ns1.svc.cluster.local. A", NX, &[], &[SOA]),
            case(
                "10-2-0-3.pg.ns1.svc.cluster.local. A",
                OK,
                &["10-2-0-3.pg.ns1.svc.cluster.local. 5 IN A 10.2.0.3"],
                &[],
            ),
            case(
                "10-2-0-4.pg.ns1.svc.cluster.local. A",
                OK,
                &["10-2-0-4.pg.ns1.svc.cluster.local. 5 IN A 10.2.0.4"],
                &[],
            ),
            case(
                "1.0.2.10.in-addr.arpa. PTR",
                OK,
                &["1.0.2.10.in-addr.arpa. 5 IN PTR pg-7d9f8-abcde.pg.ns1.svc.cluster.local."],
                &[],
            ),
        ],
    );
    let off = ZoneIndex::build(&state, &config(), 42);
    run(
        &off,
        &[
            case(
                "10-2-0-1.pg.ns1.svc.cluster.local. A",
                OK,
                &["10-2-0-1.pg.ns1.svc.cluster.local. 5 IN A 10.2.0.1"],
                &[],
            ),
            case("pg-7d9f8-abcde.pg.ns1.svc.cluster.local. A", NX, &[], &[SOA]),
        ],
    );
}
