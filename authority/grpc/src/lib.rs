//! nodedns-grpc: the `nodedns.v1.Authority` service node agents use (contract in `proto/`), over a
//! [`ClusterStore`]. It links no Kubernetes client: the authority serves it over the store its
//! watchers fill, and the agent's standalone mode over a store a cluster file fills.
//!
//! - Resolve answers cluster-domain queries from the same index and the same bytes-to-bytes
//!   handler as the DNS listeners, so an agent gets exactly what a DNS client would.
//! - Subscribe sends a node's pod table and the change notices from the store's feed: a snapshot
//!   (or the updates missed since a resumed revision), then one update per published change,
//!   merged when the agent reads slower than the cluster changes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use ipnet::IpNet;
use metrics::{counter, gauge, histogram};
use nodedns_common::tls::ReloadingServerConfig;
use nodedns_proto::v1::authority_server::{Authority, AuthorityServer};
use nodedns_proto::v1::subscribe_response::Event;
use nodedns_proto::v1::{
    Draining, NodeSearch as WireNodeSearch, PodEntry as WirePodEntry, ResolveRequest, ResolveResponse,
    ResolveStatus, Snapshot as WireSnapshot, SubscribeRequest, SubscribeResponse, Transport as WireTransport,
    Update as WireUpdate,
};
use nodedns_zone::feed::{NodeSearch, PodEntry, Snapshot, Update};
use nodedns_zone::{ClusterStore, Context, Transport, serve};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, warn};

/// Responses of one Resolve stream that may wait for the agent to read them.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Messages of one Subscribe stream queued for the transport. Small on purpose: while an agent
/// does not read, changes pile up in the store's log and are merged into one update, instead of
/// queueing one message per change.
const SUBSCRIBE_QUEUE: usize = 2;

/// When the service stops taking work: `draining` is cancelled when shutdown begins (Resolve
/// answers DRAINING, subscribers are told to move, new subscriptions are refused), `stop` when
/// the process is about to exit (streams end).
#[derive(Clone)]
pub struct Shutdown {
    pub draining: CancellationToken,
    pub stop: CancellationToken,
    /// How long draining lasts before `stop` (announced to subscribers).
    pub lameduck: Duration,
}

/// The clients allowed zone transfers (`--transfer-from`), shared with the DNS listener and
/// swapped by a config reload.
pub type TransferAcl = Arc<ArcSwap<Vec<IpNet>>>;

/// Cheap to clone: each stream's task holds a copy.
#[derive(Clone)]
pub struct Service {
    pub store: Arc<ClusterStore>,
    pub transfer_from: TransferAcl,
    pub shutdown: Shutdown,
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The metric names this service records, with their help text, for the binary's exporter.
pub const METRICS: [(&str, &str); 7] = [
    ("nodedns_grpc_streams", "Open gRPC streams by RPC (Subscribe: connected agents)."),
    ("nodedns_grpc_requests_total", "Resolve requests and Subscribe calls by RPC and result."),
    ("nodedns_grpc_updates_sent_total", "Subscribe messages sent, by kind (snapshot, update, draining)."),
    ("nodedns_grpc_notices_sent_total", "Subscribe updates sent that carry a change notice."),
    (
        "nodedns_grpc_subscribe_lag_seconds",
        "Time from a change being published to its update being handed to the agent's stream.",
    ),
    (
        "nodedns_grpc_tls_handshake_failures_total",
        "gRPC connections closed in or for a TLS handshake that failed.",
    ),
    ("nodedns_grpc_tls_reloads_total", "Rebuilds of the gRPC TLS config after its files changed, by result."),
];

fn client_ip(bytes: &[u8]) -> IpAddr {
    match bytes.len() {
        4 => IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3])),
        16 => {
            let mut a = [0u8; 16];
            a.copy_from_slice(bytes);
            IpAddr::V6(Ipv6Addr::from(a))
        }
        // Unknown: an address no ACL contains.
        _ => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// Counts open streams of one RPC; the gauge goes down when the stream's task ends.
