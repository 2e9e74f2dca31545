//! The load generator against small in-process DNS servers whose answers the tests choose: every
//! count in the report must match what the server saw or did (answers, drops, round trips, the
//! source address of a pod's queries), over real UDP and TCP sockets on loopback.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{RData, Record, RecordType};
use nodedns_loadgen::{RunArgs, measure};

/// What the test server does with one question.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Reply {
    /// NOERROR with one A record (for A questions; NODATA for other types).
    Address,
    Rcode(ResponseCode),
    Drop,
}

type Rule = dyn Fn(&str, RecordType, u64) -> Reply + Send + Sync;

/// What the server saw.
#[derive(Default)]
struct Seen {
    queries: AtomicU64,
    names: Mutex<HashMap<String, u64>>,
    sources: Mutex<HashMap<IpAddr, u64>>,
    connections: AtomicU64,
}

struct TestServer {
    addr: SocketAddr,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn respond(query: &[u8], rule: &Rule, seen: &Seen, from: IpAddr) -> Option<Vec<u8>> {
    let msg = Message::from_vec(query).ok()?;
    let q = msg.queries.first()?.clone();
    let n = seen.queries.fetch_add(1, Ordering::Relaxed);
    let name = q.name().to_ascii().to_ascii_lowercase();
    *seen.names.lock().unwrap().entry(name.clone()).or_default() += 1;
    *seen.sources.lock().unwrap().entry(from).or_default() += 1;
    let reply = rule(&name, q.query_type(), n);
    let mut out = Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
    out.metadata.recursion_desired = msg.metadata.recursion_desired;
    out.metadata.recursion_available = true;
    out.queries.push(q.clone());
    match reply {
        Reply::Drop => return None,
        Reply::Rcode(rc) => out.metadata.response_code = rc,
        Reply::Address if q.query_type() == RecordType::A => {
            out.answers.push(Record::from_rdata(
                q.name().clone(),
                60,
                RData::A(A(Ipv4Addr::new(192, 0, 2, 1))),
            ));
        }
        Reply::Address => {}
    }
    out.to_vec().ok()
}

fn udp_server(rule: impl Fn(&str, RecordType, u64) -> Reply + Send + Sync + 'static) -> TestServer {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let addr = socket.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (s2, st2) = (seen.clone(), stop.clone());
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while !st2.load(Ordering::Relaxed) {
            if let Ok((n, from)) = socket.recv_from(&mut buf)
                && let Some(answer) = respond(&buf[..n], &rule, &s2, from.ip())
            {
                let _ = socket.send_to(&answer, from);
            }
        }
    });
    TestServer { addr, seen, stop }
}

