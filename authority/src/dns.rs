//! DNS over UDP and TCP: binding the sockets, the receive loops, and the one `respond` place that
//! sends, counts and logs every answer. Everything between bytes in and bytes out is
//! [`nodedns_zone::serve`], and, for names outside the zones and ExternalName aliases leading
//! out of them, [`crate::forward`].

use std::net::{SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{DNSClass, Name, RecordType};
use nodedns_agent::respond::ResponseFlags;
use nodedns_agent::rewrite::{self, LiveRewrites};
use nodedns_agent::wire as agent_wire;
use nodedns_grpc::TransferAcl;
use nodedns_zone::{ClusterStore, Context, Served, Transport, serve};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::forward::{Forwarding, Plan};
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
    /// Names outside the zones (`--upstream`): routes swapped by a config reload.
    pub forwarding: Arc<Forwarding>,
    /// Forwarded UDP queries wait here, off the receive loop (shutdown waits for them).
    pub tasks: TaskTracker,
    /// Whether answers come round-robin (not `--no-rotate`); swapped by a config reload.
    pub rotate: AtomicBool,
    /// Answers turned so far: each turns its RRsets one step on from the last.
    pub turns: AtomicU32,
    /// `--rewrite` rules, swapped by a config reload.
    pub rewrites: LiveRewrites,
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
        let mut served = serve(&index, bytes, &ctx);
        // Round-robin A, AAAA, MX and SRV RRsets (CoreDNS `loadbalance`); a zone transfer's
        // several messages are the zone, not an answer.
        if let [msg] = served.messages.as_mut_slice()
            && self.rotate.load(Ordering::Relaxed)
        {
            nodedns_zone::rotate::rotate(msg, self.turns.fetch_add(1, Ordering::Relaxed));
        }
        served
    }

    /// The name a `--rewrite` rule resolves instead of the one `packet` asks, if any (never for
    /// a zone transfer: the zone's records keep their names).
    fn rewrite_target(&self, packet: &[u8]) -> Option<String> {
        if !self.rewrites.any() {
            return None;
        }
        let mut key = Vec::new();
        let query = agent_wire::parse_query(packet, &mut key).ok()?;
        if matches!(query.qtype, 251 | 252) {
            return None;
        }
        self.rewrites.target(&agent_wire::key_name(&key))
    }

    /// A query a `--rewrite` rule matched, answered as the query for `target` would be (the
    /// zones, then forwarding), under the asked name ([`rewrite::answer_as_asked`]). An answer
    /// that cannot be turned back is SERVFAIL.
    async fn rewritten(
        &self,
        packet: &[u8],
        target: &str,
        transport: Transport,
        peer: SocketAddr,
        log: bool,
    ) -> Served {
        let mut key = Vec::new();
        let Ok(query) = agent_wire::parse_query(packet, &mut key) else {
            return self.answer(packet, transport, peer, log);
        };
        let Some(tpacket) = nodedns_agent::autopath::candidate_query(
            packet,
            query.question_end,
            query.qtype,
            query.qclass,
            target,
        ) else {
            return self.answer(packet, transport, peer, log);
        };
        let mut served = self.answer(&tpacket, transport, peer, log);
        if let Some(plan) = self.plan(&served) {
            served = self.forwarding.complete(plan, &tpacket, served, transport, peer).await;
        }
        let limit = match transport {
            Transport::Udp => query.udp_limit().min(usize::from(nodedns_zone::handler::EDNS_PAYLOAD)),
            Transport::Tcp => usize::from(u16::MAX),
        };
        let back = match served.messages.as_slice() {
            [msg] => rewrite::answer_as_asked(msg, packet, target, limit),
            _ => None,
        };
        let out = back.unwrap_or_else(|| {
            let mut out = Vec::new();
            agent_wire::error_response(packet, Some(&query), 2, &mut out);
            out
        });
        served.rcode = out.get(3).map(|b| ResponseCode::from_low(b & 0x0f));
        served.truncated = out.get(2).is_some_and(|b| b & 0x02 != 0);
        served.messages = vec![out];
        served.qname = Name::from_ascii(agent_wire::key_name(&key)).ok();
        served.asked.size = packet.len();
        served
    }

    /// What forwarding does with this answer (usually nothing).
    fn plan(&self, served: &Served) -> Option<Plan> {
        self.forwarding.plan(served, &self.store)
    }

    /// Counts, sends and logs one UDP answer.
    async fn reply_udp(
        &self,
        socket: &UdpSocket,
        served: &Served,
        peer: SocketAddr,
        started: Instant,
        log: bool,
    ) {
        self.count(served, Transport::Udp, peer, started);
        for msg in &served.messages {
            if let Err(e) = socket.send_to(msg, peer).await {
                debug!(client = %peer, error = %e, "UDP send failed");
            }
        }
        self.log(log, served, Transport::Udp, peer, started);
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
            self.log_error(rcode, served, peer);
        }
        if matches!(served.qtype, Some(RecordType::AXFR | RecordType::IXFR)) {
            let sent = served.rcode == Some(ResponseCode::NoError);
            metrics::transfer(sent);
            let zone = served.qname.as_ref().map(ToString::to_string).unwrap_or_default();
            info!(client = %peer, zone, sent, "zone transfer request");
        }
    }

    /// The rate-limited line of an error answer a client sees (SERVFAIL, FORMERR, NOTIMP,
    /// BADVERS): name, type, client and cause. REFUSED is policy (a name outside the zones, a
    /// transfer not allowed), not an error, and is only counted.
    fn log_error(&self, rcode: ResponseCode, served: &Served, peer: SocketAddr) {
        let cause = match rcode {
            ResponseCode::ServFail if !self.store.index().is_complete() => "no complete cluster loaded yet",
            ResponseCode::ServFail => "forwarding failed or the answer could not be encoded",
            ResponseCode::FormErr => "malformed query",
            ResponseCode::NotImp => "opcode not implemented",
            ResponseCode::BADVERS => "EDNS version above 0",
            _ => return,
        };
        nodedns_common::client_error!(
            client = %peer,
            name = %served.qname.as_ref().map(ToString::to_string).unwrap_or_default(),
            qtype = %served.qtype.map(|t| t.to_string()).unwrap_or_default(),
            rcode = metrics::rcode_name(rcode),
            cause,
            "error answer sent"
        );
    }

    /// The optional per-query log line, written after the reply is on its way: the fields of
    /// CoreDNS's `log` plugin (`{remote}:{port} {>id} {type} {class} {name} {proto} {size} {>do}
    /// {>bufsize} {rcode} {>rflags} {rsize} {duration}`), so `--log-format json` has them as keys.
    fn log(&self, log: bool, served: &Served, transport: Transport, peer: SocketAddr, started: Instant) {
        if !log || served.dropped.is_some() {
            return;
        }
        let first = served.messages.first().map_or(&[][..], Vec::as_slice);
        let header = |i: usize| first.get(i).copied().unwrap_or(0);
        let a = &served.asked;
        info!(
            client = %peer,
            id = u16::from_be_bytes([header(0), header(1)]),
            qtype = %served.qtype.map(|t| t.to_string()).unwrap_or_default(),
            qclass = %DNSClass::from(a.qclass),
            name = %served.qname.as_ref().map(ToString::to_string).unwrap_or_default(),
            proto = transport.as_str(),
            size = a.size,
            dnssec_ok = a.dnssec_ok,
            bufsize = a.bufsize,
            rcode = served.rcode.map_or("", metrics::rcode_name),
            rflags = %ResponseFlags(header(2), header(3)),
            rsize = served.messages.iter().map(Vec::len).sum::<usize>(),
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
        if let Some(target) = shared.rewrite_target(&buf[..len]) {
            let (socket, task_shared, packet) =
                (Arc::clone(&socket), Arc::clone(&shared), buf[..len].to_vec());
            shared.tasks.spawn(async move {
                let shared = task_shared;
                let served = shared.rewritten(&packet, &target, Transport::Udp, peer, log).await;
                shared.reply_udp(&socket, &served, peer, started, log).await;
            });
            continue;
        }
        let served = shared.answer(&buf[..len], Transport::Udp, peer, log);
        if let Some(plan) = shared.plan(&served) {
            // Forwarding waits on another server: in a task, so this loop goes on answering.
            let (socket, task_shared, packet) =
                (Arc::clone(&socket), Arc::clone(&shared), buf[..len].to_vec());
            shared.tasks.spawn(async move {
                let shared = task_shared;
                let served = shared.forwarding.complete(plan, &packet, served, Transport::Udp, peer).await;
                shared.reply_udp(&socket, &served, peer, started, log).await;
            });
            continue;
        }
        shared.reply_udp(&socket, &served, peer, started, log).await;
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
        // In line: a connection's answers go out in order.
        let served = match shared.rewrite_target(&buf[..n]) {
            Some(target) => shared.rewritten(&buf[..n], &target, Transport::Tcp, peer, log).await,
            None => {
                let served = shared.answer(&buf[..n], Transport::Tcp, peer, log);
                match shared.plan(&served) {
                    Some(plan) => {
                        shared.forwarding.complete(plan, &buf[..n], served, Transport::Tcp, peer).await
                    }
                    None => served,
                }
            }
        };
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
