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
    reloads: nodedns_common::reload::Reloads,
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
    let args = Args::try_parse_from(argv).unwrap();
    let config = Config::resolve(&args).expect("test config resolves");
    let listeners = Listeners::bind(&config).expect("port-0 sockets bind");
    let dns = listeners.dns_addrs()[0];
    let admin = listeners.admin_addr().unwrap();
    let agent = Agent::new(config).reload_from(args);
    let authority = agent.authority();
    let reloads = agent.reloads();
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
        reloads,
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
    // The answer-latency histogram (kept outside the recorder) is there once, with both protocols.
    assert_eq!(
        metrics.matches("# TYPE coredns_dns_request_duration_seconds histogram").count(),
        1,
        "{metrics}"
    );
    for proto in ["udp", "tcp"] {
        let count = metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix(&format!("coredns_dns_request_duration_seconds_count{{proto=\"{proto}\"}} "))
            })
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(count >= 1, "{proto} answers are timed: {metrics}");
    }
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

/// Waits (at most 20 s) until the reload status satisfies `done`.
async fn reloaded(
    status: &mut tokio::sync::watch::Receiver<nodedns_common::reload::Status>,
    what: &str,
    done: impl FnMut(&nodedns_common::reload::Status) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_config_moves_forwarding_to_the_new_upstream_and_a_bad_file_keeps_it() {
    use nodedns_common::reload::Applied;
    let (a, b) = (FakeUpstream::start().await.unwrap(), FakeUpstream::start().await.unwrap());
    let dir = TempDir::new("agent-reload");
    let config = dir.write("agent.yaml", &format!("upstream: ['{}']\n", a.addr));
    let s = start(&["--config", config.to_str().unwrap(), "--reload-interval", "0.05"]).await;
    assert_eq!(addresses(&ask(s.dns, "one.example.test.", "A", None).await), ["192.0.2.1"]);
    assert_eq!((a.queries(), b.queries()), (1, 0));

    // The file changes (as a ConfigMap does, by a rename): upstream B and a cache limit apply
    // live; the cluster domain waits for a restart.
    let mut status = s.reloads.status();
    dir.write(
        "agent.yaml",
        &format!("upstream: ['{}']\nmax-negative-ttl: 0\ncluster-domain: other.test\n", b.addr),
    );
    reloaded(&mut status, "the changed file is applied", |st| st.applied == 1).await;
    assert_eq!(
        status.borrow().last,
        Applied { changed: vec!["upstream", "max-negative-ttl"], restart: vec!["cluster-domain"] }
    );
    assert_eq!(addresses(&ask(s.dns, "two.example.test.", "A", None).await), ["192.0.2.1"]);
    assert_eq!((a.queries(), b.queries()), (1, 1), "an uncached name goes to the new upstream only");
    ask(s.dns, "one.example.test.", "A", None).await;
    assert_eq!((a.queries(), b.queries()), (1, 1), "the cache survives a reload");
    for _ in 0..2 {
        let nx = ask(s.dns, "nx.two.example.test.", "A", None).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    }
    assert_eq!(b.queries(), 3, "with max-negative-ttl 0 a denial is no longer cached");
    assert_eq!(
        addresses(&ask(s.dns, "svc1.testns.svc.cluster.local.", "A", None).await),
        ["10.0.0.1"],
        "cluster names still go to the authority under the running cluster domain"
    );

    // Bad files keep B: a loop to our own (bound) address, an unknown key, an invalid value.
    let own = s.dns;
    let bad = [
        (format!("upstream: ['{own}']\n"), format!("upstream: {own} is one of our own listen addresses")),
        (format!("upstream: ['{}']\nupstreams: []\n", a.addr), "upstreams".to_owned()),
        (format!("upstream: ['{}']\nmin-ttl: 100\nmax-ttl: 10\n", a.addr), "min-ttl: ".to_owned()),
    ];
    for (n, (text, named)) in bad.iter().enumerate() {
        dir.write("agent.yaml", text);
        reloaded(&mut status, "a bad file is refused", |st| st.failed == n as u64 + 1).await;
        let error = status.borrow().last_error.clone().unwrap_or_default();
        assert!(error.contains(named.as_str()), "{text:?}: {error}");
        let name = format!("bad{n}.example.test.");
        assert_eq!(addresses(&ask(s.dns, &name, "A", None).await), ["192.0.2.1"]);
        assert_eq!((a.queries(), b.queries()), (1, n + 4), "{text:?}: still forwarded to B");
    }
    assert_eq!(status.borrow().applied, 1);
    let (_, metrics) = http_get(s.admin, "/metrics").await;
    assert!(metrics.contains("nodedns_config_reloads_total{result=\"error\"}"), "{metrics}");
    assert!(metrics.contains("nodedns_config_reloads_total{result=\"ok\"}"), "{metrics}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_reloads_under_load_fail_no_query() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let (a, b) = (FakeUpstream::start().await.unwrap(), FakeUpstream::start().await.unwrap());
    let dir = TempDir::new("agent-reload-load");
    // Alternate the upstream, the cache bound (shrinking it evicts), the TTL cap, the query log
    // and where a rewritten name goes.
    let settings = |n: usize| {
        let odd = !n.is_multiple_of(2);
        let (up, bytes) = if odd { (b.addr, 65536) } else { (a.addr, 33554432) };
        let to = if odd { "hot.load.test" } else { "other.load.test" };
        format!(
            "upstream: ['{up}']\ncache-bytes: {bytes}\nmax-ttl: {}\nlog-queries: {odd}\nrewrite: ['exact:alias.load.test={to}']\n",
            300 + n
        )
    };
    let config = dir.write("agent.yaml", &settings(0));
    let s = start(&["--config", config.to_str().unwrap()]).await;

    // 2,000 queries one after another, half of them new names (misses, forwarded), the rest one
    // name (cache hits) and, every 4th, a rewritten name; each must be answered, with its id,
    // NOERROR, the address and the asked name.
    let (dns, done) = (s.dns, Arc::new(AtomicBool::new(false)));
    let client = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            socket.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut failures = Vec::new();
            let mut buf = vec![0u8; 4096];
            for i in 0..2000u16 {
                let name = match i % 4 {
                    0 | 2 => format!("q{i}.load.test."),
                    1 => "hot.load.test.".to_owned(),
                    _ => "alias.load.test.".to_owned(),
                };
                let query = build(&name, "A", i, None).unwrap().bytes;
                let reply = socket.send_to(&query, dns).and_then(|_| socket.recv(&mut buf));
                let ok = match reply {
                    Ok(n) => Message::from_vec(&buf[..n]).is_ok_and(|m| {
                        m.metadata.id == i
                            && m.metadata.response_code == ResponseCode::NoError
                            && addresses(&m) == ["192.0.2.1"]
                            && m.answers.iter().all(|r| r.name.to_ascii() == name)
                    }),
                    Err(_) => false,
                };
                if !ok {
                    failures.push(name);
                }
            }
            done.store(true, Ordering::Relaxed);
            failures
        })
    };
    // Meanwhile the file is rewritten and reloaded (SIGHUP's way, and the poll) over and over.
    let mut status = s.reloads.status();
    let mut rewrites = 0;
    while !done.load(Ordering::Relaxed) || rewrites < 4 {
        rewrites += 1;
        let before = status.borrow_and_update().applied;
        dir.write("agent.yaml", &settings(rewrites));
        s.reloads.request();
        reloaded(&mut status, "a rewrite under load is applied", |st| st.applied > before).await;
    }
    let failures = tokio::task::spawn_blocking(move || client.join().unwrap()).await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of 2000 queries failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(status.borrow().failed, 0);
    assert!(a.queries() > 0 && b.queries() > 0, "both upstreams served: {} and {}", a.queries(), b.queries());
    s.stop().await;
}