fn tcp_server(rule: impl Fn(&str, RecordType, u64) -> Reply + Send + Sync + 'static) -> TestServer {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let stop = Arc::new(AtomicBool::new(false));
    let rule: Arc<Rule> = Arc::new(rule);
    let s2 = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            s2.connections.fetch_add(1, Ordering::Relaxed);
            let (seen, rule) = (s2.clone(), rule.clone());
            std::thread::spawn(move || {
                let from = stream.peer_addr().map(|a| a.ip()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                loop {
                    let mut len = [0u8; 2];
                    if stream.read_exact(&mut len).is_err() {
                        return;
                    }
                    let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    if stream.read_exact(&mut q).is_err() {
                        return;
                    }
                    if let Some(a) = respond(&q, &*rule, &seen, from) {
                        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&a);
                        if stream.write_all(&framed).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    TestServer { addr, seen, stop }
}

fn args(server: SocketAddr, extra: &[&str]) -> RunArgs {
    let server = server.to_string();
    let mut argv = vec!["run", "--server", server.as_str(), "--quiet"];
    if !extra.contains(&"--duration") {
        argv.extend_from_slice(&["--duration", "30"]);
    }
    argv.extend_from_slice(extra);
    RunArgs::try_parse_from(argv).unwrap()
}

fn names_file(dir: &std::path::Path, file: &str, lines: &[String]) -> String {
    let path = dir.join(file);
    std::fs::write(&path, lines.join("\n")).unwrap();
    path.to_str().unwrap().to_owned()
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("nodedns-load-test-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn a_closed_loop_over_udp_counts_every_answer_and_zipf_favours_the_first_name() {
    let server = udp_server(|_, _, _| Reply::Address);
    let dir = temp_dir("closed");
    let names: Vec<String> = (0..50).map(|i| format!("name{i}.example.test A")).collect();
    let file = names_file(&dir, "names", &names);
    let report =
        measure(&args(server.addr, &["--names", &file, "--max-names", "3000", "--outstanding", "50"]), false)
            .unwrap();
    assert_eq!((report.sent, report.answered, report.lost), (3000, 3000, 0));
    assert_eq!(server.seen.queries.load(Ordering::Relaxed), 3000);
    assert_eq!(report.rcodes.get("NOERROR"), Some(&3000));
    let hit = &report.kinds["hit"];
    assert_eq!((hit.started, hit.resolved, hit.unresolved), (3000, 3000, 0));
    assert_eq!(hit.rounds_mean, 1.0);
    assert!(
        report.qps > 0.0 && report.latency_ms.p50 > 0.0 && report.latency_ms.max >= report.latency_ms.p99
    );
    // Zipf(1) over 50 names: the first is asked several times more often than the 25th.
    let names = server.seen.names.lock().unwrap();
    let first = names.get("name0.example.test.").copied().unwrap_or(0);
    let middle = names.get("name24.example.test.").copied().unwrap_or(0);
    assert!(first > 4 * middle.max(1), "first {first}, 25th {middle}");
    // The JSON carries the fields benchmark scripts read, and the SVG has both curves.
    let json = serde_json::to_value(&report).unwrap();
    for key in ["qps", "loss_ratio", "latency_ms", "names", "kinds", "rcodes", "rounds_histogram"] {
        assert!(json.get(key).is_some(), "{key} missing from {json}");
    }
    assert_eq!(json["latency_ms"]["p99_9"].as_f64(), Some(report.latency_ms.p99_9));
    assert_eq!(report.svg().matches("<polyline").count(), 2);
}

#[test]
fn an_open_loop_counts_the_queries_the_server_drops_as_lost() {
    // Every fourth query is dropped.
    let server = udp_server(|_, _, n| if n % 4 == 3 { Reply::Drop } else { Reply::Address });
    let dir = temp_dir("open");
    let file = names_file(&dir, "names", &["a.example.test".to_owned(), "b.example.test AAAA".to_owned()]);
    let report = measure(
        &args(server.addr, &["--names", &file, "--rate", "2000", "--max-names", "400", "--timeout", "0.3"]),
        false,
    )
    .unwrap();
    assert_eq!(report.mode, "open");
    assert_eq!((report.sent, report.answered, report.lost), (400, 300, 100));
    assert_eq!(report.loss_ratio, 0.25);
    assert_eq!(report.kinds["hit"].unresolved, 100);
}

#[test]
fn tcp_queries_are_pipelined_on_one_connection_per_socket() {
    let server = tcp_server(|_, _, _| Reply::Address);
    let dir = temp_dir("tcp");
    let names: Vec<String> = (0..20).map(|i| format!("t{i}.example.test")).collect();
    let file = names_file(&dir, "names", &names);
    let report = measure(
        &args(
            server.addr,
            &["--tcp", "--names", &file, "--max-names", "500", "--outstanding", "20", "--sockets", "2"],
        ),
        false,
    )
    .unwrap();
    assert_eq!(report.transport, "tcp");
    assert_eq!((report.sent, report.answered, report.lost, report.reconnects), (500, 500, 0, 0));
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 2);
}

/// The test pod's search-path server: `web.shop` exists in the cluster and `www.example.test`
/// outside it; everything else is NXDOMAIN, or SERVFAIL inside the cluster domain if asked.
fn search_rule(servfail_in_cluster: bool) -> impl Fn(&str, RecordType, u64) -> Reply + Send + Sync + 'static {
    move |name, _, _| match name {
        "web.shop.svc.cluster.local." | "www.example.test." => Reply::Address,
        n if servfail_in_cluster && n.ends_with(".cluster.local.") => Reply::Rcode(ResponseCode::ServFail),
        _ => Reply::Rcode(ResponseCode::NXDomain),
    }
}

#[test]
fn a_pods_lookup_walks_its_search_list_from_the_pods_address() {
    let server = udp_server(search_rule(false));
    let dir = temp_dir("search");
    let file = names_file(&dir, "search", &["web.shop".to_owned(), "www.example.test".to_owned()]);
    let report = measure(
        &args(
            server.addr,
            &[
                "--workload",
                "search-path",
                "--pod",
                "127.64.0.21=other",
                "--search-names",
                &file,
                "--zipf",
                "0",
                "--max-names",
                "200",
                // Small enough for the test server's default socket buffer.
                "--outstanding",
                "20",
            ],
        ),
        false,
    )
    .unwrap();
    let s = &report.kinds["search-path"];
    assert_eq!((s.started, s.resolved, s.unresolved), (200, 200, 0));
    // web.shop: other.svc (NXDOMAIN), then svc.cluster.local (found): 2 rounds. www.example.test:
    // the three cluster suffixes, then the name itself: 4 rounds. Each round is A + AAAA.
    let h = &report.rounds_histogram;
    assert_eq!(h[2] + h[4], 200, "{h:?}");
    assert!(h[2] > 0 && h[4] > 0, "{h:?}");
    assert_eq!(report.sent, 2 * (2 * h[2] + 4 * h[4]));
    assert_eq!(s.rounds_mean, (2 * h[2] + 4 * h[4]) as f64 / 200.0);
    // Every query came from the pod's own address.
    let sources = server.seen.sources.lock().unwrap();
    assert_eq!(sources.keys().collect::<Vec<_>>(), [&IpAddr::V4(Ipv4Addr::new(127, 64, 0, 21))]);
}

#[test]
fn servfail_ends_a_musl_lookup_but_glibc_walks_on() {
    let server = udp_server(search_rule(true));
    let dir = temp_dir("servfail");
    let file = names_file(&dir, "search", &["www.example.test".to_owned()]);
    let run = |resolver: &str| {
        measure(
            &args(
                server.addr,
                &[
                    "--workload",
                    "search-path",
                    "--pod",
                    "127.64.0.22=other",
                    "--search-names",
                    &file,
                    "--max-names",
                    "20",
                    "--resolver",
                    resolver,
                ],
            ),
            false,
        )
        .unwrap()
    };
    let glibc = run("glibc");
    assert_eq!((glibc.names.resolved, glibc.names.rounds_mean), (20, 4.0));
    let musl = run("musl");
    assert_eq!((musl.names.unresolved, musl.names.rounds_mean), (20, 1.0));
    assert_eq!(musl.rcodes.get("SERVFAIL"), Some(&40));
}

#[test]
fn a_mix_sends_every_kind_and_unique_names_are_never_repeated() {
    let server = udp_server(|name, _, _| {
        if name.ends_with(".svc.cluster.local.") {
            Reply::Rcode(ResponseCode::NXDomain)
        } else {
            Reply::Address
        }
    });
    let dir = temp_dir("mix");
    let file = names_file(&dir, "names", &["h.example.test".to_owned()]);
    let report = measure(
        &args(
            server.addr,
            &[
                "--workload",
                "mix",
                "--mix",
                "hit=1,cluster-miss=1,external=1",
                "--names",
                &file,
                "--max-names",
                "900",
                "--threads",
                "2",
                "--outstanding",
                "40",
            ],
        ),
        false,
    )
    .unwrap();
    let started: u64 = report.kinds.values().map(|k| k.started).sum();
    assert_eq!(started, 900);
    assert_eq!(report.kinds.len(), 3);
    for kind in ["hit", "cluster-miss", "external"] {
        assert!(report.kinds[kind].started > 150, "{kind}: {:?}", report.kinds[kind]);
    }
    let names = server.seen.names.lock().unwrap();
    let misses =
        names.iter().filter(|(n, _)| n.ends_with(".svc.cluster.local.") || n.ends_with(".rnd.example.test."));
    let (distinct, total) = misses.fold((0, 0), |(d, t), (_, c)| (d + 1, t + c));
    assert_eq!(distinct, total, "a unique name was asked twice");
    assert_eq!(total, report.kinds["cluster-miss"].started + report.kinds["external"].started);
    assert_eq!(report.rcodes.get("NXDOMAIN"), Some(&report.kinds["cluster-miss"].started));
}

#[test]
fn bad_flags_are_refused_with_the_flag_named() {
    let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let err = |extra: &[&str]| measure(&args(addr, extra), false).unwrap_err().to_string();
    assert!(err(&["--workload", "bogus"]).contains("--workload"));
    assert!(err(&["--workload", "search-path"]).contains("needs pods"));
    assert!(err(&[]).contains("needs names"));
    assert!(err(&["--workload", "external", "--rate", "0"]).contains("--rate"));
    assert!(err(&["--workload", "external", "--duration", "99999"]).contains("--duration"));
    assert!(err(&["--workload", "mix", "--mix", "hit=1,nope=2"]).contains("nope"));
}
