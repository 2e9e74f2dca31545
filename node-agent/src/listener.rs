//! Sockets and the loops that read queries. Every socket is made with socket2 with SO_REUSEADDR,
//! SO_REUSEPORT (one UDP socket per worker, and a new agent instance can bind the same address
//! while the old one still serves: handoff on upgrade) and IP_FREEBIND (the link-local address
//! need not be on an interface yet). A cache hit is answered in the receive loop, in batches; a
//! miss is handed to a task.

use std::io::{IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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

/// Binds a DNS UDP socket with a receive buffer of `recv_buffer` bytes (0: the kernel default).
pub fn bind_udp(addr: SocketAddr, recv_buffer: usize) -> Result<std::net::UdpSocket, BindError> {
    let s =
        socket(addr, Type::DGRAM, Protocol::UDP).map_err(|source| BindError { what: "UDP", addr, source })?;
    if recv_buffer > 0 {
        // SO_RCVBUF is capped at net.core.rmem_max; SO_RCVBUFFORCE passes the cap with
        // CAP_NET_ADMIN (the DaemonSet grants it). Either failing leaves what the kernel gave.
        let _ = s.set_recv_buffer_size(recv_buffer);
        if s.recv_buffer_size().unwrap_or(0) < recv_buffer {
            let _ = nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::RcvBufForce, &recv_buffer);
        }
    }
    Ok(s.into())
}

/// The receive buffer a UDP socket really has (the kernel reports twice what was set: half of
/// it is bookkeeping).
pub fn recv_buffer_size(socket: &std::net::UdpSocket) -> usize {
    socket2::SockRef::from(socket).recv_buffer_size().unwrap_or(0)
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
    pub fn bind(addr: SocketAddr, workers: usize, recv_buffer: usize) -> Result<Self, BindError> {
        let first = bind_udp(addr, recv_buffer)?;
        let addr = first.local_addr().map_err(|source| BindError { what: "UDP", addr, source })?;
        let mut udp = vec![first];
        for _ in 1..workers.max(1) {
            udp.push(bind_udp(addr, recv_buffer)?);
        }
        let tcp = bind_tcp(addr)?;
        Ok(Self { addr, udp, tcp })
    }
}

/// Datagrams read or written per system call.
const BATCH: usize = 32;
/// The smallest batch a `recvmmsg` offers to take (see `udp_batch_loop`).
const MIN_BATCH: usize = 4;
/// Receive buffer per datagram: queries are small; a larger one is cut and then rejected.
const QUERY_MAX: usize = 4096;

