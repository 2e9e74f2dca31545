//! What clients and operators see of the authority beyond the answers' content, over real
//! sockets: round-robin order on the DNS port and `--no-rotate`; the binary's query log as JSON
//! lines with CoreDNS `log`'s fields, its error lines, `--version`, and `nodedns_build_info`.

mod support;

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::Message;
use hickory_proto::rr::RData;
use nodedns_testsupport::client::{ask, build};
use nodedns_testsupport::logs::{JsonLogs, first_addr, http_get_blocking, message, wait_ready};
use nodedns_testsupport::shared_dir;

const BIN: &str = env!("CARGO_BIN_EXE_nodedns-authority");
/// A headless service of the conformance cluster with several ready IPv4 endpoints.
const HEADLESS: &str = "hdls1.testns.svc.cluster.local.";

fn fixture() -> String {
    shared_dir().join("conformance/cluster.yaml").to_str().unwrap().to_owned()
}

/// The records of an answer section, as text, in order.
fn records(msg: &Message) -> Vec<String> {
    msg.answers.iter().map(|r| r.data.to_string()).collect()
}

/// Ten answers for `name`/`qtype` from an in-process authority started with `extra` flags.
async fn ten_answers(extra: &[&str], name: &str, qtype: &str) -> Vec<Message> {
    let cluster = fixture();
    let mut flags = vec!["--cluster-file", cluster.as_str()];
    flags.extend_from_slice(extra);
    let server = support::start(&flags).await;
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(ask(server.dns, name, qtype).await.unwrap().0);
    }
    server.stop().await;
    answers
}

#[tokio::test]
async fn headless_answers_come_round_robin_unless_no_rotate() {
    let turning = ten_answers(&[], HEADLESS, "A").await;
    let orders: Vec<Vec<String>> = turning.iter().map(records).collect();
    let mut all = orders[0].clone();
    all.sort();
    assert!(all.len() >= 2, "the headless service has several endpoints: {all:?}");
    for order in &orders {
        let mut same = order.clone();
        same.sort();
        assert_eq!(same, all, "every answer has every address, only the order changes");
    }
    let firsts: HashSet<&String> = orders.iter().map(|o| &o[0]).collect();
    assert_eq!(firsts.len(), all.len().min(10), "each address comes first in turn: {orders:?}");

    let still: Vec<Vec<String>> =
        ten_answers(&["--no-rotate"], HEADLESS, "A").await.iter().map(records).collect();
    assert!(still.iter().all(|o| o == &still[0]), "--no-rotate keeps one order: {still:?}");
}

#[tokio::test]
async fn srv_answers_turn_and_their_additional_records_still_name_the_targets() {
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
        // Each glue record is owned by a target of the answer (a pointer the rotation moved
        // would name something else).
        for glue in &msg.additionals {
            assert!(targets.contains(&glue.name.to_string()), "{} is no target in {msg}", glue.name);
        }
        assert!(!msg.additionals.is_empty(), "the targets' addresses come along: {msg}");
        assert_eq!(msg.additionals.len(), answers[0].additionals.len());
    }
    assert!(firsts.len() >= 2, "ten SRV answers, one first target");
}

/// The authority binary with JSON logs.
struct Running {
    logs: JsonLogs,
    dns: SocketAddr,
    admin: SocketAddr,
}

fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    http_get_blocking(admin, path).unwrap_or((0, String::new()))
}

impl Running {
    fn start(extra: &[&str]) -> Self {
        let mut command = Command::new(BIN);
        command
            .args(["--cluster-file", &fixture(), "--dns-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", "--grpc-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra);
        let mut logs = JsonLogs::spawn(command);
        let up = logs.wait_for("the start-up line", |v| message(v) == "nodedns-authority serving");
        assert_eq!(up["fields"]["version"], env!("CARGO_PKG_VERSION"), "{up}");
        let dns = first_addr(up["fields"]["dns"].as_str().unwrap());
        let admin = first_addr(up["fields"]["admin"].as_str().unwrap());
        wait_ready(admin, "the authority");
        Running { logs, dns, admin }
    }
}

fn exchange(socket: &UdpSocket, server: SocketAddr, query: &[u8]) -> Vec<u8> {
    socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    socket.send_to(query, server).unwrap();
    let mut buf = vec![0u8; 65535];
    let (n, _) = socket.recv_from(&mut buf).expect("an answer within 5 s");
    buf.truncate(n);
    buf
}

#[test]
fn the_query_log_has_coredns_log_fields_as_json_and_errors_get_a_line() {
    let mut server = Running::start(&["--log-queries"]);
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut query = build(HEADLESS, "A", 4242, Some(1232)).unwrap().bytes;
    let len = query.len();
    query[len - 4] |= 0x80; // DO, in the OPT record's flags
    let answer = exchange(&client, server.dns, &query);
    let line = server.logs.wait_for("the query line", |v| message(v) == "query" && v["fields"]["id"] == 4242);
    let f = &line["fields"];
    assert_eq!(f["client"], client.local_addr().unwrap().to_string(), "{line}");
    assert_eq!((f["qtype"].as_str(), f["qclass"].as_str()), (Some("A"), Some("IN")), "{line}");
    assert_eq!(f["name"], HEADLESS);
    assert_eq!(f["proto"], "udp");
    assert_eq!(f["size"], query.len());
    assert_eq!(f["dnssec_ok"], true);
    assert_eq!(f["bufsize"], 1232);
    assert_eq!(f["rcode"], "NOERROR");
    assert!(f["rflags"].as_str().unwrap().starts_with("qr,aa,rd"), "{line}");
    assert_eq!(f["rsize"], answer.len());
    assert!(f["duration_us"].is_u64(), "{line}");

    // A malformed query (two questions): FORMERR, and a warning saying so.
    let mut malformed = build("x.example.test.", "A", 9, None).unwrap().bytes;
    malformed[5] = 2;
    let answer = exchange(&client, server.dns, &malformed);
    assert_eq!(answer[3] & 0x0f, 1, "FORMERR");
    let warn = server.logs.wait_for("the FORMERR line", |v| message(v) == "error answer sent");
    assert_eq!(warn["level"], "WARN");
    assert_eq!(warn["fields"]["rcode"], "FORMERR");
    assert_eq!(warn["fields"]["cause"], "malformed query");
    assert_eq!(warn["fields"]["client"], client.local_addr().unwrap().to_string());

    let (_, text) = get(server.admin, "/metrics");
    let info =
        text.lines().find(|l| l.starts_with("nodedns_build_info{")).unwrap_or_else(|| panic!("{text}"));
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION")))
            && info.contains("rustc=\"")
            && info.contains("commit=\"")
            && info.ends_with(" 1"),
        "{info}"
    );
}

#[test]
fn version_prints_the_version_and_exits_zero() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nodedns-authority {}", env!("CARGO_PKG_VERSION"))
    );
}