struct OpenStream(&'static str);

impl OpenStream {
    fn new(rpc: &'static str) -> Self {
        gauge!("nodedns_grpc_streams", "rpc" => rpc).increment(1.0);
        OpenStream(rpc)
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        gauge!("nodedns_grpc_streams", "rpc" => self.0).decrement(1.0);
    }
}

fn wire_entry(e: &PodEntry) -> WirePodEntry {
    let node_search = match e.resolver.node_search {
        NodeSearch::None => WireNodeSearch::None,
        NodeSearch::Before => WireNodeSearch::Before,
        NodeSearch::After => WireNodeSearch::After,
    };
    WirePodEntry {
        ip: ip_bytes(e.ip),
        namespace: e.namespace.clone(),
        name: e.name.clone(),
        host_network: e.host_network,
        search: e.resolver.search.clone(),
        node_search: node_search as i32,
        ndots: e.resolver.ndots.map(u32::from),
        shared: e.shared,
    }
}

fn wire_snapshot(s: &Snapshot, cluster_domain: &str) -> SubscribeResponse {
    SubscribeResponse {
        revision: s.revision,
        event: Some(Event::Snapshot(WireSnapshot {
            pods: s.pods.iter().map(|e| wire_entry(e)).collect(),
            zones: s.zones.clone(),
            cluster_domain: cluster_domain.to_owned(),
            max_in_flight: MAX_IN_FLIGHT as u32,
        })),
    }
}

fn wire_update(u: Update) -> SubscribeResponse {
    SubscribeResponse {
        revision: u.revision,
        event: Some(Event::Update(WireUpdate {
            upserted: u.upserted.iter().map(|e| wire_entry(e)).collect(),
            removed: u.removed.into_iter().map(ip_bytes).collect(),
            names: u.names.into_iter().collect(),
            subtrees: u.subtrees.into_iter().collect(),
            zones: u.zones.unwrap_or_default(),
        })),
    }
}

impl Service {
    pub fn new(store: Arc<ClusterStore>, transfer_from: TransferAcl, shutdown: Shutdown) -> Self {
        Self { store, transfer_from, shutdown }
    }

    /// One Resolve request to its response (public for fuzzing).
    #[doc(hidden)]
    pub fn answer(&self, req: &ResolveRequest) -> ResolveResponse {
        let revision = self.store.revision();
        let status = |s: ResolveStatus| ResolveResponse {
            id: req.id,
            status: s as i32,
            response: Vec::new(),
            revision,
        };
        if self.shutdown.draining.is_cancelled() {
            return status(ResolveStatus::Draining);
        }
        if !self.store.is_synced() {
            return status(ResolveStatus::NotReady);
        }
        let transport = match WireTransport::try_from(req.transport) {
            Ok(WireTransport::Tcp) => Transport::Tcp,
            _ => Transport::Udp,
        };
        let index = self.store.index();
        let transfer_from = self.transfer_from.load();
        let ctx = Context {
            transport,
            client: client_ip(&req.client_ip),
            transfer_from: &transfer_from,
            describe: false,
        };
        let mut served = serve(&index, &req.query, &ctx);
        match served.messages.len() {
            0 => status(ResolveStatus::Dropped),
            // A zone transfer spans messages and only makes sense on a client's own TCP
            // connection; over Resolve the first message stands (the agent sends AXFR to DNS).
            _ => ResolveResponse {
                id: req.id,
                status: ResolveStatus::Ok as i32,
                response: served.messages.swap_remove(0),
                revision,
            },
        }
    }

    fn cluster_domain(&self) -> String {
        self.store.config().cluster_domain.to_lowercase().to_ascii()
    }

    /// Feeds one subscriber until it goes away or the service stops.
    async fn subscription(
        self,
        node: String,
        first: SubscribeResponse,
        mut cursor: u64,
        mut published: tokio::sync::watch::Receiver<u64>,
        tx: mpsc::Sender<Result<SubscribeResponse, Status>>,
        peer: Option<SocketAddr>,
    ) {
        let _open = OpenStream::new("Subscribe");
        let kind = if matches!(first.event, Some(Event::Snapshot(_))) { "snapshot" } else { "update" };
        if tx.send(Ok(first)).await.is_err() {
            return;
        }
        counter!("nodedns_grpc_updates_sent_total", "kind" => kind).increment(1);
        let mut told_to_drain = false;
        loop {
            tokio::select! {
                biased;
                () = self.shutdown.stop.cancelled() => break,
                () = self.shutdown.draining.cancelled(), if !told_to_drain => {
                    told_to_drain = true;
                    let seconds_left = self.shutdown.lameduck.as_secs().try_into().unwrap_or(u32::MAX);
                    let msg = SubscribeResponse {
                        revision: cursor,
                        event: Some(Event::Draining(Draining { seconds_left })),
                    };
                    if tx.send(Ok(msg)).await.is_err() {
                        break;
                    }
                    counter!("nodedns_grpc_updates_sent_total", "kind" => "draining").increment(1);
                    continue;
                }
                changed = published.changed() => if changed.is_err() { break },
                () = tx.closed() => break,
            }
            let (msg, oldest, notice) = match self.store.changes_since(cursor, &node) {
                Ok(update) if update.is_empty() => {
                    cursor = update.revision;
                    continue;
                }
                Ok(update) => {
                    cursor = update.revision;
                    let (oldest, notice) = (update.oldest, update.has_notice());
                    (wire_update(update), oldest, notice)
                }
                Err(_gap) => {
                    // Fell behind further than the log reaches: start over from a snapshot.
                    warn!(agent = ?peer, node, "subscriber fell behind the change log; sending a snapshot");
                    let snapshot = self.store.node_snapshot(&node);
                    cursor = snapshot.revision;
                    (wire_snapshot(&snapshot, &self.cluster_domain()), None, true)
                }
            };
            let kind = if matches!(msg.event, Some(Event::Snapshot(_))) { "snapshot" } else { "update" };
            if tx.send(Ok(msg)).await.is_err() {
                break;
            }
            counter!("nodedns_grpc_updates_sent_total", "kind" => kind).increment(1);
            if notice {
                counter!("nodedns_grpc_notices_sent_total").increment(1);
            }
            if let Some(oldest) = oldest {
                histogram!("nodedns_grpc_subscribe_lag_seconds").record(oldest.elapsed().as_secs_f64());
            }
        }
        info!(agent = ?peer, node, "Subscribe stream closed");
    }
}

#[tonic::async_trait]
impl Authority for Service {
    type ResolveStream = BoxStream<ResolveResponse>;
    type SubscribeStream = BoxStream<SubscribeResponse>;

    async fn resolve(
        &self,
        request: Request<Streaming<ResolveRequest>>,
    ) -> Result<Response<Self::ResolveStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
        let service = self.clone();
        tokio::spawn(async move {
            let _open = OpenStream::new("Resolve");
            info!(agent = ?peer, "Resolve stream opened");
            loop {
                let next = tokio::select! {
                    () = service.shutdown.stop.cancelled() => break,
                    next = inbound.message() => next,
                };
                let req = match next {
                    Ok(Some(req)) => req,
                    Ok(None) => break,
                    Err(e) => {
                        debug!(agent = ?peer, error = %e, "Resolve stream error");
                        break;
                    }
                };
                let response = service.answer(&req);
                let label = ResolveStatus::try_from(response.status).map_or("unknown", |s| s.as_str_name());
                counter!("nodedns_grpc_requests_total", "rpc" => "Resolve", "status" => label).increment(1);
                // A full channel waits here: the agent is not reading, so we stop reading too.
                if tx.send(Ok(response)).await.is_err() {
                    break;
                }
            }
            info!(agent = ?peer, "Resolve stream closed");
        });
        let mut response = Response::new(Box::pin(ReceiverStream::new(rx)) as Self::ResolveStream);
        response.metadata_mut().insert(nodedns_proto::MAX_IN_FLIGHT_HEADER, MAX_IN_FLIGHT.into());
        Ok(response)
    }

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let SubscribeRequest { node_name, resume_from } = request.into_inner();
        let refuse = |result: &'static str, status: Status| {
            counter!("nodedns_grpc_requests_total", "rpc" => "Subscribe", "status" => result).increment(1);
            Err(status)
        };
        if node_name.is_empty() {
            return refuse("invalid", Status::invalid_argument("node_name is required"));
        }
        if self.shutdown.draining.is_cancelled() {
            return refuse("draining", Status::unavailable("draining: this authority is shutting down"));
        }
        if !self.store.is_synced() {
            return refuse(
                "not_ready",
                Status::unavailable("not ready: the authority has not listed the cluster yet"),
            );
        }
        let started = Instant::now();
        // Watched before the first read, so a change published while it is built wakes the
        // stream (and is sent) rather than waiting for the next change.
        let published = self.store.subscribe();
        let resumed =
            (resume_from != 0).then(|| self.store.changes_since(resume_from, &node_name).ok()).flatten();
        let (first, cursor, result) = match resumed {
            Some(update) => {
                let cursor = update.revision;
                (wire_update(update), cursor, "resumed")
            }
            None => {
                let snapshot = self.store.node_snapshot(&node_name);
                (wire_snapshot(&snapshot, &self.cluster_domain()), snapshot.revision, "snapshot")
            }
        };
        counter!("nodedns_grpc_requests_total", "rpc" => "Subscribe", "status" => result).increment(1);
        info!(
            agent = ?peer,
            node = node_name,
            resume_from,
            revision = cursor,
            start = result,
            build_ms = started.elapsed().as_secs_f64() * 1e3,
            "Subscribe stream opened"
        );
        let (tx, rx) = mpsc::channel(SUBSCRIBE_QUEUE);
        tokio::spawn(self.clone().subscription(node_name, first, cursor, published, tx, peer));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx)) as Self::SubscribeStream))
    }
}

