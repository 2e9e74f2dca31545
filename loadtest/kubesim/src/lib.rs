//! nodedns-kubesim: a fake Kubernetes API server that speaks the real list/watch protocol over
//! HTTP, so the real `kube` client and watcher are exercised end to end without a cluster.
//!
//! It serves Namespaces, Services, Pods (`/api/v1/...`) and EndpointSlices
//! (`/apis/discovery.k8s.io/v1/...`), cluster-wide and per namespace, with:
//! - lists carrying a `resourceVersion`, `limit`/`continue` paging and `labelSelector`;
//! - `watch=true` streams of ADDED/MODIFIED/DELETED events from a resourceVersion, BOOKMARK
//!   events on request, and an in-stream `ERROR` 410 (`Expired`) when the version is older than
//!   the compacted history, as the real API server answers;
//! - controls for tests: apply/delete objects, compact history, drop every open watch, go down
//!   (503 everywhere), fail the next N requests, and counters of the requests and watches served.
//!
//! Objects are kept as JSON values; anything the real server would fill in (`resourceVersion`,
//! `uid`) is filled in here.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

/// The kinds served, with their API path and whether they are namespaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Namespace,
    Service,
    EndpointSlice,
    Pod,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Namespace, Kind::Service, Kind::EndpointSlice, Kind::Pod];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Namespace => "Namespace",
            Kind::Service => "Service",
            Kind::EndpointSlice => "EndpointSlice",
            Kind::Pod => "Pod",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Kind::EndpointSlice => "discovery.k8s.io/v1",
            _ => "v1",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Namespace => "namespaces",
            Kind::Service => "services",
            Kind::EndpointSlice => "endpointslices",
            Kind::Pod => "pods",
        }
    }

    fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn from_path(api_version: &str, plural: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == plural && k.api_version() == api_version)
    }
}

type Key = (Kind, String, String);

struct Event {
    rv: u64,
    kind: Kind,
    namespace: String,
    labels: BTreeMap<String, String>,
    /// `{"type":...,"object":...}\n`, serialized once for every watcher.
    line: Bytes,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    /// Events after `floor`; watches from an older version get 410.
    log: VecDeque<Arc<Event>>,
    floor: u64,
}

/// Limits the history kept for watches, like etcd compaction.
const MAX_LOG: usize = 100_000;

struct Inner {
    store: Mutex<Store>,
    events: broadcast::Sender<Arc<Event>>,
    /// Bumped to end every open watch stream.
    drop_gen: watch::Sender<u64>,
    /// Bookmark requests: every open watch sends a BOOKMARK at the current version.
    bookmarks: broadcast::Sender<()>,
    down: std::sync::atomic::AtomicBool,
    fail_next: Mutex<(usize, u16)>,
    list_requests: AtomicUsize,
    watch_requests: AtomicUsize,
    /// Open watch streams; a watch channel so tests can wait for a count.
    open_watches: watch::Sender<usize>,
    bytes_sent: AtomicU64,
}

