//! `nodedns-authority migrate` on the stock CoreDNS and NodeLocal DNSCache Corefiles, a kube-dns
//! ConfigMap and a customised Corefile: the real binary's output says the right keys, names what
//! it cannot carry over, and the binaries' own config loaders accept what it emits.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nodedns_testsupport::TempDir;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/migrate")
        .join(name)
        .to_str()
        .expect("UTF-8 path")
        .to_owned()
}

/// Runs `nodedns-authority migrate ARGS`: exit code, stdout, stderr.
fn migrate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_nodedns-authority"))
        .arg("migrate")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("binary runs");
    let text = |b: Vec<u8>| String::from_utf8(b).expect("UTF-8 output");
    (out.status.code().unwrap_or(-1), text(out.stdout), text(out.stderr))
}

/// The output's parts: the agent document, the authority document, and the custom-records
/// document (empty without one); the closing lists are in the last of them.
struct Output {
    agent: String,
    authority: String,
    records: String,
    all: String,
}

fn run_ok(args: &[&str]) -> Output {
    let (code, out, err) = migrate(args);
    assert_eq!(code, 0, "{err}");
    assert!(err.is_empty(), "nothing on stderr: {err}");
    let docs: Vec<&str> = out.split("\n---\n").collect();
    assert!(docs.len() == 3 || docs.len() == 4, "header, agent, authority [, records]: {out}");
    assert!(docs[1].starts_with("# agent: nodedns-config agent.yaml"), "{}", docs[1]);
    assert!(docs[2].starts_with("# authority: nodedns-config authority.yaml"), "{}", docs[2]);
    // The whole output is YAML: every document parses (comments and all).
    for doc in &docs[1..] {
        let parsed: Result<BTreeMap<String, serde_json::Value>, _> = serde_saphyr::from_str(doc);
        assert!(parsed.is_ok(), "{doc}: {parsed:?}");
    }
    // Each document as its own file would read, ending in a line break.
    let doc = |d: &str| if d.ends_with('\n') { d.to_owned() } else { format!("{d}\n") };
    Output {
        agent: doc(docs[1]),
        authority: doc(docs[2]),
        records: docs.get(3).map_or_else(String::new, |d| doc(d)),
        all: out.clone(),
    }
}

/// The "Not carried over" list.
fn not_carried(out: &Output) -> &str {
    out.all.split("# Not carried over:").nth(1).expect("the list is there")
}

/// The "Done by nodedns itself" list.
fn built_in(out: &Output) -> &str {
    let after = out.all.split("# Done by nodedns itself, no key needed:").nth(1).expect("the list is there");
    after.split("# Not carried over:").next().unwrap_or_default()
}

/// Text with comment marks and line breaks gone, so a wrapped comment reads as one line.
fn flat(text: &str) -> String {
    text.split_whitespace().filter(|w| *w != "#").collect::<Vec<_>>().join(" ")
}

/// The entry of a closing list that starts with `- {what}: `, flattened, up to the next entry.
fn entry(list: &str, what: &str) -> Option<String> {
    let list = flat(list);
    let start = list.find(&format!("- {what}: "))?;
    let rest = &list[start + 2..];
    Some(rest.split(" - ").next().unwrap_or(rest).to_owned())
}

/// The agent document, loaded as `nodedns-agent --config` would (the flags a DaemonSet gives are
/// set here: authority, node name, and a resolv.conf that exists on the test machine).
fn load_agent(dir: &TempDir, doc: &str) -> nodedns_agent::config::Config {
    let config = dir.write("agent.yaml", doc);
    let resolv = dir.write("resolv.conf", "nameserver 10.0.0.2\nsearch corp.example\n");
    let args = nodedns_agent::config::Args {
        config: Some(config),
        authority: vec!["http://nodedns-authority.kube-system:8053".into()],
        node_name: Some("node-1".into()),
        resolv_conf: Some(resolv),
        ..Default::default()
    };
    nodedns_agent::config::Config::resolve(&args).unwrap_or_else(|e| panic!("agent: {e}\n{doc}"))
}

