//! A stand-in upstream resolver on loopback (UDP and TCP on one port-0 address), answering by
//! the first label of the name asked:
//! - `big.*`: 40 A records; over UDP only a truncated answer (TC), so a client must retry on TCP;
//! - `servfail.*`: SERVFAIL; `nx.*`: NXDOMAIN with an SOA (negative TTL 60);
//! - anything else: one A record, 192.0.2.1, TTL 300.
//!
//! It counts the queries it gets per transport, leaving out the agent's loop probes (names under
//! `nodedns-loop.invalid.`). [`silent`] gives an address that never answers.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};

pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub udp_queries: Arc<AtomicUsize>,
    pub tcp_queries: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Whether `query` is the agent's loop probe (not counted).
fn is_probe(query: &[u8]) -> bool {
    Message::from_vec(query)
        .ok()
        .and_then(|m| m.queries.first().map(|q| q.name().to_ascii().to_ascii_lowercase()))
        .is_some_and(|n| n.ends_with(".nodedns-loop.invalid."))
}

fn answer(query: &[u8], udp: bool) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    let question = q.queries.first()?.clone();
    let mut r = Message::new(q.metadata.id, MessageType::Response, q.metadata.op_code);
    r.metadata.recursion_desired = q.metadata.recursion_desired;
    r.metadata.recursion_available = true;
    r.queries.push(question.clone());
    let name = question.name().clone();
    let first =
        name.iter().next().map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).unwrap_or_default();
    match first.as_str() {
        "big" if udp => r.metadata.truncation = true,
        "big" => {
            for i in 0..40u8 {
                r.answers.push(Record::from_rdata(
                    name.clone(),
                    300,
                    RData::A(A(Ipv4Addr::new(192, 0, 2, i))),
                ));
            }
        }
        "servfail" => r.metadata.response_code = ResponseCode::ServFail,
        "nx" => {
            r.metadata.response_code = ResponseCode::NXDomain;
            let apex = name.base_name();
            let soa = SOA::new(
                Name::from_ascii("ns.test.").ok()?,
                Name::from_ascii("h.test.").ok()?,
                1,
                60,
                60,
                60,
                60,
            );
            r.authorities.push(Record::from_rdata(apex, 60, RData::SOA(soa)));
        }
        _ => r.answers.push(Record::from_rdata(name, 300, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))),
    }
    r.to_vec().ok()
}

impl FakeUpstream {
    pub async fn start() -> std::io::Result<Self> {
        Self::start_on("127.0.0.1".parse().expect("static address")).await
    }

    /// Listens on `ip`, port 0.
    pub async fn start_on(ip: std::net::IpAddr) -> std::io::Result<Self> {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        let addr = udp.local_addr()?;
        let tcp = TcpListener::bind(addr).await?;
        let (udp_queries, tcp_queries) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let count = Arc::clone(&udp_queries);
        let udp_task = tokio::spawn(async move {
            let mut buf = vec![0u8; 65535];
            while let Ok((n, from)) = udp.recv_from(&mut buf).await {
                if !is_probe(&buf[..n]) {
                    count.fetch_add(1, Ordering::Relaxed);
                }
                if let Some(a) = answer(&buf[..n], true) {
                    let _ = udp.send_to(&a, from).await;
                }
            }
        });
        let count = Arc::clone(&tcp_queries);
        let tcp_task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                let count = Arc::clone(&count);
                tokio::spawn(async move {
                    while let Ok(len) = stream.read_u16().await {
                        let mut q = vec![0u8; usize::from(len)];
                        if stream.read_exact(&mut q).await.is_err() {
                            return;
                        }
                        if !is_probe(&q) {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        let Some(a) = answer(&q, false) else { return };
                        let mut framed = (a.len() as u16).to_be_bytes().to_vec();
                        framed.extend_from_slice(&a);
                        if stream.write_all(&framed).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Ok(Self { addr, udp_queries, tcp_queries, tasks: vec![udp_task, tcp_task] })
    }

    pub fn queries(&self) -> usize {
        self.udp_queries.load(Ordering::Relaxed) + self.tcp_queries.load(Ordering::Relaxed)
    }
}

/// A UDP address that swallows queries: hold the socket as long as the address must stay silent.
pub fn silent() -> std::io::Result<(SocketAddr, std::net::UdpSocket)> {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
    Ok((socket.local_addr()?, socket))
}