/// A running fake API server. Cloning gives another handle to the same server.
#[derive(Clone)]
pub struct FakeApi {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

fn lock(m: &Mutex<Store>) -> MutexGuard<'_, Store> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeApi {
    /// Starts a server on an ephemeral loopback port; it runs until the runtime ends.
    pub async fn start() -> std::io::Result<FakeApi> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            store: Mutex::new(Store::default()),
            events: broadcast::channel(65536).0,
            drop_gen: watch::channel(0).0,
            bookmarks: broadcast::channel(16).0,
            down: false.into(),
            fail_next: Mutex::new((0, 500)),
            list_requests: 0.into(),
            watch_requests: 0.into(),
            open_watches: watch::channel(0).0,
            bytes_sent: 0.into(),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&inner));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "fake API server stopped");
            }
        });
        Ok(FakeApi { inner, addr })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig pointing at this server (no credentials).
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\nusers:\n- name: fake\n  user: {{}}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\ncurrent-context: fake\n",
            self.url()
        )
    }

    /// Creates or replaces an object (ADDED or MODIFIED); returns its new resourceVersion.
    /// Panics on an object without a known kind or a name: fixtures are the test's own.
    pub fn apply(&self, mut object: Value) -> u64 {
        let kind = object["kind"].as_str().and_then(Kind::from_name).expect("object of a served kind");
        let name = object["metadata"]["name"].as_str().expect("object with a name").to_owned();
        let namespace = if kind == Kind::Namespace {
            String::new()
        } else {
            let ns = object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned();
            object["metadata"]["namespace"] = json!(ns);
            ns
        };
        let mut store = lock(&self.inner.store);
        store.rv += 1;
        let rv = store.rv;
        object["metadata"]["resourceVersion"] = json!(rv.to_string());
        if object["metadata"]["uid"].is_null() {
            object["metadata"]["uid"] = json!(format!("uid-{}-{namespace}-{name}", kind.plural()));
        }
        let key = (kind, namespace, name);
        let kind_of_event = if store.objects.contains_key(&key) { "MODIFIED" } else { "ADDED" };
        self.record(&mut store, kind_of_event, key, object, true);
        rv
    }

    /// Deletes an object (namespace ignored for Namespaces); returns the version of the DELETED
    /// event, or `None` if there was no such object.
    pub fn delete(&self, kind: Kind, namespace: &str, name: &str) -> Option<u64> {
        let namespace = if kind == Kind::Namespace { "" } else { namespace };
        let mut store = lock(&self.inner.store);
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut object = store.objects.get(&key)?.clone();
        store.rv += 1;
        object["metadata"]["resourceVersion"] = json!(store.rv.to_string());
        let rv = store.rv;
        self.record(&mut store, "DELETED", key, object, false);
        Some(rv)
    }

    fn record(&self, store: &mut Store, type_: &str, key: Key, object: Value, keep: bool) {
        let labels = labels_of(&object);
        let line = Bytes::from(format!("{}\n", json!({"type": type_, "object": object})));
        let event = Arc::new(Event { rv: store.rv, kind: key.0, namespace: key.1.clone(), labels, line });
        if keep {
            store.objects.insert(key, object);
        } else {
            store.objects.remove(&key);
        }
        store.log.push_back(Arc::clone(&event));
        while store.log.len() > MAX_LOG {
            if let Some(old) = store.log.pop_front() {
                store.floor = old.rv;
            }
        }
        // Sent while the store is locked, so a watch that subscribes under the same lock sees
        // each event exactly once: from the backlog or from the channel.
        let _ = self.inner.events.send(event);
    }

    /// Loads every object of a `kind: List` or multi-document YAML (e.g. a cluster fixture).
    pub fn load_yaml(&self, text: &str) -> Result<usize, String> {
        let docs: Vec<Value> = serde_saphyr::from_multiple(text).map_err(|e| e.to_string())?;
        let mut n = 0;
        for doc in docs {
            let items = match doc.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ if doc.is_null() => continue,
                _ => vec![doc],
            };
            for item in items {
                if item["kind"].as_str().and_then(Kind::from_name).is_some() {
                    self.apply(item);
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// Forgets the history: a watch from any version before now gets 410 Gone.
    pub fn compact(&self) {
        let mut store = lock(&self.inner.store);
        store.log.clear();
        store.floor = store.rv;
    }

    /// Ends every open watch stream (the client sees the connection close).
    pub fn drop_watches(&self) {
        self.inner.drop_gen.send_modify(|g| *g += 1);
    }

    /// Down: every request gets 503 and open watches end. Up again: normal service.
    pub fn set_down(&self, down: bool) {
        self.inner.down.store(down, Ordering::SeqCst);
        if down {
            self.drop_watches();
        }
    }

    /// The next `n` requests fail with `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        *self.inner.fail_next.lock().unwrap_or_else(PoisonError::into_inner) = (n, status);
    }

    /// Every open watch sends a BOOKMARK at the current resourceVersion.
    pub fn send_bookmarks(&self) {
        let _ = self.inner.bookmarks.send(());
    }

    pub fn resource_version(&self) -> u64 {
        lock(&self.inner.store).rv
    }

    pub fn list_requests(&self) -> usize {
        self.inner.list_requests.load(Ordering::SeqCst)
    }

    /// Watch connections served so far.
    pub fn watch_requests(&self) -> usize {
        self.inner.watch_requests.load(Ordering::SeqCst)
    }

    pub fn open_watches(&self) -> usize {
        *self.inner.open_watches.borrow()
    }

    /// Waits until exactly `n` watch streams are open; false if that does not happen in `limit`.
    pub async fn wait_open_watches(&self, n: usize, limit: Duration) -> bool {
        let mut rx = self.inner.open_watches.subscribe();
        tokio::time::timeout(limit, rx.wait_for(|open| *open == n)).await.is_ok_and(|r| r.is_ok())
    }

    /// Bytes of list and watch bodies sent.
    pub fn bytes_sent(&self) -> u64 {
        self.inner.bytes_sent.load(Ordering::SeqCst)
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object["metadata"]["labels"]
        .as_object()
        .map(|m| m.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned()))).collect())
        .unwrap_or_default()
}

