//! The gRPC service agents use (`nodedns.v1.Authority`, contract in `proto/`). Resolve answers
//! cluster-domain queries from the same index and the same bytes-to-bytes handler as the DNS
//! listeners, so an agent gets exactly what a DNS client of the authority would.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipnet::IpNet;
use metrics::{counter, gauge};
use nodedns_proto::v1::authority_server::{Authority, AuthorityServer};
use nodedns_proto::v1::{
    ResolveRequest, ResolveResponse, ResolveStatus, SubscribeRequest, SubscribeResponse,
    Transport as WireTransport,
};
use nodedns_zone::{ClusterStore, Context, Transport, serve};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info};

/// Responses of one Resolve stream that may wait for the agent to read them.
pub const MAX_IN_FLIGHT: usize = 1024;

/// Cheap to clone: each Resolve stream's task holds a copy.
#[derive(Clone)]
pub struct Service {
    pub store: Arc<ClusterStore>,
    pub transfer_from: Arc<[IpNet]>,
    pub draining: Arc<AtomicBool>,
    pub stop: CancellationToken,
}

type BoxStream<T> = Pin<Box<dyn futures::Stream<Item = Result<T, Status>> + Send + 'static>>;

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

impl Service {
    fn answer(&self, req: &ResolveRequest) -> ResolveResponse {
        let revision = *self.store.subscribe().borrow();
        let status = |s: ResolveStatus| ResolveResponse {
            id: req.id,
            status: s as i32,
            response: Vec::new(),
            revision,
        };
        if self.draining.load(Ordering::Acquire) {
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
        let ctx = Context {
            transport,
            client: client_ip(&req.client_ip),
            transfer_from: &self.transfer_from,
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
        let (tx, rx) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT);
        let service = self.clone();
        tokio::spawn(async move {
            let _open = OpenStream::new("Resolve");
            info!(agent = ?peer, "Resolve stream opened");
            loop {
                let next = tokio::select! {
                    _ = service.stop.cancelled() => break,
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
        _request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        Err(Status::unimplemented("Subscribe is not served by this authority version yet"))
    }
}

/// Serves gRPC on `listener` until `stop`, with HTTP/2 keepalive so dead agents are noticed.
pub async fn serve_grpc(
    listener: std::net::TcpListener,
    service: Service,
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
    info!(addr = ?addr, "gRPC serving nodedns.v1.Authority");
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .tcp_nodelay(true)
        .add_service(AuthorityServer::new(service))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop.cancelled_owned())
        .await
}