/// Serves gRPC on `listener` until `stop`, in plain text, with HTTP/2 keepalive so dead agents are
/// noticed.
pub async fn serve_grpc(
    listener: std::net::TcpListener,
    service: Service,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    serve_grpc_with(listener, service, None, stop).await
}

/// How long a client has to finish the TLS handshake before its connection is closed.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves gRPC on `listener` until `stop`; over TLS when `tls` is given (with agents' certificates
/// required when it has a client CA). The TLS config is asked for at each accepted connection, so
/// rotated certificate files apply to new connections without a restart.
pub async fn serve_grpc_with(
    listener: std::net::TcpListener,
    service: Service,
    tls: Option<Arc<ReloadingServerConfig>>,
    stop: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let listener =
        match listener.set_nonblocking(true).and_then(|()| tokio::net::TcpListener::from_std(listener)) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "gRPC listener unusable");
                return Ok(());
            }
        };
    let server = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(AuthorityServer::new(service));
    let Some(tls) = tls else {
        info!(addr = ?addr, "gRPC serving nodedns.v1.Authority (plain text)");
        // TCP_NODELAY on every accepted connection: the builder's `tcp_nodelay` applies only to
        // listeners tonic binds itself. Without it, an answer written right after another waits
        // for the agent's delayed ACK (40 ms) under Nagle: seen as a 40 ms tail on concurrent misses.
        let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
        return server.serve_with_incoming_shutdown(incoming, stop.cancelled_owned()).await;
    };
    let files = tls.files();
    info!(
        addr = ?addr,
        cert = %files.cert.path.display(),
        client_ca = ?files.client_ca.as_ref().map(|ca| ca.path.display().to_string()),
        "gRPC serving nodedns.v1.Authority over TLS{}",
        if files.client_ca.is_some() { ", agents' certificates required" } else { " (no client certificates asked)" }
    );
    // Handshakes run beside the accept loop, so one slow or silent client delays nobody; the
    // finished ones queue for the server.
    let (tx, rx) = mpsc::channel::<Result<_, std::io::Error>>(64);
    let accept_stop = stop.clone();
    tokio::spawn(async move {
        loop {
            let (stream, peer) = tokio::select! {
                () = accept_stop.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // EMFILE and the like: back off instead of spinning.
                        warn!(error = %e, "gRPC accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        counter!("nodedns_grpc_tls_handshake_failures_total").increment(1);
                        // Rate-limited with the other client-visible errors: a fleet of
                        // misconfigured agents retrying would otherwise fill the disk.
                        nodedns_common::client_error!(agent = %peer, error = %e, "gRPC TLS handshake refused");
                    }
                    Err(_) => {
                        counter!("nodedns_grpc_tls_handshake_failures_total").increment(1);
                        debug!(agent = %peer, "gRPC TLS handshake timed out");
                    }
                }
            });
        }
    });
    server.serve_with_incoming_shutdown(ReceiverStream::new(rx), stop.cancelled_owned()).await
}
