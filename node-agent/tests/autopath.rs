//! Autopath over real sockets: the conformance corpus's autopath and upstream cases sent to a
//! standalone agent (node-b's agent) from the client pods' addresses. The fixture's client pods
//! are renumbered into 127.0.0.0/8 (all of it is local on Linux), so a test client can send from
//! a pod's address without a network namespace.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, ResponseCode};
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_testsupport::client::{build, tcp_raw, udp_raw};
use nodedns_testsupport::corpus::{Corpus, check};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_testsupport::{TempDir, shared_dir};
use tokio_util::sync::CancellationToken;

/// The fixture's client pods and the loopback addresses they get here.
const CLIENTS: [(&str, &str); 2] = [("10.240.0.50", "127.0.0.50"), ("10.240.0.1", "127.0.0.51")];

fn renumbered_fixture() -> String {
    let text = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    text.lines()
        .map(|line| {
            let mut line = line.to_owned();
            for (from, to) in CLIENTS {
                if line.trim_end().ends_with(&format!(": {from}")) {
                    line = line.replace(from, to);
                }
            }
            line
        })
        .collect::<Vec<_>>()
        .join("\n")
}

struct Running {
    _stop: StopOnDrop,
    dns: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), nodedns_agent::AgentError>>,
    _dir: TempDir,
}

/// Cancels the agent when dropped (a failed assertion must not leave its threads running, or
/// the test runtime would wait for them forever).
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

async fn start(upstream: SocketAddr) -> Running {
    start_with(upstream, &[]).await
}

async fn start_with(upstream: SocketAddr, extra: &[&str]) -> Running {
    let dir = TempDir::new("autopath");
    let cluster = dir.write("cluster.yaml", &renumbered_fixture());
    let upstream = upstream.to_string();
    let mut argv = vec![
        "nodedns-agent",
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--node-name",
        "node-b",
        "--upstream",
        &upstream,
        "--standalone-cluster-file",
        cluster.to_str().unwrap(),
    ];
    argv.extend_from_slice(extra);
    let config = Config::resolve(&Args::try_parse_from(argv).unwrap()).unwrap();
    let listeners = Listeners::bind(&config).unwrap();
    let dns = listeners.dns_addrs()[0];
    let agent = Agent::new(config);
    let authority = agent.authority();
    let mut connected = authority.connected();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c)).await.unwrap().unwrap();
    // The pod table arrives with the snapshot right after connecting.
    let mut applied = authority.applied();
    tokio::time::timeout(Duration::from_secs(20), applied.wait_for(|_| authority.view().pods.len() >= 2))
        .await
        .expect("node-b's pods within 20 s")
        .unwrap();
    Running { _stop: StopOnDrop(shutdown.clone()), dns, shutdown, task, _dir: dir }
}