fn socket_addr(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    s.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// Takes a UDP socket out of its SO_REUSEPORT group without losing what it has queued, so a
/// restart hands the address to the new instance query by query: the kernel's reuseport
/// selection skips connected UDP sockets (Linux ≥ 5.x, `reuseport_select_sock_by_hash`), and a
/// connected socket matches only its peer, so from here on new queries go to the other
/// instance's sockets (or, with none, are refused as after a close) while this one still reads
/// and answers its queue (replies name their destination, which a connected socket allows).
/// The peer is the socket's own address, which sends it nothing.
pub fn leave_reuseport_group(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    socket.connect(socket.local_addr()?)
}

/// How often a blocked receive wakes up to look for `stop`.
pub const STOP_CHECK: Duration = Duration::from_millis(200);

/// Serves one UDP socket (blocking, with a [`STOP_CHECK`] receive timeout) from a blocking
/// thread: `recvmmsg` waits for the first query and takes up to 32 already queued
/// (MSG_WAITFORONE), the cache hits are answered in place and sent with one `sendmmsg`; misses
/// go to tasks on the runtime, which send their answer on the same socket (a UDP send does not
/// block). Two system calls per packet when queries come one at a time, fewer when they queue:
/// the hit path stays near the cost of a do-nothing reflector (`../shared/perf-notes.md`).
pub fn udp_batch_loop(
    socket: Arc<std::net::UdpSocket>,
    resolver: Arc<Resolver>,
    stop: CancellationToken,
    tracker: TaskTracker,
    runtime: tokio::runtime::Handle,
) {
    let fd = socket.as_raw_fd();
    let mut bufs: Box<[[u8; QUERY_MAX]; BATCH]> = Box::new([[0u8; QUERY_MAX]; BATCH]);
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut recv_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut send_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut lens = [0usize; BATCH];
    let mut froms: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    let mut tos: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    // How many datagrams the next recvmmsg offers to take: twice the last call's haul, at least
    // MIN_BATCH. Setting up 32 message headers per call costs more than the DNS work of a hit
    // when queries arrive one at a time (50k QPS is one every 20 µs); under a burst the batch
    // is back at 32 within three calls.
    let mut want = MIN_BATCH;
    // After `stop`, what is already queued is still answered (see `leave_reuseport_group`): the
    // loop reads without waiting until the queue is empty, then ends.
    let mut draining = false;
    loop {
        if !draining && stop.is_cancelled() {
            draining = true;
            want = BATCH;
        }
        let flags = if draining { MsgFlags::MSG_DONTWAIT } else { MsgFlags::MSG_WAITFORONE };
        let received = {
            let mut iovs: [[IoSliceMut<'_>; 1]; BATCH] =
                bufs.each_mut().map(|b| [IoSliceMut::new(&mut b[..])]);
            match recvmmsg(fd, &mut recv_headers, iovs[..want].iter_mut(), flags, None) {
                Ok(results) => {
                    let mut n = 0;
                    for (i, r) in results.enumerate() {
                        // A datagram cut to the buffer is not a query we can read: drop it.
                        let cut = r.flags.contains(MsgFlags::MSG_TRUNC);
                        lens[i] = if cut { 0 } else { r.bytes };
                        froms[i] = r.address;
                        n = i + 1;
                    }
                    n
                }
                // The receive timeout (EAGAIN) or an interrupted call: look at `stop`, go on.
                Err(_) => 0,
            }
        };
        // A read side shut down (at stop) reads as empty datagrams without a sender.
        if draining && froms[..received].iter().all(Option::is_none) {
            break;
        }
        if !draining {
            want = (received * 2).clamp(MIN_BATCH, BATCH);
        }
        let now = Instant::now();
        tos.clear();
        for i in 0..received {
            if froms[i].is_none() && lens[i] == 0 {
                continue;
            }
            let (Some(client), true) = (froms[i].as_ref().and_then(socket_addr), lens[i] > 0) else {
                crate::respond::dropped("too_long");
                continue;
            };
            let out = &mut outs[tos.len()];
            match resolver.answer(&bufs[i][..lens[i]], client, Transport::Udp, now, out) {
                Step::Answer => tos.push(froms[i]),
                Step::AnswerAndPrefetch(miss) => {
                    tos.push(froms[i]);
                    let resolver = Arc::clone(&resolver);
                    runtime.spawn(tracker.track_future(async move {
                        resolver.prefetch(miss, client, Transport::Udp).await;
                    }));
                }
                Step::Drop => {}
                Step::Miss(miss) => {
                    let (socket, resolver) = (Arc::clone(&socket), Arc::clone(&resolver));
                    runtime.spawn(tracker.track_future(async move {
                        let mut out = Vec::with_capacity(1232);
                        resolver.miss(miss, client, Transport::Udp, now, &mut out).await;
                        let _ = socket.send_to(&out, client);
                    }));
                }
            }
        }
        if tos.is_empty() {
            continue;
        }
        let slices: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| [IoSlice::new(&outs[i])]);
        if let Err(e) =
            sendmmsg(fd, &mut send_headers, slices[..tos.len()].iter(), &tos, [], MsgFlags::empty())
        {
            tracing::debug!(error = %e, "UDP send error");
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
            Step::AnswerAndPrefetch(miss) => {
                let refresh = Arc::clone(&resolver);
                tracker.spawn(async move { refresh.prefetch(miss, client, Transport::Tcp).await });
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
