//! `nodedns-load watch-scale`: the Kubernetes API load cluster DNS puts on the API server as nodes
//! grow. Runs nodedns-kubesim in-process with a generated cluster and, for each set-up, counts on
//! the server side what it holds and sends while the API changes at a fixed rate:
//! - nodedns: 1 and 2 `nodedns-authority` processes (the authority Deployment's replicas), each
//!   with one set of watches (Namespaces, Services, EndpointSlices, Pods) whatever the node count;
//! - per-node CoreDNS with `pods verified` (CoreDNS as a DaemonSet, or per-node CoreDNS behind
//!   NodeLocal DNSCache): one real `kube` watcher set per node, on the same four kinds, Pods with
//!   CoreDNS's phase field selector, each node with its own client and connections.
//!
//! The churn is what a busy cluster's rollouts make: pod replacements, each the API events one
//! replacement causes (terminating, endpoint removed, deleted, created, scheduled, running and
//! ready, endpoint added). Objects carry the fields real Pods and EndpointSlices have (labels,
//! owner references, conditions, container statuses, endpoint target references), so bytes per
//! event are in the range of the real thing, if on its small side (no managedFields).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use nodedns_kubesim::{FakeApi, Kind};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use crate::cluster_gen::{self, Shape};
use crate::kube_bench::{Authority, free_port};

pub struct Options {
    pub shape: Shape,
    pub authority: PathBuf,
    /// Node counts for the per-node CoreDNS rows.
    pub nodes: Vec<usize>,
    /// Authority replica counts for the nodedns rows.
    pub replicas: Vec<usize>,
    /// Pod replacements per second during the measurement.
    pub replacements_per_s: f64,
    /// The measured period of each run.
    pub window: Duration,
    pub runs: usize,
    /// Set-ups not yet started when this much time has passed are skipped (and said so).
    pub time_limit: Duration,
}

/// API events one pod replacement makes (see [`Churn::step`]).
const EVENTS_PER_REPLACEMENT: usize = 7;

/// The field selector CoreDNS's `pods verified` watch uses (plugin/kubernetes/controller.go):
/// finished pods are not indexed. kubesim does not filter on fields; every generated pod runs.
const COREDNS_POD_FIELDS: &str = "status.phase!=Succeeded,status.phase!=Failed,status.phase!=Unknown";

#[derive(Clone, Copy)]
enum Setup {
    Nodedns { replicas: usize },
    PerNodeCoredns { nodes: usize },
}

impl Setup {
    fn label(self) -> String {
        match self {
            Setup::Nodedns { replicas: 1 } => "nodedns, 1 authority replica".to_owned(),
            Setup::Nodedns { replicas } => format!("nodedns, {replicas} authority replicas"),
            Setup::PerNodeCoredns { nodes } => format!("per-node CoreDNS, {nodes} nodes"),
        }
    }
}

/// What one run of one set-up measured.
#[derive(Clone, Copy, Default)]
struct Sample {
    watches_open: usize,
    connections_open: usize,
    list_requests: u64,
    list_bytes: u64,
    sync_s: f64,
    watch_bytes_per_s: f64,
    pod_watch_bytes_per_s: f64,
    watch_events_per_s: f64,
    socket_bytes_per_s: f64,
    /// Watch requests made during the window: a client that fell behind and re-watched.
    rewatches: u64,
}

/// Median, min and max of a set of runs.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    pub(crate) fn of(values: impl IntoIterator<Item = f64>) -> Spread {
        let mut v: Vec<f64> = values.into_iter().collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            return Spread { median: 0.0, min: 0.0, max: 0.0 };
        }
        let n = v.len();
        let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
        Spread { median, min: v[0], max: v[n - 1] }
    }

    /// `median [min–max]` with `decimals` places; just the median when every run agreed.
    pub(crate) fn show(&self, decimals: usize) -> String {
        let m = format!("{:.*}", decimals, self.median);
        let (lo, hi) = (format!("{:.*}", decimals, self.min), format!("{:.*}", decimals, self.max));
        if lo == hi && lo == m { m } else { format!("{m} [{lo}–{hi}]") }
    }
}

/// A pod the churn replaces over and over, and where its address sits in an EndpointSlice.
struct Slot {
    namespace: String,
    app: String,
    node: String,
    generation: usize,
    ip: String,
    slice: usize,
    endpoint: usize,
}