fn load_authority(dir: &TempDir, doc: &str) -> nodedns_authority::Config {
    let config = dir.write("authority.yaml", doc);
    let args = nodedns_authority::config::Args { config: Some(config), ..Default::default() };
    nodedns_authority::Config::resolve(&args).unwrap_or_else(|e| panic!("authority: {e}\n{doc}"))
}

#[test]
fn stock_coredns_corefile() {
    let out = run_ok(&["--corefile", &fixture("coredns.Corefile")]);
    for line in [
        "cluster-domain: \"cluster.local\"",
        "resolv-conf: \"/etc/resolv.conf\"",
        "max-ttl: 30",
        "max-negative-ttl: 30",
    ] {
        assert!(out.agent.contains(&format!("\n{line}\n")), "agent {line}: {}", out.agent);
    }
    for line in ["cluster-domain: \"cluster.local\"", "ttl: 30", "lameduck: 5", "pods: \"verified\""] {
        assert!(out.authority.contains(&format!("\n{line}\n")), "authority {line}: {}", out.authority);
    }
    // `pods insecure` is not copied: the notice says what nodedns's default changes for users.
    assert!(
        out.authority.contains("The Corefile says `pods insecure` (coredns.Corefile:8)"),
        "{}",
        out.authority
    );
    assert!(out.authority.contains("answers only for the address of an existing pod"), "{}", out.authority);
    // The authority's resolv.conf would name the cluster DNS, itself: no key, a comment instead.
    assert!(!out.authority.contains("\nresolv-conf:"), "{}", out.authority);
    assert!(out.authority.contains("give it `upstream` addresses"), "{}", out.authority);
    assert!(out.records.is_empty());

    let built_in = built_in(&out);
    for plugin in [
        "`errors`",
        "`health`",
        "`ready`",
        "`prometheus :9153`",
        "`loop`",
        "`reload`",
        "`loadbalance`",
        "autopath",
    ] {
        assert!(built_in.contains(&format!("# - {plugin} (")), "{plugin} in: {built_in}");
    }
    let dropped = not_carried(&out);
    assert!(
        flat(dropped).contains("- `forward` option `max_concurrent 1000` (coredns.Corefile:14): "),
        "{dropped}"
    );
    assert_eq!(dropped.matches("\n# - ").count(), 1, "only max_concurrent: {dropped}");

    let dir = TempDir::new("migrate-coredns");
    let agent = load_agent(&dir, &out.agent);
    assert_eq!((agent.cache.max_ttl, agent.cache.max_negative_ttl), (30, 30));
    assert_eq!(agent.cluster_domain, "cluster.local.");
    let authority = load_authority(&dir, &out.authority);
    assert_eq!(authority.zone.ttl, 30);
    assert_eq!(authority.zone.pods, nodedns_zone::PodsMode::Verified);
    assert_eq!(authority.lameduck, Duration::from_secs(5));
}

