//! The manifests an operator applies (`manifests/`), held against the authority: every document
//! parses into its k8s-openapi type with no field the type does not know; in every build (the
//! base, the base with each component, with all of them) the authority Deployment names only flags
//! `nodedns-authority --help` lists, passes the binary's own `--check-config` with the ConfigMap
//! written out as kubelet mounts it, and its probes, container ports and Services point at the
//! ports it listens on. The RBAC grants exactly what the authority watches. The agent's side is
//! `node-agent/tests/manifests.rs`.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use nodedns_testsupport::manifests::{
    self as m, Flag, PodView, Value, all_builds, default_port, find, help_flags, local_path, port_of,
    selects, split_flag,
};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nodedns-authority");

fn help() -> BTreeMap<String, Flag> {
    let out = Command::new(BIN).arg("--help").output().expect("running nodedns-authority --help");
    assert!(out.status.success());
    let flags = help_flags(&String::from_utf8_lossy(&out.stdout));
    assert!(flags.contains_key("dns-listen") && flags.contains_key("config"), "help parsed: {flags:?}");
    flags
}

fn json(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).expect("a YAML value converts to JSON")
}

/// The first place where `input` has something `typed` (the same object after a trip through the
/// k8s-openapi type) lacks or holds differently: a misspelt or misplaced field, which the typed
/// parse alone would silently drop.
fn first_difference(input: &serde_json::Value, typed: &serde_json::Value, path: &str) -> Option<String> {
    use serde_json::Value as J;
    match (input, typed) {
        (J::Object(a), J::Object(b)) => a.iter().find_map(|(k, v)| match b.get(k) {
            Some(w) => first_difference(v, w, &format!("{path}/{k}")),
            None => Some(format!("{path}/{k}")),
        }),
        (J::Array(a), J::Array(b)) if a.len() == b.len() => {
            a.iter().zip(b).enumerate().find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}/{i}")))
        }
        _ if input == typed => None,
        _ => Some(path.to_owned()),
    }
}

fn strict<T>(doc: &serde_json::Value) -> Result<(), String>
where
    T: serde::de::DeserializeOwned + serde::Serialize + k8s_openapi::Resource,
{
    let typed: T = serde_json::from_value(doc.clone()).map_err(|e| format!("not a {}: {e}", T::KIND))?;
    let back = serde_json::to_value(&typed).expect("serializing a k8s-openapi object");
    match first_difference(doc, &back, "") {
        None => Ok(()),
        Some(path) => {
            Err(format!("{path} is not a field of {} {} (or has the wrong type)", T::API_VERSION, T::KIND))
        }
    }
}

/// Parses a Kubernetes object into the k8s-openapi type its kind names; other kinds are errors.
fn typed(doc: &Value) -> Result<(), String> {
    let j = json(doc);
    match doc.kind() {
        "Deployment" => strict::<Deployment>(&j),
        "DaemonSet" => strict::<DaemonSet>(&j),
        "Service" => strict::<Service>(&j),
        "ConfigMap" => strict::<ConfigMap>(&j),
        "PodDisruptionBudget" => strict::<PodDisruptionBudget>(&j),
        "ServiceAccount" => strict::<ServiceAccount>(&j),
        "ClusterRole" => strict::<ClusterRole>(&j),
        "ClusterRoleBinding" => strict::<ClusterRoleBinding>(&j),
        "NetworkPolicy" => strict::<NetworkPolicy>(&j),
        other => Err(format!("kind {other:?} is not one the manifests are expected to hold")),
    }
}

#[test]
fn strict_parse_catches_a_misspelt_field() {
    let doc = m::parse_documents(
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec:\n  ports: [{port: 53, targetPrt: 53}]\n",
    )
    .unwrap();
    assert_eq!(
        typed(&doc[0]).unwrap_err(),
        "/spec/ports/0/targetPrt is not a field of v1 Service (or has the wrong type)"
    );
    let doc = m::parse_documents("apiVersion: v1\nkind: Secret\nmetadata: {name: x}\n").unwrap();
    assert!(typed(&doc[0]).unwrap_err().contains("\"Secret\""));
}

