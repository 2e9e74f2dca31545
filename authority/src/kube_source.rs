//! The Kubernetes API source: `kube` runtime watchers on Namespaces, Services, EndpointSlices and
//! Pods feeding the same [`ClusterStore`] as the cluster file.
//!
//! - Each object is reduced to the DNS fields of the model as it arrives; the API object is dropped.
//! - Nothing is published until every watched kind has completed its first list; that state is
//!   handed to the store in one swap. A later relist of one kind (after `410 Gone` or a restart)
//!   is buffered and swapped in whole, so answers never come from a half-listed cluster.
//! - Watch errors back off (kube's default backoff) and retry for ever; the last good state keeps
//!   serving. The outage is logged once, then every minute, and its end once.
//! - Changes are applied in batches: whatever arrived while the previous batch was being applied
//!   goes in together, so a burst of events costs one index rebuild.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::stream::{BoxStream, SelectAll};
use futures::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ResourceExt};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use metrics::{counter, gauge};
use nodedns_zone::ClusterStore;
use nodedns_zone::file::convert_value;
use nodedns_zone::model::{ClusterState, Kind, Object};
use nodedns_zone::store::Edit;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// What to watch.
#[derive(Debug, Clone, Default)]
pub struct KubeSettings {
    /// `--kubeconfig`; without it, in-cluster config or `KUBECONFIG`.
    pub kubeconfig: Option<PathBuf>,
    /// `--namespace`: serve only these namespaces (empty: all).
    pub namespaces: Vec<String>,
    /// `--label-selector`: serve only Services and EndpointSlices matching it.
    pub label_selector: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("reading kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error("no Kubernetes configuration (not in a cluster, no KUBECONFIG, no --kubeconfig): {0}")]
    Infer(String),
    #[error("building the Kubernetes client: {0}")]
    Client(String),
}

/// Builds the client from `--kubeconfig`, or in-cluster config, or `KUBECONFIG`.
pub async fn client(settings: &KubeSettings) -> Result<kube::Client, KubeError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let err = |e: &dyn std::fmt::Display| KubeError::Kubeconfig {
                path: path.clone(),
                message: e.to_string(),
            };
            let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|e| err(&e))?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| err(&e))?
        }
        None => kube::Config::infer().await.map_err(|e| KubeError::Infer(e.to_string()))?,
    };
    kube::Client::try_from(config).map_err(|e| KubeError::Client(e.to_string()))
}

/// One watch stream's identity: a kind, cluster-wide or in one namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    kind: Kind,
    namespace: Option<String>,
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} in {ns}", self.kind.as_str()),
            None => f.write_str(self.kind.as_str()),
        }
    }
}

/// A watcher event reduced to the model.
enum Change {
    Init,
    InitApply(Object),
    InitDone,
    Apply(Object),
    Delete {
        namespace: String,
        name: String,
    },
    /// An object the model rejects (logged, counted, skipped).
    Invalid(String),
    Error(String),
}

type Updates = SelectAll<BoxStream<'static, (usize, Change)>>;

fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    id: usize,
    kind: Kind,
) -> BoxStream<'static, (usize, Change)>
where
    K: kube::Resource + Clone + std::fmt::Debug + Send + serde::de::DeserializeOwned + Serialize + 'static,
    K::DynamicType: Default,
{
    watcher::watcher(api, config).default_backoff().map(move |event| (id, reduce(event, kind))).boxed()
}

fn reduce<K: kube::Resource + Serialize>(event: Result<Event<K>, watcher::Error>, kind: Kind) -> Change {
    let to_model = |mut obj: K| -> Result<Option<Object>, String> {
        // The largest parts DNS never reads; dropped before the object is converted.
        obj.meta_mut().managed_fields = None;
        obj.meta_mut().annotations = None;
        let mut value = serde_json::to_value(&obj).map_err(|e| e.to_string())?;
        // Watch events carry no kind/apiVersion on typed objects; the model converter wants them.
        value["kind"] = kind.as_str().into();
        value["apiVersion"] = (if kind == Kind::EndpointSlice { "discovery.k8s.io/v1" } else { "v1" }).into();
        convert_value(&value, "watch event").map_err(|e| e.to_string())
    };
    match event {
        Ok(Event::Init) => Change::Init,
        Ok(Event::InitDone) => Change::InitDone,
        Ok(Event::InitApply(obj)) => match to_model(obj) {
            Ok(Some(o)) => Change::InitApply(o),
            Ok(None) => Change::Invalid("not a kind DNS uses".into()),
            Err(e) => Change::Invalid(e),
        },
        Ok(Event::Apply(obj)) => match to_model(obj) {
            Ok(Some(o)) => Change::Apply(o),
            Ok(None) => Change::Invalid("not a kind DNS uses".into()),
            Err(e) => Change::Invalid(e),
        },
        Ok(Event::Delete(obj)) => {
            Change::Delete { namespace: obj.namespace().unwrap_or_default(), name: obj.name_any() }
        }
        Err(e) => Change::Error(e.to_string()),
    }
}

