//! The agent as on a node: the `nodedns-agent` binary runs in its own network namespace with
//! 169.254.20.10 on `lo` (this kernel has no dummy link type), reaching an authority and a
//! stand-in upstream over a veth pair; the test, playing the pod, resolves cluster and external
//! names through 169.254.20.10. Needs root for `ip netns`; without it the tests say so and pass.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use nodedns_testsupport::client::{build, udp_raw};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_testsupport::{TempDir, shared_dir};
use nodedns_zone::file_source::FileSource;
use nodedns_zone::{ClusterStore, ZoneConfig};
use tokio_util::sync::CancellationToken;

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(1)) == Some("0")
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(out.status.success(), "ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
}

/// A namespace joined to ours by a veth pair: ours 10.199.N.1/30, theirs 10.199.N.2/30, and
/// 169.254.20.10 on their `lo`, optionally routed to from ours through the pair. Removed on drop.
struct Node {
    ns: String,
    outer: String,
    host: IpAddr,
}

impl Node {
    /// `route`: reach 169.254.20.10 from our namespace through the pair (one node at a time).
    fn new(n: u8, route: bool) -> Self {
        let ns = format!("nodedns-t{}-{n}", std::process::id());
        let (outer, inner) = (
            format!("ndo{n}x{}", std::process::id() % 10000),
            format!("ndi{n}x{}", std::process::id() % 10000),
        );
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        let _ = Command::new("ip").args(["link", "del", &outer]).output();
        ip(&["netns", "add", &ns]);
        let node =
            Node { ns: ns.clone(), outer: outer.clone(), host: format!("10.199.{n}.1").parse().unwrap() };
        ip(&["link", "add", &outer, "type", "veth", "peer", "name", &inner]);
        ip(&["link", "set", &inner, "netns", &ns]);
        ip(&["addr", "add", &format!("10.199.{n}.1/30"), "dev", &outer]);
        ip(&["link", "set", &outer, "up"]);
        let inner_addr = format!("10.199.{n}.2/30");
        for args in [
            ["addr", "add", inner_addr.as_str(), "dev", inner.as_str()],
            ["link", "set", inner.as_str(), "up", ""],
            ["link", "set", "lo", "up", ""],
            ["addr", "add", "169.254.20.10/32", "dev", "lo"],
        ] {
            let mut full = vec!["netns", "exec", ns.as_str(), "ip"];
            full.extend(args.iter().copied().filter(|a| !a.is_empty()));
            ip(&full);
        }
        if route {
            ip(&["route", "add", "169.254.20.10/32", "via", &format!("10.199.{n}.2"), "dev", &outer]);
        }
        node
    }

    fn spawn(&self, args: &[&str], log: &std::path::Path) -> Child {
        let log = std::fs::File::create(log).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_nodedns-agent")])
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting the agent")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The pair (and the route through it) go at once; the namespace's own cleanup is lazy.
        let _ = Command::new("ip").args(["link", "del", &self.outer]).output();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).output();
    }
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The authority's gRPC service over the conformance fixture, on `ip`.
async fn authority(ip: IpAddr, stop: &CancellationToken) -> SocketAddr {
    let store = ClusterStore::new(ZoneConfig::default());
    FileSource::new(shared_dir().join("conformance/cluster.yaml"), Arc::clone(&store)).load().unwrap();
    let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown =
        nodedns_grpc::Shutdown { draining: stop.clone(), stop: stop.clone(), lameduck: Duration::ZERO };
    let service = nodedns_grpc::Service::new(store, nodedns_grpc::TransferAcl::default(), shutdown);
    tokio::spawn(nodedns_grpc::serve_grpc(listener, service, stop.clone()));
    addr
}

async fn ask(server: SocketAddr, name: &str) -> Message {
    let q = build(name, "A", 77, None).unwrap().bytes;
    Message::from_vec(&udp_raw(server, "0.0.0.0:0".parse().unwrap(), &q).await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_answers_on_169_254_20_10_inside_its_node_namespace() {
    if !is_root() {
        eprintln!("skipped: needs root for ip netns (CI runs as root)");
        return;
    }
    let node = Node::new(1, true);
    let stop = CancellationToken::new();
    let grpc = authority(node.host, &stop).await;
    let upstream = FakeUpstream::start_on(node.host).await.unwrap();
    let dir = TempDir::new("netns");
    let log = dir.path().join("agent.log");
    let (authority_url, upstream_addr) = (format!("http://{grpc}"), upstream.addr.to_string());
    let _agent = Killed(node.spawn(
        &[
            "--listen",
            "169.254.20.10:53",
            "--authority",
            &authority_url,
            "--upstream",
            &upstream_addr,
            "--node-name",
            "node-b",
        ],
        &log,
    ));
    let dns: SocketAddr = "169.254.20.10:53".parse().unwrap();
    // Ready once /ready says so (on the listen IP, port 9254), polled with a deadline.
    let admin: SocketAddr = "169.254.20.10:9254".parse().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(admin)).await
        {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let _ = s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await;
            let mut out = String::new();
            let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_string(&mut out)).await;
            if out.starts_with("HTTP/1.1 200") {
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "agent not ready within 30 s; its log:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster = ask(dns, "svc1.testns.svc.cluster.local.").await;
    assert_eq!(cluster.answers.len(), 1);
    assert_eq!(cluster.answers[0].data.to_string(), "10.0.0.1");
    let external = ask(dns, "www.example.test.").await;
    assert_eq!(external.metadata.response_code, ResponseCode::NoError);
    assert_eq!(external.answers[0].data.to_string(), "192.0.2.1");
    assert_eq!(upstream.queries(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("nodedns-agent serving") && text.contains("authority connected"), "{text}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_interface_makes_a_dummy_link_or_says_clearly_why_not() {
    if !is_root() {
        eprintln!("skipped: needs root for ip netns (CI runs as root)");
        return;
    }
    let node = Node::new(2, false);
    let dir = TempDir::new("netns-iface");
    let log = dir.path().join("agent.log");
    let host = node.host.to_string();
    let upstream = format!("{host}:53");
    let args = [
        "--listen",
        "169.254.20.11:53",
        "--setup-interface",
        "nodelocaldns",
        "--authority",
        "http://10.199.2.1:1",
        "--upstream",
        &upstream,
        "--node-name",
        "n",
    ];
    let mut agent = Killed(node.spawn(&args, &log));
    let has_dummy = Command::new("ip")
        .args(["netns", "exec", &node.ns, "ip", "link", "add", "probe0", "type", "dummy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if has_dummy {
        // The agent makes the link and puts its address on it.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let out = Command::new("ip")
                .args(["netns", "exec", &node.ns, "ip", "addr", "show", "nodelocaldns"])
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout).contains("169.254.20.11") {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    } else {
        let status = tokio::task::spawn_blocking(move || agent.0.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(1), "a clear failure, not a hang");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("cannot create dummy interface nodelocaldns: this kernel has no dummy link type"),
            "{text}"
        );
    }
}
