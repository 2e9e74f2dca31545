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
//!   (503 everywhere), fail the next N requests, and counters of the requests and watches served;
//! - [`Stats`]: what the server holds and has sent (TCP connections, open watches, list and watch
//!   bytes per kind, socket bytes), read in-process with [`FakeApi::stats`] or over HTTP at
//!   `GET /kubesim/stats`, so scale runs can count the API load a set of clients puts on a server.
//!
//! Objects are kept as JSON values; anything the real server would fill in (`resourceVersion`,
//! `uid`) is filled in here.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
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

    fn index(self) -> usize {
        self as usize
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
    counters: Counters,
}

/// Counters behind [`Stats`]; per-kind arrays are indexed by [`Kind::index`].
#[derive(Default)]
struct Counters {
    connections_open: AtomicUsize,
    connections_total: AtomicU64,
    socket_bytes: AtomicU64,
    list_bytes: [AtomicU64; 4],
    watch_bytes: [AtomicU64; 4],
    watch_events: [AtomicU64; 4],
}

/// A figure per kind, indexed in [`Kind::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PerKind(pub [u64; 4]);

impl PerKind {
    pub fn get(&self, kind: Kind) -> u64 {
        self.0[kind.index()]
    }

    pub fn total(&self) -> u64 {
        self.0.iter().sum()
    }

    fn load(counters: &[AtomicU64; 4]) -> PerKind {
        PerKind(std::array::from_fn(|i| counters[i].load(Ordering::Relaxed)))
    }

    fn minus(&self, earlier: &PerKind) -> PerKind {
        PerKind(std::array::from_fn(|i| self.0[i].saturating_sub(earlier.0[i])))
    }

    fn to_json(self) -> Value {
        Kind::ALL.into_iter().map(|k| (k.name().to_owned(), json!(self.get(k)))).collect()
    }
}

/// A snapshot of what the server holds and has sent since it started. Totals only grow; take two
/// snapshots and [`Stats::since`] for the load of a period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// TCP connections open now. Over plain HTTP/1.1 (how `kube` talks to this server) every
    /// concurrent watch holds a connection of its own; a real API server over HTTP/2 would carry a
    /// client's watches on one connection, so [`Stats::watches_open`] is the comparable figure.
    pub connections_open: usize,
    pub connections_total: u64,
    /// Bytes written to client sockets: bodies plus HTTP headers and chunk framing.
    pub socket_bytes: u64,
    pub list_requests: u64,
    /// List response bodies.
    pub list_bytes: PerKind,
    pub watch_requests: u64,
    /// Watch streams open now.
    pub watches_open: usize,
    /// Watch stream bodies: events, bookmarks and errors.
    pub watch_bytes: PerKind,
    /// Lines sent on watch streams (events, bookmarks, errors).
    pub watch_events: PerKind,
}

impl Stats {
    /// The load between `earlier` and this snapshot: totals as differences, open counts as now.
    pub fn since(&self, earlier: &Stats) -> Stats {
        Stats {
            connections_open: self.connections_open,
            connections_total: self.connections_total.saturating_sub(earlier.connections_total),
            socket_bytes: self.socket_bytes.saturating_sub(earlier.socket_bytes),
            list_requests: self.list_requests.saturating_sub(earlier.list_requests),
            list_bytes: self.list_bytes.minus(&earlier.list_bytes),
            watch_requests: self.watch_requests.saturating_sub(earlier.watch_requests),
            watches_open: self.watches_open,
            watch_bytes: self.watch_bytes.minus(&earlier.watch_bytes),
            watch_events: self.watch_events.minus(&earlier.watch_events),
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "connections_open": self.connections_open,
            "connections_total": self.connections_total,
            "socket_bytes": self.socket_bytes,
            "list_requests": self.list_requests,
            "list_bytes": self.list_bytes.to_json(),
            "watch_requests": self.watch_requests,
            "watches_open": self.watches_open,
            "watch_bytes": self.watch_bytes.to_json(),
            "watch_events": self.watch_events.to_json(),
        })
    }
}

