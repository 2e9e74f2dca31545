//! The agent DaemonSet of `manifests/` held against the agent binary, in every build (the base, the
//! base with each component, with all of them): it names only flags `nodedns-agent --help` lists,
//! passes the binary's own `--check-config` with the ConfigMap written out as kubelet mounts it and
//! the Services' variables kubelet sets, probes the port and address the agent's admin listener
//! serves, and keeps what a node's DNS needs during a rollout (surge, SO_REUSEPORT handoff, the
//! interface kept). The Kubernetes types themselves are checked by the authority's
//! `tests/manifests.rs`; this crate links no Kubernetes client.

use nodedns_testsupport::manifests::{
    self as m, Flag, PodView, Value, all_builds, default_port, find, help_flags, host_of, local_path,
    port_of, selects, split_flag,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_nodedns-agent");

fn help() -> BTreeMap<String, Flag> {
    let out = Command::new(BIN).arg("--help").output().expect("running nodedns-agent --help");
    assert!(out.status.success());
    let flags = help_flags(&String::from_utf8_lossy(&out.stdout));
    assert!(flags.contains_key("listen") && flags.contains_key("admin-listen"), "help parsed: {flags:?}");
    flags
}

fn strings(v: &Value) -> BTreeSet<&str> {
    v.items().iter().filter_map(Value::as_str).collect()
}

#[test]
fn the_agent_daemonset_agrees_with_the_binary() {
    let flags = help();
    let envs: BTreeSet<&str> = flags.values().filter_map(|f| f.env.as_deref()).collect();
    let default_admin_port =
        default_port(&flags["admin-listen"]).expect("admin-listen default port in --help");
    let default_listen = flags["listen"].default.clone().expect("listen default in --help");
    for (label, objects) in all_builds() {
        let label = label.as_str();
        let ds =
            find(&objects, "DaemonSet", "nodedns-agent").unwrap_or_else(|| panic!("{label}: no DaemonSet"));
        let spec = ds.at("/spec/template/spec");
        let pod = PodView::new(&objects, ds);
        assert_eq!(
            pod.container.at("/command"),
            &Value::Seq(vec![Value::Str("nodedns-agent".into())]),
            "{label}"
        );

        // Arguments: `--flag` or `--flag=value`, every flag one the binary has; the Service
        // variables they use exist (kubelet would pass `$(NAME)` on as text otherwise).
        let args = pod.args().unwrap_or_else(|e| panic!("{label}: {e}"));
        let mut given: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for arg in &args {
            let (name, value) =
                split_flag(arg).unwrap_or_else(|| panic!("{label}: {arg:?} is not --flag[=value]"));
            assert!(
                flags.contains_key(name) && name != "check-config",
                "{label}: nodedns-agent has no flag --{name}"
            );
            given.entry(name).or_default().extend(value);
        }

        // The config file: where --config says, in the ConfigMap volume, with known keys only.
        let dir = nodedns_testsupport::TempDir::new("agent-manifest");
        let mounts = pod.write_config_maps(&objects, dir.path()).unwrap_or_else(|e| panic!("{label}: {e}"));
        let [config] = given.get("config").map(Vec::as_slice).unwrap_or_default() else {
            panic!("{label}: no single --config")
        };
        let local = local_path(config, &mounts)
            .unwrap_or_else(|| panic!("{label}: {config} is on no ConfigMap volume"));
        let text = std::fs::read_to_string(&local)
            .unwrap_or_else(|e| panic!("{label}: {config}: {e} (no such key)"));
        for key in m::config_keys(&text).unwrap() {
            assert!(
                flags.contains_key(&key) && key != "config" && key != "check-config",
                "{label}: agent.yaml: unknown key {key}"
            );
            assert!(
                !given.contains_key(key.as_str()),
                "{label}: {key} is both a flag and in agent.yaml (the flag wins)"
            );
        }

        // The binary's own validation of exactly this configuration, in the environment kubelet
        // gives the container (the node's resolv.conf stands in as a file of ours).
        let resolv = dir.write("resolv.conf", "nameserver 10.0.0.2\nsearch example.internal\n");
        let mut check: Vec<String> = args.iter().filter(|a| !a.starts_with("--config=")).cloned().collect();
        check.push(format!("--config={}", local.display()));
        check.push("--check-config".into());
        let out = Command::new(BIN)
            .args(&check)
            .env_clear()
            .envs(&pod.env)
            .env(flags["resolv-conf"].env.as_deref().unwrap(), &resolv)
            .output()
            .expect("running nodedns-agent --check-config");
        assert!(out.status.success(), "{label}: {check:?}: {}", String::from_utf8_lossy(&out.stderr));

        // Listen addresses and the admin port: flags in the DaemonSet (the probes depend on them).
        let listen: Vec<&str> = given.get("listen").cloned().unwrap_or_default();
        assert!(
            !listen.is_empty(),
            "{label}: --listen belongs in the DaemonSet, next to the probes that use it"
        );
        for addr in &listen {
            assert_eq!(port_of(addr), port_of(&default_listen), "{label}: {addr}");
        }
        let link_local = host_of(listen[0]).unwrap();
        if label == "base" {
            assert_eq!(listen[0], default_listen, "the base listens where the agent does by default");
        }
        let admin = given.get("admin-listen").and_then(|v| v.last().copied());
        let admin_port = admin.map_or(default_admin_port, |a| port_of(a).unwrap());
        assert_eq!(admin_port, default_admin_port, "{label}: the admin port is not the agent's default");
        if let Some(admin) = admin {
            let host: IpAddr = host_of(admin).unwrap().parse().unwrap();
            assert!(
                host.is_unspecified() || host.to_string() == link_local,
                "{label}: probes to {link_local} cannot reach {admin}"
            );
        }
        for (probe, path) in [("livenessProbe", "/health"), ("readinessProbe", "/ready")] {
            let get = pod.container.at(&format!("/{probe}/httpGet"));
            assert_eq!(get.str_at("/path"), path, "{label}: {probe}");
            assert_eq!(
                get.at("/port").as_i64(),
                Some(admin_port.into()),
                "{label}: {probe} is not on the admin port"
            );
            assert_eq!(get.str_at("/host"), link_local, "{label}: {probe} does not ask the address pods use");
        }
        // Every address but the link-local one is the kube-dns ClusterIP (components/nodelocal-ip),
        // and when the build has that Service, its address.
        let kube_dns = find(&objects, "Service", "kube-dns").map(|s| s.str_at("/spec/clusterIP"));
        for addr in &listen[1..] {
            let ip: IpAddr = host_of(addr).unwrap().parse().unwrap();
            assert!(!ip.is_loopback() && !ip.is_unspecified(), "{label}: {addr}");
            if let Some(cluster_ip) = kube_dns {
                assert_eq!(
                    ip.to_string(),
                    cluster_ip,
                    "{label}: the agent binds {ip}, kube-dns is {cluster_ip}"
                );
            }
        }

        // A node's DNS: host network, the node's resolver, every node, top priority.
        assert_eq!(spec.at("/hostNetwork").as_bool(), Some(true), "{label}");
        assert_eq!(spec.str_at("/dnsPolicy"), "Default", "{label}: the agent would resolve through itself");
        assert_eq!(spec.str_at("/priorityClassName"), "system-node-critical", "{label}");
        assert_eq!(
            spec.at("/tolerations").items(),
            [Value::Map([("operator".to_owned(), Value::Str("Exists".into()))].into())],
            "{label}"
        );
        let node_name = pod
            .container
            .at("/env")
            .items()
            .iter()
            .find(|e| Some(e.str_at("/name")) == flags["node-name"].env.as_deref());
        assert_eq!(
            node_name.map(|e| e.str_at("/valueFrom/fieldRef/fieldPath")),
            Some("spec.nodeName"),
            "{label}: node name"
        );

        // Capabilities: port 53, and the dummy interface when the agent makes it; nothing more.
        let security = pod.container.at("/securityContext");
        let mut needed = BTreeSet::from(["NET_BIND_SERVICE"]);
        if given.contains_key("setup-interface") {
            needed.insert("NET_ADMIN");
        }
        assert_eq!(strings(security.at("/capabilities/add")), needed, "{label}: capabilities");
        assert_eq!(strings(security.at("/capabilities/drop")), BTreeSet::from(["ALL"]), "{label}");
        assert_ne!(security.at("/privileged").as_bool(), Some(true), "{label}");
        assert_eq!(security.at("/allowPrivilegeEscalation").as_bool(), Some(false), "{label}");

        // Rollouts: the new agent starts beside the old one (surge, never a node without one); the
        // old one leaves the interface the new one uses; no container port, since with hostNetwork
        // each is a hostPort and the surge pod could not be scheduled next to the old one.
        let update = ds.at("/spec/updateStrategy");
        assert_eq!(update.str_at("/type"), "RollingUpdate", "{label}");
        assert_eq!(update.at("/rollingUpdate/maxUnavailable").as_i64(), Some(0), "{label}");
        assert!(
            update.at("/rollingUpdate/maxSurge").as_i64().is_some_and(|n| n >= 1)
                || update.str_at("/rollingUpdate/maxSurge").ends_with('%'),
            "{label}: maxSurge"
        );
        if given.contains_key("setup-interface") {
            assert!(
                given.contains_key("keep-interface"),
                "{label}: the old agent would remove the new one's address"
            );
        }
        assert!(
            pod.container.pointer("/ports").is_none(),
            "{label}: container ports become hostPorts and block the surge pod"
        );

        // Services selecting the agent reach its admin port; none of their variables is one the
        // agent reads as a flag.
        let labels = ds.at("/spec/template/metadata/labels");
        for service in
            objects.iter().filter(|o| o.kind() == "Service" && selects(o.at("/spec/selector"), labels))
        {
            for sp in service.at("/spec/ports").items() {
                assert_eq!(
                    sp.at("/targetPort").as_i64(),
                    Some(admin_port.into()),
                    "{label}: Service {}",
                    service.name()
                );
            }
        }
        let node_env = flags["node-name"].env.as_deref();
        let clash: Vec<&String> =
            pod.env.keys().filter(|k| envs.contains(k.as_str()) && Some(k.as_str()) != node_env).collect();
        assert!(clash.is_empty(), "{label}: the container gets {clash:?}, which the agent reads as flags");
    }
}