#[test]
fn every_manifest_document_parses_into_its_kubernetes_type() {
    let files = m::yaml_files(&m::manifests_dir());
    assert!(files.len() >= 5, "{files:?}");
    let mut kinds = BTreeSet::new();
    for file in &files {
        let docs = m::read_documents(file).unwrap_or_else(|e| panic!("{e}"));
        assert!(!docs.is_empty(), "{}: no document", file.display());
        for doc in &docs {
            if file.file_name().is_some_and(|n| n == "kustomization.yaml") {
                assert!(
                    ["Kustomization", "Component"].contains(&doc.kind())
                        && doc.str_at("/apiVersion").starts_with("kustomize.config.k8s.io/"),
                    "{}: {doc:?}",
                    file.display()
                );
                continue;
            }
            typed(doc).unwrap_or_else(|e| panic!("{}: {} {}: {e}", file.display(), doc.kind(), doc.name()));
            assert_eq!(doc.str_at("/metadata/namespace").is_empty(), doc.kind().starts_with("Cluster"));
            kinds.insert(doc.kind().to_owned());
        }
    }
    let expected = [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "DaemonSet",
        "Deployment",
        "NetworkPolicy",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ];
    assert_eq!(kinds, expected.map(String::from).into());
    // Patched objects stay valid objects.
    for (label, objects) in all_builds() {
        for doc in &objects {
            typed(doc).unwrap_or_else(|e| panic!("{label}: {} {}: {e}", doc.kind(), doc.name()));
        }
    }
}

/// The values a flag takes in a pod: from the arguments if given there, else from the config
/// file, else the `--help` default.
fn effective(
    name: &str,
    args: &[(String, Option<String>)],
    file: &Value,
    flags: &BTreeMap<String, Flag>,
) -> Vec<String> {
    let given: Vec<String> = args.iter().filter(|(n, _)| n == name).filter_map(|(_, v)| v.clone()).collect();
    if !given.is_empty() {
        return given;
    }
    match file.at(&format!("/{name}")) {
        Value::Seq(items) => items.iter().filter_map(|v| v.as_str().map(String::from)).collect(),
        Value::Str(s) => vec![s.clone()],
        Value::Int(n) => vec![n.to_string()],
        _ => flags[name].default.clone().into_iter().collect(),
    }
}