/// Accepts TCP connections and wraps each so its bytes written and its lifetime are counted.
struct CountingListener {
    listener: TcpListener,
    inner: Arc<Inner>,
}

impl axum::serve::Listener for CountingListener {
    type Io = CountingStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (CountingStream, SocketAddr) {
        let (stream, addr) = axum::serve::Listener::accept(&mut self.listener).await;
        let counters = &self.inner.counters;
        counters.connections_open.fetch_add(1, Ordering::SeqCst);
        counters.connections_total.fetch_add(1, Ordering::SeqCst);
        (CountingStream { stream, inner: Arc::clone(&self.inner) }, addr)
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

/// A server-side connection; dropping it (when hyper is done with the connection) counts it closed.
struct CountingStream {
    stream: TcpStream,
    inner: Arc<Inner>,
}

impl Drop for CountingStream {
    fn drop(&mut self) {
        self.inner.counters.connections_open.fetch_sub(1, Ordering::SeqCst);
    }
}

impl CountingStream {
    fn count(&self, written: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = written {
            self.inner.counters.socket_bytes.fetch_add(*n as u64, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.count(&written);
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
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
        let listener = TcpListener::bind("127.0.0.1:0").await?;
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
            counters: Counters::default(),
        });
        let app = Router::new().fallback(handle).with_state(Arc::clone(&inner));
        let listener = CountingListener { listener, inner: Arc::clone(&inner) };
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

    /// What the server holds and has sent so far.
    pub fn stats(&self) -> Stats {
        self.inner.stats()
    }

    /// Polls [`FakeApi::stats`] every 10 ms until `done` holds; false if it does not within `limit`.
    /// (Connections close when the client's socket does, which no event of ours announces.)
    pub async fn wait_stats(&self, limit: Duration, done: impl Fn(&Stats) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if done(&self.stats()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Inner {
    fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            connections_open: c.connections_open.load(Ordering::SeqCst),
            connections_total: c.connections_total.load(Ordering::SeqCst),
            socket_bytes: c.socket_bytes.load(Ordering::Relaxed),
            list_requests: self.list_requests.load(Ordering::SeqCst) as u64,
            list_bytes: PerKind::load(&c.list_bytes),
            watch_requests: self.watch_requests.load(Ordering::SeqCst) as u64,
            watches_open: *self.open_watches.borrow(),
            watch_bytes: PerKind::load(&c.watch_bytes),
            watch_events: PerKind::load(&c.watch_events),
        }
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
    if uri.path() == "/kubesim/stats" {
        let body = inner.stats().to_json().to_string();
        return ([(header::CONTENT_TYPE, "application/json")], body).into_response();
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
    // The items are written straight from the store: building a `Value` of the page first would
    // deep-copy every object, and scale runs list the whole cluster once per simulated node.
    let items = serde_json::to_string(&page).unwrap_or_else(|_| "[]".to_owned());
    let metadata = json!({"resourceVersion": store.rv.to_string(), "continue": cont});
    let body = format!(
        "{{\"apiVersion\":\"{}\",\"kind\":\"{}List\",\"metadata\":{metadata},\"items\":{items}}}",
        kind.api_version(),
        kind.name()
    );
    inner.bytes_sent.fetch_add(body.len() as u64, Ordering::Relaxed);
    inner.counters.list_bytes[kind.index()].fetch_add(body.len() as u64, Ordering::Relaxed);
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
            let len = bytes.len() as u64;
            inner.bytes_sent.fetch_add(len, Ordering::Relaxed);
            inner.counters.watch_bytes[kind.index()].fetch_add(len, Ordering::Relaxed);
            inner.counters.watch_events[kind.index()].fetch_add(1, Ordering::Relaxed);
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
                    // The client went away (hyper dropped the body): the watch is over now, not
                    // at the next event it would fail to take, so open-watch counts are current.
                    _ = tx.closed() => break,
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
