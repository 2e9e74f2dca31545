//! Faults over real sockets, each with a pass condition: authority replicas killed and brought
//! back (the real gRPC service, on a runtime of its own so that killing it closes its sockets as a
//! process death does), upstreams that time out or refuse, a flood of unique names against a small
//! cache, idle TCP connections over the cap, and listen addresses. Port 0 on loopback throughout;
//! every wait polls a condition against a deadline, and every load loop is bounded in count and
//! time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record};
use nodedns_agent::authority_client::{AuthorityLink, Link};
use nodedns_agent::cache::STALE_TTL;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_testsupport::client::{Tcp, build, http_get, udp_raw};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_testsupport::{TempDir, shared_dir};
use nodedns_zone::file_source::FileSource;
use nodedns_zone::{ClusterStore, ZoneConfig};
use socket2::{Domain, Socket, Type};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

const SVC1: &str = "svc1.testns.svc.cluster.local.";

/// The conformance cluster with svc1 at `svc1_ip`.
fn cluster(svc1_ip: &str) -> String {
    let text = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    text.replace("clusterIP: 10.0.0.1\n", &format!("clusterIP: {svc1_ip}\n"))
        .replace("clusterIPs: [10.0.0.1]", &format!("clusterIPs: [{svc1_ip}]"))
}

/// A loopback TCP address held but not listening: connections to it are refused until a replica
/// listens on it.
fn reserve() -> Socket {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    socket
}

fn addr_of(socket: &Socket) -> SocketAddr {
    socket.local_addr().unwrap().as_socket().unwrap()
}

/// One authority replica: the real `nodedns.v1.Authority` service over a cluster file, as the
/// authority serves it. It runs on a runtime of its own: [`Replica::kill`] drops that runtime,
/// so its connections close at once with no Draining message and no GOAWAY, as when the process
/// is killed.
struct Replica {
    runtime: Option<tokio::runtime::Runtime>,
    addr: SocketAddr,
    _dir: TempDir,
}

impl Replica {
    /// Serves `cluster` (YAML) with record TTL `ttl` on `socket` (bound, not yet listening).
    fn start(socket: Socket, cluster: &str, ttl: u32) -> Self {
        let dir = TempDir::new("replica");
        let path = dir.write("cluster.yaml", cluster);
        let store = ClusterStore::new(ZoneConfig { ttl, ..ZoneConfig::default() });
        FileSource::new(path, Arc::clone(&store)).load().unwrap();
        let addr = addr_of(&socket);
        socket.listen(128).unwrap();
        socket.set_nonblocking(true).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let stop = CancellationToken::new();
        let shutdown =
            nodedns_grpc::Shutdown { draining: stop.clone(), stop: stop.clone(), lameduck: Duration::ZERO };
        let service = nodedns_grpc::Service::new(store, nodedns_grpc::TransferAcl::default(), shutdown);
        runtime.spawn(nodedns_grpc::serve_grpc(listener, service, stop));
        Self { runtime: Some(runtime), addr, _dir: dir }
    }