/// Equality-based label selectors: `a=b`, `a==b`, `a!=b`, `a`, `!a`, comma-separated.
#[derive(Debug, Clone, Default)]
struct Selector(Vec<(String, Op)>);

#[derive(Debug, Clone)]
enum Op {
    Eq(String),
    Ne(String),
    Exists,
    Absent,
}

impl Selector {
    fn parse(text: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (key, op) = if let Some((k, v)) = term.split_once("!=") {
                (k, Op::Ne(v.trim().to_owned()))
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, Op::Eq(v.trim().to_owned()))
            } else if let Some(k) = term.strip_prefix('!') {
                (k, Op::Absent)
            } else if term.contains(' ') || term.contains('(') {
                return Err(format!("unsupported selector term {term:?}"));
            } else {
                (term, Op::Exists)
            };
            out.push((key.trim().to_owned(), op));
        }
        Ok(Selector(out))
    }

    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|(k, op)| match op {
            Op::Eq(v) => labels.get(k) == Some(v),
            Op::Ne(v) => labels.get(k) != Some(v),
            Op::Exists => labels.contains_key(k),
            Op::Absent => !labels.contains_key(k),
        })
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                      "message": message, "reason": reason, "code": code});
    let code = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// The request: which kind, optionally which namespace.
fn route(uri: &Uri) -> Option<(Kind, Option<String>)> {
    let parts: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", "v1", plural] => Some((Kind::from_path("v1", plural)?, None)),
        ["api", "v1", "namespaces", ns, plural] => {
            Some((Kind::from_path("v1", plural)?, Some((*ns).to_owned())))
        }
        ["apis", group, "v1", plural] => Some((Kind::from_path(&format!("{group}/v1"), plural)?, None)),
        ["apis", group, "v1", "namespaces", ns, plural] => {
            Some((Kind::from_path(&format!("{group}/v1"), plural)?, Some((*ns).to_owned())))
        }
        _ => None,
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    uri: Uri,
    Query(params): Query<BTreeMap<String, String>>,
) -> Response {
    {
        let mut fail = inner.fail_next.lock().unwrap_or_else(PoisonError::into_inner);
        if fail.0 > 0 {
            fail.0 -= 1;
            return status(fail.1, "InternalError", "injected failure");
        }
    }
    if inner.down.load(Ordering::SeqCst) {
        return status(503, "ServiceUnavailable", "the fake API server is down");
    }
    let Some((kind, namespace)) = route(&uri) else {
        return status(404, "NotFound", &format!("no resource at {}", uri.path()));
    };
    let selector = match Selector::parse(params.get("labelSelector").map_or("", String::as_str)) {
        Ok(s) => s,
        Err(e) => return status(400, "BadRequest", &e),
    };
    let namespace = namespace.filter(|_| kind != Kind::Namespace);
    if params.get("watch").is_some_and(|w| w == "true" || w == "1") {
        watch(inner, kind, namespace, selector, &params)
    } else {
        list(&inner, kind, namespace.as_deref(), &selector, &params)
    }
}

