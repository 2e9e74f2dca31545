//! Who may transfer the zone: `--transfer-from` CIDRs over the DNS port, and the client address an
//! agent passes over Resolve (a pod's transfer through its agent is judged by the pod's address).
//! No ACL at all and an allowed 127.0.0.0/8 are in `server.rs`
//! (`zone_transfer_only_over_tcp_and_only_to_allowed_clients`).

mod support;

use std::net::SocketAddr;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use nodedns_proto::v1::authority_client::AuthorityClient;
use nodedns_proto::v1::{ResolveRequest, ResolveStatus, Transport};
use nodedns_testsupport::TempDir;
use nodedns_testsupport::client::build;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CLUSTER: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: ns1}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: ns1}\nspec: {clusterIP: 10.0.0.1, ports: [{name: http, port: 80}]}\n";

/// The first message of an AXFR sent over TCP from `from`.
async fn axfr_from(server: SocketAddr, from: &str) -> Message {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{from}:0").parse().unwrap()).unwrap();
    let mut stream = socket.connect(server).await.unwrap();
    let q = build("cluster.local.", "AXFR", 9, None).unwrap().bytes;
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(&q);
    stream.write_all(&framed).await.unwrap();
    let read = async {
        let len = stream.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        stream.read_exact(&mut buf).await.map(|_| buf)
    };
    let buf = tokio::time::timeout(std::time::Duration::from_secs(5), read).await.unwrap().unwrap();
    Message::from_vec(&buf).unwrap()
}

#[tokio::test]
async fn zone_transfer_refused_outside_the_configured_cidrs_also_when_asked_through_resolve() {
    let dir = TempDir::new("axfr-acl");
    let path = dir.write("cluster.yaml", CLUSTER).to_str().unwrap().to_owned();
    let s = support::start(&["--cluster-file", &path, "--transfer-from", "127.0.0.2/32"]).await;
    let outside = axfr_from(s.dns, "127.0.0.1").await;
    assert_eq!(outside.metadata.response_code, ResponseCode::Refused, "127.0.0.1 is outside 127.0.0.2/32");
    assert!(outside.answers.is_empty());
    let inside = axfr_from(s.dns, "127.0.0.2").await;
    assert_eq!(inside.metadata.response_code, ResponseCode::NoError);
    assert_eq!(inside.answers.first().map(|r| r.record_type()), Some(RecordType::SOA));

    // Over Resolve the ACL is applied to the client address the agent passes (the pod's).
    let mut client = AuthorityClient::connect(format!("http://{}", s.grpc)).await.unwrap();
    let q = build("cluster.local.", "AXFR", 9, None).unwrap().bytes;
    let requests = [(1, [127, 0, 0, 1]), (2, [127, 0, 0, 2])].map(|(id, ip)| ResolveRequest {
        id,
        query: q.clone(),
        client_ip: ip.to_vec(),
        transport: Transport::Tcp as i32,
    });
    let mut answers = client.resolve(tokio_stream::iter(requests)).await.unwrap().into_inner();
    let mut rcodes = std::collections::BTreeMap::new();
    while rcodes.len() < 2 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), answers.message())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(r.status, ResolveStatus::Ok as i32);
        rcodes.insert(r.id, Message::from_vec(&r.response).unwrap().metadata.response_code);
    }
    assert_eq!(rcodes[&1], ResponseCode::Refused, "a pod outside the CIDRs, through its agent");
    assert_eq!(rcodes[&2], ResponseCode::NoError, "a pod inside them");
    s.stop().await;
}

/// One Resolve over gRPC to `url` with `tls`; `Ok` when the authority answered it.
async fn resolve_over(url: String, tls: Option<tonic::transport::ClientTlsConfig>) -> Result<(), String> {
    let mut endpoint = tonic::transport::Endpoint::from_shared(url).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("connect: {e:?}"))?;
    let query = build("web.ns1.svc.cluster.local.", "A", 5, None).unwrap().bytes;
    let request =
        ResolveRequest { id: 1, query, client_ip: vec![127, 0, 0, 1], transport: Transport::Udp as i32 };
    let mut answers = AuthorityClient::new(channel)
        .resolve(tokio_stream::iter([request]))
        .await
        .map_err(|e| format!("Resolve: {e}"))?
        .into_inner();
    match answers.message().await {
        Ok(Some(r)) if r.status == ResolveStatus::Ok as i32 => Ok(()),
        other => Err(format!("no answer: {other:?}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_flags_grpc_serves_only_agents_holding_a_certificate_from_the_client_ca() {
    use nodedns_testsupport::tls::TestCa;
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};

    let dir = TempDir::new("authority-mtls");
    let ca = TestCa::new(&dir, "cluster");
    let server = ca.server("authority", &["nodedns-authority.kube-system.svc"]);
    let agent = ca.client("agent", "node-a");
    let cluster = dir.write("cluster.yaml", CLUSTER);
    let path = |p: &std::path::Path| p.to_str().unwrap().to_owned();
    let s = support::start(&[
        "--cluster-file",
        &path(&cluster),
        "--tls-cert",
        &path(&server.cert),
        "--tls-key",
        &path(&server.key),
        "--tls-client-ca",
        &path(&ca.cert),
    ])
    .await;
    let tls = |identity: bool| {
        let pem = |p: &std::path::Path| std::fs::read(p).unwrap();
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(pem(&ca.cert)))
            .domain_name("nodedns-authority.kube-system.svc");
        if identity { tls.identity(Identity::from_pem(pem(&agent.cert), pem(&agent.key))) } else { tls }
    };
    let url = format!("https://{}", s.grpc);
    resolve_over(url.clone(), Some(tls(true))).await.expect("an agent with its certificate is answered");
    assert!(resolve_over(url, Some(tls(false))).await.is_err(), "answered a client without a certificate");
    assert!(resolve_over(format!("http://{}", s.grpc), None).await.is_err(), "answered a plain-text client");
    s.stop().await;
}