/// Pod replacements, one API event per step.
struct Churn {
    api: FakeApi,
    slots: Vec<Slot>,
    slices: Vec<Value>,
    next_ip: u32,
}

impl Churn {
    fn pod_name(slot: &Slot) -> String {
        format!("{}-g{}", slot.app, slot.generation)
    }

    /// Step `n` of the endless replacement sequence: replacement `n / 7` of slot
    /// `(n / 7) % slots`, event `n % 7` of it.
    fn step(&mut self, n: usize) {
        let Some(count) = std::num::NonZeroUsize::new(self.slots.len()) else { return };
        let slot_index = (n / EVENTS_PER_REPLACEMENT) % count;
        let slot = &mut self.slots[slot_index];
        let endpoints = |slice: &mut Value| -> Option<Vec<Value>> {
            slice.get_mut("endpoints")?.as_array_mut().map(std::mem::take)
        };
        match n % EVENTS_PER_REPLACEMENT {
            // The old pod is told to stop: deletionTimestamp set, not ready.
            0 => {
                let mut pod = pod_object(&Churn::pod_name(slot), slot, PodStage::Running);
                pod["metadata"]["deletionTimestamp"] = json!("2026-11-29T12:00:00Z");
                pod["metadata"]["deletionGracePeriodSeconds"] = json!(30);
                self.api.apply(pod);
            }
            // The EndpointSlice controller marks its endpoint terminating and not ready.
            1 => {
                let slice = &mut self.slices[slot.slice];
                if let Some(mut eps) = endpoints(slice) {
                    if let Some(ep) = eps.get_mut(slot.endpoint) {
                        ep["conditions"] = json!({"ready": false, "serving": false, "terminating": true});
                    }
                    slice["endpoints"] = Value::Array(eps);
                }
                self.api.apply(slice.clone());
            }
            2 => {
                self.api.delete(Kind::Pod, &slot.namespace, &Churn::pod_name(slot));
            }
            // Its replacement: created unscheduled, then bound to a node, then running and ready
            // with a new address.
            3 => {
                slot.generation += 1;
                slot.ip = std::net::Ipv4Addr::from(self.next_ip).to_string();
                self.next_ip = self.next_ip.wrapping_add(1);
                self.api.apply(pod_object(&Churn::pod_name(slot), slot, PodStage::Pending));
            }
            4 => {
                self.api.apply(pod_object(&Churn::pod_name(slot), slot, PodStage::Scheduled));
            }
            5 => {
                self.api.apply(pod_object(&Churn::pod_name(slot), slot, PodStage::Running));
            }
            _ => {
                let endpoint = endpoint_object(&Churn::pod_name(slot), slot);
                let slice = &mut self.slices[slot.slice];
                if let Some(mut eps) = endpoints(slice) {
                    if let Some(ep) = eps.get_mut(slot.endpoint) {
                        *ep = endpoint;
                    }
                    slice["endpoints"] = Value::Array(eps);
                }
                self.api.apply(slice.clone());
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum PodStage {
    Pending,
    Scheduled,
    Running,
}

/// A Deployment's pod as the API server returns it, without managedFields.
fn pod_object(name: &str, slot: &Slot, stage: PodStage) -> Value {
    let app = &slot.app;
    let mut pod = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": slot.namespace, "generateName": format!("{app}-"),
            "uid": format!("0f3c9a4e-{:04x}-4b1d-9e1a-{:012x}", slot.generation % 0xffff, slot.slice * 64 + slot.endpoint),
            "creationTimestamp": "2026-11-29T11:00:00Z",
            "labels": {"app": app, "pod-template-hash": "7d9f8b6c5d", "app.kubernetes.io/part-of": "bench"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-29T10:59:58Z"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{app}-7d9f8b6c5d"),
                "uid": "5b6a2f0e-1c3d-4e5f-8a9b-0c1d2e3f4a5b", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"containers": [{"name": "app", "image": "registry.example.com/team/app:1.24.3",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080, "scheme": "HTTP"}, "periodSeconds": 5,
                    "timeoutSeconds": 1, "successThreshold": 1, "failureThreshold": 3},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}],
                "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File", "imagePullPolicy": "IfNotPresent"}],
            "volumes": [{"name": "kube-api-access", "projected": {"defaultMode": 420, "sources": [
                {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}}]}}],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "schedulerName": "default-scheduler", "priority": 0,
            "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
                {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}]},
        "status": {"phase": "Pending", "qosClass": "Burstable"}});
    if stage == PodStage::Pending {
        return pod;
    }
    pod["spec"]["nodeName"] = json!(slot.node);
    let condition = |type_: &str, status: bool| {
        json!({"type": type_, "status": if status { "True" } else { "False" }, "lastProbeTime": null,
               "lastTransitionTime": "2026-11-29T11:00:02Z"})
    };
    if stage == PodStage::Scheduled {
        pod["status"]["conditions"] = json!([condition("PodScheduled", true)]);
        return pod;
    }
    pod["status"] = json!({"phase": "Running", "qosClass": "Burstable", "hostIP": "192.168.10.11",
        "hostIPs": [{"ip": "192.168.10.11"}], "podIP": slot.ip, "podIPs": [{"ip": slot.ip}],
        "startTime": "2026-11-29T11:00:01Z",
        "conditions": [condition("PodReadyToStartContainers", true), condition("Initialized", true),
            condition("Ready", true), condition("ContainersReady", true), condition("PodScheduled", true)],
        "containerStatuses": [{"name": "app", "ready": true, "started": true, "restartCount": 0,
            "image": "registry.example.com/team/app:1.24.3",
            "imageID": "registry.example.com/team/app@sha256:3f1c5e7a9b2d4f6081a3c5e7f9b1d3f5a7c9e1b3d5f7a9c1e3b5d7f9a1c3e5b7",
            "containerID": format!("containerd://{:064x}", slot.generation * 7919 + slot.slice),
            "state": {"running": {"startedAt": "2026-11-29T11:00:02Z"}}, "lastState": {}}]});
    pod
}

