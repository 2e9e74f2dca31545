//! The authority as a complete resolver, over real sockets: names outside its zones forwarded to
//! `--upstream` (a stand-in resolver on loopback) with the agent's cache, TCP retry and stub
//! domains; ExternalName aliases completed with the target's records; REFUSED as before without
//! upstreams; a loop refused at start naming the setting.

mod support;

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodedns_testsupport::client::{build, tcp_raw, udp_raw};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_testsupport::{TempDir, shared_dir};

fn fixture() -> String {
    shared_dir().join("conformance/cluster.yaml").to_str().unwrap().to_owned()
}

async fn ask(server: SocketAddr, name: &str, qtype: &str) -> Message {
    let q = build(name, qtype, 0x4242, Some(1232)).unwrap().bytes;
    let bytes = udp_raw(server, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap();
    let msg = Message::from_vec(&bytes).unwrap();
    assert_eq!(msg.metadata.id, 0x4242);
    msg
}

/// The answer section as `(owner, type, rdata)` text.
fn answers(msg: &Message) -> Vec<(String, RecordType, String)> {
    msg.answers
        .iter()
        .map(|r| {
            let data = match &r.data {
                RData::A(a) => a.0.to_string(),
                RData::CNAME(c) => c.0.to_ascii(),
                other => format!("{other:?}"),
            };
            (r.name.to_ascii().to_ascii_lowercase(), r.record_type(), data)
        })
        .collect()
}

const EXT: &str = "external.testns.svc.cluster.local.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_names_are_forwarded_cached_and_retried_over_tcp() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let server = support::start(&["--cluster-file", &fixture(), "--upstream", &upstream]).await;

    let msg = ask(server.dns, "www.Example.COM.", "A").await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(msg.queries[0].name().to_ascii(), "www.Example.COM.", "the question as asked");
    assert_eq!(answers(&msg), [("www.example.com.".into(), RecordType::A, "192.0.2.1".into())]);
    assert_eq!(up.queries(), 1);
    // The second time from the cache, with the TTL aged from 300.
    let again = ask(server.dns, "www.example.com.", "A").await;
    assert_eq!(answers(&again), answers(&msg));
    assert!(again.answers[0].ttl <= 300);
    assert_eq!(up.queries(), 1, "answered from the cache: the upstream saw one query");

    // Truncated over UDP by the upstream: fetched again over TCP, all 40 records.
    let big = ask(server.dns, "big.example.", "A").await;
    assert_eq!(big.answers.len(), 40);
    assert!(up.tcp_queries.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    // NXDOMAIN passes through with its SOA.
    let nx = ask(server.dns, "nx.example.", "A").await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1);

    // The zones are still the zones' own: never forwarded, authoritative.
    let before = up.queries();
    let svc = ask(server.dns, "svc1.testns.svc.cluster.local.", "A").await;
    assert_eq!(answers(&svc), [("svc1.testns.svc.cluster.local.".into(), RecordType::A, "10.0.0.1".into())]);
    assert!(svc.metadata.authoritative);
    let missing = ask(server.dns, "nothere.testns.svc.cluster.local.", "A").await;
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(up.queries(), before, "cluster names never reach the upstream");

    // Counted as the zones' answers are.
    let (_, metrics) = support::http_get(server.admin, "/metrics").await;
    assert!(metrics.contains("nodedns_upstream_request_duration_seconds"), "{metrics}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_externalname_answers_the_alias_and_the_targets_records() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let server = support::start(&["--cluster-file", &fixture(), "--upstream", &upstream, "--ttl", "5"]).await;

    for transport in ["udp", "tcp"] {
        let q = build(EXT, "A", 7, Some(1232)).unwrap().bytes;
        let bytes = if transport == "udp" {
            udp_raw(server.dns, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap()
        } else {
            tcp_raw(server.dns, &q).await.unwrap()
        };
        let msg = Message::from_vec(&bytes).unwrap();
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{transport}");
        assert_eq!(
            answers(&msg),
            [
                (EXT.into(), RecordType::CNAME, "ext.interwebs.test.".into()),
                ("ext.interwebs.test.".into(), RecordType::A, "192.0.2.1".into()),
            ],
            "{transport}"
        );
        assert_eq!(msg.answers[0].ttl, 5, "the alias keeps the zone's TTL");
        assert!(msg.metadata.authoritative, "the alias is ours");
    }
    assert_eq!(up.queries(), 1, "the target once, then from the cache");
    // A CNAME question is answered by the alias alone, as the conformance corpus has it.
    let cname = ask(server.dns, EXT, "CNAME").await;
    assert_eq!(answers(&cname), [(EXT.into(), RecordType::CNAME, "ext.interwebs.test.".into())]);
    // An alias inside the zones is the zones' business.
    let inside = ask(server.dns, "external-to-service.testns.svc.cluster.local.", "A").await;
    assert_eq!(answers(&inside).len(), 2);
    assert_eq!(answers(&inside)[1].2, "10.0.0.1");
    assert_eq!(up.queries(), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_externalname_to_a_missing_name_keeps_the_alias_with_a_short_denial() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let dir = TempDir::new("forward-nx");
    // The fake upstream denies every name whose first label is `nx` (SOA TTL and MINIMUM 60).
    let text = std::fs::read_to_string(fixture()).unwrap().replace("ext.interwebs.test", "nx.interwebs.test");
    let cluster = dir.write("cluster.yaml", &text);
    let server =
        support::start(&["--cluster-file", cluster.to_str().unwrap(), "--upstream", &upstream, "--ttl", "5"])
            .await;
    let msg = ask(server.dns, EXT, "A").await;
    // RFC 6604: the rcode is the target's, the alias stays.
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(answers(&msg), [(EXT.into(), RecordType::CNAME, "nx.interwebs.test.".into())]);
    assert_eq!(msg.authorities.len(), 1);
    assert!(msg.authorities[0].ttl <= 5, "the denial lives no longer than the alias: {:?}", msg.authorities);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstreams_outside_names_stay_refused() {
    let server = support::start(&["--cluster-file", &fixture()]).await;
    let msg = ask(server.dns, "www.example.com.", "A").await;
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    assert!(msg.answers.is_empty());
    let alias = ask(server.dns, EXT, "A").await;
    assert_eq!(alias.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&alias), [(EXT.into(), RecordType::CNAME, "ext.interwebs.test.".into())]);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stub_domains_take_their_names_and_externalname_targets() {
    let (up, stub) = (FakeUpstream::start().await.unwrap(), FakeUpstream::start().await.unwrap());
    let (upstream, stub_flag) = (up.addr.to_string(), format!("interwebs.test={}", stub.addr));
    let server =
        support::start(&["--cluster-file", &fixture(), "--upstream", &upstream, "--stub-domain", &stub_flag])
            .await;
    let direct = ask(server.dns, "host.interwebs.test.", "A").await;
    assert_eq!(answers(&direct)[0].2, "192.0.2.1");
    let alias = ask(server.dns, EXT, "A").await;
    assert_eq!(answers(&alias).len(), 2);
    assert_eq!((stub.queries(), up.queries()), (2, 0), "both went to the stub domain's server");

    // Stub domains without upstreams: only their names are forwarded.
    let only = support::start(&["--cluster-file", &fixture(), "--stub-domain", &stub_flag]).await;
    assert_eq!(ask(only.dns, "www.example.com.", "A").await.metadata.response_code, ResponseCode::Refused);
    assert_eq!(answers(&ask(only.dns, "other.interwebs.test.", "A").await).len(), 1);
    only.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_swaps_the_upstreams() {
    let (first, second) = (FakeUpstream::start().await.unwrap(), FakeUpstream::start().await.unwrap());
    let dir = TempDir::new("forward-reload");
    let config = dir.write("authority.yaml", &format!("upstream: ['{}']\n", first.addr));
    let server = support::start(&[
        "--cluster-file",
        &fixture(),
        "--config",
        config.to_str().unwrap(),
        "--reload-interval",
        "0.05",
    ])
    .await;
    assert_eq!(answers(&ask(server.dns, "a.example.", "A").await).len(), 1);
    assert_eq!((first.queries(), second.queries()), (1, 0));
    let mut status = server.reloads.status();
    dir.write("authority.yaml", &format!("upstream: ['{}']\n", second.addr));
    support::reloaded(&mut status, "the new upstream is applied", |s| s.applied >= 1).await;
    assert_eq!(status.borrow().last.changed, ["upstream"]);
    assert!(status.borrow().last.restart.is_empty(), "applied live");
    assert_eq!(answers(&ask(server.dns, "b.example.", "A").await).len(), 1);
    assert_eq!((first.queries(), second.queries()), (1, 1));
    // Without upstreams again: REFUSED, as before any was set.
    dir.write("authority.yaml", "ttl: 5\n");
    support::reloaded(&mut status, "the upstream is removed", |s| s.applied >= 2).await;
    assert_eq!(ask(server.dns, "c.example.", "A").await.metadata.response_code, ResponseCode::Refused);
    assert_eq!((first.queries(), second.queries()), (1, 1));
    server.stop().await;
}

#[test]
fn forwarding_to_our_own_listen_address_is_refused_naming_the_setting() {
    use clap::Parser;
    use nodedns_authority::config::{Args, Config};
    let resolve = |argv: &[&str]| {
        let args =
            Args::try_parse_from(std::iter::once("nodedns-authority").chain(argv.iter().copied())).unwrap();
        Config::resolve(&args).map(|_| ()).unwrap_err().to_string()
    };
    let err = resolve(&["--dns-listen", "127.0.0.1:5399", "--upstream", "127.0.0.1:5399"]);
    assert!(err.starts_with("upstream: 127.0.0.1:5399 is one of our own listen addresses"), "{err}");
    let err = resolve(&["--dns-listen", "0.0.0.0:5399", "--stub-domain", "corp.example=127.0.0.1:5399"]);
    assert!(err.starts_with("stub-domain: 127.0.0.1:5399 for corp.example."), "{err}");
    // A resolv.conf naming this server (in a pod, /etc/resolv.conf names the cluster DNS).
    let dir = TempDir::new("forward-loop");
    let resolv = dir.write("resolv.conf", "nameserver 10.96.0.10\n");
    let err = resolve(&["--dns-listen", "10.96.0.10:53", "--resolv-conf", resolv.to_str().unwrap()]);
    assert!(err.starts_with("resolv-conf: 10.96.0.10:53 is one of our own"), "{err}");
    let empty = dir.write("empty.conf", "search example\n");
    let err = resolve(&["--resolv-conf", empty.to_str().unwrap()]);
    assert!(err.starts_with("resolv-conf:") && err.contains("no nameserver"), "{err}");
    assert!(resolve(&["--timeout", "0"]).starts_with("timeout:"));
    assert!(resolve(&["--cache-bytes", "10"]).starts_with("cache-bytes:"));

    // The binary: exit 1, one line naming the setting.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodedns-authority"))
        .args([
            "--cluster-file",
            &fixture(),
            "--dns-listen",
            "127.0.0.1:5399",
            "--upstream",
            "127.0.0.1:5399",
        ])
        .args(["--check-config"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("upstream: 127.0.0.1:5399 is one of our own"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_forwards_back_here_is_found_by_the_loop_probe() {
    use tokio::net::UdpSocket;
    // A resolver that sends every query on to the authority, as a resolv.conf naming the
    // cluster DNS would: its address is known only once the authority is up.
    let relay = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    let (to, target) = tokio::sync::watch::channel(None::<SocketAddr>);
    let relay = std::sync::Arc::new(relay);
    let relaying = tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, from)) = relay.recv_from(&mut buf).await {
            let (query, relay, mut target) =
                (buf[..n].to_vec(), std::sync::Arc::clone(&relay), target.clone());
            tokio::spawn(async move {
                let Ok(addr) = target.wait_for(Option::is_some).await.map(|a| a.unwrap()) else { return };
                if let Ok(answer) = udp_raw(addr, "127.0.0.1:0".parse().unwrap(), &query).await {
                    let _ = relay.send_to(&answer, from).await;
                }
            });
        }
    });
    let server = support::start(&["--cluster-file", &fixture(), "--upstream", &relay_addr]).await;
    to.send(Some(server.dns)).unwrap();
    // The probe goes out at start; when it comes back it is counted (and answered SERVFAIL).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, metrics) = support::http_get(server.admin, "/metrics").await;
        let loops: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("nodedns_loops_detected_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if loops >= 1.0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the loop was not detected within 10 s");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    relaying.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_names_are_answered_under_the_asked_name() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let server = support::start(&[
        "--cluster-file",
        &fixture(),
        "--upstream",
        &upstream,
        "--rewrite",
        "exact:db.example=svc1.testns.svc.cluster.local",
        "--rewrite",
        "suffix:.corp.local=.corp.example",
    ])
    .await;
    // A cluster name, from the zones, in the client's spelling; over UDP and TCP.
    let msg = ask(server.dns, "DB.example.", "A").await;
    assert_eq!(msg.queries[0].name().to_ascii(), "DB.example.");
    assert_eq!(msg.answers[0].name.to_ascii(), "DB.example.");
    assert_eq!(answers(&msg), [("db.example.".into(), RecordType::A, "10.0.0.1".into())]);
    let q = build("db.example.", "A", 7, None).unwrap().bytes;
    let tcp = Message::from_vec(&tcp_raw(server.dns, &q).await.unwrap()).unwrap();
    assert_eq!(answers(&tcp), answers(&msg));
    // An external suffix rewrite goes upstream as the rewritten name.
    let ext = ask(server.dns, "a.corp.local.", "A").await;
    assert_eq!(answers(&ext), [("a.corp.local.".into(), RecordType::A, "192.0.2.1".into())]);
    assert_eq!(up.queries(), 1);
    // Names no rule matches are untouched.
    assert_eq!(
        ask(server.dns, "svc1.testns.svc.cluster.local.", "A").await.answers[0].name.to_ascii(),
        "svc1.testns.svc.cluster.local."
    );
    server.stop().await;
}
