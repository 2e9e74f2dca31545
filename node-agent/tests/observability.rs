//! What clients and operators see of the agent beyond the answers' content, over real sockets:
//! round-robin order (cache hits included) and `--no-rotate`; the binary's query log as JSON
//! lines with CoreDNS `log`'s fields, its rate-limited error lines, `--version`, and
//! `nodedns_build_info` on `/metrics`.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::Parser;
use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_testsupport::client::{build, udp_raw};
use nodedns_testsupport::logs::{JsonLogs, first_addr, http_get_blocking, message, wait_ready};
use nodedns_testsupport::{TempDir, shared_dir};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_nodedns-agent");
/// A headless service of the conformance cluster with three ready IPv4 endpoints.
const HEADLESS: &str = "hdls1.testns.svc.cluster.local.";

fn addresses(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

/// Ten answers for `name`/`qtype` from an in-process standalone agent started with `extra`
/// flags (the first a miss, the other nine cache hits).
async fn ten_answers(extra: &[&str], name: &str, qtype: &str) -> Vec<Message> {
    let dir = TempDir::new("rotate");
    let fixture = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    let cluster = dir.write("cluster.yaml", &fixture);
    let mut argv = vec!["nodedns-agent", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    argv.extend(["--standalone-cluster-file", cluster.to_str().unwrap(), "--upstream", "127.0.0.1:9"]);
    argv.extend_from_slice(extra);
    let args = Args::try_parse_from(argv).unwrap();
    let config = Config::resolve(&args).unwrap();
    let listeners = Listeners::bind(&config).unwrap();
    let dns = listeners.dns_addrs()[0];
    let agent = Agent::new(config);
    let mut connected = agent.authority().connected();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, shutdown.clone()));
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c))
        .await
        .expect("the agent connects to its authority within 20 s")
        .unwrap();
    let mut answers = Vec::new();
    for id in 0..10 {
        let q = build(name, qtype, id, Some(1232)).unwrap().bytes;
        let bytes = udp_raw(dns, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap();
        answers.push(Message::from_vec(&bytes).unwrap());
    }
    shutdown.cancel();
    task.await.unwrap().unwrap();
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_answers_come_round_robin_cache_hits_included_unless_no_rotate() {
    let turning: Vec<Vec<String>> = ten_answers(&[], HEADLESS, "A").await.iter().map(addresses).collect();
    let mut sorted = turning[0].clone();
    sorted.sort();
    assert!(sorted.len() >= 2, "the headless service has several endpoints: {sorted:?}");
    for order in &turning {
        let mut same = order.clone();
        same.sort();
        assert_eq!(same, sorted, "every answer has every address, only the order changes");
    }
    let firsts: HashSet<&String> = turning.iter().map(|o| &o[0]).collect();
    assert!(firsts.len() >= 2, "ten answers, one first address: {turning:?}");
    // Round-robin: each first address comes up in turn, not at random.
    assert_eq!(firsts.len(), sorted.len().min(10), "{turning:?}");

    let still: Vec<Vec<String>> =
        ten_answers(&["--no-rotate"], HEADLESS, "A").await.iter().map(addresses).collect();
    assert!(still.iter().all(|o| o == &still[0]), "--no-rotate keeps one order: {still:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_srv_answers_turn_and_their_additional_records_still_name_the_targets() {
    let answers = ten_answers(&[], &format!("_http._tcp.{HEADLESS}"), "SRV").await;
    let mut firsts = HashSet::new();
    for msg in &answers {
        let targets: Vec<String> = msg
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::SRV(srv) => Some(srv.target.to_string()),
                _ => None,
            })
            .collect();
        assert!(targets.len() >= 2, "{msg}");
        firsts.insert(targets[0].clone());
        // The glue's owners point into the SRV targets the rotation moved: still theirs.
        assert!(!msg.additionals.is_empty(), "{msg}");
        for glue in &msg.additionals {
            assert!(targets.contains(&glue.name.to_string()), "{} is no target in {msg}", glue.name);
        }
    }
    assert!(firsts.len() >= 2, "ten SRV answers, one first target");
}

/// The agent binary with JSON logs.
struct Running {
    logs: JsonLogs,
    dns: SocketAddr,
    admin: SocketAddr,
    _dir: TempDir,
}

impl Running {
    /// Starts the agent binary (standalone, JSON logs) and waits for its start-up line and
    /// `/ready`.
    fn start(extra: &[&str]) -> Self {
        let dir = TempDir::new("agent-logs");
        let fixture = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
        let cluster = dir.write("cluster.yaml", &fixture);
        let mut command = Command::new(BIN);
        command
            .args(["--standalone-cluster-file", cluster.to_str().unwrap()])
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra);
        let mut logs = JsonLogs::spawn(command);
        // The start-up block names the addresses the kernel gave (port 0) and the version.
        let up = logs.wait_for("the start-up line", |v| message(v) == "nodedns-agent serving");
        assert_eq!(up["fields"]["version"], env!("CARGO_PKG_VERSION"), "{up}");
        let dns = first_addr(up["fields"]["listen"].as_str().unwrap());
        let admin = first_addr(up["fields"]["admin"].as_str().unwrap());
        wait_ready(admin, "the agent");
        Running { logs, dns, admin, _dir: dir }
    }
}

fn metrics(admin: SocketAddr) -> String {
    http_get_blocking(admin, "/metrics").unwrap().1
}