#[test]
fn stock_nodelocal_corefile_alone_and_with_a_kube_dns_configmap() {
    // The ConfigMap of the stock manifest, placeholders and all; lines are the file's.
    let out = run_ok(&["--corefile", &fixture("node-local-dns.yaml")]);
    assert!(out.agent.contains("\nlisten:\n  - \"169.254.20.10:53\"\n"), "{}", out.agent);
    assert!(out.agent.contains("__PILLAR__LOCAL__DNS__ taken as 169.254.20.10"), "{}", out.agent);
    assert!(out.agent.contains("\ncluster-domain: \"cluster.local\"\n"), "{}", out.agent);
    assert!(
        out.agent.contains("(node-local-dns.yaml:12), a placeholder taken as cluster.local"),
        "{}",
        out.agent
    );
    // Only the `.` block's cache is the agent's; the cluster blocks' caches are the stream's.
    assert!(
        out.agent.contains("# From `cache 30` (node-local-dns.yaml:51).\nmax-ttl: 30\n"),
        "{}",
        out.agent
    );
    assert!(out.agent.contains("\nresolv-conf: \"/etc/resolv.conf\"\n"), "{}", out.agent);
    assert!(!out.agent.contains("stub-domain"), "the cluster zones are not stub domains: {}", out.agent);
    let built_in = built_in(&out);
    for (what, places) in [
        ("`forward . __PILLAR__CLUSTER__DNS__`", "node-local-dns.yaml:21, 33, 44"),
        ("`forward` option `force_tcp`", "node-local-dns.yaml:22, 34, 45"),
        ("`bind __PILLAR__DNS__SERVER__`", "node-local-dns.yaml:20, 32, 43, 54"),
        ("`health __PILLAR__LOCAL__DNS__:8080`", "node-local-dns.yaml:25"),
    ] {
        assert!(flat(built_in).contains(&format!("- {what} ({places}): ")), "{what}: {built_in}");
    }
    assert!(built_in.contains("components/nodelocal-ip"), "{built_in}");
    assert!(not_carried(&out).starts_with("\n# - nothing"), "{}", not_carried(&out));
    let dir = TempDir::new("migrate-nodelocal");
    let agent = load_agent(&dir, &out.agent);
    assert_eq!(agent.listen, ["169.254.20.10:53".parse().unwrap()]);
    load_authority(&dir, &out.authority);

    // With the kube-dns ConfigMap: its upstreamNameservers fill __PILLAR__UPSTREAM__SERVERS__ (as
    // node-cache does) and its stubDomains add stub domains.
    let out = run_ok(&[
        "--corefile",
        &fixture("node-local-dns.yaml"),
        "--kube-dns-configmap",
        &fixture("kube-dns.yaml"),
    ]);
    let upstream = "\nupstream:\n  - \"8.8.8.8:53\"\n  - \"8.8.4.4:53\"\n";
    let stubs =
        "\nstub-domain:\n  - \"acme.local=1.2.3.4:53\"\n  - \"corp.example=10.1.0.53:53,10.1.0.54:5353\"\n";
    for doc in [&out.agent, &out.authority] {
        assert!(doc.contains(upstream) && doc.contains(stubs), "{doc}");
    }
    assert!(
        !out.agent.contains("resolv-conf:"),
        "the ConfigMap's upstreams replace resolv.conf: {}",
        out.agent
    );
    let agent = load_agent(&dir, &out.agent);
    assert_eq!(agent.upstreams, ["8.8.8.8:53".parse().unwrap(), "8.8.4.4:53".parse().unwrap()]);
    let zones: Vec<&str> = agent.stub_domains.iter().map(|s| s.zone.as_str()).collect();
    assert_eq!(zones, ["acme.local.", "corp.example."]);
    assert_eq!(
        agent.stub_domains[1].servers,
        ["10.1.0.53:53".parse().unwrap(), "10.1.0.54:5353".parse().unwrap()]
    );
    let authority = load_authority(&dir, &out.authority);
    assert_eq!(authority.upstreams.len(), 2);
}

#[test]
fn a_kube_dns_configmap_alone() {
    let dir = TempDir::new("migrate-kube-dns");
    let cm = dir.write(
        "kube-dns.yaml",
        "data:\n  stubDomains: '{\"consul.local\": [\"10.150.0.1\"]}'\n  upstreamNameservers: '[\"172.16.0.1\", \"bogus\"]'\n  federations: '{\"myfed\": \"example.com\"}'\n",
    );
    let out = run_ok(&["--kube-dns-configmap", cm.to_str().unwrap()]);
    assert!(out.agent.contains("\nstub-domain:\n  - \"consul.local=10.150.0.1:53\"\n"), "{}", out.agent);
    assert!(out.agent.contains("\nupstream:\n  - \"172.16.0.1:53\"\n"), "{}", out.agent);
    assert!(out.agent.contains("The default; the sources do not name the cluster domain"), "{}", out.agent);
    let dropped = not_carried(&out);
    let dropped = flat(dropped);
    assert!(
        dropped
            .contains("- upstreamNameservers \"bogus\" (kube-dns.yaml upstreamNameservers): not an address"),
        "{dropped}"
    );
    assert!(
        dropped.contains("- data.federations (kube-dns.yaml): kube-dns federation names are retired"),
        "{dropped}"
    );
    load_agent(&dir, &out.agent);
    load_authority(&dir, &out.authority);
}

