//! The authority over real loopback sockets: reloads, malformed input, truncation and TCP,
//! zone transfers, admin endpoints, connection limits and draining.

mod support;

use std::time::Duration;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, RecordType};
use nodedns_testsupport::TempDir;
use nodedns_testsupport::client::{self, Tcp, ask, build, tcp_raw, udp_expect_silence, udp_raw};

fn cluster(ip: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns1}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: ns1}}\nspec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}\n"
    )
}

fn a_records(msg: &Message) -> Vec<String> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

async fn metric(admin: std::net::SocketAddr, line_prefix: &str) -> f64 {
    let (_, body) = support::http_get(admin, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(line_prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn reload_applies_good_files_and_keeps_the_last_good_state_on_bad_ones() {
    let dir = TempDir::new("reload");
    let path = dir.write("cluster.yaml", &cluster("10.0.0.1")).to_str().unwrap().to_owned();
    let server = support::start(&["--cluster-file", &path, "--reload-interval", "0.05"]).await;
    let (msg, _) = ask(server.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(a_records(&msg), ["10.0.0.1"]);

    let mut generations = server.store.subscribe();
    let before = *generations.borrow_and_update();
    dir.write("cluster.yaml", &cluster("10.0.0.2"));
    tokio::time::timeout(Duration::from_secs(10), generations.wait_for(|g| *g > before))
        .await
        .unwrap()
        .unwrap();
    let (msg, _) = ask(server.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(a_records(&msg), ["10.0.0.2"]);

    // A bad file is reported and counted; answers keep coming from the last good cluster.
    let errors = metric(server.admin, "nodedns_cluster_file_reloads_total{result=\"error\"}").await;
    dir.write("cluster.yaml", &cluster("10.0.0.999"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metric(server.admin, "nodedns_cluster_file_reloads_total{result=\"error\"}").await <= errors {
        assert!(tokio::time::Instant::now() < deadline, "bad reload not counted within 10s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (msg, _) = ask(server.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(a_records(&msg), ["10.0.0.2"]);
    assert_eq!(support::http_get(server.admin, "/ready").await.0, 200, "still ready on the last good state");
    server.stop().await;
}

#[tokio::test]
async fn config_reload_changes_ttl_and_transfer_acl_and_a_bad_file_keeps_them() {
    use nodedns_common::reload::Applied;
    let dir = TempDir::new("config-reload");
    let cluster_path = dir.write("cluster.yaml", &cluster("10.0.0.1")).to_str().unwrap().to_owned();
    let config_path = dir.write("authority.yaml", "ttl: 5\n").to_str().unwrap().to_owned();
    let server = support::start(&[
        "--cluster-file",
        &cluster_path,
        "--config",
        &config_path,
        "--reload-interval",
        "0.05",
    ])
    .await;
    let ttl = |msg: &Message| msg.answers.first().map(|r| r.ttl);
    let web = "web.ns1.svc.cluster.local.";
    assert_eq!(ttl(&ask(server.dns, web, "A").await.unwrap().0), Some(5));
    let axfr = build("cluster.local.", "AXFR", 9, None).unwrap();
    let transfer = async || Message::from_vec(&tcp_raw(server.dns, &axfr.bytes).await.unwrap()).unwrap();
    assert_eq!(transfer().await.metadata.response_code, ResponseCode::Refused);

    // A new TTL rebuilds and republishes the zone; a TCP setting waits for a restart.
    let mut status = server.reloads.status();
    server
        .after_change(|| {
            dir.write("authority.yaml", "ttl: 30\ntransfer-from: [127.0.0.0/8]\ntcp-idle-timeout: 3\n")
        })
        .await;
    support::reloaded(&mut status, "the new file is applied", |s| s.applied == 1).await;
    assert_eq!(
        status.borrow().last,
        Applied { changed: vec!["ttl", "transfer-from"], restart: vec!["tcp-idle-timeout"] }
    );
    assert_eq!(ttl(&ask(server.dns, web, "A").await.unwrap().0), Some(30));
    let (nx, _) = ask(server.dns, "gone.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    let soa_minimum = nx.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(soa.minimum),
        _ => None,
    });
    assert_eq!(soa_minimum, Some(30), "negative caching follows the new TTL");
    assert_eq!(transfer().await.metadata.response_code, ResponseCode::NoError, "transfer-from applies live");

    // Bad files: an invalid value, an unknown key, broken YAML. Each is refused naming the key
    // (or the file), and the running settings stay.
    for (n, (text, named)) in
        [("ttl: 99999\n", "ttl: "), ("ttl: 30\ntll: 3\n", "tll"), ("ttl: [30\n", "config file")]
            .into_iter()
            .enumerate()
    {
        dir.write("authority.yaml", text);
        support::reloaded(&mut status, "a bad file is refused", |s| s.failed == n as u64 + 1).await;
        let error = status.borrow().last_error.clone().unwrap_or_default();
        assert!(error.contains(named), "{text:?}: {error}");
        assert_eq!(ttl(&ask(server.dns, web, "A").await.unwrap().0), Some(30), "{text:?}");
    }
    // SIGHUP's way in: a reload without a change applies nothing new.
    server.reloads.request();
    support::reloaded(&mut status, "a requested reload is tried", |s| s.failed == 4).await;
    dir.write("authority.yaml", "ttl: 30\ntransfer-from: [127.0.0.0/8]\n");
    support::reloaded(&mut status, "the file is back", |s| s.applied == 2).await;
    assert_eq!(status.borrow().last, Applied::default(), "back to what runs: nothing to apply or restart");
    assert!(metric(server.admin, "nodedns_config_reloads_total{result=\"ok\"}").await >= 2.0);
    assert!(metric(server.admin, "nodedns_config_reloads_total{result=\"error\"}").await >= 4.0);
    server.stop().await;
}

/// Raw header + question builder for malformed-input cases.
fn raw(id: u16, flags: u16, qd: u16, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend(id.to_be_bytes());
    v.extend(flags.to_be_bytes());
    v.extend(qd.to_be_bytes());
    v.extend([0, 0, 0, 0, 0, 0]);
    v.extend(body);
    v
}

#[tokio::test]
async fn malformed_input_gets_a_clear_answer_or_is_dropped() {
    let dir = TempDir::new("malformed");
    let path = dir.write("cluster.yaml", &cluster("10.0.0.1")).to_str().unwrap().to_owned();
    let server = support::start(&["--cluster-file", &path]).await;
    let q = |name: &[u8], qtype: u16, class: u16| {
        let mut b = name.to_vec();
        b.extend(qtype.to_be_bytes());
        b.extend(class.to_be_bytes());
        b
    };
    let good = q(b"\x03web\x03ns1\x03svc\x07cluster\x05local\x00", 1, 1);
    let mut long_label = vec![64u8];
    long_label.extend([b'a'; 64]);
    long_label.push(0);
    let cases: Vec<(&str, Vec<u8>, Option<ResponseCode>)> = vec![
        ("shorter than a header", vec![1, 2, 3, 4, 5], None),
        ("a response (QR set)", raw(1, 0x8000, 1, &good), None),
        ("UPDATE opcode", raw(2, 5 << 11, 1, &good), Some(ResponseCode::NotImp)),
        ("STATUS opcode", raw(3, 2 << 11, 1, &good), Some(ResponseCode::NotImp)),
        ("no question", raw(4, 0x0100, 0, &[]), Some(ResponseCode::FormErr)),
        (
            "two questions",
            raw(5, 0x0100, 2, &[good.clone(), good.clone()].concat()),
            Some(ResponseCode::FormErr),
        ),
        ("truncated question", raw(6, 0x0100, 1, &good[..10]), Some(ResponseCode::FormErr)),
        ("compression loop", raw(7, 0x0100, 1, &[0xc0, 12, 0, 1, 0, 1]), Some(ResponseCode::FormErr)),
        ("label over 63", raw(8, 0x0100, 1, &q(&long_label, 1, 1)), Some(ResponseCode::FormErr)),
        ("class CH", raw(9, 0x0100, 1, &q(b"\x07version\x04bind\x00", 16, 3)), Some(ResponseCode::Refused)),
        (
            "outside our zones",
            raw(10, 0x0100, 1, &q(b"\x07example\x03com\x00", 1, 1)),
            Some(ResponseCode::Refused),
        ),
    ];
    for (what, bytes, want) in cases {
        match want {
            None => udp_expect_silence(server.dns, &bytes, Duration::from_millis(300))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e}")),
            Some(rcode) => {
                let reply = udp_raw(server.dns, client::loopback_any(server.dns), &bytes)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                let msg =
                    Message::from_vec(&reply).unwrap_or_else(|e| panic!("{what}: reply does not parse: {e}"));
                assert_eq!(msg.metadata.response_code, rcode, "{what}");
                assert_eq!(msg.metadata.id, u16::from_be_bytes([bytes[0], bytes[1]]), "{what}: id echoed");
                assert!(
                    !msg.metadata.authoritative || rcode != ResponseCode::Refused,
                    "{what}: REFUSED is not authoritative"
                );
            }
        }
    }
    // EDNS version 1: BADVERS (RFC 6891 §6.1.3), carried in the OPT record.
    let mut edns1 = raw(11, 0x0100, 1, &good);
    edns1[11] = 1; // ARCOUNT = 1
    edns1.extend([0, 0, 41, 0x04, 0xd0, 0, 1, 0, 0, 0, 0]);
    let msg =
        Message::from_vec(&udp_raw(server.dns, client::loopback_any(server.dns), &edns1).await.unwrap())
            .unwrap();
    // hickory reads the extended code 16 back as BADSIG, which shares the number with BADVERS.
    assert_eq!(u16::from(msg.metadata.response_code), 16, "BADVERS");
    // Dropped and malformed packets are counted, and the next good query is answered.
    assert!(metric(server.admin, "nodedns_dns_dropped_total").await >= 2.0);
    assert!(metric(server.admin, "coredns_dns_responses_total{rcode=\"FORMERR\"}").await >= 5.0);
    let (msg, _) = ask(server.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(a_records(&msg), ["10.0.0.1"]);
    server.stop().await;
}

fn big_headless(n: usize) -> String {
    let mut eps = String::new();
    for i in 0..n {
        eps.push_str(&format!("- {{addresses: [10.9.{}.{}]}}\n", i / 250, i % 250 + 1));
    }
    format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns1}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: big, namespace: ns1}}\nspec: {{clusterIP: None, ports: [{{name: http, port: 80}}]}}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: big-1, namespace: ns1, labels: {{kubernetes.io/service-name: big}}}}\naddressType: IPv4\nports: [{{name: http, port: 80}}]\nendpoints:\n{eps}"
    )
}

#[tokio::test]
async fn large_answers_truncate_over_udp_and_arrive_whole_over_tcp() {
    let dir = TempDir::new("tc");
    let path = dir.write("cluster.yaml", &big_headless(100)).to_str().unwrap().to_owned();
    let server = support::start(&["--cluster-file", &path]).await;
    // Without EDNS the limit is 512 bytes; with EDNS 4096 we still cap UDP at 1232.
    for payload in [None, Some(4096)] {
        let q = build("big.ns1.svc.cluster.local.", "A", 77, payload).unwrap();
        let reply = udp_raw(server.dns, client::loopback_any(server.dns), &q.bytes).await.unwrap();
        let msg = Message::from_vec(&reply).unwrap();
        assert!(msg.metadata.truncation, "TC set for payload {payload:?}");
        assert!(reply.len() <= usize::from(payload.unwrap_or(512).min(1232)));
        assert!(msg.answers.is_empty());
        assert_eq!(msg.edns.is_some(), payload.is_some(), "OPT answered only when asked");
        let full = Message::from_vec(&tcp_raw(server.dns, &q.bytes).await.unwrap()).unwrap();
        assert!(!full.metadata.truncation);
        assert_eq!(full.answers.len(), 100);
    }
    // Pipelined queries on one connection are all answered, in order.
    let mut tcp = Tcp::connect(server.dns).await.unwrap();
    for id in 1..=3u16 {
        tcp.send(&build("big.ns1.svc.cluster.local.", "A", id, None).unwrap().bytes).await.unwrap();
    }
    for id in 1..=3u16 {
        assert_eq!(Message::from_vec(&tcp.recv().await.unwrap()).unwrap().metadata.id, id);
    }
    server.stop().await;
}

#[tokio::test]
async fn zone_transfer_only_over_tcp_and_only_to_allowed_clients() {
    let dir = TempDir::new("axfr");
    let path = dir.write("cluster.yaml", &big_headless(300)).to_str().unwrap().to_owned();
    let refused = support::start(&["--cluster-file", &path]).await;
    let q = build("cluster.local.", "AXFR", 9, None).unwrap();
    let msg = Message::from_vec(&tcp_raw(refused.dns, &q.bytes).await.unwrap()).unwrap();
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    refused.stop().await;

    let allowed = support::start(&["--cluster-file", &path, "--transfer-from", "127.0.0.0/8"]).await;
    let udp =
        Message::from_vec(&udp_raw(allowed.dns, client::loopback_any(allowed.dns), &q.bytes).await.unwrap())
            .unwrap();
    assert_eq!(udp.metadata.response_code, ResponseCode::Refused, "no AXFR over UDP");
    let mut tcp = Tcp::connect(allowed.dns).await.unwrap();
    tcp.send(&q.bytes).await.unwrap();
    let mut records = Vec::new();
    let mut messages = 0;
    loop {
        let msg = Message::from_vec(&tcp.recv().await.unwrap()).unwrap();
        messages += 1;
        assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
        records.extend(msg.answers);
        if messages > 1 && records.last().map(|r| r.record_type()) == Some(RecordType::SOA) {
            break;
        }
        assert!(messages < 100, "transfer did not end");
    }
    assert!(messages > 1, "a 300-endpoint zone spans several messages");
    assert_eq!(records[0].record_type(), RecordType::SOA);
    assert!(records.len() > 600, "A, endpoint A and SRV records: got {}", records.len());
    allowed.stop().await;
}

#[tokio::test]
async fn admin_endpoints_and_lameduck_drain() {
    let dir = TempDir::new("admin");
    let path = dir.write("cluster.yaml", &cluster("10.0.0.1")).to_str().unwrap().to_owned();
    let config_path =
        dir.write("config.yaml", &format!("cluster-file: {path}\nttl: 7\n")).to_str().unwrap().to_owned();
    let mut s = support::start(&["--config", &config_path, "--lameduck", "1.5"]).await;
    assert_eq!(support::http_get(s.admin, "/health").await, (200, "ok\n".to_owned()));
    assert_eq!(support::http_get(s.admin, "/ready").await.0, 200);
    let (msg, _) = ask(s.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(msg.answers[0].ttl, 7, "ttl from the config file");
    let (status, body) = support::http_get(s.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(body.contains("coredns_dns_requests_total{proto=\"udp\",family=\"1\",type=\"A\"}"), "{body}");
    assert!(body.contains("nodedns_zone_records"), "{body}");

    // SIGTERM path: /ready goes false at once, answers continue through the lameduck period.
    s.shutdown.cancel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while support::http_get(s.admin, "/ready").await.0 != 503 {
        assert!(tokio::time::Instant::now() < deadline, "/ready did not turn false");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (msg, _) = ask(s.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert_eq!(a_records(&msg), ["10.0.0.1"], "still answering while draining");
    let result = tokio::time::timeout(Duration::from_secs(10), &mut s.task)
        .await
        .expect("stops after lameduck")
        .unwrap();
    assert!(result.is_ok());
}

#[tokio::test]
async fn tcp_connection_cap_and_idle_timeout() {
    let dir = TempDir::new("tcpcap");
    let path = dir.write("cluster.yaml", &cluster("10.0.0.1")).to_str().unwrap().to_owned();
    let server =
        support::start(&["--cluster-file", &path, "--tcp-max-connections", "1", "--tcp-idle-timeout", "0.3"])
            .await;
    let q = build("web.ns1.svc.cluster.local.", "A", 1, None).unwrap();
    let mut first = Tcp::connect(server.dns).await.unwrap();
    first.send(&q.bytes).await.unwrap();
    first.recv().await.unwrap();
    // The second connection is over the cap: closed without an answer.
    let mut second = Tcp::connect(server.dns).await.unwrap();
    assert!(second.closed_within(Duration::from_secs(5)).await, "over-cap connection closed");
    // UDP is unaffected, and the idle first connection is closed by the server.
    ask(server.dns, "web.ns1.svc.cluster.local.", "A").await.unwrap();
    assert!(first.closed_within(Duration::from_secs(5)).await, "idle connection closed");
    // Its slot is free again.
    let mut third = Tcp::connect(server.dns).await.unwrap();
    third.send(&q.bytes).await.unwrap();
    third.recv().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn no_query_name_or_client_address_becomes_a_metric_label() {
    let dir = TempDir::new("labels");
    let path = dir.write("cluster.yaml", &cluster("10.0.0.1")).to_str().unwrap().to_owned();
    let server = support::start(&["--cluster-file", &path]).await;
    // Served, NXDOMAIN, refused (outside the zones) and malformed, from an address nothing else uses.
    let client: std::net::SocketAddr = "127.0.0.78:0".parse().unwrap();
    for (i, name) in
        ["web.ns1.svc.cluster.local.", "zzlabelprobe.ns1.svc.cluster.local.", "zzlabelprobe.example.test."]
            .iter()
            .enumerate()
    {
        let q = build(name, "A", 200 + i as u16, Some(1232)).unwrap().bytes;
        let reply = udp_raw(server.dns, client, &q).await.unwrap();
        assert_eq!(reply[..2], q[..2], "{name} answered");
    }
    let mut bad = build("zzlabelprobe.ns1.svc.cluster.local.", "A", 9, None).unwrap().bytes;
    bad[5] = 2;
    assert_eq!(udp_raw(server.dns, client, &bad).await.unwrap()[3] & 0x0f, 1, "FORMERR");
    let (status, metrics) = support::http_get(server.admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("coredns_dns_requests_total{"), "traffic was counted: {metrics}");
    for line in metrics.lines().filter(|l| !l.starts_with('#')) {
        assert!(!line.contains("zzlabelprobe"), "a query name in a metric: {line}");
        assert!(!line.contains("127.0.0.78"), "a client address in a metric: {line}");
    }
    server.stop().await;
}

#[tokio::test]
async fn endpoint_pod_names_over_dns_by_flag_and_by_reload() {
    use nodedns_common::reload::Applied;
    let cluster = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: pg, namespace: ns1}\nspec: {clusterIP: None}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: pg-1, namespace: ns1, labels: {kubernetes.io/service-name: pg}}\naddressType: IPv4\nendpoints:\n- {addresses: [10.2.0.1], targetRef: {kind: Pod, name: pg-7d9f8-abcde, namespace: ns1}}\n";
    let dir = TempDir::new("endpoint-pod-names");
    let cluster_path = dir.write("cluster.yaml", cluster).to_str().unwrap().to_owned();
    let config_path = dir.write("authority.yaml", "").to_str().unwrap().to_owned();
    let (by_pod, by_ip) = ("pg-7d9f8-abcde.pg.ns1.svc.cluster.local.", "10-2-0-1.pg.ns1.svc.cluster.local.");

    let flagged = support::start(&["--cluster-file", &cluster_path, "--endpoint-pod-names"]).await;
    assert_eq!(a_records(&ask(flagged.dns, by_pod, "A").await.unwrap().0), ["10.2.0.1"]);
    let (nx, _) = ask(flagged.dns, by_ip, "A").await.unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    flagged.stop().await;

    let server = support::start(&[
        "--cluster-file",
        &cluster_path,
        "--config",
        &config_path,
        "--reload-interval",
        "0.05",
    ])
    .await;
    assert_eq!(a_records(&ask(server.dns, by_ip, "A").await.unwrap().0), ["10.2.0.1"], "off by default");
    let mut status = server.reloads.status();
    server.after_change(|| dir.write("authority.yaml", "endpoint-pod-names: true\n")).await;
    support::reloaded(&mut status, "the new file is applied", |s| s.applied == 1).await;
    assert_eq!(status.borrow().last, Applied { changed: vec!["endpoint-pod-names"], restart: vec![] });
    assert_eq!(a_records(&ask(server.dns, by_pod, "A").await.unwrap().0), ["10.2.0.1"], "applied live");
    server.stop().await;
}