#[test]
fn the_authority_deployment_agrees_with_the_binary() {
    let flags = help();
    let envs: BTreeSet<&str> = flags.values().filter_map(|f| f.env.as_deref()).collect();
    for (label, objects) in all_builds() {
        let label = label.as_str();
        let deployment = find(&objects, "Deployment", "nodedns-authority")
            .unwrap_or_else(|| panic!("{label}: no Deployment"));
        let pod = PodView::new(&objects, deployment);
        assert_eq!(
            pod.container.at("/command"),
            &Value::Seq(vec![Value::Str("nodedns-authority".into())]),
            "{label}"
        );

        // Arguments: `--flag` or `--flag=value`, every flag one the binary has.
        let args = pod.args().unwrap_or_else(|e| panic!("{label}: {e}"));
        let parsed: Vec<(String, Option<String>)> = args
            .iter()
            .map(|a| {
                let (name, value) =
                    split_flag(a).unwrap_or_else(|| panic!("{label}: {a:?} is not --flag[=value]"));
                assert!(
                    flags.contains_key(name) && name != "check-config",
                    "{label}: nodedns-authority has no flag --{name}"
                );
                (name.to_owned(), value.map(String::from))
            })
            .collect();

        // The config file: where --config says, in the ConfigMap volume, with known keys only.
        let dir = nodedns_testsupport::TempDir::new("authority-manifest");
        let mounts = pod.write_config_maps(&objects, dir.path()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let config = effective("config", &parsed, &Value::Null, &flags);
        let [config] = config.as_slice() else { panic!("{label}: no --config") };
        let local = local_path(config, &mounts)
            .unwrap_or_else(|| panic!("{label}: {config} is on no ConfigMap volume"));
        let text = std::fs::read_to_string(&local)
            .unwrap_or_else(|e| panic!("{label}: {config}: {e} (no such key)"));
        let file = m::parse_documents(&text).unwrap().pop().unwrap_or(Value::Null);
        for key in m::config_keys(&text).unwrap() {
            assert!(
                flags.contains_key(&key) && key != "config" && key != "check-config",
                "{label}: authority.yaml: unknown key {key}"
            );
            assert!(
                !parsed.iter().any(|(n, _)| *n == key),
                "{label}: {key} is both a flag and in authority.yaml (the flag wins)"
            );
        }

        // The binary's own validation of exactly this configuration.
        let mut check: Vec<String> = args.iter().filter(|a| !a.starts_with("--config=")).cloned().collect();
        check.push(format!("--config={}", local.display()));
        check.push("--check-config".into());
        let out = Command::new(BIN)
            .args(&check)
            .env_clear()
            .envs(&pod.env)
            .output()
            .expect("running nodedns-authority --check-config");
        assert!(out.status.success(), "{label}: {check:?}: {}", String::from_utf8_lossy(&out.stderr));

        // Ports: the manifests use the binary's defaults, and everything points at them.
        let port = |flag: &str| {
            let values = effective(flag, &parsed, &file, &flags);
            let ports: BTreeSet<u16> =
                values.iter().map(|v| port_of(v).unwrap_or_else(|| panic!("{v}"))).collect();
            assert_eq!(ports.len(), 1, "{label}: --{flag} {values:?}");
            let p = *ports.first().unwrap();
            assert_eq!(
                Some(p),
                default_port(&flags[flag]),
                "{label}: --{flag} is not on the binary's default port"
            );
            p
        };
        let (dns, grpc, admin) = (port("dns-listen"), port("grpc-listen"), port("admin-listen"));
        let served: BTreeSet<(u16, &str)> =
            [(dns, "UDP"), (dns, "TCP"), (grpc, "TCP"), (admin, "TCP")].into();
        let declared: BTreeMap<&str, (u16, &str)> = pod
            .container
            .at("/ports")
            .items()
            .iter()
            .map(|p| {
                (
                    p.str_at("/name"),
                    (
                        p.at("/containerPort").as_i64().unwrap() as u16,
                        p.at("/protocol").as_str().unwrap_or("TCP"),
                    ),
                )
            })
            .collect();
        assert_eq!(declared.values().copied().collect::<BTreeSet<_>>(), served, "{label}: container ports");
        for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
            let get = pod.container.at(&format!("/{probe}/httpGet"));
            assert_eq!(get.str_at("/path"), path, "{label}: {probe}");
            assert_eq!(
                get.at("/port").as_i64(),
                Some(admin.into()),
                "{label}: {probe} is not on the admin port"
            );
            assert!(get.pointer("/host").is_none(), "{label}: {probe}: the pod's own address");
        }

        // Services that select the authority reach ports it serves; the agents' gRPC one exists.
        let labels = deployment.at("/spec/template/metadata/labels");
        let services: Vec<&Value> = objects
            .iter()
            .filter(|o| o.kind() == "Service" && selects(o.at("/spec/selector"), labels))
            .collect();
        for service in &services {
            for sp in service.at("/spec/ports").items() {
                let proto = sp.at("/protocol").as_str().unwrap_or("TCP");
                let target = match sp.at("/targetPort") {
                    Value::Int(n) => *n as u16,
                    Value::Str(name) => {
                        declared.get(name.as_str()).unwrap_or_else(|| panic!("{label}: no port {name}")).0
                    }
                    _ => sp.at("/port").as_i64().unwrap() as u16,
                };
                assert!(
                    served.contains(&(target, proto)),
                    "{label}: Service {} targets {target}/{proto}",
                    service.name()
                );
                if target == dns {
                    assert_eq!(
                        sp.at("/port").as_i64(),
                        Some(53),
                        "{label}: DNS Service {} not on 53",
                        service.name()
                    );
                }
            }
        }
        let grpc_service = find(&objects, "Service", "nodedns-authority")
            .unwrap_or_else(|| panic!("{label}: no gRPC Service"));
        assert!(
            services.iter().any(|s| s.name() == grpc_service.name()),
            "{label}: the gRPC Service selects no authority"
        );
        assert!(
            grpc_service
                .at("/spec/ports")
                .items()
                .iter()
                .any(|p| p.str_at("/name") == "grpc" && p.at("/targetPort").as_i64() == Some(grpc.into()))
        );
        assert!(
            services.iter().any(|s| {
                let ports = s.at("/spec/ports").items();
                s.str_at("/spec/clusterIP") != "None"
                    && ["UDP", "TCP"].iter().all(|proto| {
                        ports
                            .iter()
                            .any(|p| p.at("/port").as_i64() == Some(53) && p.str_at("/protocol") == *proto)
                    })
                    && ports.iter().any(|p| p.at("/targetPort").as_i64() == Some(admin.into()))
            }),
            "{label}: no ClusterIP DNS Service (53 UDP and TCP, metrics) for the authority"
        );
        // CoreDNS's kube-dns Service selects `k8s-app: kube-dns`: the authority must not join it
        // (it refuses names outside the cluster).
        assert_ne!(labels.str_at("/k8s-app"), "kube-dns", "{label}");
        if let Some(kube_dns) = find(&objects, "Service", "kube-dns") {
            assert!(
                services.iter().any(|s| s.name() == "kube-dns"),
                "{label}: kube-dns does not select the authority"
            );
            assert!(
                kube_dns
                    .at("/spec/clusterIP")
                    .as_str()
                    .is_some_and(|ip| ip.parse::<std::net::IpAddr>().is_ok()),
                "{label}: kube-dns needs its fixed ClusterIP"
            );
        }

        // Availability: two replicas on two nodes, a budget, a priority, bounded memory.
        let spec = deployment.at("/spec/template/spec");
        let replicas = deployment.at("/spec/replicas").as_i64().unwrap_or(1);
        assert!(replicas >= 2, "{label}");
        assert_eq!(spec.str_at("/priorityClassName"), "system-cluster-critical");
        assert!(
            spec.at("/topologySpreadConstraints")
                .items()
                .iter()
                .any(|c| c.str_at("/topologyKey") == "kubernetes.io/hostname"
                    && c.str_at("/whenUnsatisfiable") == "DoNotSchedule"
                    && selects(c.at("/labelSelector/matchLabels"), labels)),
            "{label}: replicas are not kept on different nodes"
        );
        let pdb = objects
            .iter()
            .find(|o| {
                o.kind() == "PodDisruptionBudget" && selects(o.at("/spec/selector/matchLabels"), labels)
            })
            .unwrap_or_else(|| panic!("{label}: no PodDisruptionBudget"));
        let max_unavailable = pdb.at("/spec/maxUnavailable").as_i64();
        assert!(max_unavailable.is_some_and(|n| (1..replicas).contains(&n)), "{label}: {pdb:?}");
        for resource in ["/resources/requests/cpu", "/resources/requests/memory", "/resources/limits/memory"]
        {
            assert!(pod.container.pointer(resource).is_some(), "{label}: no {resource}");
        }
        assert_eq!(
            pod.container.at("/securityContext/capabilities/drop"),
            &Value::Seq(vec![Value::Str("ALL".into())])
        );

        // No Service's variables clobber the binary's own.
        let clash: Vec<&String> = pod.env.keys().filter(|k| envs.contains(k.as_str())).collect();
        assert!(
            clash.is_empty(),
            "{label}: the container gets {clash:?}, which the authority reads as flags"
        );
    }
}