#[test]
fn a_customised_corefile_carries_what_it_can_and_names_the_rest() {
    let out = run_ok(&["--corefile", &fixture("custom.Corefile")]);
    let agent_lines = [
        "log-queries: true",
        "upstream:\n  - \"10.0.0.2:53\"\n  - \"10.0.0.3:5353\"",
        "stub-domain:\n  - \"corp.example=10.1.0.53:53,10.1.0.54:53\"",
        "rewrite:\n  - \"exact:old.corp.example=new.corp.example\"\n  - \"suffix:.legacy.corp.example=.corp.example\"",
        "max-ttl: 600",
        "min-ttl: 10",
        "max-negative-ttl: 60",
        "stale-for: 7200",
    ];
    for line in agent_lines {
        assert!(out.agent.contains(&format!("\n{line}\n")), "agent {line}: {}", out.agent);
    }
    let authority_lines = [
        "reverse-cidr:\n  - \"10.0.0.0/8\"",
        "pods: \"verified\"",
        "endpoint-pod-names: true",
        "namespace:\n  - \"default\"\n  - \"shop\"",
        "label-selector: \"tier!=internal\"",
        "ttl: 10",
        "log-queries: true",
        "custom-records: \"/etc/nodedns/custom-records.zone\"",
        "transfer-from:\n  - \"10.2.0.1/32\"",
    ];
    for line in authority_lines {
        assert!(out.authority.contains(&format!("\n{line}\n")), "authority {line}: {}", out.authority);
    }
    // The hosts entries, as zone-file text the authority's custom-records parser takes.
    let records: BTreeMap<String, String> = serde_saphyr::from_str(&out.records).expect("a YAML map");
    let zone_text = &records["custom-records.zone"];
    assert!(zone_text.contains("$ORIGIN registry.corp.example.\n@ 60 IN A 10.0.0.5\n"), "{zone_text}");
    assert!(zone_text.contains("@ 60 IN AAAA fd00::5"), "{zone_text}");
    let cluster: hickory_proto::rr::Name = "cluster.local.".parse().unwrap();
    let parsed =
        nodedns_zone::parse_custom(zone_text, &cluster, 5).unwrap_or_else(|e| panic!("{e}\n{zone_text}"));
    assert_eq!(parsed.records().len(), 2);

    let dropped = not_carried(&out);
    for (what, why) in [
        ("`kubernetes` option `fallthrough` (custom.Corefile:11)", "a name it does not know is NXDOMAIN"),
        ("`rewrite name regex (.*)\\.legacy\\.example {1}.corp.example` (custom.Corefile:22)", "not regex"),
        ("`rewrite edns0 local set 0xffee abc` (custom.Corefile:23)", "only names are rewritten"),
        ("`template IN A example.org` (custom.Corefile:24)", "custom-records"),
        ("`forward` to tls://9.9.9.9 (custom.Corefile:27)", "not supported"),
        ("`forward` option `force_tcp` (custom.Corefile:29)", "retries over TCP only when"),
        ("`forward` option `max_fails 3` (custom.Corefile:30)", "after 3 failures"),
        ("`cache` option `success 20000 600 10`: capacity (custom.Corefile:33)", "`cache-bytes`"),
        ("`dnssec` (custom.Corefile:38)", "DNSSEC"),
        ("`import common-snippet` (custom.Corefile:42)", "paste the imported text"),
        ("`forward . {$MIRROR_DNS}` (custom.Corefile:50)", "environment placeholder"),
    ] {
        let entry = entry(dropped, what).unwrap_or_else(|| panic!("{what}: {dropped}"));
        assert!(entry.contains(why), "{what}: {why}: {entry}");
    }
    let built_in = built_in(&out);
    for what in [
        "`autopath @kubernetes` (custom.Corefile:14)",
        "`forward` option `policy sequential` (custom.Corefile:28)",
        "`cache` option `prefetch 10 1m` (custom.Corefile:35)",
    ] {
        assert!(entry(built_in, what).is_some(), "{what}: {built_in}");
    }

    // The rules are the agent's syntax.
    for rule in ["exact:old.corp.example=new.corp.example", "suffix:.legacy.corp.example=.corp.example"] {
        nodedns_agent::rewrite::parse_rule(rule).unwrap_or_else(|e| panic!("{rule}: {e}"));
    }

    let dir = TempDir::new("migrate-custom");
    let agent = load_agent(&dir, &out.agent);
    assert_eq!(agent.upstreams, ["10.0.0.2:53".parse().unwrap(), "10.0.0.3:5353".parse().unwrap()]);
    assert_eq!((agent.cache.max_ttl, agent.cache.min_ttl, agent.cache.max_negative_ttl), (600, 10, 60));
    assert_eq!(agent.cache.stale_for, Duration::from_secs(7200));
    assert!(agent.log_queries);
    let rules = ["exact:old.corp.example=new.corp.example", "suffix:.legacy.corp.example=.corp.example"];
    let rules = rules.iter().map(|r| nodedns_agent::rewrite::parse_rule(r).unwrap()).collect();
    assert_eq!(agent.rewrites, nodedns_agent::rewrite::Rewrites::new(rules));
    // The custom-records key points into the ConfigMap's mount; here it is a file of the test.
    let records_file = dir.write("custom-records.zone", zone_text);
    let authority_doc =
        out.authority.replace("/etc/nodedns/custom-records.zone", records_file.to_str().unwrap());
    let authority = load_authority(&dir, &authority_doc);
    assert_eq!(authority.zone.ttl, 10);
    assert!(authority.zone.endpoint_pod_names);
    assert!(authority.custom_records.is_some());
    assert_eq!(authority.kube.namespaces, ["default", "shop"]);
    assert_eq!(authority.kube.label_selector.as_deref(), Some("tier!=internal"));
    assert_eq!(authority.zone.reverse_cidrs, Some(vec!["10.0.0.0/8".parse().unwrap()]));
    assert_eq!(authority.transfer_from, ["10.2.0.1/32".parse().unwrap()]);
}

