//! DNS over UDP and TCP: binding the sockets, the receive loops, and the one `respond` place that
//! sends, counts and logs every answer. Everything between bytes in and bytes out is
//! [`nodedns_zone::serve`].

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use nodedns_grpc::TransferAcl;
use nodedns_zone::{ClusterStore, Context, Served, Transport, serve};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::metrics::{self, DnsMetrics};

/// A socket that could not be bound, named by transport and address.
#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Bound but not yet serving: tests bind port 0 and read the real addresses back.
#[derive(Debug)]
pub struct DnsSockets {
    pub udp: Vec<StdUdpSocket>,
    pub tcp: Vec<StdTcpListener>,
}

impl DnsSockets {
    /// Binds UDP and TCP on every address. With port 0, TCP takes the port UDP was given, so one
    /// address serves both transports.
    pub fn bind(addrs: &[SocketAddr]) -> Result<Self, BindError> {
        let mut udp = Vec::new();
        let mut tcp = Vec::new();
        for addr in addrs {
            let (u, t) = bind_pair(*addr)?;
            udp.push(u);
            tcp.push(t);
        }
        Ok(Self { udp, tcp })
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.udp.iter().filter_map(|s| s.local_addr().ok()).collect()
    }
}

/// UDP and TCP on one address. With port 0 the kernel picks the UDP port, and that number may
/// already be taken for TCP: then another pair is tried.
fn bind_pair(addr: SocketAddr) -> Result<(StdUdpSocket, StdTcpListener), BindError> {
    let mut attempts = 0;
    loop {
        let u = bind_udp(addr)?;
        let actual = u.local_addr().map_err(|source| BindError { what: "DNS UDP", addr, source })?;
        match bind_tcp(actual) {
            Ok(t) => return Ok((u, t)),
            Err(e)
                if addr.port() == 0 && attempts < 20 && e.source.kind() == std::io::ErrorKind::AddrInUse =>
            {
                attempts += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn socket(addr: SocketAddr, ty: Type, proto: Protocol) -> std::io::Result<Socket> {
    let s = Socket::new(Domain::for_address(addr), ty, Some(proto))?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.set_nonblocking(true)?;
    Ok(s)
}

pub fn bind_udp(addr: SocketAddr) -> Result<StdUdpSocket, BindError> {
    let err = |source| BindError { what: "DNS UDP", addr, source };
    let s = socket(addr, Type::DGRAM, Protocol::UDP).map_err(err)?;
    // Room for bursts: a full receive buffer drops queries silently.
    let _ = s.set_recv_buffer_size(4 << 20);
    s.bind(&addr.into()).map_err(err)?;
    Ok(s.into())
}

pub fn bind_tcp(addr: SocketAddr) -> Result<StdTcpListener, BindError> {
    let err = |source| BindError { what: "DNS TCP", addr, source };
    let s = socket(addr, Type::STREAM, Protocol::TCP).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(1024).map_err(err)?;
    Ok(s.into())
}

/// What every serving task shares.
pub struct Shared {
    pub store: Arc<ClusterStore>,
    /// Swapped by a config reload, as is `log_queries`.
    pub transfer_from: TransferAcl,
    pub metrics: DnsMetrics,
    pub log_queries: AtomicBool,
    pub tcp_idle_timeout: Duration,
    pub tcp_slots: Arc<Semaphore>,
}

impl Shared {
    /// Whether answers are logged; read once per query, so its answer and log line agree.
    fn log_queries(&self) -> bool {
        self.log_queries.load(Ordering::Relaxed)
    }

    fn answer(&self, bytes: &[u8], transport: Transport, peer: SocketAddr, log: bool) -> Served {
        let index = self.store.index();
        let transfer_from = self.transfer_from.load();
        let ctx = Context { transport, client: peer.ip(), transfer_from: &transfer_from, describe: log };
        serve(&index, bytes, &ctx)
    }

    /// Counts one handled packet. Called before the reply is sent, so a client that has its
    /// answer also sees it counted.
    fn count(&self, served: &Served, transport: Transport, peer: SocketAddr, started: Instant) {
        if let Some(reason) = served.dropped {
            self.metrics.dropped(reason);
            debug!(client = %peer, reason = reason.as_str(), "dropped packet");
            return;
        }
        self.metrics.request(transport, peer.is_ipv6(), served.qtype);
        if let Some(rcode) = served.rcode {
            self.metrics.response(rcode, transport, started.elapsed(), served.truncated);
        }
        if matches!(served.qtype, Some(RecordType::AXFR | RecordType::IXFR)) {
            let sent = served.rcode == Some(ResponseCode::NoError);
            metrics::transfer(sent);
            let zone = served.qname.as_ref().map(ToString::to_string).unwrap_or_default();
            info!(client = %peer, zone, sent, "zone transfer request");
        }
    }

    /// The optional per-query log line, written after the reply is on its way.
    fn log(&self, log: bool, served: &Served, transport: Transport, peer: SocketAddr, started: Instant) {
        if !log || served.dropped.is_some() {
            return;
        }
        info!(
            client = %peer,
            proto = transport.as_str(),
            qtype = %served.qtype.map(|t| t.to_string()).unwrap_or_default(),
            qname = %served.qname.as_ref().map(ToString::to_string).unwrap_or_default(),
            rcode = %served.rcode.map(|r| r.to_string()).unwrap_or_default(),
            size = served.messages.iter().map(Vec::len).sum::<usize>(),
            truncated = served.truncated,
            duration_us = started.elapsed().as_micros() as u64,
            "query"
        );
    }
}

/// Serves one UDP socket until `stop` is cancelled.
pub async fn udp_loop(socket: Arc<UdpSocket>, shared: Arc<Shared>, stop: CancellationToken) {
    // 64 KiB: a datagram cut short by a small buffer would look malformed.
    let mut buf = vec![0u8; 65535];
    loop {
        let (len, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on Linux; keep serving.
                    debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        let started = Instant::now();
        let log = shared.log_queries();
        let served = shared.answer(&buf[..len], Transport::Udp, peer, log);
        shared.count(&served, Transport::Udp, peer, started);
        for msg in &served.messages {
            if let Err(e) = socket.send_to(msg, peer).await {
                debug!(client = %peer, error = %e, "UDP send failed");
            }
        }
        shared.log(log, &served, Transport::Udp, peer, started);
    }
}

/// Accepts TCP connections until `stop` is cancelled; connections are tracked for draining.
pub async fn tcp_accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&shared.tcp_slots).try_acquire_owned() else {
            metrics::tcp_rejected();
            debug!(client = %peer, "TCP connection cap reached; closing");
            drop(stream);
            continue;
        };
        let shared = Arc::clone(&shared);
        let stop = stop.clone();
        tracker.spawn(async move {
            metrics::tcp_connections(1.0);
            if let Err(e) = tcp_connection(stream, peer, &shared, &stop).await {
                debug!(client = %peer, error = %e, "TCP connection ended with an error");
            }
            metrics::tcp_connections(-1.0);
            drop(permit);
        });
    }
}

/// RFC 7766: length-prefixed messages, pipelined; answered in order; closed when idle.
async fn tcp_connection(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let mut buf = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        let read_len = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            r = tokio::time::timeout(shared.tcp_idle_timeout, stream.read_exact(&mut len)) => r,
        };
        match read_len {
            Err(_) => return Ok(()), // idle
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(r) => r?,
        };
        let n = usize::from(u16::from_be_bytes(len));
        // A started message must finish within the idle timeout too.
        match tokio::time::timeout(shared.tcp_idle_timeout, stream.read_exact(&mut buf[..n])).await {
            Err(_) => return Ok(()),
            Ok(r) => r?,
        };
        let started = Instant::now();
        let log = shared.log_queries();
        let served = shared.answer(&buf[..n], Transport::Tcp, peer, log);
        shared.count(&served, Transport::Tcp, peer, started);
        for msg in &served.messages {
            let Ok(len) = u16::try_from(msg.len()) else {
                continue;
            };
            stream.write_all(&len.to_be_bytes()).await?;
            stream.write_all(msg).await?;
        }
        shared.log(log, &served, Transport::Tcp, peer, started);
        if served.dropped.is_some() {
            // Not a DNS query stream; do not keep reading garbage.
            return Ok(());
        }
    }
}