    /// Starts a replica on a fresh loopback port.
    fn start_new(cluster: &str, ttl: u32) -> Self {
        Self::start(reserve(), cluster, ttl)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Kills the replica: every task and socket of its runtime goes at once.
    async fn kill(mut self) {
        let runtime = self.runtime.take();
        tokio::task::spawn_blocking(move || drop(runtime)).await.unwrap();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// An agent running in-process on port-0 loopback sockets.
struct Running {
    dns: SocketAddr,
    admin: SocketAddr,
    authority: Arc<AuthorityLink>,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), nodedns_agent::AgentError>>,
    _stop: StopOnDrop,
    _dir: Option<TempDir>,
}

/// Cancels the agent when dropped (a failed assertion must not leave its threads running).
struct StopOnDrop(CancellationToken);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

impl Running {
    /// Starts an agent with `flags` (after `--listen 127.0.0.1:0 --admin-listen 127.0.0.1:0`
    /// unless `flags` has a `--listen` of its own).
    async fn start(flags: &[&str]) -> Self {
        Self::start_holding(flags, None).await
    }

    /// [`Running::start`], keeping `dir` (the agent's files) until the agent is dropped.
    async fn start_holding(flags: &[&str], dir: Option<TempDir>) -> Self {
        let mut argv = vec!["nodedns-agent", "--admin-listen", "127.0.0.1:0"];
        if !flags.contains(&"--listen") {
            argv.extend(["--listen", "127.0.0.1:0"]);
        }
        argv.extend_from_slice(flags);
        let config = Config::resolve(&Args::try_parse_from(argv).unwrap()).expect("test config resolves");
        let listeners = Listeners::bind(&config).expect("port-0 sockets bind");
        let (dns, admin) = (listeners.dns_addrs()[0], listeners.admin_addr().unwrap());
        let agent = Agent::new(config);
        let authority = agent.authority();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
        Self { dns, admin, authority, _stop: StopOnDrop(shutdown.clone()), shutdown, task, _dir: dir }
    }

    /// An agent whose authority is its own in-process one over the conformance cluster.
    async fn standalone(flags: &[&str]) -> Self {
        let dir = TempDir::new("faults");
        let fixture = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
        let path = dir.write("cluster.yaml", &fixture).to_str().unwrap().to_owned();
        let mut all = vec!["--standalone-cluster-file", path.as_str()];
        all.extend_from_slice(flags);
        let s = Self::start_holding(&all, Some(dir)).await;
        s.until_connected(true).await;
        s
    }

    /// Waits (at most 20 s) until the authority link is up (or down).
    async fn until_connected(&self, up: bool) {
        tokio::time::timeout(Duration::from_secs(20), self.authority.connected().wait_for(|c| *c == up))
            .await
            .unwrap_or_else(|_| panic!("authority link not {} within 20 s", if up { "up" } else { "down" }))
            .unwrap();
    }

    /// Waits (at most 20 s) until a session other than `before` is up.
    async fn until_new_session(&self, before: Link) {
        let mut link = self.authority.link();
        tokio::time::timeout(
            Duration::from_secs(20),
            link.wait_for(|l| matches!(l, Link::Up(_)) && *l != before),
        )
        .await
        .unwrap_or_else(|_| panic!("no new authority session within 20 s (before: {before:?})"))
        .unwrap();
    }

    async fn metrics(&self) -> String {
        let (status, body) = http_get(self.admin, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        body
    }

    async fn stop(self) {
        self.shutdown.cancel();
        let r = self.task.await.expect("agent task panicked");
        assert!(r.is_ok(), "{r:?}");
    }
}

/// The sum of the samples of `name` whose labels contain `labels` ("" for any).
fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
                && l.contains(labels)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn ask(server: SocketAddr, name: &str) -> Message {
    let q = build(name, "A", 4242, None).unwrap().bytes;
    let msg = Message::from_vec(&udp_raw(server, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap()).unwrap();
    assert_eq!(msg.metadata.id, 4242);
    msg
}

fn addresses(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// Asks `name` until `done` holds for the answer (at most 20 s, every 20 ms); returns it.
async fn until_answer(
    server: SocketAddr,
    name: &str,
    what: &str,
    done: impl Fn(&Message) -> bool,
) -> Message {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msg = ask(server, name).await;
        if done(&msg) {
            return msg;
        }
        assert!(Instant::now() < deadline, "{what}: not within 20 s; last answer {msg}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authority_killed_cache_serves_stale_external_unaffected_then_resync_from_the_returning_one() {
    let up = FakeUpstream::start().await.unwrap();
    // Replica A serves; B's address is configured but refuses connections until B starts.
    let a = Replica::start_new(&cluster("10.0.0.1"), 1);
    let b_socket = reserve();
    let b_addr = addr_of(&b_socket);
    let (a_url, b_url, upstream) = (a.url(), format!("http://{b_addr}"), up.addr.to_string());
    let s = Running::start(&[
        "--authority",
        &a_url,
        "--authority",
        &b_url,
        "--node-name",
        "node-a",
        "--upstream",
        &upstream,
        "--timeout",
        "1",
    ])
    .await;
    s.until_connected(true).await;
    // TTL 1: cached answers expire while the authority is away, and then only serve-stale
    // answers them.
    assert_eq!(addresses(&ask(s.dns, SVC1).await), ["10.0.0.1"]);
    let nx = ask(s.dns, "gone.testns.svc.cluster.local.").await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(addresses(&ask(s.dns, "www.example.test.").await), ["192.0.2.1"]);

    // A dies; B is not there either.
    let a_addr = a.addr;
    a.kill().await;
    s.until_connected(false).await;
    // Cluster names keep resolving from the cache, stale once expired (TTL STALE_TTL, RFC 8767).
    let stale = until_answer(s.dns, SVC1, "a stale answer", |m| {
        assert_eq!(addresses(m), ["10.0.0.1"], "only the cached answer while the authority is away: {m}");
        m.answers[0].ttl == STALE_TTL
    })
    .await;
    assert_eq!(stale.metadata.response_code, ResponseCode::NoError);
    let nx = until_answer(s.dns, "gone.testns.svc.cluster.local.", "a stale denial", |m| {
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{m}");
        m.authorities.iter().all(|r| r.ttl == STALE_TTL)
    })
    .await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    // A name never cached fails fast: SERVFAIL within the timeout, not a hung client.
    let started = Instant::now();
    let cold = ask(s.dns, "cold.testns.svc.cluster.local.").await;
    let cold_servfail = started.elapsed();
    assert_eq!(cold.metadata.response_code, ResponseCode::ServFail);
    assert!(cold_servfail < Duration::from_secs(3), "{cold_servfail:?}");
    // External names are unaffected, cached or not.
    assert_eq!(addresses(&ask(s.dns, "www.example.test.").await), ["192.0.2.1"]);
    assert_eq!(addresses(&ask(s.dns, "new.example.test.").await), ["192.0.2.1"]);
    assert_eq!(up.queries(), 2);
    let (ready, body) = http_get(s.admin, "/ready").await.unwrap();
    assert_eq!((ready, body.as_str()), (200, "ready (authority unreachable, serving from cache)\n"));

    // A comes back at the same address, a fresh process over a cluster changed while it was
    // away: svc1 moved. The agent reconnects, resyncs (its revision is unknown to the new
    // instance, so a snapshot evicts every cluster answer) and answers the new address.
    let returned = {
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        socket.set_reuse_address(true).unwrap();
        socket.bind(&a_addr.into()).expect("rebinding A's address");
        Replica::start(socket, &cluster("10.0.0.2"), 1)
    };
    let back = Instant::now();
    s.until_connected(true).await;
    let reconnect_same = back.elapsed();
    until_answer(s.dns, SVC1, "the change made while away", |m| addresses(m) == ["10.0.0.2"]).await;

    // A dies again and B (another endpoint) starts, with another change: the agent moves to B.
    returned.kill().await;
    s.until_connected(false).await;
    let b = Replica::start(b_socket, &cluster("10.0.0.3"), 1);
    let back = Instant::now();
    s.until_connected(true).await;
    let reconnect_other = back.elapsed();
    until_answer(s.dns, SVC1, "B's answer", |m| addresses(m) == ["10.0.0.3"]).await;
    assert_eq!(
        ask(s.dns, "cold.testns.svc.cluster.local.").await.metadata.response_code,
        ResponseCode::NXDomain
    );
    eprintln!(
        "authority kill: cold-name SERVFAIL after {cold_servfail:?}; reconnected {reconnect_same:?} after A returned, {reconnect_other:?} after B started"
    );
    s.stop().await;
    drop(b);
}

/// Bounds of [`one_of_two_replicas_killed_fails_nothing_beyond_the_queries_in_flight`].
const WORKERS: usize = 4;
const QUERIES_MAX: usize = 40_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_of_two_replicas_killed_fails_nothing_beyond_the_queries_in_flight() {
    let up = FakeUpstream::start().await.unwrap();
    let (a, b) =
        (Replica::start_new(&cluster("10.0.0.1"), 300), Replica::start_new(&cluster("10.0.0.1"), 300));
    let (a_url, b_url, upstream) = (a.url(), b.url(), up.addr.to_string());
    // A first: the agent connects to it, and it is the one killed.
    let s = Running::start(&[
        "--authority",
        &a_url,
        "--authority",
        &b_url,
        "--node-name",
        "node-a",
        "--upstream",
        &upstream,
    ])
    .await;
    s.until_connected(true).await;
    assert_eq!(addresses(&ask(s.dns, SVC1).await), ["10.0.0.1"]);

    // WORKERS clients, one query outstanding each, alternating a cold name (a miss: the
    // authority answers NXDOMAIN) and a cached one. A failure: no answer within 3 s (the
    // timeout is 2 s), or not the answer expected.
    let (sent, failed, stop) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (sent, failed, stop, failures, dns) =
            (Arc::clone(&sent), Arc::clone(&failed), Arc::clone(&stop), Arc::clone(&failures), s.dns);
        workers.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut buf = vec![0u8; 4096];
            let mut i = 0u16;
            while !stop.load(Ordering::Relaxed) && sent.fetch_add(1, Ordering::Relaxed) < QUERIES_MAX {
                i = i.wrapping_add(1);
                let cold = i.is_multiple_of(2);
                let name =
                    if cold { format!("cold-{w}-{i}.testns.svc.cluster.local.") } else { SVC1.to_owned() };
                let query = build(&name, "A", i, None).unwrap().bytes;
                socket.send_to(&query, dns).await.unwrap();
                let reply = loop {
                    match tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf)).await {
                        Ok(Ok(n)) if buf[..2] == i.to_be_bytes() => break Message::from_vec(&buf[..n]).ok(),
                        // A late answer to an earlier query: read on.
                        Ok(Ok(_)) => continue,
                        _ => break None,
                    }
                };
                let ok = reply.as_ref().is_some_and(|m| {
                    if cold {
                        m.metadata.response_code == ResponseCode::NXDomain && m.metadata.authoritative
                    } else {
                        addresses(m) == ["10.0.0.1"]
                    }
                });
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                    let rcode = reply.map(|m| m.metadata.response_code.to_string());
                    failures.lock().unwrap().push(format!("{name}: {rcode:?}"));
                }
            }
        }));
    }
    let progress = async |at_least: usize, what: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while sent.load(Ordering::Relaxed) < at_least {
            assert!(
                Instant::now() < deadline,
                "{what}: only {} queries within 20 s",
                sent.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    progress(400, "before the kill").await;
    let before_kill = sent.load(Ordering::Relaxed);
    let failed_before = failed.load(Ordering::Relaxed);
    let on_a = *s.authority.link().borrow();
    let killed = Instant::now();
    a.kill().await;
    // The agent notices, moves to B, and the stream goes on through B.
    s.until_new_session(on_a).await;
    let moved = killed.elapsed();
    let at_move = sent.load(Ordering::Relaxed);
    progress(at_move + 1000, "after the move").await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let total = sent.load(Ordering::Relaxed).min(QUERIES_MAX);
    let failed = failed.load(Ordering::Relaxed);
    eprintln!(
        "replica kill: {total} queries ({before_kill} before the kill, {} after it), {failed} failed; the agent was on B {moved:?} after the kill; failures: {:?}",
        total - before_kill,
        &failures.lock().unwrap()[..failed.min(10)]
    );
    assert_eq!(failed_before, 0, "nothing fails before the kill: {:?}", failures.lock().unwrap());
    // At most the cold queries in flight when A died: one per client.
    assert!(failed <= WORKERS, "{failed} failures, e.g. {:?}", &failures.lock().unwrap()[..failed.min(10)]);
    s.stop().await;
    drop(b);
}

/// What a [`Switchable`] upstream does with a query.
const SILENT: u8 = 0;
const REFUSE: u8 = 1;
const ANSWER: u8 = 2;

/// A UDP upstream stand-in whose behaviour changes while it runs: it swallows queries (the client
/// times out), answers REFUSED, or answers A 192.0.2.2.
struct Switchable {
    addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Queries received.
    seen: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Switchable {
    async fn start(mode: u8) -> Self {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(mode));
        let (now, seen) = (Arc::clone(&mode), Arc::new(AtomicUsize::new(0)));
        let count = Arc::clone(&seen);
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::Relaxed);
                let Ok(q) = Message::from_vec(&buf[..n]) else { continue };
                let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
                r.metadata.recursion_desired = q.metadata.recursion_desired;
                r.metadata.recursion_available = true;
                r.queries = q.queries.clone();
                match now.load(Ordering::Relaxed) {
                    SILENT => continue,
                    REFUSE => r.metadata.response_code = ResponseCode::Refused,
                    _ => {
                        let Some(name) = q.queries.first().map(|q| q.name().clone()) else { continue };
                        r.answers.push(Record::from_rdata(name, 300, RData::A(A([192, 0, 2, 2].into()))));
                    }
                }
                let _ = socket.send_to(&r.to_vec().unwrap(), from).await;
            }
        });
        Self { addr, mode, seen, task }
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }
}