#[test]
fn bad_input_exits_non_zero_naming_the_file_and_line() {
    let dir = TempDir::new("migrate-bad");
    let corefile = dir.write("Corefile", ".:53 {\n    errors\n    cache 30 {\n        success 10\n}\n");
    let path = corefile.to_str().unwrap();
    let (code, out, err) = migrate(&["--corefile", path]);
    assert_eq!(code, 1);
    assert!(out.is_empty(), "no half output: {out}");
    assert_eq!(err, format!("nodedns-authority: error: {path}:1: `{{` opened here is never closed\n"));

    // In a ConfigMap, the line is the file's.
    let cm = dir.write(
        "coredns.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: coredns\ndata:\n  Corefile: |\n    .:53 {\n        health { lameduck 5s }\n    }\n",
    );
    let (code, _, err) = migrate(&["--corefile", cm.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains(&format!("{}:8: unexpected `{{`", cm.display())), "{err}");

    let cm = dir.write("kube-dns.yaml", "data:\n  stubDomains: '{\"a.example\": '\n");
    let (code, _, err) = migrate(&["--kube-dns-configmap", cm.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("kube-dns.yaml: data.stubDomains: not JSON"), "{err}");

    let (code, _, err) = migrate(&["--corefile", "/nonexistent/Corefile"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("nodedns-authority: error: /nonexistent/Corefile: "), "{err}");

    // Neither input: a usage error, as for any bad flag.
    let (code, _, err) = migrate(&[]);
    assert_eq!(code, 2);
    assert!(err.contains("--corefile") && err.trim().lines().count() == 1, "{err}");
}
