//! `--rewrite` over real sockets: a rewritten name is resolved as its target (a cluster name
//! through the authority, an external one through the upstream) and answered under the asked
//! name, in the client's spelling; truncation, TCP, NXDOMAIN and a live reload of the rules.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use nodedns_agent::config::{Args, Config};
use nodedns_agent::{Agent, Listeners};
use nodedns_common::reload::Applied;
use nodedns_testsupport::client::{build, tcp_raw, udp_raw};
use nodedns_testsupport::upstream::FakeUpstream;
use nodedns_testsupport::{TempDir, shared_dir};
use tokio_util::sync::CancellationToken;

struct Running {
    dns: SocketAddr,
    reloads: nodedns_common::reload::Reloads,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), nodedns_agent::AgentError>>,
}

/// A standalone agent over the conformance cluster with `flags`, connected to its authority.
async fn start(dir: &TempDir, flags: &[&str]) -> Running {
    let fixture = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    let cluster = dir.write("cluster.yaml", &fixture);
    let mut argv = vec!["nodedns-agent", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    argv.extend(["--standalone-cluster-file", cluster.to_str().unwrap()]);
    argv.extend_from_slice(flags);
    let args = Args::try_parse_from(argv).unwrap();
    let config = Config::resolve(&args).expect("test config resolves");
    let listeners = Listeners::bind(&config).unwrap();
    let dns = listeners.dns_addrs()[0];
    let agent = Agent::new(config).reload_from(args);
    let mut connected = agent.authority().connected();
    let reloads = agent.reloads();
    let stop = CancellationToken::new();
    let task = tokio::spawn(agent.run(listeners, stop.clone()));
    tokio::time::timeout(Duration::from_secs(20), connected.wait_for(|c| *c))
        .await
        .expect("connected within 20 s")
        .unwrap();
    Running { dns, reloads, stop, task }
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn udp(server: SocketAddr, name: &str, qtype: &str) -> Message {
    let q = build(name, qtype, 321, None).unwrap().bytes;
    let msg = Message::from_vec(&udp_raw(server, "127.0.0.1:0".parse().unwrap(), &q).await.unwrap()).unwrap();
    assert_eq!(msg.metadata.id, 321);
    msg
}

/// `(owner, address)` of every A record in the answer section.
fn answers(msg: &Message) -> Vec<(String, String)> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some((r.name.to_ascii(), a.0.to_string())),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewritten_names_answer_under_the_asked_name() {
    let upstream = FakeUpstream::start().await.unwrap();
    let dir = TempDir::new("rewrite");
    let up = upstream.addr.to_string();
    let s = start(
        &dir,
        &[
            "--upstream",
            &up,
            "--rewrite",
            "exact:db.example=svc1.testns.svc.cluster.local",
            "--rewrite",
            "suffix:.corp.local=.corp.example",
        ],
    )
    .await;

    // A cluster name, twice (the second from the cache), in the client's spelling.
    for name in ["db.example.", "Db.EXAMPLE."] {
        let msg = udp(s.dns, name, "A").await;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError, "{name}");
        assert_eq!(msg.queries[0].name().to_ascii(), name, "the question as asked");
        assert_eq!(answers(&msg), [(name.to_owned(), "10.0.0.1".to_owned())], "{name}");
    }

    // An external suffix rewrite: the upstream is asked the rewritten name.
    let msg = udp(s.dns, "a.corp.local.", "A").await;
    assert_eq!(answers(&msg), [("a.corp.local.".to_owned(), "192.0.2.1".to_owned())]);
    assert_eq!(upstream.queries(), 1);
    assert!(
        udp(s.dns, "xcorp.local.", "A").await.answers.iter().all(|r| r.name.to_ascii() == "xcorp.local.")
    );
    let nx = udp(s.dns, "nx.corp.local.", "A").await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.queries[0].name().to_ascii(), "nx.corp.local.");

    // Forty records do not fit in 512 bytes: truncated over UDP, whole over TCP.
    let big = udp(s.dns, "big.corp.local.", "A").await;
    assert!(big.metadata.truncation && big.answers.is_empty());
    let q = build("big.corp.local.", "A", 9, None).unwrap().bytes;
    let whole = Message::from_vec(&tcp_raw(s.dns, &q).await.unwrap()).unwrap();
    assert_eq!(whole.answers.len(), 40);
    assert!(whole.answers.iter().all(|r| r.name.to_ascii() == "big.corp.local."));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrite_rules_change_with_a_config_reload() {
    let dir = TempDir::new("rewrite-reload");
    let config = dir.write("agent.yaml", "rewrite: ['exact:db.example=svc1.testns.svc.cluster.local']\n");
    let s = start(&dir, &["--config", config.to_str().unwrap(), "--upstream", "127.0.0.1:9"]).await;
    assert_eq!(
        answers(&udp(s.dns, "db.example.", "A").await),
        [("db.example.".to_owned(), "10.0.0.1".to_owned())]
    );

    let mut status = s.reloads.status();
    dir.write("agent.yaml", "rewrite: ['exact:db.example=svc2.testns.svc.cluster.local']\n");
    s.reloads.request();
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|st| st.applied >= 1))
        .await
        .expect("reloaded within 20 s")
        .unwrap();
    assert_eq!(status.borrow().last, Applied { changed: vec!["rewrite"], restart: vec![] });
    let msg = udp(s.dns, "db.example.", "A").await;
    let want: Vec<(String, String)> = answers(&udp(s.dns, "svc2.testns.svc.cluster.local.", "A").await)
        .into_iter()
        .map(|(_, ip)| ("db.example.".to_owned(), ip))
        .collect();
    assert!(!want.is_empty());
    assert_eq!(answers(&msg), want, "the new rule applies");

    // A bad rule is refused naming the key; the running rules stay.
    dir.write("agent.yaml", "rewrite: ['prefix:a=b']\n");
    s.reloads.request();
    tokio::time::timeout(Duration::from_secs(20), status.wait_for(|st| st.failed >= 1))
        .await
        .expect("refused within 20 s")
        .unwrap();
    assert!(status.borrow().last_error.clone().unwrap_or_default().starts_with("rewrite: "));
    assert_eq!(answers(&udp(s.dns, "db.example.", "A").await), want);
    s.stop().await;
}