/// What the agent did with one packet: answered with this rcode (extended rcode included), or
/// sent nothing.
#[derive(Debug, PartialEq)]
enum Outcome {
    Rcode(u16),
    Dropped,
}

/// Sends `bad`, then a good query with another id, on one socket: the first reply is either the
/// answer to `bad` or, when `bad` got none, the good query's. No waiting for an absence.
async fn outcome(server: SocketAddr, bad: &[u8], good: &[u8]) -> Outcome {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(bad, server).await.unwrap();
    socket.send_to(good, server).await.unwrap();
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .expect("the good query is answered within 5 s")
        .unwrap();
    if buf[..2] == good[..2] {
        return Outcome::Dropped;
    }
    let rcode = u16::from(buf[3] & 0x0f);
    // An OPT record carries the upper 8 bits of the rcode (BADVERS = 16).
    let extended = Message::from_vec(&buf[..n])
        .ok()
        .and_then(|m| m.edns.map(|e| u16::from(e.rcode_high())))
        .unwrap_or(0);
    Outcome::Rcode(rcode | (extended << 4))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_table_gets_formerr_notimp_or_a_drop_and_the_server_keeps_answering() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let s = start(&["--upstream", &upstream]).await;
    let good = build("svc1.testns.svc.cluster.local.", "A", 0x600d, None).unwrap().bytes;
    let header = |qd: u16, flags: u16| {
        let mut h = vec![0xba, 0xd0];
        h.extend_from_slice(&flags.to_be_bytes());
        h.extend_from_slice(&qd.to_be_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        h
    };
    let question = |name: &[u8]| {
        let mut q = header(1, 0x0100);
        q.extend_from_slice(name);
        q.extend_from_slice(&[0, 1, 0, 1]);
        q
    };
    let long_label = [&[64u8][..], &[b'a'; 64], &[0]].concat();
    let long_name: Vec<u8> =
        (0..5).flat_map(|_| std::iter::once(63u8).chain(std::iter::repeat_n(b'a', 63))).chain([0]).collect();
    let mut opcode_status = good.clone();
    opcode_status[..2].copy_from_slice(&[0xba, 0xd1]);
    opcode_status[2] = (opcode_status[2] & 0x87) | (2 << 3);
    let mut response = good.clone();
    response[..2].copy_from_slice(&[0xba, 0xd2]);
    response[2] |= 0x80;
    let edns_v1 = {
        let mut q = build("svc1.testns.svc.cluster.local.", "A", 0xed01, Some(1232)).unwrap().bytes;
        // The OPT record's TTL field holds extended rcode, version, flags: set version 1.
        let len = q.len();
        q[len - 5] = 1;
        q
    };
    let edns_huge = build("svc1.testns.svc.cluster.local.", "A", 0xed02, Some(65535)).unwrap().bytes;
    let cases: Vec<(&str, Vec<u8>, Outcome)> = vec![
        ("shorter than a header", vec![0xba, 0xd0, 1, 0, 0], Outcome::Dropped),
        ("QDCOUNT 0", header(0, 0x0100), Outcome::Rcode(1)),
        ("QDCOUNT 1 with no question", header(1, 0x0100), Outcome::Rcode(1)),
        (
            "QDCOUNT 2",
            {
                let mut q = good.clone();
                q[5] = 2;
                q[..2].copy_from_slice(&[0xba, 0xd0]);
                q
            },
            Outcome::Rcode(1),
        ),
        ("compression loop in the name", question(&[0xc0, 0x0c]), Outcome::Rcode(1)),
        ("label of 64 bytes", question(&long_label), Outcome::Rcode(1)),
        ("name over 255 bytes", question(&long_name), Outcome::Rcode(1)),
        ("opcode STATUS", opcode_status, Outcome::Rcode(4)),
        (
            "class CHAOS",
            {
                let mut q = question(&[4, b't', b'e', b's', b't', 0]);
                let n = q.len();
                q[n - 1] = 3;
                q
            },
            Outcome::Rcode(4),
        ),
        ("a response sent to the server", response, Outcome::Dropped),
        ("EDNS version 1", edns_v1, Outcome::Rcode(16)),
        ("EDNS payload 65535", edns_huge, Outcome::Rcode(0)),
    ];
    let mut wrong = Vec::new();
    for (what, packet, want) in &cases {
        let got = outcome(s.dns, packet, &good).await;
        if got != *want {
            wrong.push(format!("{what}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    let (_, metrics) = http_get(s.admin, "/metrics").await;
    assert!(metrics.contains("coredns_dns_responses_total{rcode=\"BADVERS\"} 1"), "{metrics}");
    assert!(metrics.contains("coredns_dns_responses_total{rcode=\"NOTIMP\"}"), "{metrics}");
    // And the server still answers normally.
    assert_eq!(addresses(&ask(s.dns, "svc1.testns.svc.cluster.local.", "A", None).await), ["10.0.0.1"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_query_name_or_client_address_becomes_a_metric_label() {
    let up = FakeUpstream::start().await.unwrap();
    let upstream = up.addr.to_string();
    let s = start(&["--upstream", &upstream]).await;
    // Cluster, external, NXDOMAIN and malformed traffic from an address nothing else uses.
    let client: SocketAddr = "127.0.0.77:0".parse().unwrap();
    for (i, name) in [
        "svc1.testns.svc.cluster.local.",
        "zzlabelprobe.example.test.",
        "zzlabelprobe.testns.svc.cluster.local.",
    ]
    .iter()
    .enumerate()
    {
        for qtype in ["A", "AAAA", "TXT"] {
            let q = build(name, qtype, 100 + i as u16, Some(1232)).unwrap().bytes;
            let reply = udp_raw(s.dns, client, &q).await.unwrap();
            assert_eq!(reply[..2], q[..2], "{name} {qtype} answered");
        }
    }
    let mut bad = build("zzlabelprobe.example.test.", "A", 7, None).unwrap().bytes;
    bad[5] = 2;
    let reply = udp_raw(s.dns, client, &bad).await.unwrap();
    assert_eq!(reply[3] & 0x0f, 1, "FORMERR");
    let (status, metrics) = http_get(s.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("coredns_dns_requests_total{"), "traffic was counted: {metrics}");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("zzlabelprobe"), "a query name in a metric: {line}");
        assert!(!line.contains("127.0.0.77"), "a client address in a metric: {line}");
    }
    s.stop().await;
}
