//! Subscribe over real loopback gRPC, fed by the real `kube` watcher against nodedns-kubesim: a
//! node's snapshot and deltas hold only its pods, every kind of cluster change sends a notice
//! naming what changed, a resumed subscription catches up consistently, and shutdown tells agents
//! to move.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use nodedns_kubesim::Kind;
use nodedns_proto::v1::authority_client::AuthorityClient;
use nodedns_proto::v1::subscribe_response::Event;
use nodedns_proto::v1::{
    NodeSearch, PodEntry, ResolveRequest, ResolveStatus, SubscribeRequest, SubscribeResponse, Transport,
};
use nodedns_testsupport::client::build;
use nodedns_testsupport::shared_dir;
use serde_json::{Value, json};
use tonic::Streaming;

async fn subscribe(
    addr: SocketAddr,
    node: &str,
    resume_from: u64,
) -> Result<Streaming<SubscribeResponse>, tonic::Status> {
    let mut client = AuthorityClient::connect(format!("http://{addr}")).await.expect("gRPC connects");
    let request = SubscribeRequest { node_name: node.to_owned(), resume_from };
    client.subscribe(request).await.map(tonic::Response::into_inner)
}

async fn next(stream: &mut Streaming<SubscribeResponse>) -> SubscribeResponse {
    tokio::time::timeout(Duration::from_secs(20), stream.message())
        .await
        .expect("a message within 20s")
        .expect("stream healthy")
        .expect("stream open")
}

/// What an agent keeps from its subscription.
#[derive(Default, Debug, PartialEq)]
struct Agent {
    revision: u64,
    pods: BTreeMap<Vec<u8>, PodEntry>,
    zones: Vec<String>,
    /// Everything notified since the last `take`.
    names: BTreeSet<String>,
    subtrees: BTreeSet<String>,
    snapshots: usize,
}

impl Agent {
    fn apply(&mut self, msg: SubscribeResponse) {
        assert!(msg.revision >= self.revision || matches!(msg.event, Some(Event::Snapshot(_))));
        self.revision = msg.revision;
        match msg.event.expect("every message carries an event") {
            Event::Snapshot(s) => {
                self.snapshots += 1;
                self.pods = s.pods.into_iter().map(|p| (p.ip.clone(), p)).collect();
                self.zones = s.zones;
                assert_eq!(s.cluster_domain, "cluster.local.");
                assert_eq!(s.max_in_flight, 1024);
            }
            Event::Update(u) => {
                for ip in u.removed {
                    self.pods.remove(&ip);
                }
                for p in u.upserted {
                    self.pods.insert(p.ip.clone(), p);
                }
                if !u.zones.is_empty() {
                    self.zones = u.zones;
                }
                self.names.extend(u.names);
                self.subtrees.extend(u.subtrees);
            }
            Event::Draining(_) => panic!("unexpected Draining"),
        }
    }

    /// Reads messages until `done` holds for the agent.
    async fn until(
        &mut self,
        stream: &mut Streaming<SubscribeResponse>,
        what: &str,
        done: impl Fn(&Agent) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(self) {
            let msg = tokio::time::timeout_at(deadline, stream.message())
                .await
                .unwrap_or_else(|_| panic!("{what}: not within 20s; agent has {self:#?}"))
                .expect("stream healthy")
                .expect("stream open");
            self.apply(msg);
        }
    }

    fn notified(&self, name: &str) -> bool {
        self.names.contains(name)
    }

    fn take(&mut self) {
        self.names.clear();
        self.subtrees.clear();
    }

    fn ips(&self) -> BTreeSet<IpAddr> {
        self.pods.keys().map(|b| ip(b)).collect()
    }
}

fn ip(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).unwrap()),
        _ => IpAddr::from(<[u8; 16]>::try_from(bytes).unwrap()),
    }
}