#[test]
fn kustomize_builds_what_the_tests_check() {
    // The tests build the manifests with their own kustomize subset; where kubectl is installed,
    // its kustomize must produce the same objects.
    if Command::new("kubectl").arg("version").arg("--client").output().is_err() {
        eprintln!("kubectl not installed: kustomize cross-check skipped");
        return;
    }
    let base = m::manifests_dir().canonicalize().unwrap();
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("kustomize-{}", std::process::id()));
    let relative = |to: &Path, from: &Path| {
        let from = from.canonicalize().unwrap();
        let common = from.ancestors().find(|a| to.starts_with(a)).unwrap().to_owned();
        let ups = from.strip_prefix(&common).unwrap().components().count();
        let mut rel = std::path::PathBuf::new();
        for _ in 0..ups {
            rel.push("..");
        }
        rel.join(to.strip_prefix(&common).unwrap()).display().to_string()
    };
    let mut cases: Vec<(String, Vec<std::path::PathBuf>)> = vec![("base".into(), vec![])];
    cases.extend(
        m::components().into_iter().map(|c| (c.file_name().unwrap().to_string_lossy().into_owned(), vec![c])),
    );
    for (name, components) in cases {
        let dir = work.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        let listed: Vec<String> =
            components.iter().map(|c| relative(&c.canonicalize().unwrap(), &dir)).collect();
        let k = format!("resources: [{}]\ncomponents: [{}]\n", relative(&base, &dir), listed.join(", "));
        std::fs::write(dir.join("kustomization.yaml"), k).unwrap();
        let out = Command::new("kubectl").arg("kustomize").arg(&dir).output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let key = |o: &Value| format!("{}/{}", o.kind(), o.name());
        let mut theirs = m::parse_documents(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let mut ours = m::build_with(&base, &components).unwrap();
        theirs.sort_by_key(key);
        ours.sort_by_key(key);
        assert_eq!(
            ours.iter().map(key).collect::<Vec<_>>(),
            theirs.iter().map(key).collect::<Vec<_>>(),
            "{name}"
        );
        for (a, b) in ours.iter().zip(&theirs) {
            // kustomize may drop the final newline of a block scalar at the end of a patch.
            let normal = |v: &Value| json(v).to_string().replace("\\n\"", "\"");
            assert_eq!(normal(a), normal(b), "{name}: {}", key(a));
        }
    }
    let _ = std::fs::remove_dir_all(&work);
}