fn streams(client: &kube::Client, settings: &KubeSettings) -> (Vec<Scope>, Updates) {
    let mut scopes = Vec::new();
    let mut all = SelectAll::new();
    let plain = watcher::Config::default();
    let labelled = match &settings.label_selector {
        Some(sel) => watcher::Config::default().labels(sel),
        None => watcher::Config::default(),
    };
    // Namespaces are cluster-scoped and few: watched whole, filtered here.
    scopes.push(Scope { kind: Kind::Namespace, namespace: None });
    all.push(watch(Api::<Namespace>::all(client.clone()), plain.clone(), 0, Kind::Namespace));
    let namespaces: Vec<Option<String>> = if settings.namespaces.is_empty() {
        vec![None]
    } else {
        settings.namespaces.iter().cloned().map(Some).collect()
    };
    for ns in namespaces {
        for kind in [Kind::Service, Kind::EndpointSlice, Kind::Pod] {
            let id = scopes.len();
            let stream = match (kind, &ns) {
                (Kind::Service, None) => {
                    watch(Api::<Service>::all(client.clone()), labelled.clone(), id, kind)
                }
                (Kind::Service, Some(n)) => {
                    watch(Api::<Service>::namespaced(client.clone(), n), labelled.clone(), id, kind)
                }
                (Kind::EndpointSlice, None) => {
                    watch(Api::<EndpointSlice>::all(client.clone()), labelled.clone(), id, kind)
                }
                (Kind::EndpointSlice, Some(n)) => {
                    watch(Api::<EndpointSlice>::namespaced(client.clone(), n), labelled.clone(), id, kind)
                }
                (_, None) => watch(Api::<Pod>::all(client.clone()), plain.clone(), id, kind),
                (_, Some(n)) => watch(Api::<Pod>::namespaced(client.clone(), n), plain.clone(), id, kind),
            };
            scopes.push(Scope { kind, namespace: ns.clone() });
            all.push(stream);
        }
    }
    (scopes, all)
}

/// Per-stream progress of the lists.
#[derive(Default)]
struct Listing {
    /// Objects of a list in progress, swapped in at its InitDone.
    pending: Option<Vec<Object>>,
    listed_once: bool,
}

/// Outage bookkeeping for "log once, then periodically".
struct Outage {
    since: Instant,
    errors: u64,
    last_log: Instant,
}

