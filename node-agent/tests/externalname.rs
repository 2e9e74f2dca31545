//! ExternalName through the agent, over real sockets: the authority (standalone, the real gRPC
//! service in-process) answers `external.testns.svc.cluster.local.` with the alias alone, and the
//! agent completes it with the target's records from its own routes: a stand-in upstream, or a
//! stub domain's server when the target is under one.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_testsupport::client::{build, tcp_raw, udp_raw};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_testsupport::{TempDir, shared_dir};
use tokio_util::sync::CancellationToken;

const EXT: &str = "external.testns.svc.cluster.local.";

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

impl Running {
    async fn stop(self) {
        self.shutdown.cancel();
        let r = self.task.await.expect("agent task panicked");
        assert!(r.is_ok(), "{r:?}");
    }
}

/// A standalone agent over the conformance cluster with `target` as the ExternalName's target.
async fn start(target: &str, extra: &[&str]) -> Running {
    let dir = TempDir::new("externalname");
    let text = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml"))
        .unwrap()
        .replace("externalName: ext.interwebs.test", &format!("externalName: {target}"));
    let cluster = dir.write("cluster.yaml", &text);
    let mut argv = vec!["nodedns-agent", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    argv.extend(["--standalone-cluster-file", cluster.to_str().unwrap()]);
    argv.extend_from_slice(extra);
    let config = Config::resolve(&Args::try_parse_from(argv).unwrap()).expect("test config resolves");
    let listeners = Listeners::bind(&config).expect("port-0 sockets bind");
    let dns = listeners.dns_addrs()[0];
    let agent = Agent::new(config);
    let mut connected = agent.authority().connected();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c))
        .await
        .expect("the agent connects to its authority within 20 s")
        .unwrap();
    Running { _stop: StopOnDrop(shutdown.clone()), dns, shutdown, task, _dir: dir }
}

async fn ask(server: SocketAddr, name: &str, qtype: &str, tcp: bool) -> Message {
    let q = build(name, qtype, 0x5151, Some(1232)).unwrap().bytes;
    let bytes = if tcp {
        tcp_raw(server, &q).await.unwrap()
    } else {
        udp_raw(server, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap()
    };
    let msg = Message::from_vec(&bytes).unwrap();
    assert_eq!(msg.metadata.id, 0x5151);
    msg
}

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_externalname_answers_the_alias_and_the_targets_records_from_the_upstream() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let s = start("ext.interwebs.test", &["--upstream", &upstream]).await;
    let whole = [
        (EXT.to_owned(), RecordType::CNAME, "ext.interwebs.test.".to_owned()),
        ("ext.interwebs.test.".to_owned(), RecordType::A, "192.0.2.1".to_owned()),
    ];
    let msg = ask(s.dns, EXT, "A", false).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&msg), whole);
    assert_eq!(msg.answers[0].ttl, 5, "the alias keeps the authority's TTL");
    assert_eq!(up.queries(), 1);
    // Again, over TCP: the combined answer from the cache (cached for the shorter TTL, 5 s).
    let again = ask(s.dns, EXT, "A", true).await;
    assert_eq!(answers(&again), whole);
    // The target asked directly is a cache hit too: the chase went through the cache.
    assert_eq!(answers(&ask(s.dns, "ext.interwebs.test.", "A", false).await), whole[1..]);
    assert_eq!(up.queries(), 1, "the upstream saw the target once");
    // A CNAME question gets the alias alone.
    assert_eq!(answers(&ask(s.dns, EXT, "CNAME", false).await), whole[..1]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_under_a_stub_domain_goes_to_the_stubs_server() {
    let (up, stub) = (FakeUpstream::start().await.unwrap(), FakeUpstream::start().await.unwrap());
    let (upstream, stub_flag) = (up.addr.to_string(), format!("corp.example={}", stub.addr));
    let s = start("db.corp.example", &["--upstream", &upstream, "--stub-domain", &stub_flag]).await;
    let msg = ask(s.dns, EXT, "A", false).await;
    assert_eq!(
        answers(&msg),
        [
            (EXT.to_owned(), RecordType::CNAME, "db.corp.example.".to_owned()),
            ("db.corp.example.".to_owned(), RecordType::A, "192.0.2.1".to_owned()),
        ]
    );
    assert_eq!((stub.queries(), up.queries()), (1, 0), "the stub domain's server, not the upstream");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_target_keeps_the_alias_and_its_denial_is_no_longer_than_the_alias() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    // The fake upstream denies names whose first label is `nx`, SOA TTL and MINIMUM 60.
    let s = start("nx.interwebs.test", &["--upstream", &upstream]).await;
    let msg = ask(s.dns, EXT, "A", false).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain, "RFC 6604: the target's rcode");
    assert_eq!(answers(&msg), [(EXT.to_owned(), RecordType::CNAME, "nx.interwebs.test.".to_owned())]);
    assert!(msg.authorities.iter().all(|r| r.ttl <= 5), "{:?}", msg.authorities);
    assert_eq!(msg.authorities.len(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_target_leaves_the_alias_alone() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    // SERVFAIL from the upstream: the authority's alias as it was, for the client to follow.
    let s = start("servfail.interwebs.test", &["--upstream", &upstream]).await;
    let msg = ask(s.dns, EXT, "A", false).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(answers(&msg), [(EXT.to_owned(), RecordType::CNAME, "servfail.interwebs.test.".to_owned())]);
    s.stop().await;
}
