//! Custom records (`--custom-records`) over real loopback sockets: a name in the cluster zone and
//! a zone of their own answered authoritatively, a changed file picked up, a bad one refused
//! naming its line while the records served stay, and a bad file at start-up failing the start
//! with the file and the line.

mod support;

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RData;
use nodedns_testsupport::TempDir;
use nodedns_testsupport::client::ask;

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns1}\nspec: {clusterIP: 10.0.0.1}\n";

fn custom(mail: &str) -> String {
    format!(
        "; hosts-style names\n\
         registry.cluster.local.  A  10.9.0.1\n\
         $ORIGIN corp.example.\n\
         @     MX   10 mail\n\
         mail  A    {mail}\n\
         txt   TXT  \"hello world\"\n"
    )
}

async fn query(dns: SocketAddr, name: &str, qtype: &str) -> Message {
    let (msg, _) = ask(dns, name, qtype).await.unwrap_or_else(|e| panic!("{name} {qtype}: {e:#}"));
    msg
}

/// The answer section's data, as text.
fn data(msg: &Message) -> Vec<String> {
    msg.answers.iter().map(|r| r.data.to_string()).collect()
}

#[tokio::test]
async fn custom_records_answer_in_the_cluster_zone_and_in_zones_of_their_own() {
    let dir = TempDir::new("custom");
    let cluster = dir.write("cluster.yaml", CLUSTER).to_str().unwrap().to_owned();
    let records = dir.write("custom.zone", &custom("192.0.2.25")).to_str().unwrap().to_owned();
    let server = support::start(&["--cluster-file", &cluster, "--custom-records", &records]).await;
    let dns = server.dns;

    let msg = query(dns, "registry.cluster.local.", "A").await;
    assert!(msg.metadata.authoritative && msg.metadata.response_code == ResponseCode::NoError);
    assert_eq!(data(&msg), ["10.9.0.1"]);
    assert_eq!(data(&query(dns, "web.ns1.svc.cluster.local.", "A").await), ["10.0.0.1"], "the cluster too");

    let msg = query(dns, "mail.corp.example.", "A").await;
    assert!(msg.metadata.authoritative);
    assert_eq!(data(&msg), ["192.0.2.25"]);
    assert_eq!(data(&query(dns, "corp.example.", "MX").await), ["10 mail.corp.example."]);
    let txt = query(dns, "txt.corp.example.", "TXT").await;
    let strings: Vec<Vec<u8>> = txt
        .answers
        .iter()
        .flat_map(|r| match &r.data {
            RData::TXT(t) => t.txt_data.iter().map(|s| s.to_vec()).collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(strings, [b"hello world".to_vec()]);

    // A missing name of the custom zone: NXDOMAIN with that zone's SOA, authoritative.
    let nx = query(dns, "missing.corp.example.", "A").await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert!(nx.metadata.authoritative);
    let soa_owner: Vec<String> = nx
        .authorities
        .iter()
        .filter(|r| matches!(r.data, RData::SOA(_)))
        .map(|r| r.name.to_ascii())
        .collect();
    assert_eq!(soa_owner, ["corp.example."]);
    // A name in no zone we serve is still refused.
    let other = query(dns, "www.example.com.", "A").await;
    assert_eq!(other.metadata.response_code, ResponseCode::Refused);
    server.stop().await;
}

#[tokio::test]
async fn a_changed_file_is_served_and_a_bad_one_keeps_the_records_naming_its_line() {
    let dir = TempDir::new("custom-reload");
    let cluster = dir.write("cluster.yaml", CLUSTER).to_str().unwrap().to_owned();
    let records = dir.write("custom.zone", &custom("192.0.2.25")).to_str().unwrap().to_owned();
    let server = support::start(&[
        "--cluster-file",
        &cluster,
        "--custom-records",
        &records,
        "--reload-interval",
        "0.05",
    ])
    .await;
    let dns = server.dns;
    let mut status = server.reloads.status();
    assert_eq!(data(&query(dns, "mail.corp.example.", "A").await), ["192.0.2.25"]);

    // A new address and a new zone.
    dir.write("custom.zone", &format!("{}$ORIGIN other.test.\nwww A 192.0.2.80\n", custom("192.0.2.26")));
    server
        .eventually("the changed records are served", move || async move {
            data(&query(dns, "mail.corp.example.", "A").await) == ["192.0.2.26"]
        })
        .await;
    assert_eq!(data(&query(dns, "www.other.test.", "A").await), ["192.0.2.80"], "a zone added live");
    support::reloaded(&mut status, "the reload is reported", |s| s.applied >= 1).await;
    assert_eq!(status.borrow().last.changed, ["custom-records"]);

    // A bad address on line 5: refused naming the file and the line; the records stay.
    dir.write("custom.zone", &custom("192.0.2.300"));
    support::reloaded(&mut status, "the bad file is refused", |s| s.failed == 1).await;
    let error = status.borrow().last_error.clone().unwrap_or_default();
    assert!(error.starts_with("custom-records: ") && error.contains(&records), "{error}");
    assert!(error.contains("line 5: A 192.0.2.300"), "{error}");
    assert_eq!(data(&query(dns, "mail.corp.example.", "A").await), ["192.0.2.26"]);
    assert_eq!(data(&query(dns, "www.other.test.", "A").await), ["192.0.2.80"]);

    // Fixed, with the zone gone: its names are refused again.
    dir.write("custom.zone", &custom("192.0.2.27"));
    server
        .eventually("the fixed file is served", move || async move {
            data(&query(dns, "mail.corp.example.", "A").await) == ["192.0.2.27"]
        })
        .await;
    let gone = query(dns, "www.other.test.", "A").await;
    assert_eq!(gone.metadata.response_code, ResponseCode::Refused);
    server.stop().await;
}

#[test]
fn a_bad_file_at_start_fails_naming_the_file_and_the_line() {
    let dir = TempDir::new("custom-start");
    let cluster = dir.write("cluster.yaml", CLUSTER).to_str().unwrap().to_owned();
    let bad = dir.write("custom.zone", "ok.cluster.local. A 10.9.0.1\nwww.example.com. A 192.0.2.1\n");
    let bad = bad.to_str().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodedns-authority"))
        .args(["--cluster-file", &cluster, "--custom-records", bad, "--check-config"])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("binary runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("custom-records: {bad}: line 2: www.example.com. is outside")), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    let good = dir.write("good.zone", "ok.cluster.local. A 10.9.0.1\n");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_nodedns-authority"))
        .args(["--cluster-file", &cluster, "--custom-records", good.to_str().unwrap(), "--check-config"])
        .env_remove("RUST_LOG")
        .output()
        .expect("binary runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