fn pod(ns: &str, name: &str, node: &str, ip: &str, spec: Value) -> Value {
    let mut spec_obj = json!({"nodeName": node, "containers": [{"name": "c", "image": "x"}]});
    if let (Some(base), Some(extra)) = (spec_obj.as_object_mut(), spec.as_object()) {
        base.extend(extra.clone());
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": spec_obj, "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn service(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}})
}

/// Pod addresses on `node` in the conformance fixture, read independently of the feed.
fn fixture_ips(node: &str) -> BTreeSet<IpAddr> {
    let text = std::fs::read_to_string(shared_dir().join("conformance/cluster.yaml")).unwrap();
    let objects = nodedns_zone::file::parse_cluster(&text).expect("fixture parses").objects;
    let state = nodedns_zone::model::ClusterState::from_objects(objects);
    state
        .pods
        .values()
        .filter(|p| p.node_name.as_deref() == Some(node) && p.is_present())
        .flat_map(|p| p.ips.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_their_node_and_name_every_change() {
    let c = support::cluster().await;
    let s = support::start(&["--kubeconfig", &c.kubeconfig]).await;
    assert!(c.api.wait_open_watches(4, Duration::from_secs(20)).await, "one watch per kind");
    let mut stream_a = subscribe(s.grpc, "node-a", 0).await.expect("Subscribe opens");
    let mut stream_b = subscribe(s.grpc, "node-z", 0).await.expect("Subscribe opens");
    let (mut a, mut b) = (Agent::default(), Agent::default());
    a.apply(next(&mut stream_a).await);
    b.apply(next(&mut stream_b).await);
    assert_eq!((a.snapshots, b.snapshots), (1, 1), "a subscription starts with a snapshot");
    let want = fixture_ips("node-a");
    assert!(want.len() > 5);
    assert_eq!(a.ips(), want, "node-a's snapshot holds exactly its pods");
    assert!(b.pods.is_empty(), "node-z has no pods yet");
    assert!(a.zones.contains(&"cluster.local.".to_owned()), "{:?}", a.zones);

    // A pod on node-z: its entry reaches node-z only, with the resolver settings it really uses;
    // both agents get the notice for its pod record.
    let spec =
        json!({"dnsConfig": {"searches": ["corp.example"], "options": [{"name": "ndots", "value": "2"}]}});
    c.api.apply(pod("testns", "client-1", "node-z", "10.240.0.99", spec));
    let pod_name = "10-240-0-99.testns.pod.cluster.local.";
    b.until(&mut stream_b, "node-z gets the pod", |b| !b.pods.is_empty() && b.notified(pod_name)).await;
    let entry = b.pods.values().next().unwrap();
    assert_eq!(ip(&entry.ip), "10.240.0.99".parse::<IpAddr>().unwrap());
    assert_eq!((entry.namespace.as_str(), entry.name.as_str()), ("testns", "client-1"));
    assert_eq!(
        entry.search,
        ["testns.svc.cluster.local", "svc.cluster.local", "cluster.local", "corp.example"],
        "ClusterFirst: the cluster's three, then dnsConfig"
    );
    assert_eq!(entry.node_search, NodeSearch::After as i32);
    assert_eq!(entry.ndots, Some(2), "dnsConfig ndots overrides 5");
    assert!(!entry.host_network && !entry.shared);
    a.until(&mut stream_a, "node-a gets the notice", |a| a.notified(pod_name)).await;
    assert_eq!(a.ips(), want, "node-a's table is untouched by node-z's pod");

    // A hostNetwork pod with dnsPolicy Default uses the node's resolv.conf.
    let spec = json!({"hostNetwork": true, "dnsPolicy": "Default"});
    c.api.apply(pod("kube-system", "agent", "node-z", "192.0.2.10", spec));
    b.until(&mut stream_b, "hostNetwork pod", |b| b.pods.len() == 2).await;
    let host = b.pods.values().find(|p| p.name == "agent").unwrap();
    assert!(host.host_network && host.search.is_empty() && host.ndots.is_none());
    assert_eq!(host.node_search, NodeSearch::Before as i32);

    // Pod deleted: the address leaves node-z's table, and its record is notified.
    a.take();
    b.take();
    c.api.delete(Kind::Pod, "testns", "client-1");
    b.until(&mut stream_b, "pod removal", |b| b.pods.len() == 1 && b.notified(pod_name)).await;

    // Services: created, changed, deleted; every agent hears, with the PTR of a covered address.
    a.take();
    c.api.apply(service("testns", "fresh", "10.0.9.1"));
    a.until(&mut stream_a, "service created", |a| a.notified("fresh.testns.svc.cluster.local.")).await;
    a.take();
    c.api.apply(service("testns", "fresh", "10.0.9.2"));
    a.until(&mut stream_a, "service changed", |a| a.notified("fresh.testns.svc.cluster.local.")).await;
    a.take();
    c.api.delete(Kind::Service, "testns", "fresh");
    a.until(&mut stream_a, "service deleted", |a| a.notified("fresh.testns.svc.cluster.local.")).await;

    // EndpointSlices: a headless service's endpoint turns ready.
    a.take();
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "hdls-notready-w2b7t", "namespace": "testns", "labels": {"kubernetes.io/service-name": "hdls-notready"}},
        "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
        "endpoints": [{"addresses": ["172.0.0.21"], "conditions": {"ready": true}}]});
    c.api.apply(slice);
    a.until(&mut stream_a, "slice change", |a| {
        a.notified("hdls-notready.testns.svc.cluster.local.")
            && a.notified("_http._tcp.hdls-notready.testns.svc.cluster.local.")
    })
    .await;

    // Namespaces: a new one exists under svc and pod.
    a.take();
    c.api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "brandnew"}}));
    a.until(&mut stream_a, "namespace created", |a| {
        a.notified("brandnew.svc.cluster.local.") && a.notified("brandnew.pod.cluster.local.")
    })
    .await;
    a.take();
    c.api.delete(Kind::Namespace, "", "brandnew");
    a.until(&mut stream_a, "namespace deleted", |a| a.notified("brandnew.svc.cluster.local.")).await;

    // A change that alters no answer (a pod's label) sends nothing; the next real change is
    // the next message, carrying only its own names.
    a.take();
    let mut relabelled = pod(
        "kube-system",
        "agent",
        "node-z",
        "192.0.2.10",
        json!({"hostNetwork": true, "dnsPolicy": "Default"}),
    );
    relabelled["metadata"]["labels"] = json!({"x": "y"});
    s.after_change(|| c.api.apply(relabelled)).await;
    c.api.apply(service("testns", "later", "10.0.9.3"));
    a.apply(next(&mut stream_a).await);
    assert!(a.notified("later.testns.svc.cluster.local."), "{a:#?}");

    let (_, metrics) = support::http_get(s.admin, "/metrics").await;
    // Other tests of this process share the recorder: at least our two agents are connected.
    let connected = metrics
        .lines()
        .find_map(|l| l.strip_prefix("nodedns_grpc_streams{rpc=\"Subscribe\"} "))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(connected.is_some_and(|n| n >= 2.0), "{connected:?}");
    for want in [
        "nodedns_grpc_requests_total{rpc=\"Subscribe\",status=\"snapshot\"}",
        "nodedns_grpc_notices_sent_total",
        "nodedns_grpc_subscribe_lag_seconds_count",
    ] {
        assert!(metrics.contains(want), "{want} in {metrics}");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_subscription_catches_up_to_a_consistent_state() {
    let c = support::cluster().await;
    let s = support::start(&["--kubeconfig", &c.kubeconfig]).await;
    assert!(c.api.wait_open_watches(4, Duration::from_secs(20)).await);
    let mut stream = subscribe(s.grpc, "node-a", 0).await.unwrap();
    let mut agent = Agent::default();
    agent.apply(next(&mut stream).await);
    let before = agent.ips();
    drop(stream);

    // While the agent is away: one of its pods goes, another arrives, a service appears.
    let gone = *before.iter().next().unwrap();
    let gone_pod = s
        .store
        .node_snapshot("node-a")
        .pods
        .iter()
        .find(|p| p.ip == gone)
        .map(|p| (p.namespace.clone(), p.name.clone()))
        .unwrap();
    s.after_change(|| c.api.delete(Kind::Pod, &gone_pod.0, &gone_pod.1)).await;
    s.after_change(|| c.api.apply(pod("testns", "new-1", "node-a", "10.240.1.5", json!({})))).await;
    s.after_change(|| c.api.apply(service("testns", "while-away", "10.0.9.7"))).await;

    let mut stream = subscribe(s.grpc, "node-a", agent.revision).await.unwrap();
    agent.apply(next(&mut stream).await);
    assert_eq!(agent.snapshots, 1, "the missed changes, not a snapshot");
    assert!(agent.notified("while-away.testns.svc.cluster.local."), "{agent:#?}");
    let mut want = before.clone();
    want.remove(&gone);
    want.insert("10.240.1.5".parse().unwrap());
    assert_eq!(agent.ips(), want);
    // The same as a fresh subscription sees.
    let mut fresh = Agent::default();
    fresh.apply(next(&mut subscribe(s.grpc, "node-a", 0).await.unwrap()).await);
    assert_eq!((&fresh.pods, fresh.revision), (&agent.pods, agent.revision));

    // Already current: an empty update at the same revision.
    let mut stream = subscribe(s.grpc, "node-a", agent.revision).await.unwrap();
    let msg = next(&mut stream).await;
    assert_eq!(msg.revision, agent.revision);
    assert!(matches!(msg.event, Some(Event::Update(ref u)) if u.upserted.is_empty() && u.names.is_empty()));

    // A revision this instance never issued (another replica's, an earlier run's): a snapshot.
    let mut stream = subscribe(s.grpc, "node-a", agent.revision ^ (1 << 60)).await.unwrap();
    let msg = next(&mut stream).await;
    assert!(matches!(msg.event, Some(Event::Snapshot(_))));
    agent.apply(msg);
    assert_eq!(agent.pods, fresh.pods);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_and_draining_are_explicit() {
    let c = support::cluster().await;
    c.api.set_down(true);
    let s = support::start_unsynced(&["--kubeconfig", &c.kubeconfig, "--lameduck", "1"]).await;
    let err = subscribe(s.grpc, "node-a", 0).await.expect_err("refused before the first list");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().starts_with("not ready"), "{err:?}");
    let err = subscribe(s.grpc, "", 0).await.expect_err("a node name is required");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);

    c.api.set_down(false);
    s.eventually("synced", || async { s.store.is_synced() }).await;
    let mut stream = subscribe(s.grpc, "node-a", 0).await.expect("served once synced");
    assert!(matches!(next(&mut stream).await.event, Some(Event::Snapshot(_))));

    // Shutdown: the subscriber is told to move within the lameduck period, new subscriptions
    // and queries are turned away, and the stream ends when the process stops.
    s.shutdown.cancel();
    let msg = next(&mut stream).await;
    assert!(matches!(msg.event, Some(Event::Draining(ref d)) if d.seconds_left == 1), "{msg:?}");
    let err = subscribe(s.grpc, "node-a", 0).await.expect_err("refused while draining");
    assert_eq!(err.code(), tonic::Code::Unavailable);
    assert!(err.message().starts_with("draining"), "{err:?}");
    let mut client = AuthorityClient::connect(format!("http://{}", s.grpc)).await.unwrap();
    let query = build("svc1.testns.svc.cluster.local.", "A", 1, None).unwrap().bytes;
    let request =
        ResolveRequest { id: 1, query, client_ip: vec![127, 0, 0, 1], transport: Transport::Udp as i32 };
    let mut answers = client.resolve(tokio_stream::iter(vec![request])).await.unwrap().into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    assert_eq!(answer.status, ResolveStatus::Draining as i32);
    let end =
        tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("ends after lameduck");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    let result = s.task.await.expect("authority task panicked");
    assert!(result.is_ok());
}