fn bind_for(source_ip: Option<&str>) -> SocketAddr {
    let ip = source_ip
        .and_then(|s| CLIENTS.iter().find(|(from, _)| *from == s).map(|(_, to)| *to))
        .unwrap_or("127.0.0.1");
    format!("{ip}:0").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopath_and_upstream_cases_of_the_corpus_pass_through_the_agent() {
    let up = FakeUpstream::start().await.unwrap();
    let s = start(up.addr).await;
    let corpus = Corpus::load(&shared_dir().join("conformance/cases.yaml")).unwrap();
    let mut ran = 0;
    let mut failed = Vec::new();
    for (i, case) in corpus.cases.iter().enumerate() {
        let eff = corpus.effective(case);
        if case.area != "autopath" && !case.requires.iter().any(|r| r == "upstream") {
            continue;
        }
        // Autopath off: the client is one the agent does not know, so nothing is walked.
        let bind = if eff.autopath { bind_for(case.source_ip.as_deref()) } else { bind_for(None) };
        let q = build(&case.qname, &case.qtype, 0x2000 + i as u16, Some(1232)).unwrap();
        let response = match udp_raw(s.dns, bind, &q.bytes).await {
            Ok(r) if r.len() > 2 && r[2] & 0x02 != 0 => tcp_raw(s.dns, &q.bytes).await,
            other => other,
        };
        ran += 1;
        let verdict = check(case, &q.bytes, q.question_len, &response.unwrap());
        if !verdict.failures.is_empty() {
            failed.push(format!("{}: {}", case.id, verdict.failures.join("; ")));
        }
    }
    assert!(ran >= 7, "the corpus has its autopath and upstream cases ({ran})");
    assert!(failed.is_empty(), "{} of {ran} failed:\n{}", failed.len(), failed.join("\n"));
    s.shutdown.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_name_costs_the_pod_one_round_trip_and_a_and_aaaa_agree() {
    let up = FakeUpstream::start().await.unwrap();
    let s = start(up.addr).await;
    let pod: SocketAddr = "127.0.0.50:0".parse().unwrap();
    // glibc with ndots:5 asks `example.com` + first search domain first; the agent's answer ends
    // the lookup.
    let q = build("example.com.testns.svc.cluster.local.", "A", 1, None).unwrap().bytes;
    let a = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a.answers[0].data.to_string(), "example.com.");
    assert!(a.answers.len() >= 2, "the CNAME and the upstream's answer");
    let q = build("example.com.testns.svc.cluster.local.", "AAAA", 2, None).unwrap().bytes;
    let aaaa = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(aaaa.answers[0].data.to_string(), "example.com.", "AAAA walks to the same name");
    // A name that exists nowhere: NXDOMAIN for the asked name, and the pod's remaining search
    // attempts are answered from the negative cache.
    let q = build("nx.testns.svc.cluster.local.", "A", 3, None).unwrap().bytes;
    let nx = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain, "{nx:?}");
    let before = up.queries();
    for name in ["nx.svc.cluster.local.", "nx.cluster.local.", "nx."] {
        let q = build(name, "A", 4, None).unwrap().bytes;
        let r = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
        assert_eq!(r.metadata.response_code, ResponseCode::NXDomain, "{name}");
    }
    assert_eq!(up.queries(), before, "no query left the agent for the rest of the search");
    // An address the agent does not know is not autopathed.
    let q = build("example.com.testns.svc.cluster.local.", "A", 5, None).unwrap().bytes;
    let other =
        Message::from_vec(&udp_raw(s.dns, "127.0.0.99:0".parse().unwrap(), &q).await.unwrap()).unwrap();
    assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
    s.shutdown.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_autopath_off_the_pod_walks_its_own_search_list() {
    let up = FakeUpstream::start().await.unwrap();
    let s = start_with(up.addr, &["--autopath=false"]).await;
    let pod: SocketAddr = "127.0.0.50:0".parse().unwrap();
    let q = build("example.com.testns.svc.cluster.local.", "A", 1, None).unwrap().bytes;
    let a = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::NXDomain, "answered as asked: {a:?}");
    assert!(a.answers.is_empty());
    assert_eq!(up.queries(), 0, "nothing walked upstream for the pod");
    // The name itself, the pod's last attempt, still resolves.
    let q = build("example.com.", "A", 2, None).unwrap().bytes;
    let a = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(a.metadata.response_code, ResponseCode::NoError);
    assert!(!a.answers.is_empty());
    s.shutdown.cancel();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_name_is_not_autopathed_so_the_pods_own_query_meets_the_rule() {
    let up = FakeUpstream::start().await.unwrap();
    let s = start_with(up.addr, &["--rewrite", "exact:db.example=svc1.testns.svc.cluster.local"]).await;
    let pod: SocketAddr = "127.0.0.50:0".parse().unwrap();
    // The pod's first expansion: answered for itself (NXDOMAIN), not with a walk that would
    // reach `db.example.` past the rule and take the upstream's answer for it.
    let q = build("db.example.testns.svc.cluster.local.", "A", 1, None).unwrap().bytes;
    let first = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(first.metadata.response_code, ResponseCode::NXDomain, "{first:?}");
    // Its own last attempt, the bare name, meets the rule: the Service's address, as asked.
    let q = build("db.example.", "A", 2, None).unwrap().bytes;
    let bare = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(bare.answers.len(), 1, "{bare:?}");
    assert_eq!(bare.answers[0].name.to_ascii(), "db.example.");
    assert_eq!(bare.answers[0].data.to_string(), "10.0.0.1");
    assert_eq!(up.queries(), 0, "db.example never went upstream");
    // Names no rule touches are still walked for the pod.
    let q = build("example.com.testns.svc.cluster.local.", "A", 3, None).unwrap().bytes;
    let walked = Message::from_vec(&udp_raw(s.dns, pod, &q).await.unwrap()).unwrap();
    assert_eq!(walked.answers[0].data.to_string(), "example.com.");
    s.shutdown.cancel();
    s.task.await.unwrap().unwrap();
}
