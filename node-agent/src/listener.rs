//! Sockets and the loops that read queries. Every socket is made with socket2 with SO_REUSEADDR,
//! SO_REUSEPORT (one UDP socket per worker, and a new agent instance can bind the same address
//! while the old one still serves: handoff on upgrade) and IP_FREEBIND (the link-local address
//! need not be on an interface yet). A cache hit is answered in the receive loop; a miss is
//! handed to a task.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::request::{Resolver, Step, Transport};

#[derive(Debug, thiserror::Error)]
#[error("cannot bind {what} {addr}: {source}")]
pub struct BindError {
    pub what: &'static str,
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

fn socket(addr: SocketAddr, kind: Type, protocol: Protocol) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), kind, Some(protocol))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv4() {
        socket.set_freebind_v4(true)?;
    } else {
        socket.set_only_v6(true)?;
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

pub fn bind_udp(addr: SocketAddr) -> Result<std::net::UdpSocket, BindError> {
    let s =
        socket(addr, Type::DGRAM, Protocol::UDP).map_err(|source| BindError { what: "UDP", addr, source })?;
    Ok(s.into())
}

pub fn bind_tcp(addr: SocketAddr) -> Result<std::net::TcpListener, BindError> {
    let s = socket(addr, Type::STREAM, Protocol::TCP)
        .and_then(|s| s.listen(1024).map(|()| s))
        .map_err(|source| BindError { what: "TCP", addr, source })?;
    Ok(s.into())
}

/// The DNS sockets of one listen address: UDP sockets (one per worker) and a TCP listener.
#[derive(Debug)]
pub struct DnsSockets {
    pub addr: SocketAddr,
    pub udp: Vec<std::net::UdpSocket>,
    pub tcp: std::net::TcpListener,
}

impl DnsSockets {
    /// Binds `addr`; with port 0 every socket shares the port the first one got.
    pub fn bind(addr: SocketAddr, workers: usize) -> Result<Self, BindError> {
        let first = bind_udp(addr)?;
        let addr = first.local_addr().map_err(|source| BindError { what: "UDP", addr, source })?;
        let mut udp = vec![first];
        for _ in 1..workers.max(1) {
            udp.push(bind_udp(addr)?);
        }
        let tcp = bind_tcp(addr)?;
        Ok(Self { addr, udp, tcp })
    }
}

/// Receives queries on one socket until `stop`.
pub async fn udp_loop(
    socket: Arc<UdpSocket>,
    resolver: Arc<Resolver>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let mut buf = vec![0u8; 65535];
    let mut out = Vec::with_capacity(4096);
    loop {
        let (n, client) = tokio::select! {
            () = stop.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        let now = Instant::now();
        match resolver.answer(&buf[..n], client, Transport::Udp, now, &mut out) {
            Step::Answer => {
                let _ = socket.send_to(&out, client).await;
            }
            Step::Drop => {}
            Step::Miss(miss) => {
                let (socket, resolver) = (Arc::clone(&socket), Arc::clone(&resolver));
                tracker.spawn(async move {
                    let mut out = Vec::with_capacity(1232);
                    resolver.miss(miss, client, Transport::Udp, now, &mut out).await;
                    let _ = socket.send_to(&out, client).await;
                });
            }
        }
    }
}

pub struct TcpSettings {
    pub idle_timeout: Duration,
    pub slots: Arc<Semaphore>,
}

/// Accepts TCP clients until `stop`; connections beyond the cap are closed at once.
pub async fn tcp_accept_loop(
    listener: TcpListener,
    resolver: Arc<Resolver>,
    settings: Arc<TcpSettings>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (stream, client) = tokio::select! {
            () = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "TCP accept error");
                    continue;
                }
            },
        };
        let Ok(permit) = Arc::clone(&settings.slots).try_acquire_owned() else {
            metrics::counter!("nodedns_tcp_rejected_total").increment(1);
            continue;
        };
        let (resolver, settings, stop, inner) =
            (Arc::clone(&resolver), Arc::clone(&settings), stop.clone(), tracker.clone());
        tracker.spawn(async move {
            metrics::gauge!("nodedns_tcp_connections").increment(1.0);
            tcp_connection(stream, client, resolver, &settings, stop, inner).await;
            metrics::gauge!("nodedns_tcp_connections").decrement(1.0);
            drop(permit);
        });
    }
}

/// One client connection: length-prefixed queries (RFC 1035 section 4.2.2), pipelined: each is
/// answered as soon as it is ready, in any order (RFC 7766 section 6.2.1.1).
async fn tcp_connection(
    stream: TcpStream,
    client: SocketAddr,
    resolver: Arc<Resolver>,
    settings: &TcpSettings,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(64);
    let write = tokio::spawn(async move {
        while let Some(answer) = rx.recv().await {
            let Ok(len) = u16::try_from(answer.len()) else { continue };
            let mut framed = Vec::with_capacity(answer.len() + 2);
            framed.extend_from_slice(&len.to_be_bytes());
            framed.extend_from_slice(&answer);
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
    });
    let mut buf = Vec::new();
    loop {
        let len = tokio::select! {
            () = stop.cancelled() => break,
            r = tokio::time::timeout(settings.idle_timeout, reader.read_u16()) => match r {
                Ok(Ok(len)) => usize::from(len),
                _ => break,
            },
        };
        buf.resize(len, 0);
        match tokio::time::timeout(settings.idle_timeout, reader.read_exact(&mut buf)).await {
            Ok(Ok(_)) => {}
            _ => break,
        }
        let now = Instant::now();
        let mut out = Vec::new();
        match resolver.answer(&buf, client, Transport::Tcp, now, &mut out) {
            Step::Answer => {
                if tx.send(out).await.is_err() {
                    break;
                }
            }
            Step::Drop => break,
            Step::Miss(miss) => {
                let (resolver, tx) = (Arc::clone(&resolver), tx.clone());
                tracker.spawn(async move {
                    resolver.miss(miss, client, Transport::Tcp, now, &mut out).await;
                    let _ = tx.send(out).await;
                });
            }
        }
    }
    drop(tx);
    let _ = write.await;
}