#[test]
fn cluster_role_grants_get_list_watch_on_exactly_the_watched_kinds() {
    let text = std::fs::read_to_string(nodedns_testsupport::workspace_path("manifests/authority-rbac.yaml"))
        .unwrap();
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(&text).unwrap();
    let role: ClusterRole =
        serde_json::from_value(docs.iter().find(|d| d["kind"] == "ClusterRole").unwrap().clone()).unwrap();
    let mut granted = BTreeSet::new();
    for rule in role.rules.unwrap_or_default() {
        let verbs: BTreeSet<String> = rule.verbs.into_iter().collect();
        assert_eq!(verbs, ["get", "list", "watch"].map(String::from).into(), "read-only verbs");
        for group in rule.api_groups.unwrap_or_default() {
            for resource in rule.resources.clone().unwrap_or_default() {
                granted.insert(format!("{group}/{resource}"));
            }
        }
    }
    let watched: BTreeSet<String> =
        ["/namespaces", "/services", "/pods", "discovery.k8s.io/endpointslices"].map(String::from).into();
    assert_eq!(granted, watched);
    let binding: ClusterRoleBinding =
        serde_json::from_value(docs.iter().find(|d| d["kind"] == "ClusterRoleBinding").unwrap().clone())
            .unwrap();
    assert_eq!(binding.role_ref.name, role.metadata.name.unwrap());
    let subject = &binding.subjects.unwrap()[0];
    assert_eq!((subject.kind.as_str(), subject.name.as_str()), ("ServiceAccount", "nodedns-authority"));
}

#[test]
fn kube_client_builds_without_a_cluster() {
    // Guards against two rustls crypto providers in the build (crate-stack.md, gotcha 1): building
    // an https client panics then.
    let dir = nodedns_testsupport::TempDir::new("kubecfg");
    let path = dir.write(
        "kubeconfig",
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {server: 'https://127.0.0.1:1'}\nusers:\n- name: u\n  user: {token: t}\ncontexts:\n- name: x\n  context: {cluster: c, user: u}\ncurrent-context: x\n",
    );
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let settings =
        nodedns_authority::kube_source::KubeSettings { kubeconfig: Some(path), ..Default::default() };
    runtime
        .block_on(async { nodedns_authority::kube_source::client(&settings).await })
        .expect("client builds");
}

#[test]
fn the_network_policy_limits_grpc_to_ip_blocks_and_leaves_dns_and_metrics_open() {
    let objects = m::build_with(&m::manifests_dir(), &[m::manifests_dir().join("components/network-policy")])
        .unwrap_or_else(|e| panic!("{e}"));
    let policy = find(&objects, "NetworkPolicy", "nodedns-authority").expect("the policy");
    let deployment = find(&objects, "Deployment", "nodedns-authority").unwrap();
    assert!(
        selects(policy.at("/spec/podSelector/matchLabels"), deployment.at("/spec/template/metadata/labels")),
        "the policy selects the authority's pods"
    );
    assert_eq!(policy.at("/spec/policyTypes").items(), [Value::Str("Ingress".into())]);
    // Every container port is named by exactly one rule: gRPC with ipBlock peers only (agents are
    // hostNetwork: pod selectors cannot match them), DNS and metrics with no `from` (open).
    let container_ports: BTreeSet<(String, i64)> = deployment
        .at("/spec/template/spec/containers/0/ports")
        .items()
        .iter()
        .map(|p| (p.str_at("/protocol").to_owned(), p.at("/containerPort").as_i64().unwrap()))
        .collect();
    let mut covered = BTreeSet::new();
    for rule in policy.at("/spec/ingress").items() {
        let ports: Vec<(String, i64)> = rule
            .at("/ports")
            .items()
            .iter()
            .map(|p| (p.str_at("/protocol").to_owned(), p.at("/port").as_i64().unwrap()))
            .collect();
        let peers = rule.at("/from").items();
        if ports.contains(&("TCP".to_owned(), 8053)) {
            assert_eq!(ports.len(), 1, "gRPC has a rule of its own");
            assert!(!peers.is_empty(), "gRPC is not open to all");
            for peer in peers {
                let cidr = peer.str_at("/ipBlock/cidr");
                assert!(cidr.parse::<ipnet::IpNet>().is_ok(), "gRPC peers are ipBlocks: {peer:?}");
            }
        } else {
            assert!(peers.is_empty(), "DNS and metrics stay open: {rule:?}");
        }
        for p in ports {
            assert!(covered.insert(p.clone()), "{p:?} in two rules");
        }
    }
    assert_eq!(covered, container_ports);
}
