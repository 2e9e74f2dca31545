//! The agents' gRPC service over real loopback HTTP/2: Resolve answers exactly what the DNS
//! listener answers, many queries share one stream, and the statuses mean what the contract says.

mod support;

use std::collections::HashMap;

use nodedns_proto::v1::authority_client::AuthorityClient;
use nodedns_proto::v1::{ResolveRequest, ResolveResponse, ResolveStatus, Transport};
use nodedns_testsupport::client::{self, build, udp_raw};
use nodedns_testsupport::corpus::Corpus;
use nodedns_testsupport::{TempDir, shared_dir};

async fn resolve_all(
    addr: std::net::SocketAddr,
    requests: Vec<ResolveRequest>,
) -> (HashMap<u64, ResolveResponse>, Option<String>) {
    let mut client = AuthorityClient::connect(format!("http://{addr}")).await.expect("gRPC connects");
    let n = requests.len();
    let response = client.resolve(tokio_stream::iter(requests)).await.expect("Resolve opens");
    let limit = response
        .metadata()
        .get(nodedns_proto::MAX_IN_FLIGHT_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    let mut stream = response.into_inner();
    let mut out = HashMap::new();
    while out.len() < n {
        let next = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("answers within 10s");
        let r = next.expect("stream healthy").expect("stream open until every answer");
        assert!(out.insert(r.id, r).is_none(), "one answer per id");
    }
    (out, limit)
}

fn request(id: u64, query: Vec<u8>) -> ResolveRequest {
    ResolveRequest { id, query, client_ip: vec![127, 0, 0, 1], transport: Transport::Udp as i32 }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_answers_byte_for_byte_what_the_dns_path_answers() {
    let cluster = shared_dir().join("conformance/cluster.yaml");
    // The DNS port turns multi-record answers round-robin per response (Resolve leaves that to
    // the agent, per client): in the zone's order, the bytes are the same.
    let s = support::start(&["--cluster-file", cluster.to_str().unwrap(), "--no-rotate"]).await;
    let corpus = Corpus::load(&shared_dir().join("conformance/cases.yaml")).unwrap();
    let queries: Vec<Vec<u8>> = corpus
        .cases
        .iter()
        .enumerate()
        .map(|(i, c)| build(&c.qname, &c.qtype, 7000 + i as u16, Some(1232)).unwrap().bytes)
        .collect();
    let requests = queries.iter().enumerate().map(|(i, q)| request(i as u64, q.clone())).collect();
    let (answers, limit) = resolve_all(s.grpc, requests).await;
    assert_eq!(limit.as_deref(), Some("1024"), "the in-flight limit is announced");
    for (i, q) in queries.iter().enumerate() {
        let over_grpc = &answers[&(i as u64)];
        assert_eq!(over_grpc.status, ResolveStatus::Ok as i32, "{}", corpus.cases[i].id);
        let over_udp = udp_raw(s.dns, client::loopback_any(s.dns), q).await.unwrap();
        assert_eq!(over_grpc.response, over_udp, "{}: same bytes as the DNS listener", corpus.cases[i].id);
        assert!(over_grpc.revision > 0);
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_stream_carries_thousands_of_queries_and_garbage_is_dropped() {
    let cluster = shared_dir().join("conformance/cluster.yaml");
    let s = support::start(&["--cluster-file", cluster.to_str().unwrap()]).await;
    let q = build("svc1.testns.svc.cluster.local.", "A", 1, None).unwrap().bytes;
    let mut requests: Vec<ResolveRequest> = (0..5000).map(|i| request(i, q.clone())).collect();
    requests.push(request(99_999, vec![1, 2, 3]));
    let (answers, _) = resolve_all(s.grpc, requests).await;
    assert_eq!(answers.len(), 5001);
    assert!(
        answers
            .iter()
            .filter(|(id, _)| **id < 5000)
            .all(|(_, r)| r.status == ResolveStatus::Ok as i32 && !r.response.is_empty())
    );
    assert_eq!(answers[&99_999].status, ResolveStatus::Dropped as i32);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_until_the_cluster_is_listed() {
    let api = nodedns_kubesim::FakeApi::start().await.unwrap();
    api.set_down(true);
    let dir = TempDir::new("grpc");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig());
    let s = support::start_unsynced(&["--kubeconfig", kubeconfig.to_str().unwrap()]).await;
    let q = build("svc1.testns.svc.cluster.local.", "A", 1, None).unwrap().bytes;
    let (answers, _) = resolve_all(s.grpc, vec![request(1, q)]).await;
    assert_eq!(answers[&1].status, ResolveStatus::NotReady as i32, "an agent can serve stale instead");
    assert!(answers[&1].response.is_empty());
    s.stop().await;
}
