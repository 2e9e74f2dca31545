//! The agent over real sockets: an in-process authority (standalone mode, the real gRPC service
//! on loopback) for cluster names, a stand-in upstream for the rest.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_testsupport::client::{Tcp, build, tcp_raw, udp_raw};
use nodedns_testsupport::upstream::{FakeUpstream, silent};
use nodedns_testsupport::{TempDir, shared_dir};
use tokio_util::sync::CancellationToken;

struct Running {
    _stop: StopOnDrop,
    dns: SocketAddr,
    authority: std::sync::Arc<nodedns_agent::authority_client::AuthorityLink>,
    admin: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), nodedns_agent::AgentError>>,
    _dir: TempDir,
    cluster: std::path::PathBuf,
    dir_path: std::path::PathBuf,
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

/// Starts a standalone agent over a copy of the conformance cluster, with `extra` flags.
async fn start(extra: &[&str]) -> Running {
    let dir = TempDir::new("agent");
    let fixture = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    let cluster = dir.write("cluster.yaml", &fixture);
    let mut argv = vec!["nodedns-agent", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    argv.extend(["--standalone-cluster-file", cluster.to_str().unwrap()]);
    argv.extend_from_slice(extra);
    let config = Config::resolve(&Args::try_parse_from(argv).unwrap()).expect("test config resolves");
    let listeners = Listeners::bind(&config).expect("port-0 sockets bind");
    let dns = listeners.dns_addrs()[0];
    let admin = listeners.admin_addr().unwrap();
    let agent = Agent::new(config);
    let authority = agent.authority();
    let mut connected = authority.connected();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c))
        .await
        .expect("the agent connects to its authority within 20 s")
        .unwrap();
    let dir_path = dir.path().to_owned();
    Running {
        _stop: StopOnDrop(shutdown.clone()),
        dns,
        authority,
        admin,
        shutdown,
        task,
        _dir: dir,
        cluster,
        dir_path,
    }
}