/// Sends `query` from `socket` and returns the answer (5 s at most).
fn exchange(socket: &UdpSocket, server: SocketAddr, query: &[u8]) -> Vec<u8> {
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(query, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = socket.recv_from(&mut buf).expect("an answer within 5 s");
    buf.truncate(n);
    buf
}

#[test]
fn the_query_log_has_coredns_log_fields_as_json_and_errors_get_rate_limited_lines() {
    // An upstream that never answers: names outside the cluster end in SERVFAIL after 0.3 s.
    let silent = UdpSocket::bind("127.0.0.1:0").unwrap();
    let upstream = silent.local_addr().unwrap().to_string();
    let mut agent = Running::start(&["--log-queries", "--upstream", &upstream, "--timeout", "0.3"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();

    // EDNS with a 1232-byte buffer and the DO bit (the OPT record's flags, 4 bytes from its end).
    let mut query = build(HEADLESS, "A", 4242, Some(1232)).unwrap().bytes;
    let len = query.len();
    query[len - 4] |= 0x80;
    let answer = exchange(&client, agent.dns, &query);
    let line = agent.logs.wait_for("the query line", |v| message(v) == "query" && v["fields"]["id"] == 4242);
    let f = &line["fields"];
    assert_eq!(f["client"], client.local_addr().unwrap().to_string(), "{line}");
    assert_eq!(f["qtype"], "A");
    assert_eq!(f["qclass"], "IN");
    assert_eq!(f["name"], HEADLESS);
    assert_eq!(f["proto"], "udp");
    assert_eq!(f["size"], query.len());
    assert_eq!(f["dnssec_ok"], true);
    assert_eq!(f["bufsize"], 1232);
    assert_eq!(f["rcode"], "NOERROR");
    // Whatever the header says, in CoreDNS's spelling: an authoritative answer to an RD query.
    let rflags = f["rflags"].as_str().unwrap();
    assert!(rflags.starts_with("qr,aa,rd"), "{line}");
    assert_eq!(rflags.contains("ra"), answer[3] & 0x80 != 0, "{line}");
    assert_eq!(f["rsize"], answer.len());
    assert!(f["duration_us"].is_u64(), "{line}");
    assert_eq!(line["level"], "INFO");

    // A SERVFAIL: one warning naming the name, type, client and cause.
    let servfail = build("gone.example.test.", "AAAA", 7, None).unwrap().bytes;
    let answer = exchange(&client, agent.dns, &servfail);
    assert_eq!(answer[3] & 0x0f, 2, "SERVFAIL");
    let warn = agent.logs.wait_for("the SERVFAIL line", |v| message(v) == "error answer sent");
    let f = &warn["fields"];
    assert_eq!(warn["level"], "WARN");
    assert_eq!((f["name"].as_str(), f["qtype"].as_str()), (Some("gone.example.test."), Some("AAAA")));
    assert_eq!(f["client"], client.local_addr().unwrap().to_string());
    assert_eq!(f["rcode"], "SERVFAIL");
    let cause = f["cause"].as_str().unwrap();
    assert!(cause.starts_with("upstream: ") && cause.contains("within"), "{warn}");

    // A flood of 300 malformed queries (two questions: FORMERR), then one good query from the
    // same socket: it is answered after them, so its query line follows their lines.
    let mut malformed = build("x.example.test.", "A", 1, None).unwrap().bytes;
    malformed[5] = 2;
    let began = Instant::now();
    for _ in 0..300 {
        client.send_to(&malformed, agent.dns).unwrap();
    }
    let last = build(HEADLESS, "A", 4343, None).unwrap().bytes;
    client.send_to(&last, agent.dns).unwrap();
    agent
        .logs
        .wait_for("the query line after the flood", |v| message(v) == "query" && v["fields"]["id"] == 4343);
    let seconds = began.elapsed().as_secs() + 2;
    let formerr = |v: &Value| message(v) == "error answer sent" && v["fields"]["rcode"] == "FORMERR";
    let written = agent.logs.count(formerr);
    // At most 10 lines in any second the flood touched (it usually takes one or two).
    assert!((1..300).contains(&written), "{written} FORMERR lines for 300 errors");
    assert!(written as u64 <= 10 * seconds, "{written} FORMERR lines in under {seconds} s");
    let queries = agent.logs.count(|v| message(v) == "query" && v["fields"]["rcode"] == "FORMERR");
    assert_eq!(queries, 300, "the query log still has every one");

    // Error lines in later seconds say how many were left out: every error is accounted for,
    // written or reported suppressed.
    let suppressed = |agent: &Running| -> u64 {
        agent.logs.seen().filter_map(|v| v["fields"]["suppressed"].as_u64()).sum()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while suppressed(&agent) + (written as u64) < 300 {
        assert!(
            Instant::now() < deadline,
            "not every error accounted for within 5 s: {} suppressed",
            suppressed(&agent)
        );
        std::thread::sleep(Duration::from_millis(200));
        client.send_to(&malformed, agent.dns).unwrap();
        client.send_to(&last, agent.dns).unwrap();
        agent.logs.wait_for("the query line", |v| message(v) == "query" && v["fields"]["id"] == 4343);
    }

    let text = metrics(agent.admin);
    let build_info =
        text.lines().find(|l| l.starts_with("nodedns_build_info{")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        build_info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && build_info.contains("rustc=\"")
            && build_info.contains("commit=\"")
            && build_info.ends_with(" 1"),
        "{build_info}"
    );
    assert!(text.contains("nodedns_error_logs_suppressed_total"), "{text}");
}

#[test]
fn version_prints_the_version_and_exits_zero() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nodedns-agent {}", env!("CARGO_PKG_VERSION"))
    );
}