impl Drop for Switchable {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A UDP address nothing listens on: queries to it are refused (ICMP port unreachable).
fn closed_udp_port() -> SocketAddr {
    std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_failover_past_refused_silent_and_refusing_servers() {
    let up = FakeUpstream::start().await.unwrap();
    let (silent, refusing) = (Switchable::start(SILENT).await, Switchable::start(REFUSE).await);
    let servers = [closed_udp_port(), silent.addr, refusing.addr, up.addr].map(|a| a.to_string());
    let mut flags = vec!["--timeout", "2"];
    for s in &servers {
        flags.extend(["--upstream", s.as_str()]);
    }
    let s = Running::standalone(&flags).await;
    // Each query is a new name. The first ones try every server in order: a closed port fails
    // at once, the silent one takes its share of the 2 s budget, REFUSED moves on; the last
    // answers. After three failures a server is marked down and tried last.
    let mut took = Vec::new();
    for i in 0..5 {
        let started = Instant::now();
        let msg = ask(s.dns, &format!("f{i}.example.test.")).await;
        took.push(started.elapsed());
        assert_eq!(addresses(&msg), ["192.0.2.1"], "query {i}: {msg}");
        assert!(took[i] < Duration::from_secs(3), "query {i}: {:?}", took[i]);
    }
    assert_eq!(up.queries(), 5);
    let metrics = s.metrics().await;
    for dead in &servers[..3] {
        assert_eq!(
            metric(&metrics, "nodedns_upstream_healthy", &format!("server=\"{dead}\"")),
            0.0,
            "{dead}: {metrics}"
        );
    }
    // Marked down, the silent and refusing servers are tried last: the next queries never reach
    // them.
    let asked = (silent.seen.load(Ordering::Relaxed), refusing.seen.load(Ordering::Relaxed));
    for i in 5..8 {
        assert_eq!(addresses(&ask(s.dns, &format!("f{i}.example.test.")).await), ["192.0.2.1"]);
    }
    assert_eq!((silent.seen.load(Ordering::Relaxed), refusing.seen.load(Ordering::Relaxed)), asked);
    eprintln!(
        "upstream failover: answer times {took:?} (closed, silent and REFUSED servers first, until marked down)"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_upstreams_dead_servfail_in_bounded_time_over_udp_and_tcp_then_recovery() {
    let switchable = Switchable::start(SILENT).await;
    let (closed, silent) = (closed_udp_port().to_string(), switchable.addr.to_string());
    let s = Running::standalone(&["--timeout", "1", "--upstream", &closed, "--upstream", &silent]).await;
    // 8 UDP and 4 TCP clients at once, each a new name: every one gets SERVFAIL within the 1 s
    // budget (shared by the two servers) plus a margin, and the TCP connections stay usable.
    let bound = Duration::from_millis(2500);
    let mut clients = Vec::new();
    for i in 0..12u16 {
        let dns = s.dns;
        clients.push(tokio::spawn(async move {
            let q = build(&format!("dead{i}.example.test."), "A", i, None).unwrap().bytes;
            let started = Instant::now();
            let reply = if i < 8 {
                udp_raw(dns, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap()
            } else {
                let mut tcp = Tcp::connect(dns).await.unwrap();
                tcp.send(&q).await.unwrap();
                let first = tcp.recv().await.unwrap();
                // The same connection answers the next query too.
                let again = build(&format!("again{i}.example.test."), "A", i + 100, None).unwrap().bytes;
                tcp.send(&again).await.unwrap();
                let second = Message::from_vec(&tcp.recv().await.unwrap()).unwrap();
                assert_eq!(second.metadata.response_code, ResponseCode::ServFail);
                first
            };
            let took = started.elapsed();
            let msg = Message::from_vec(&reply).unwrap();
            assert_eq!((msg.metadata.id, msg.metadata.response_code), (i, ResponseCode::ServFail));
            took
        }));
    }
    let mut took = Vec::new();
    for c in clients {
        took.push(c.await.unwrap());
    }
    let udp_max = took[..8].iter().max().copied().unwrap_or_default();
    let tcp_max = took[8..].iter().max().copied().unwrap_or_default();
    assert!(udp_max < bound, "UDP SERVFAIL after {udp_max:?}");
    assert!(tcp_max < bound * 2, "TCP: two SERVFAILs after {tcp_max:?}");

    // All refusing: the last REFUSED is passed on, as promptly.
    switchable.set(REFUSE);
    let started = Instant::now();
    let refused = ask(s.dns, "refused.example.test.").await;
    let refused_after = started.elapsed();
    assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
    assert!(refused_after < bound, "{refused_after:?}");

    // The upstream returns: the first query after it is answered (SERVFAIL was not cached).
    switchable.set(ANSWER);
    let started = Instant::now();
    assert_eq!(addresses(&ask(s.dns, "dead0.example.test.").await), ["192.0.2.2"]);
    let recovered_after = started.elapsed();
    eprintln!(
        "all upstreams dead (timeout 1 s): UDP SERVFAIL within {udp_max:?}, TCP (two on one connection) within {tcp_max:?}; all refusing: REFUSED after {refused_after:?}; recovered, first answer after {recovered_after:?}"
    );
    s.stop().await;
}

/// Bounds of the flood: names, clients, and the time it may take; it passes with at least
/// FLOOD_MIN names sent in that time (20 times what the cache holds), every one answered.
const FLOOD: usize = 50_000;
const FLOOD_MIN: usize = 20_000;
const FLOOD_TIME: Duration = Duration::from_secs(30);
const FLOOD_CLIENTS: usize = 16;
const CACHE_BYTES: u64 = 256 << 10;

/// A query for `name` (dotted, no trailing dot) built by hand: the flood's clients and upstream
/// spend their time on the agent, not on encoding.
fn raw_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// A UDP upstream that answers every query with A 192.0.2.1 (TTL 300), by rewriting the query's
/// bytes. Returns its address; it stops when the runtime does.
async fn quick_upstream() -> SocketAddr {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if n < 12 {
                continue;
            }
            let mut r = buf[..n].to_vec();
            r[2] |= 0x80; // QR
            r[3] = 0x80; // RA, NOERROR
            r[6..8].copy_from_slice(&[0, 1]); // ANCOUNT
            r[10..12].copy_from_slice(&[0, 0]); // no OPT echoed
            // Only the question is kept: cut anything after it (an OPT record).
            let mut end = 12;
            while end < r.len() && r[end] != 0 {
                end += 1 + usize::from(r[end]);
            }
            r.truncate((end + 5).min(r.len()));
            r.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 1, 44, 0, 4, 192, 0, 2, 1]);
            let _ = socket.send_to(&r, from).await;
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unique_names_keeps_the_cache_within_its_byte_bound_and_answers() {
    let (upstream, bytes) = (quick_upstream().await.to_string(), CACHE_BYTES.to_string());
    let s = Running::standalone(&["--upstream", &upstream, "--cache-bytes", &bytes]).await;
    let (next, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + FLOOD_TIME;
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..FLOOD_CLIENTS {
        let (next, failed, dns) = (Arc::clone(&next), Arc::clone(&failed), s.dns);
        clients.push(tokio::spawn(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let mut buf = vec![0u8; 4096];
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= FLOOD || Instant::now() > deadline {
                    return;
                }
                let id = (i % 65536) as u16;
                let q = raw_query(id, &format!("n{i}.flood.example.test"));
                socket.send_to(&q, dns).await.unwrap();
                let ok = loop {
                    match tokio::time::timeout(Duration::from_secs(3), socket.recv(&mut buf)).await {
                        // NOERROR with one answer.
                        Ok(Ok(n)) if n > 12 && buf[..2] == id.to_be_bytes() => {
                            break buf[3] & 0x0f == 0 && buf[6..8] == [0, 1];
                        }
                        Ok(Ok(_)) => continue,
                        _ => break false,
                    }
                };
                if !ok {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    let elapsed = started.elapsed();
    // Each client stops at FLOOD or the deadline; the counter ran one past per client.
    let sent = next.load(Ordering::Relaxed).saturating_sub(FLOOD_CLIENTS).min(FLOOD);
    assert!(sent >= FLOOD_MIN, "only {sent} names within {FLOOD_TIME:?}");
    let failed = failed.load(Ordering::Relaxed);
    assert_eq!(failed, 0, "{failed} of {sent} unanswered or not NOERROR");
    let metrics = s.metrics().await;
    let (held, entries) =
        (metric(&metrics, "nodedns_cache_bytes", ""), metric(&metrics, "coredns_cache_entries", ""));
    assert!(held > 0.0 && held <= CACHE_BYTES as f64, "nodedns_cache_bytes {held} over {CACHE_BYTES}");
    assert!(entries > 100.0 && entries < sent as f64 / 10.0, "{entries} entries");
    // Still answering, from the cache and not.
    assert_eq!(addresses(&ask(s.dns, "after.flood.example.test.").await), ["192.0.2.1"]);
    assert_eq!(addresses(&ask(s.dns, SVC1).await), ["10.0.0.1"]);
    eprintln!(
        "flood: {sent} unique names in {elapsed:?} ({:.0}/s), 0 failed; cache {held} bytes of {CACHE_BYTES}, {entries} entries",
        sent as f64 / elapsed.as_secs_f64()
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_connections_over_the_cap_are_closed_and_a_new_one_is_served_once_they_idle_out() {
    const CAP: usize = 8;
    const OVER: usize = 16;
    let cap = CAP.to_string();
    let s = Running::standalone(&["--tcp-max-connections", &cap, "--tcp-idle-timeout", "3"]).await;
    let rejected_before = metric(&s.metrics().await, "nodedns_tcp_rejected_total", "");
    let q = build(SVC1, "A", 1, None).unwrap().bytes;
    // CAP connections, each answered once and then left idle: they hold every slot.
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut c = Tcp::connect(s.dns).await.unwrap();
        c.send(&q).await.unwrap();
        assert_eq!(addresses(&Message::from_vec(&c.recv().await.unwrap()).unwrap()), ["10.0.0.1"]);
        held.push(c);
    }
    // More connections: each is accepted and closed at once, without an answer, and counted.
    for i in 0..OVER {
        let mut c = Tcp::connect(s.dns).await.unwrap();
        let _ = c.send(&q).await;
        assert!(c.closed_within(Duration::from_secs(5)).await, "connection {i} over the cap was not closed");
    }
    let metrics = s.metrics().await;
    assert_eq!(
        metric(&metrics, "nodedns_tcp_rejected_total", "") - rejected_before,
        OVER as f64,
        "{metrics}"
    );
    // UDP is served meanwhile.
    assert_eq!(addresses(&ask(s.dns, SVC1).await), ["10.0.0.1"]);
    // The idle ones are closed by the server after --tcp-idle-timeout; then a new connection is
    // served.
    let started = Instant::now();
    for (i, c) in held.iter_mut().enumerate() {
        assert!(c.closed_within(Duration::from_secs(10)).await, "idle connection {i} still open");
    }
    let idled_out = started.elapsed();
    let mut fresh = Tcp::connect(s.dns).await.unwrap();
    fresh.send(&q).await.unwrap();
    assert_eq!(addresses(&Message::from_vec(&fresh.recv().await.unwrap()).unwrap()), ["10.0.0.1"]);
    eprintln!(
        "TCP cap {CAP}: {OVER} over it closed and counted; the idle ones closed within {idled_out:?} more (idle timeout 3 s), then a new one served"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_only_on_its_listen_addresses() {
    let s = Running::standalone(&["--listen", "127.0.0.61:0"]).await;
    assert_eq!(s.dns.ip().to_string(), "127.0.0.61");
    assert_eq!(addresses(&ask(s.dns, SVC1).await), ["10.0.0.1"]);
    let q = build(SVC1, "A", 7, None).unwrap().bytes;
    for other in ["127.0.0.1", "127.0.0.62"] {
        let elsewhere = SocketAddr::new(other.parse().unwrap(), s.dns.port());
        // UDP: the kernel answers port unreachable (a connected socket reads it as refused); at
        // worst nothing comes back. Never a DNS answer.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.connect(elsewhere).await.unwrap();
        socket.send(&q).await.unwrap();
        let mut buf = [0u8; 512];
        match tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut buf)).await {
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{elsewhere}: {e}"),
            Ok(Ok(n)) => panic!("{elsewhere}: {n} bytes came back"),
            Err(_) => {}
        }
        let err = tokio::net::TcpStream::connect(elsewhere).await.expect_err("nothing listens there");
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{elsewhere}: {err}");
    }
    s.stop().await;
}