async fn ask(server: SocketAddr, name: &str, qtype: &str, edns: Option<u16>) -> Message {
    let q = build(name, qtype, 4242, edns).unwrap().bytes;
    let bytes = udp_raw(server, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap();
    let msg = Message::from_vec(&bytes).unwrap();
    assert_eq!(msg.metadata.id, 4242);
    msg
}

fn addresses(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_answers_stay_cached_until_a_notice_evicts_them() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    // An hour of minimum TTL: only a change notice can make the agent ask again.
    let s = start(&["--upstream", &upstream, "--min-ttl", "3600"]).await;
    let msg = ask(s.dns, "svc1.testns.svc.cluster.local.", "A", None).await;
    assert_eq!(addresses(&msg), ["10.0.0.1"]);
    assert!(msg.metadata.authoritative, "the authority's answer, passed through");
    let nx = ask(s.dns, "later.testns.svc.cluster.local.", "A", None).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    // The cluster changes: svc1 moves, a service `later` appears.
    let text = std::fs::read_to_string(&s.cluster)
        .unwrap()
        .replace("clusterIP: 10.0.0.1\n", "clusterIP: 10.0.0.99\n")
        .replace("clusterIPs: [10.0.0.1]", "clusterIPs: [10.0.0.99]");
    let extra = "---\napiVersion: v1\nkind: Service\nmetadata: {name: later, namespace: testns}\nspec: {clusterIP: 10.0.0.77, ports: [{name: http, port: 80, protocol: TCP}]}\n";
    std::fs::write(s.dir_path.join("next.yaml"), format!("{text}\n{extra}")).unwrap();
    std::fs::rename(s.dir_path.join("next.yaml"), &s.cluster).unwrap();
    // Every Subscribe message applied wakes the check; the notice is one of them.
    let mut applied = s.authority.applied();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        applied.borrow_and_update();
        let now = addresses(&ask(s.dns, "svc1.testns.svc.cluster.local.", "A", None).await);
        if now == ["10.0.0.99"] {
            break;
        }
        assert_eq!(now, ["10.0.0.1"], "the old answer until the notice, nothing else");
        tokio::time::timeout_at(deadline, applied.changed())
            .await
            .expect("the notice evicted svc1 within 20 s")
            .unwrap();
    }
    assert_eq!(
        addresses(&ask(s.dns, "later.testns.svc.cluster.local.", "A", None).await),
        ["10.0.0.77"],
        "the cached NXDOMAIN went too"
    );
    assert_eq!(up.queries(), 0, "cluster names never go upstream");
    let (status, _) = http_get(s.admin, "/ready").await;
    assert_eq!(status, 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_names_are_forwarded_once_cached_and_truncation_goes_to_tcp() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let s = start(&["--upstream", &upstream]).await;
    for _ in 0..3 {
        let msg = ask(s.dns, "WWW.Example.test.", "A", None).await;
        assert_eq!(addresses(&msg), ["192.0.2.1"]);
        assert_eq!(msg.queries[0].name().to_string(), "WWW.Example.test.", "the client's case comes back");
    }
    assert_eq!(up.queries(), 1, "answered from the cache after the first");
    let nx = ask(s.dns, "nx.example.test.", "A", None).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    ask(s.dns, "nx.example.test.", "A", None).await;
    assert_eq!(up.queries(), 2, "NXDOMAIN cached for its SOA minimum");

    // 40 addresses do not fit 512 bytes: the upstream truncates over UDP, the agent retries over
    // TCP, and a client without EDNS gets TC from us and the whole answer over TCP.
    let small = ask(s.dns, "big.example.test.", "A", None).await;
    assert!(small.metadata.truncation && small.answers.is_empty());
    assert_eq!(up.tcp_queries.load(std::sync::atomic::Ordering::Relaxed), 1);
    let q = build("big.example.test.", "A", 7, None).unwrap().bytes;
    let whole = Message::from_vec(&tcp_raw(s.dns, &q).await.unwrap()).unwrap();
    assert_eq!(whole.answers.len(), 40);
    let large = ask(s.dns, "big.example.test.", "A", Some(4096)).await;
    assert_eq!(large.answers.len(), 40, "an EDNS client with room gets it over UDP");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_stub_domains_and_servfail_when_nothing_answers() {
    let up = FakeUpstream::start().await.unwrap();
    let corp = FakeUpstream::start().await.unwrap();
    let (dead, _hold) = silent().unwrap();
    let stub = format!("corp.test={}", corp.addr);
    let (dead_s, up_s) = (dead.to_string(), up.addr.to_string());
    let s =
        start(&["--upstream", &dead_s, "--upstream", &up_s, "--stub-domain", &stub, "--timeout", "1"]).await;
    // The first upstream never answers: the second does, within the time budget.
    assert_eq!(addresses(&ask(s.dns, "a.example.test.", "A", None).await), ["192.0.2.1"]);
    assert_eq!(up.queries(), 1);
    // A stub domain's names go to its servers only.
    assert_eq!(addresses(&ask(s.dns, "host.CORP.test.", "A", None).await), ["192.0.2.1"]);
    assert_eq!((corp.queries(), up.queries()), (1, 1));
    // SERVFAIL upstream: passed on, not cached.
    for _ in 0..2 {
        let msg = ask(s.dns, "servfail.example.test.", "A", None).await;
        assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    }
    s.stop().await;

    // Nothing answers at all: SERVFAIL after the timeout, not a hung client.
    let (dead2, _hold2) = silent().unwrap();
    let dead2 = dead2.to_string();
    let s = start(&["--upstream", &dead_s, "--upstream", &dead2, "--timeout", "0.5"]).await;
    let msg = ask(s.dns, "a.example.test.", "A", None).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::ServFail);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_queries_get_formerr_and_the_next_query_is_answered() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let s = start(&["--upstream", &upstream]).await;
    let good = build("svc1.testns.svc.cluster.local.", "A", 9, None).unwrap().bytes;
    let mut two_questions = good.clone();
    two_questions[5] = 2;
    let reply = udp_raw(s.dns, "127.0.0.1:0".parse().unwrap(), &two_questions).await.unwrap();
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    assert_eq!(reply[..2], good[..2], "with the query's id");
    let mut truncated_name = good.clone();
    truncated_name.truncate(20);
    let reply = udp_raw(s.dns, "127.0.0.1:0".parse().unwrap(), &truncated_name).await.unwrap();
    assert_eq!(reply[3] & 0x0f, 1);
    // TCP: a bad query answered, the connection still serves the next.
    let mut tcp = Tcp::connect(s.dns).await.unwrap();
    tcp.send(&two_questions).await.unwrap();
    assert_eq!(tcp.recv().await.unwrap()[3] & 0x0f, 1);
    tcp.send(&good).await.unwrap();
    let msg = Message::from_vec(&tcp.recv().await.unwrap()).unwrap();
    assert_eq!(addresses(&msg), ["10.0.0.1"]);
    assert_eq!(addresses(&ask(s.dns, "svc1.testns.svc.cluster.local.", "A", None).await), ["10.0.0.1"]);
    let (_, metrics) = http_get(s.admin, "/metrics").await;
    assert!(metrics.contains("coredns_dns_responses_total{rcode=\"FORMERR\"}"), "{metrics}");
    s.stop().await;
}

async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut out)).await.unwrap().unwrap();
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forwarding_loop_is_detected_and_logged_not_followed() {
    // Listeners first, so the relay knows where to send our queries back.
    let dir = TempDir::new("agent-loop");
    let fixture = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    let cluster = dir.write("cluster.yaml", &fixture);
    let base = ["nodedns-agent", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    let first = Config::resolve(
        &Args::try_parse_from(
            base.iter().copied().chain(["--standalone-cluster-file", cluster.to_str().unwrap()]),
        )
        .unwrap(),
    )
    .unwrap();
    let listeners = Listeners::bind(&first).unwrap();
    let (dns, admin) = (listeners.dns_addrs()[0], listeners.admin_addr().unwrap());
    // A "resolver" that forwards everything back to the agent: the classic node resolv.conf loop.
    let relay = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay_addr = relay.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let back = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = relay.recv_from(&mut buf).await {
            let _ = back.send_to(&buf[..n], dns).await;
            let mut answer = vec![0u8; 4096];
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(2), back.recv(&mut answer)).await {
                let _ = relay.send_to(&answer[..m], from).await;
            }
        }
    });
    let argv: Vec<&str> = base
        .iter()
        .copied()
        .chain([
            "--standalone-cluster-file",
            cluster.to_str().unwrap(),
            "--upstream",
            &relay_addr,
            "--timeout",
            "1",
        ])
        .collect();
    let config = Config::resolve(&Args::try_parse_from(argv).unwrap()).unwrap();
    let agent = Agent::new(config);
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
    // The start-up probe goes out, comes back through the relay, and is caught.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (_, metrics) = http_get(admin, "/metrics").await;
        let caught = metrics
            .lines()
            .find_map(|l| l.strip_prefix("nodedns_loops_detected_total "))
            .and_then(|v| v.parse::<f64>().ok())
            .is_some_and(|n| n >= 1.0);
        if caught {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "loop not detected within 20 s:\n{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Cluster names still answer (they never go upstream).
    assert_eq!(addresses(&ask(dns, "svc1.testns.svc.cluster.local.", "A", None).await), ["10.0.0.1"]);
    shutdown.cancel();
    assert!(task.await.unwrap().is_ok());
}