/// Watches until `stop`; every change lands in `store`.
pub async fn run(
    client: kube::Client,
    settings: KubeSettings,
    store: Arc<ClusterStore>,
    stop: CancellationToken,
) {
    let started = Instant::now();
    let (scopes, mut updates) = streams(&client, &settings);
    let mut listing: Vec<Listing> = scopes.iter().map(|_| Listing::default()).collect();
    let mut last_event: HashMap<Kind, Instant> = HashMap::new();
    // The cluster being assembled until every stream has listed once; then the store owns it.
    let mut initial: Option<ClusterState> = Some(ClusterState::default());
    let mut outage: Option<Outage> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    info!(streams = scopes.len(), namespaces = ?settings.namespaces, label_selector = ?settings.label_selector, "watching the Kubernetes API");

    loop {
        let first = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {
                for (kind, at) in &last_event {
                    gauge!("nodedns_kube_seconds_since_last_event", "kind" => kind.as_str()).set(at.elapsed().as_secs_f64());
                }
                if let Some(o) = &mut outage && o.last_log.elapsed() >= Duration::from_secs(60) {
                    warn!(errors = o.errors, down_for_s = o.since.elapsed().as_secs(), "Kubernetes API still failing; serving the last good state");
                    o.last_log = Instant::now();
                }
                continue;
            }
            next = updates.next() => match next {
                Some(update) => update,
                None => return,
            },
        };
        // Everything already waiting goes into the same batch: one index rebuild for a burst.
        let mut batch = vec![first];
        while let Some(Some(more)) = updates.next().now_or_never() {
            batch.push(more);
            if batch.len() >= 10_000 {
                break;
            }
        }
        let mut edits: Vec<Edit> = Vec::new();
        let filter = Filter(&settings.namespaces);
        for (id, change) in batch {
            let scope = &scopes[id];
            let kind = scope.kind;
            if !matches!(change, Change::Error(_)) {
                last_event.insert(kind, Instant::now());
                if let Some(o) = outage.take() {
                    info!(
                        errors = o.errors,
                        down_for_s = o.since.elapsed().as_secs(),
                        "Kubernetes API reachable again"
                    );
                }
            }
            match change {
                Change::Error(e) => {
                    counter!("nodedns_kube_watch_restarts_total", "kind" => kind.as_str()).increment(1);
                    match &mut outage {
                        None => {
                            warn!(watch = %scope, error = %e, "Kubernetes API watch failed; retrying with backoff, serving the last good state");
                            outage =
                                Some(Outage { since: Instant::now(), errors: 1, last_log: Instant::now() });
                        }
                        Some(o) => o.errors += 1,
                    }
                }
                Change::Invalid(e) => {
                    counter!("nodedns_kube_objects_rejected_total", "kind" => kind.as_str()).increment(1);
                    warn!(watch = %scope, error = %e, "object skipped");
                }
                Change::Init => {
                    if listing[id].listed_once {
                        counter!("nodedns_kube_watch_restarts_total", "kind" => kind.as_str()).increment(1);
                        info!(watch = %scope, "relisting");
                    }
                    listing[id].pending = Some(Vec::new());
                }
                Change::InitApply(object) => match &mut listing[id].pending {
                    Some(p) => p.push(object),
                    None if filter.keeps(&object) => edits.push(Edit::Apply(object)),
                    None => {}
                },
                Change::InitDone => {
                    let pending = listing[id].pending.take().unwrap_or_default();
                    let objects: Vec<Object> = pending.into_iter().filter(|o| filter.keeps(o)).collect();
                    counter!("nodedns_kube_events_total", "kind" => kind.as_str(), "type" => "list")
                        .increment(objects.len() as u64);
                    listing[id].listed_once = true;
                    edits.push(Edit::Replace { kind, namespace: scope.namespace.clone(), objects });
                }
                Change::Apply(object) => {
                    counter!("nodedns_kube_events_total", "kind" => kind.as_str(), "type" => "apply")
                        .increment(1);
                    if filter.keeps(&object) {
                        edits.push(Edit::Apply(object));
                    }
                }
                Change::Delete { namespace, name } => {
                    counter!("nodedns_kube_events_total", "kind" => kind.as_str(), "type" => "delete")
                        .increment(1);
                    edits.push(Edit::Delete { kind, namespace, name });
                }
            }
        }
        match &mut initial {
            Some(state) => {
                for edit in edits {
                    edit.apply_to(state);
                }
                if listing.iter().all(|l| l.listed_once) {
                    // Every kind has listed: the assembled cluster goes to the store in one swap.
                    let state = initial.take().unwrap_or_default();
                    let store2 = Arc::clone(&store);
                    let published = tokio::task::spawn_blocking(move || store2.replace_state(state)).await;
                    let took = started.elapsed();
                    gauge!("nodedns_kube_initial_sync_seconds").set(took.as_secs_f64());
                    if let Ok(Some(p)) = published {
                        crate::metrics::zone_published(&p);
                        info!(
                            sync_ms = took.as_millis() as u64,
                            records = p.stats.records,
                            "initial list complete; serving the cluster"
                        );
                    }
                    crate::metrics::store_counts(&store.counts());
                }
            }
            None if !edits.is_empty() => {
                let store2 = Arc::clone(&store);
                // A relist rebuilds the index: CPU work, kept off the async workers.
                if let Ok(p) = tokio::task::spawn_blocking(move || store2.edit(edits)).await {
                    crate::metrics::zone_published(&p);
                }
                crate::metrics::store_counts(&store.counts());
            }
            None => {}
        }
    }
}

/// `--namespace`: which namespaces' objects are kept.
struct Filter<'a>(&'a [String]);

impl Filter<'_> {
    fn keeps(&self, object: &Object) -> bool {
        match object {
            Object::Namespace(ns) => self.0.is_empty() || self.0.contains(&ns.name),
            _ => true, // namespaced kinds are watched per namespace already
        }
    }
}
