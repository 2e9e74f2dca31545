//! The Kubernetes API source end to end: the real `kube` client and watcher over HTTP against
//! nodedns-kubesim, a fake API server that speaks list/watch (resourceVersion, bookmarks, 410).

mod support;

use std::time::Duration;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RData;
use nodedns_kubesim::Kind;
use nodedns_testsupport::client::ask;
use serde_json::{Value, json};

async fn answer(s: &support::Running, name: &str, qtype: &str) -> (ResponseCode, Vec<String>) {
    let (msg, _) = ask(s.dns, name, qtype).await.unwrap();
    let data = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            RData::CNAME(c) => Some(c.0.to_string()),
            _ => None,
        })
        .collect();
    (msg.metadata.response_code, data)
}

fn service(ns: &str, name: &str, ip: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}})
}

fn pod(ns: &str, name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
           "spec": {"nodeName": "node-b", "containers": [{"name": "c", "image": "x"}]},
           "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn notready_slice(ready: bool) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": "hdls-notready-w2b7t", "namespace": "testns", "labels": {"kubernetes.io/service-name": "hdls-notready"}},
           "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 80}],
           "endpoints": [{"addresses": ["172.0.0.21"], "conditions": {"ready": ready}}]})
}

const OK: ResponseCode = ResponseCode::NoError;
const NX: ResponseCode = ResponseCode::NXDomain;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_then_every_kind_of_change_reaches_answers() {
    let c = support::cluster().await;
    let s = support::start(&["--kubeconfig", &c.kubeconfig]).await;
    assert_eq!(support::http_get(s.admin, "/ready").await.0, 200);
    assert_eq!(answer(&s, "svc1.testns.svc.cluster.local.", "A").await, (OK, vec!["10.0.0.1".into()]));
    assert!(c.api.wait_open_watches(4, Duration::from_secs(20)).await, "one watch per kind");

    // Services: create, update, delete.
    s.after_change(|| c.api.apply(service("testns", "fresh", "10.0.9.1", json!({})))).await;
    assert_eq!(answer(&s, "fresh.testns.svc.cluster.local.", "A").await, (OK, vec!["10.0.9.1".into()]));
    s.after_change(|| c.api.apply(service("testns", "fresh", "10.0.9.2", json!({})))).await;
    assert_eq!(answer(&s, "fresh.testns.svc.cluster.local.", "A").await, (OK, vec!["10.0.9.2".into()]));
    s.after_change(|| c.api.delete(Kind::Service, "testns", "fresh")).await;
    assert_eq!(answer(&s, "fresh.testns.svc.cluster.local.", "A").await.0, NX);

    // EndpointSlices: a headless service appears when its endpoint turns ready, and goes again.
    assert_eq!(answer(&s, "hdls-notready.testns.svc.cluster.local.", "A").await.0, NX);
    s.after_change(|| c.api.apply(notready_slice(true))).await;
    assert_eq!(
        answer(&s, "hdls-notready.testns.svc.cluster.local.", "A").await,
        (OK, vec!["172.0.0.21".into()])
    );
    s.after_change(|| c.api.apply(notready_slice(false))).await;
    assert_eq!(answer(&s, "hdls-notready.testns.svc.cluster.local.", "A").await.0, NX);
    // A new slice for a headless service that had none.
    assert_eq!(answer(&s, "hdls-empty.testns.svc.cluster.local.", "A").await.0, NX);
    let slice = json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "hdls-empty-1", "namespace": "testns", "labels": {"kubernetes.io/service-name": "hdls-empty"}},
        "addressType": "IPv4", "endpoints": [{"addresses": ["172.0.0.70"]}]});
    s.after_change(|| c.api.apply(slice)).await;
    assert_eq!(
        answer(&s, "hdls-empty.testns.svc.cluster.local.", "A").await,
        (OK, vec!["172.0.0.70".into()])
    );
    s.after_change(|| c.api.delete(Kind::EndpointSlice, "testns", "svc1-6x2mq")).await;
    assert_eq!(
        answer(&s, "ep1a.svc1.testns.svc.cluster.local.", "A").await.0,
        NX,
        "endpoint names go with the slice"
    );

    // Namespaces.
    assert_eq!(answer(&s, "brandnew.svc.cluster.local.", "A").await.0, NX);
    s.after_change(|| {
        c.api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "brandnew"}}))
    })
    .await;
    assert_eq!(
        answer(&s, "brandnew.svc.cluster.local.", "A").await,
        (OK, vec![]),
        "an empty namespace is NODATA"
    );
    s.after_change(|| c.api.delete(Kind::Namespace, "", "brandnew")).await;
    assert_eq!(answer(&s, "brandnew.svc.cluster.local.", "A").await.0, NX);

    // Pods under `pods verified`, including an address reused in another namespace.
    s.after_change(|| c.api.apply(pod("podns", "p1", "10.240.0.99"))).await;
    assert_eq!(
        answer(&s, "10-240-0-99.podns.pod.cluster.local.", "A").await,
        (OK, vec!["10.240.0.99".into()])
    );
    c.api.delete(Kind::Pod, "podns", "p1");
    c.api.apply(pod("testns", "p2", "10.240.0.99"));
    s.eventually("the reused pod IP shows in its new namespace", || async {
        answer(&s, "10-240-0-99.testns.pod.cluster.local.", "A").await.0 == OK
    })
    .await;
    assert_eq!(
        answer(&s, "10-240-0-99.podns.pod.cluster.local.", "A").await.0,
        NX,
        "gone from the old namespace"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missed_history_relists_after_410_gone() {
    let c = support::cluster().await;
    let s = support::start(&["--kubeconfig", &c.kubeconfig]).await;
    let lists = c.api.list_requests();
    // While the watches are down a change happens and the history is compacted past it: the
    // watchers come back with an old resourceVersion, get 410 Gone, and must list again.
    c.api.set_down(true);
    c.api.apply(service("testns", "missed", "10.0.9.9", json!({})));
    c.api.compact();
    c.api.set_down(false);
    s.eventually("the relist brings the missed service", || async {
        answer(&s, "missed.testns.svc.cluster.local.", "A").await.0 == OK
    })
    .await;
    assert!(c.api.list_requests() > lists, "a relist happened");
    assert_eq!(
        answer(&s, "svc1.testns.svc.cluster.local.", "A").await,
        (OK, vec!["10.0.0.1".into()]),
        "the rest is intact"
    );
    let (_, metrics) = support::http_get(s.admin, "/metrics").await;
    assert!(
        metrics.lines().any(|l| l.starts_with("nodedns_kube_watch_restarts_total{kind=\"Service\"}")),
        "{metrics}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_at_start_gates_readiness_and_answers_servfail_not_nxdomain() {
    let c = support::cluster().await;
    c.api.set_down(true);
    let s = support::start_unsynced(&["--kubeconfig", &c.kubeconfig]).await;
    // Nothing listed yet: not ready, and cluster names are unknown (SERVFAIL), not absent.
    assert_eq!(support::http_get(s.admin, "/ready").await.0, 503);
    assert_eq!(answer(&s, "svc1.testns.svc.cluster.local.", "A").await.0, ResponseCode::ServFail);
    assert_eq!(answer(&s, "example.com.", "A").await.0, ResponseCode::Refused);
    c.api.set_down(false);
    s.eventually("ready once the API is back", || async {
        support::http_get(s.admin, "/ready").await.0 == 200
    })
    .await;
    assert_eq!(answer(&s, "svc1.testns.svc.cluster.local.", "A").await, (OK, vec!["10.0.0.1".into()]));

    // Down again later: the last good state keeps serving and readiness holds.
    c.api.set_down(true);
    assert_eq!(answer(&s, "svc1.testns.svc.cluster.local.", "A").await, (OK, vec!["10.0.0.1".into()]));
    assert_eq!(support::http_get(s.admin, "/ready").await.0, 200);
    // Back: changes flow again.
    c.api.set_down(false);
    c.api.apply(service("testns", "after", "10.0.9.3", json!({})));
    s.eventually("changes flow after the outage", || async {
        answer(&s, "after.testns.svc.cluster.local.", "A").await.0 == OK
    })
    .await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_and_label_filters() {
    let c = support::cluster().await;
    c.api.apply(service("testns", "internal", "10.0.9.4", json!({"tier": "internal"})));
    let s = support::start(&[
        "--kubeconfig",
        &c.kubeconfig,
        "--namespace",
        "testns",
        "--label-selector",
        "tier!=internal",
    ])
    .await;
    assert_eq!(answer(&s, "svc1.testns.svc.cluster.local.", "A").await, (OK, vec!["10.0.0.1".into()]));
    assert_eq!(
        answer(&s, "svc1.podns.svc.cluster.local.", "A").await.0,
        NX,
        "other namespaces are filtered out"
    );
    assert_eq!(answer(&s, "podns.svc.cluster.local.", "A").await.0, NX);
    assert_eq!(answer(&s, "internal.testns.svc.cluster.local.", "A").await.0, NX, "label selector applies");
    assert!(
        c.api.wait_open_watches(4, Duration::from_secs(20)).await,
        "Namespaces plus three kinds in one namespace"
    );
    s.stop().await;
}