/// An EndpointSlice entry for a ready pod, as the EndpointSlice controller writes it.
fn endpoint_object(pod: &str, slot: &Slot) -> Value {
    json!({"addresses": [slot.ip], "conditions": {"ready": true, "serving": true, "terminating": false},
           "nodeName": slot.node, "targetRef": {"kind": "Pod", "namespace": slot.namespace, "name": pod,
           "uid": format!("0f3c9a4e-{:04x}-4b1d-9e1a-{:012x}", slot.generation % 0xffff, slot.slice * 64 + slot.endpoint)}})
}

/// Loads the generated cluster into `api` with realistic Pods and EndpointSlices, and returns the
/// churn over the pods that back endpoints (each generated endpoint address is a pod's).
fn load(api: &FakeApi, shape: &Shape) -> Churn {
    let objects = cluster_gen::objects(shape);
    // Each generated pod: namespace and node, by address.
    let mut pods: HashMap<String, (String, String)> = HashMap::new();
    for o in &objects {
        if o["kind"] == "Pod"
            && let (Some(ip), Some(ns), Some(node)) = (
                o["status"]["podIP"].as_str(),
                o["metadata"]["namespace"].as_str(),
                o["spec"]["nodeName"].as_str(),
            )
        {
            pods.insert(ip.to_owned(), (ns.to_owned(), node.to_owned()));
        }
    }
    let mut slots = Vec::new();
    let mut slices = Vec::new();
    let mut others = Vec::new();
    for o in objects {
        match o["kind"].as_str() {
            Some("Pod") => {} // replaced by the slots' pods, and the unclaimed ones below
            Some("EndpointSlice") => {
                let slice_index = slices.len();
                let app = o["metadata"]["labels"]["kubernetes.io/service-name"]
                    .as_str()
                    .unwrap_or("app")
                    .to_owned();
                let mut endpoints = Vec::new();
                for (i, ep) in o["endpoints"].as_array().into_iter().flatten().enumerate() {
                    let Some(ip) = ep["addresses"][0].as_str() else { continue };
                    // A pod backs one endpoint; with more endpoints than pods the rest stay plain.
                    let Some((namespace, node)) = pods.remove(ip) else { continue };
                    let slot = Slot {
                        namespace,
                        app: app.clone(),
                        node,
                        generation: slots.len(),
                        ip: ip.to_owned(),
                        slice: slice_index,
                        endpoint: i,
                    };
                    endpoints.push(endpoint_object(&Churn::pod_name(&slot), &slot));
                    slots.push(slot);
                }
                let mut slice = o;
                slice["endpoints"] = Value::Array(endpoints);
                slice["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] =
                    json!("endpointslice-controller.k8s.io");
                slices.push(slice);
            }
            _ => others.push(o),
        }
    }
    for o in others {
        api.apply(o);
    }
    for slice in &slices {
        api.apply(slice.clone());
    }
    for slot in &slots {
        api.apply(pod_object(&Churn::pod_name(slot), slot, PodStage::Running));
    }
    // Pods no endpoint points at: running pods of no Service.
    let mut lone: Vec<_> = pods.into_iter().collect();
    lone.sort();
    for (n, (ip, (namespace, node))) in lone.into_iter().enumerate() {
        let slot =
            Slot { namespace, app: "batch".to_owned(), node, generation: n, ip, slice: 0, endpoint: 0 };
        api.apply(pod_object(&format!("lone{n}"), &slot, PodStage::Running));
    }
    // New addresses for replacement pods, outside the generated pod range.
    Churn { api: api.clone(), slots, slices, next_ip: u32::from(std::net::Ipv4Addr::new(10, 80, 0, 1)) }
}

/// One simulated node's CoreDNS: its own client and the four watches `pods verified` makes.
/// Counts each watcher reaching its first InitDone in `synced` and events after it in `events`.
async fn coredns_node(url: String, synced: Arc<AtomicUsize>, events: Arc<AtomicU64>) -> anyhow::Result<()> {
    let config = kube::Config::new(url.parse().context("API URL")?);
    let client = kube::Client::try_from(config).context("kube client")?;
    let plain = watcher::Config::default();
    let pods = watcher::Config::default().fields(COREDNS_POD_FIELDS);
    let streams = vec![
        count(
            0,
            watcher::watcher(Api::<Service>::all(client.clone()), plain.clone()).default_backoff().boxed(),
        ),
        count(
            1,
            watcher::watcher(Api::<EndpointSlice>::all(client.clone()), plain.clone())
                .default_backoff()
                .boxed(),
        ),
        count(2, watcher::watcher(Api::<Namespace>::all(client.clone()), plain).default_backoff().boxed()),
        count(3, watcher::watcher(Api::<Pod>::all(client), pods).default_backoff().boxed()),
    ];
    let mut all = futures::stream::select_all(streams);
    let mut done = [false; 4];
    // Decoding into the typed objects is the client work CoreDNS's informers do; the objects are
    // dropped, as no store is needed for counting.
    while let Some((i, live)) = all.next().await {
        match live {
            Some(true) => {
                events.fetch_add(1, Ordering::Relaxed);
            }
            Some(false) => {}
            None if !done[i] => {
                done[i] = true;
                synced.fetch_add(1, Ordering::SeqCst);
            }
            None => {}
        }
    }
    Ok(())
}

type Tagged = futures::stream::BoxStream<'static, (usize, Option<bool>)>;

/// Tags watcher `i`'s events: `Some(true)` a live change, `Some(false)` anything else, `None` its
/// initial list done.
fn count<K: Send + 'static>(
    i: usize,
    stream: futures::stream::BoxStream<'static, Result<Event<K>, watcher::Error>>,
) -> Tagged {
    stream
        .map(move |e| match e {
            Ok(Event::Apply(_) | Event::Delete(_)) => (i, Some(true)),
            Ok(Event::InitDone) => (i, None),
            _ => (i, Some(false)),
        })
        .boxed()
}