fn list(
    inner: &Inner,
    kind: Kind,
    namespace: Option<&str>,
    selector: &Selector,
    params: &BTreeMap<String, String>,
) -> Response {
    inner.list_requests.fetch_add(1, Ordering::SeqCst);
    let store = lock(&inner.store);
    let limit: usize =
        params.get("limit").and_then(|l| l.parse().ok()).filter(|l| *l > 0).unwrap_or(usize::MAX);
    // The continue token is the last key sent ("namespace/name"); pages resume after it.
    let start: Key = match params.get("continue").and_then(|c| c.split_once('/')) {
        Some((ns, name)) => (kind, ns.to_owned(), name.to_owned()),
        None => (kind, String::new(), String::new()),
    };
    let resumed = params.get("continue").is_some_and(|c| !c.is_empty());
    let mut page: Vec<&Value> = Vec::new();
    let mut last: Option<&Key> = None;
    let mut more = false;
    for (key, obj) in store.objects.range(start.clone()..).take_while(|((k, _, _), _)| *k == kind) {
        if resumed && *key == start {
            continue;
        }
        if namespace.is_some_and(|want| want != key.1) {
            continue;
        }
        if !selector.0.is_empty() && !selector.matches(&labels_of(obj)) {
            continue;
        }
        if page.len() == limit {
            more = true;
            break;
        }
        page.push(obj);
        last = Some(key);
    }
    let cont = match (more, last) {
        (true, Some((_, ns, name))) => format!("{ns}/{name}"),
        _ => String::new(),
    };
    let body = json!({
        "apiVersion": kind.api_version(),
        "kind": format!("{}List", kind.name()),
        "metadata": {"resourceVersion": store.rv.to_string(), "continue": cont},
        "items": page,
    })
    .to_string();
    inner.bytes_sent.fetch_add(body.len() as u64, Ordering::Relaxed);
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn watch(
    inner: Arc<Inner>,
    kind: Kind,
    namespace: Option<String>,
    selector: Selector,
    params: &BTreeMap<String, String>,
) -> Response {
    inner.watch_requests.fetch_add(1, Ordering::SeqCst);
    let from: u64 = params.get("resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
    let timeout =
        Duration::from_secs(params.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(300));
    let bookmarks_allowed = params.get("allowWatchBookmarks").is_some_and(|b| b == "true");
    let wanted = move |e: &Event| {
        e.kind == kind
            && namespace.as_deref().is_none_or(|ns| ns == e.namespace)
            && selector.matches(&e.labels)
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, Infallible>>(1024);
    let (backlog, mut live, expired) = {
        let store = lock(&inner.store);
        let live = inner.events.subscribe();
        if from < store.floor {
            (Vec::new(), live, true)
        } else {
            let backlog: Vec<Arc<Event>> =
                store.log.iter().filter(|e| e.rv > from && wanted(e)).cloned().collect();
            (backlog, live, false)
        }
    };
    let mut dropped = inner.drop_gen.subscribe();
    let mut bookmark_requests = inner.bookmarks.subscribe();
    let task_inner = Arc::clone(&inner);
    tokio::spawn(async move {
        let inner = task_inner;
        inner.open_watches.send_modify(|n| *n += 1);
        let send = |bytes: Bytes| {
            inner.bytes_sent.fetch_add(bytes.len() as u64, Ordering::Relaxed);
            tx.send(Ok(bytes))
        };
        'stream: {
            if expired {
                let gone = json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "metadata": {},
                    "status": "Failure", "message": format!("too old resource version: {from}"), "reason": "Expired", "code": 410}});
                let _ = send(Bytes::from(format!("{gone}\n"))).await;
                break 'stream;
            }
            let mut last = from;
            for e in backlog {
                last = e.rv;
                if send(e.line.clone()).await.is_err() {
                    break 'stream;
                }
            }
            let deadline = tokio::time::sleep(timeout);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    // A drop requested before an event was published wins over delivering it.
                    biased;
                    _ = dropped.changed() => break,
                    _ = &mut deadline => break,
                    b = bookmark_requests.recv() => {
                        if b.is_err() || !bookmarks_allowed { continue; }
                        let rv = lock(&inner.store).rv.max(last);
                        let mark = json!({"type": "BOOKMARK", "object": {"kind": kind.name(), "apiVersion": kind.api_version(),
                            "metadata": {"resourceVersion": rv.to_string()}}});
                        if send(Bytes::from(format!("{mark}\n"))).await.is_err() { break; }
                    }
                    e = live.recv() => match e {
                        Ok(e) if e.rv > last && wanted(&e) => {
                            last = e.rv;
                            if send(e.line.clone()).await.is_err() { break; }
                        }
                        Ok(_) => {}
                        // A watcher too slow for the channel: end its stream; it re-watches from
                        // its last version, as with a real API server.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                }
            }
        }
        inner.open_watches.send_modify(|n| *n -= 1);
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors() {
        let labels: BTreeMap<String, String> = [("app".to_owned(), "web".to_owned())].into();
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app", true),
            ("!app", false),
            ("tier", false),
            ("", true),
        ] {
            assert_eq!(Selector::parse(sel).unwrap().matches(&labels), want, "{sel}");
        }
        assert!(Selector::parse("app in (a,b)").is_err());
    }

    #[test]
    fn routes() {
        let r = |p: &str| route(&p.parse().unwrap());
        assert_eq!(r("/api/v1/services"), Some((Kind::Service, None)));
        assert_eq!(r("/api/v1/namespaces/x/pods"), Some((Kind::Pod, Some("x".into()))));
        assert_eq!(r("/api/v1/namespaces"), Some((Kind::Namespace, None)));
        assert_eq!(r("/apis/discovery.k8s.io/v1/endpointslices"), Some((Kind::EndpointSlice, None)));
        assert_eq!(
            r("/apis/discovery.k8s.io/v1/namespaces/x/endpointslices"),
            Some((Kind::EndpointSlice, Some("x".into())))
        );
        assert_eq!(r("/api/v1/endpointslices"), None);
        assert_eq!(r("/apis/apps/v1/deployments"), None);
    }
}
