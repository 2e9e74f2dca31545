//! Forwarding to upstream resolvers (and stub-domain servers): UDP from a fresh random port per
//! query, retried over TCP on truncation (RFC 7766), with failover between servers within one time
//! budget and a health mark per server so a dead one is tried last until it answers again.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{info, warn};

use crate::wire;

/// Largest UDP answer read from an upstream (a full buffer means TCP).
const UDP_ANSWER_MAX: usize = 4096;

/// Consecutive failures after which a server counts as down.
const DOWN_AFTER: u32 = 3;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum ForwardError {
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug)]
struct Server {
    addr: SocketAddr,
    failures: AtomicU32,
}

/// A set of servers tried in order (healthy ones first).
#[derive(Debug, Clone)]
pub struct Forwarder {
    servers: Arc<[Server]>,
    timeout: Duration,
    /// For logs: "upstream" or the stub domain.
    what: Arc<str>,
}

/// Why one attempt failed.
enum Attempt {
    /// Try the next server.
    Failed(&'static str),
}

impl Forwarder {
    pub fn new(servers: &[SocketAddr], timeout: Duration, what: &str) -> Self {
        let servers =
            servers.iter().map(|addr| Server { addr: *addr, failures: AtomicU32::new(0) }).collect();
        Self { servers, timeout, what: what.into() }
    }

    pub fn servers(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.servers.iter().map(|s| s.addr)
    }

    /// Takes over the health marks of `old`'s servers that are also ours (a config reload
    /// rebuilds the forwarders; a server known to be down stays tried last, and its
    /// `nodedns_upstream_healthy` gauge recovers when it answers).
    pub fn keep_health(&self, old: &Forwarder) {
        for server in self.servers.iter() {
            if let Some(o) = old.servers.iter().find(|o| o.addr == server.addr) {
                server.failures.store(o.failures.load(Ordering::Relaxed), Ordering::Relaxed);
            }
        }
    }

    fn mark(&self, server: &Server, ok: bool) {
        if ok {
            if server.failures.swap(0, Ordering::Relaxed) >= DOWN_AFTER {
                info!(server = %server.addr, to = %self.what, "upstream healthy again");
                metrics::gauge!("nodedns_upstream_healthy", "server" => server.addr.to_string()).set(1.0);
            }
        } else if server.failures.fetch_add(1, Ordering::Relaxed) + 1 == DOWN_AFTER {
            warn!(server = %server.addr, to = %self.what, failures = DOWN_AFTER, "upstream marked down; tried last until it answers");
            metrics::gauge!("nodedns_upstream_healthy", "server" => server.addr.to_string()).set(0.0);
        }
    }

    /// Sends `query` (a client's query; its id is replaced on the wire) and returns the first
    /// usable response (NOERROR or NXDOMAIN; else the last SERVFAIL/REFUSED seen once every
    /// server was tried), with the client's id.
    pub async fn forward(&self, query: &[u8]) -> Result<Vec<u8>, ForwardError> {
        let deadline = Instant::now() + self.timeout;
        let mut order: Vec<&Server> = self.servers.iter().collect();
        order.sort_by_key(|s| s.failures.load(Ordering::Relaxed) >= DOWN_AFTER);
        // Each server gets an equal share of what is left, at least 250 ms.
        let mut last_bad: Option<Vec<u8>> = None;
        for (i, server) in order.iter().enumerate() {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let left = deadline - now;
            let share = (left / u32::try_from(order.len() - i).unwrap_or(1))
                .max(Duration::from_millis(250))
                .min(left);
            let started = Instant::now();
            let result = tokio::time::timeout(share, self.exchange(server.addr, query)).await;
            metrics::histogram!("nodedns_upstream_request_duration_seconds")
                .record(started.elapsed().as_secs_f64());
            match result {
                Ok(Ok(response)) => {
                    let rcode = response.get(3).map_or(2, |b| b & 0x0f);
                    self.mark(server, rcode != 2 && rcode != 5);
                    if rcode == 0 || rcode == 3 {
                        return Ok(response);
                    }
                    last_bad = Some(response);
                }
                Ok(Err(Attempt::Failed(why))) => {
                    tracing::debug!(server = %server.addr, why, "upstream attempt failed");
                    self.mark(server, false);
                }
                Err(_) => self.mark(server, false),
            }
        }
        last_bad.ok_or(ForwardError::Timeout(self.timeout))
    }

    /// One server: UDP, then TCP if the answer is truncated.
    async fn exchange(&self, server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, Attempt> {
        let client_id = [query[0], query[1]];
        let id: u16 = rand::random();
        let mut out = query.to_vec();
        out[..2].copy_from_slice(&id.to_be_bytes());
        let bind: SocketAddr =
            if server.is_ipv4() { ([0, 0, 0, 0], 0).into() } else { ([0u16; 8], 0).into() };
        let socket = UdpSocket::bind(bind).await.map_err(|_| Attempt::Failed("bind"))?;
        socket.connect(server).await.map_err(|_| Attempt::Failed("connect"))?;
        socket.send(&out).await.map_err(|_| Attempt::Failed("send"))?;
        // Room for any EDNS answer worth taking over UDP; one that fills it may have been cut
        // and is fetched again over TCP.
        let mut buf = vec![0u8; UDP_ANSWER_MAX];
        let response = loop {
            let n = socket.recv(&mut buf).await.map_err(|_| Attempt::Failed("recv (refused?)"))?;
            if n == buf.len() {
                break self.tcp(server, &out).await?;
            }
            let r = &buf[..n];
            // Only the answer to our question from our id (RFC 5452 section 9.1).
            if n >= wire::HEADER && r[..2] == id.to_be_bytes() && r[2] & 0x80 != 0 && same_question(query, r)
            {
                break r.to_vec();
            }
        };
        let mut response = if response[2] & 0x02 != 0 { self.tcp(server, &out).await? } else { response };
        response[..2].copy_from_slice(&client_id);
        Ok(response)
    }

    async fn tcp(&self, server: SocketAddr, query: &[u8]) -> Result<Vec<u8>, Attempt> {
        let mut stream = TcpStream::connect(server).await.map_err(|_| Attempt::Failed("tcp connect"))?;
        let len = u16::try_from(query.len()).map_err(|_| Attempt::Failed("query too long"))?;
        let mut framed = Vec::with_capacity(query.len() + 2);
        framed.extend_from_slice(&len.to_be_bytes());
        framed.extend_from_slice(query);
        stream.write_all(&framed).await.map_err(|_| Attempt::Failed("tcp write"))?;
        let n = stream.read_u16().await.map_err(|_| Attempt::Failed("tcp read"))?;
        let mut response = vec![0u8; usize::from(n)];
        stream.read_exact(&mut response).await.map_err(|_| Attempt::Failed("tcp read"))?;
        if response.len() < wire::HEADER || response[..2] != query[..2] {
            return Err(Attempt::Failed("tcp answer id mismatch"));
        }
        Ok(response)
    }
}

/// Whether `response` answers the question of `query` (names compared case-insensitively).
fn same_question(query: &[u8], response: &[u8]) -> bool {
    let (Some(q_end), Some(r_end)) = (wire::parse_question_end(query), wire::parse_question_end(response))
    else {
        return false;
    };
    q_end == r_end && query[wire::HEADER..q_end].eq_ignore_ascii_case(&response[wire::HEADER..r_end])
}