/// Raises the soft open-file limit to the hard one: thousands of watch or gRPC connections, both
/// ends in this process (and the children, which inherit the limit).
pub(crate) fn raise_nofile_limit() -> libc::rlim_t {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own; setrlimit only reads it.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    limit.rlim_cur
}

async fn run_once(opts: &Options, setup: Setup) -> anyhow::Result<Sample> {
    let api = FakeApi::start().await?;
    let mut churn = load(&api, &opts.shape);
    let loaded = api.stats();
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("nodedns-watch-scale-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let mut authorities = Vec::new();
    let mut nodes = JoinSet::new();
    let events = Arc::new(AtomicU64::new(0));
    match setup {
        Setup::Nodedns { replicas } => {
            let kubeconfig = dir.join("kubeconfig");
            std::fs::write(&kubeconfig, api.kubeconfig())?;
            // Replicas start together, as a Deployment's pods do, each listing on its own.
            let mut starting = JoinSet::new();
            for _ in 0..replicas {
                let (binary, kubeconfig) = (opts.authority.clone(), kubeconfig.clone());
                let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
                let (dns, grpc) =
                    (format!("127.0.0.1:{}", free_port()?), format!("127.0.0.1:{}", free_port()?));
                starting.spawn(async move {
                    Authority::start(
                        &binary,
                        &kubeconfig,
                        admin,
                        &["--dns-listen", &dns, "--grpc-listen", &grpc],
                    )
                    .await
                });
            }
            while let Some(a) = starting.join_next().await {
                authorities.push(a??);
            }
        }
        Setup::PerNodeCoredns { nodes: n } => {
            let synced = Arc::new(AtomicUsize::new(0));
            // All nodes' CoreDNS start at once, as after an API server restart or a DaemonSet
            // roll-out of every node; the sync time below is the last one done.
            for _ in 0..n {
                nodes.spawn(coredns_node(api.url(), Arc::clone(&synced), Arc::clone(&events)));
            }
            let deadline = Instant::now() + Duration::from_secs(600);
            while synced.load(Ordering::SeqCst) < 4 * n {
                if let Some(Ok(Err(e))) = nodes.try_join_next() {
                    bail!("a node's watchers failed: {e:#}");
                }
                if Instant::now() > deadline {
                    bail!("{} of {} node watchers listed within 600 s", synced.load(Ordering::SeqCst), 4 * n);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let sync_s = started.elapsed().as_secs_f64();
    let synced_stats = api.stats().since(&loaded);

    // The fixed rate of changes; the first second is not measured so every stream is live.
    let stop = Arc::new(AtomicBool::new(false));
    let churning = {
        let stop = Arc::clone(&stop);
        let period = Duration::from_secs_f64(1.0 / (opts.replacements_per_s * EVENTS_PER_REPLACEMENT as f64));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            let mut n = 0usize;
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                churn.step(n);
                n += 1;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (before, events0, t0) = (api.stats(), events.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(opts.window).await;
    let (after, events1, secs) = (api.stats(), events.load(Ordering::Relaxed), t0.elapsed().as_secs_f64());
    stop.store(true, Ordering::Relaxed);
    churning.await?;
    let window = after.since(&before);

    drop(authorities);
    nodes.shutdown().await;
    // Every connection of the run closed before the next starts (a check on the counters too).
    if !api.wait_stats(Duration::from_secs(30), |s| s.connections_open == 0 && s.watches_open == 0).await {
        let s = api.stats();
        eprintln!(
            "  warning: {} connections, {} watches still open after the run",
            s.connections_open, s.watches_open
        );
    }
    let _ = std::fs::remove_dir_all(&dir);

    if let Setup::PerNodeCoredns { nodes: n } = setup {
        // Each node must have decoded every change: a lagging client would understate the load.
        let sent = window.watch_events.total();
        let got = events1 - events0;
        if got + (n as u64) * 8 < sent {
            eprintln!("  warning: the nodes decoded {got} of {sent} events sent in the window");
        }
    }
    Ok(Sample {
        watches_open: after.watches_open,
        connections_open: after.connections_open,
        list_requests: synced_stats.list_requests,
        list_bytes: synced_stats.list_bytes.total(),
        sync_s,
        watch_bytes_per_s: window.watch_bytes.total() as f64 / secs,
        pod_watch_bytes_per_s: window.watch_bytes.get(Kind::Pod) as f64 / secs,
        watch_events_per_s: window.watch_events.total() as f64 / secs,
        socket_bytes_per_s: window.socket_bytes as f64 / secs,
        rewatches: window.watch_requests,
    })
}

struct Row {
    setup: Setup,
    samples: Vec<Sample>,
}

impl Row {
    fn spread(&self, f: impl Fn(&Sample) -> f64) -> Spread {
        Spread::of(self.samples.iter().map(f))
    }
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.replacements_per_s <= 0.0 || opts.runs == 0 {
        bail!("--replacements-per-s and --runs must be positive");
    }
    let most = opts.nodes.iter().copied().max().unwrap_or(0);
    let fds = raise_nofile_limit();
    // Both ends of every watch connection are in this process.
    if (fds as usize) < most * 8 + 256 {
        eprintln!("warning: open-file limit {fds} is low for {most} nodes (about {} needed)", most * 8 + 256);
    }
    let shape = &opts.shape;
    println!(
        "cluster: {} namespaces, {} services, {} endpoints, {} pods; churn {} pod replacements/s ({} API events/s: per replacement 5 Pod events, 2 EndpointSlice updates); {} runs of {} s each",
        shape.namespaces,
        shape.services,
        shape.services * shape.endpoints,
        shape.pods,
        opts.replacements_per_s,
        opts.replacements_per_s * EVENTS_PER_REPLACEMENT as f64,
        opts.runs,
        opts.window.as_secs_f64()
    );
    let setups: Vec<Setup> = opts
        .replicas
        .iter()
        .map(|&replicas| Setup::Nodedns { replicas })
        .chain(opts.nodes.iter().map(|&nodes| Setup::PerNodeCoredns { nodes }))
        .collect();
    let started = Instant::now();
    let mut rows: Vec<Row> = Vec::new();
    for setup in setups {
        if started.elapsed() > opts.time_limit {
            println!("{}: skipped, past the {} s time limit", setup.label(), opts.time_limit.as_secs());
            continue;
        }
        let mut samples = Vec::with_capacity(opts.runs);
        for run in 1..=opts.runs {
            let s = run_once(&opts, setup).await.with_context(|| format!("{}, run {run}", setup.label()))?;
            println!(
                "{} run {run}: {} watches, {} connections, synced in {:.1} s, list {:.1} MiB in {} requests; watch {:.1} KiB/s ({:.1} KiB/s pods), {:.0} events/s, socket {:.1} KiB/s, re-watches {}",
                setup.label(),
                s.watches_open,
                s.connections_open,
                s.sync_s,
                s.list_bytes as f64 / 1048576.0,
                s.list_requests,
                s.watch_bytes_per_s / 1024.0,
                s.pod_watch_bytes_per_s / 1024.0,
                s.watch_events_per_s,
                s.socket_bytes_per_s / 1024.0,
                s.rewatches
            );
            samples.push(s);
        }
        rows.push(Row { setup, samples });
    }
    print_tables(&rows, opts.runs);
    Ok(())
}

fn print_tables(rows: &[Row], runs: usize) {
    println!();
    println!("API server side, median [min–max] of {runs} runs:");
    println!();
    println!(
        "| API clients | watch streams | TCP connections | list at start, MiB | initial sync, s | watch bytes, KiB/s | of which Pods | watch events sent/s | socket bytes, KiB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.setup.label(),
            r.spread(|s| s.watches_open as f64).show(0),
            r.spread(|s| s.connections_open as f64).show(0),
            r.spread(|s| s.list_bytes as f64 / 1048576.0).show(1),
            r.spread(|s| s.sync_s).show(1),
            r.spread(|s| s.watch_bytes_per_s / 1024.0).show(1),
            r.spread(|s| s.pod_watch_bytes_per_s / 1024.0).show(1),
            r.spread(|s| s.watch_events_per_s).show(0),
            r.spread(|s| s.socket_bytes_per_s / 1024.0).show(1),
        );
    }
    // The same by node count: nodedns does not grow with nodes, so its measured figure stands for
    // every row.
    let nodedns: Vec<&Row> = rows.iter().filter(|r| matches!(r.setup, Setup::Nodedns { .. })).collect();
    let per_node: Vec<&Row> =
        rows.iter().filter(|r| matches!(r.setup, Setup::PerNodeCoredns { .. })).collect();
    if per_node.is_empty() {
        return;
    }
    println!();
    let mut head = String::from("| nodes |");
    let mut rule = String::from("|---|");
    for r in &nodedns {
        let Setup::Nodedns { replicas } = r.setup else { continue };
        head += &format!(" nodedns {replicas}r: watches | nodedns {replicas}r: KiB/s |");
        rule += "---|---|";
    }
    head += " per-node CoreDNS: watches | per-node CoreDNS: KiB/s | CoreDNS ÷ nodedns 1r, bytes |";
    rule += "---|---|---|";
    println!("{head}\n{rule}");
    let base = nodedns.first().map(|r| r.spread(|s| s.watch_bytes_per_s).median);
    for r in per_node {
        let Setup::PerNodeCoredns { nodes } = r.setup else { continue };
        let mut line = format!("| {nodes} |");
        for n in &nodedns {
            line += &format!(
                " {} | {} |",
                n.spread(|s| s.watches_open as f64).show(0),
                n.spread(|s| s.watch_bytes_per_s / 1024.0).show(1)
            );
        }
        let bytes = r.spread(|s| s.watch_bytes_per_s);
        let ratio =
            base.filter(|b| *b > 0.0).map_or("–".to_owned(), |b| format!("{:.0}×", bytes.median / b));
        line += &format!(
            " {} | {} | {ratio} |",
            r.spread(|s| s.watches_open as f64).show(0),
            r.spread(|s| s.watch_bytes_per_s / 1024.0).show(1)
        );
        println!("{line}");
    }
}
