//! Minimal DNS clients for tests: build a query, send it over UDP or TCP, read the raw response.
//! Every wait is bounded by a timeout, so a server that never answers fails the test instead of
//! hanging it.

use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, bail};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub const TIMEOUT: Duration = Duration::from_secs(5);

/// A query's wire bytes and the length of its question section (for echo checks).
pub struct Built {
    pub bytes: Vec<u8>,
    pub question_len: usize,
}

/// Builds a query for `qname` (sent exactly as written, letter case included) and `qtype`.
pub fn build(qname: &str, qtype: &str, id: u16, edns_payload: Option<u16>) -> anyhow::Result<Built> {
    let name = Name::from_ascii(qname).with_context(|| format!("bad qname {qname:?}"))?;
    let rtype = RecordType::from_str(qtype).map_err(|e| anyhow::anyhow!("bad qtype {qtype:?}: {e}"))?;
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    // Wire name (each label with its length byte, then the root) plus type and class.
    let question_len = name.iter().map(|l| l.len() + 1).sum::<usize>() + 1 + 4;
    msg.queries.push(Query::query(name, rtype));
    if let Some(payload) = edns_payload {
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        msg.edns = Some(edns);
    }
    Ok(Built { bytes: msg.to_vec()?, question_len })
}

/// Sends raw bytes over UDP from an ephemeral port on `bind` and returns the first reply.
pub async fn udp_raw(server: SocketAddr, bind: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let sock = UdpSocket::bind(bind).await.with_context(|| format!("binding client socket {bind}"))?;
    sock.send_to(bytes, server).await?;
    let mut buf = vec![0u8; 65535];
    let (n, _) = tokio::time::timeout(TIMEOUT, sock.recv_from(&mut buf))
        .await
        .with_context(|| format!("no UDP answer from {server} within {TIMEOUT:?}"))??;
    buf.truncate(n);
    Ok(buf)
}

/// Sends UDP and expects no reply within `wait` (for packets a server must drop).
pub async fn udp_expect_silence(server: SocketAddr, bytes: &[u8], wait: Duration) -> anyhow::Result<()> {
    let sock = UdpSocket::bind(loopback_any(server)).await?;
    sock.send_to(bytes, server).await?;
    let mut buf = vec![0u8; 65535];
    match tokio::time::timeout(wait, sock.recv_from(&mut buf)).await {
        Err(_) => Ok(()),
        Ok(Ok((n, _))) => bail!("expected no answer, got {n} bytes"),
        Ok(Err(e)) => Err(e.into()),
    }
}

/// One TCP connection; queries are length-prefixed (RFC 1035 §4.2.2).
pub struct Tcp(TcpStream);

impl Tcp {
    pub async fn connect(server: SocketAddr) -> anyhow::Result<Self> {
        let s = tokio::time::timeout(TIMEOUT, TcpStream::connect(server))
            .await
            .context("TCP connect timed out")??;
        Ok(Tcp(s))
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        let len = u16::try_from(bytes.len())?;
        self.0.write_all(&len.to_be_bytes()).await?;
        self.0.write_all(bytes).await?;
        Ok(())
    }

    pub async fn recv(&mut self) -> anyhow::Result<Vec<u8>> {
        let mut len = [0u8; 2];
        tokio::time::timeout(TIMEOUT, self.0.read_exact(&mut len)).await.context("TCP read timed out")??;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        tokio::time::timeout(TIMEOUT, self.0.read_exact(&mut buf)).await.context("TCP read timed out")??;
        Ok(buf)
    }

    /// Whether the server closed the connection (EOF within the timeout).
    pub async fn closed_within(&mut self, wait: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(tokio::time::timeout(wait, self.0.read(&mut b)).await, Ok(Ok(0)) | Ok(Err(_)))
    }
}

pub async fn tcp_raw(server: SocketAddr, bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut c = Tcp::connect(server).await?;
    c.send(bytes).await?;
    c.recv().await
}

/// An unspecified-port address on the loopback of `server`'s family.
pub fn loopback_any(server: SocketAddr) -> SocketAddr {
    if server.is_ipv6() { "[::1]:0".parse().expect("static") } else { "127.0.0.1:0".parse().expect("static") }
}

/// Asks `qname`/`qtype` over UDP (EDNS 1232), retrying over TCP when the answer is truncated, as a
/// stub resolver does. Returns the parsed message and the raw bytes.
pub async fn ask(server: SocketAddr, qname: &str, qtype: &str) -> anyhow::Result<(Message, Vec<u8>)> {
    let q = build(qname, qtype, 0x4242, Some(1232))?;
    let raw = udp_raw(server, loopback_any(server), &q.bytes).await?;
    let msg = Message::from_vec(&raw)?;
    if msg.metadata.truncation {
        let raw = tcp_raw(server, &q.bytes).await?;
        return Ok((Message::from_vec(&raw)?, raw));
    }
    Ok((msg, raw))
}

/// GET `path` from an HTTP admin listener (one request, `Connection: close`); returns the status
/// code and the body. Bounded by [`TIMEOUT`].
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(TIMEOUT, TcpStream::connect(addr))
        .await
        .context("admin connect timed out")??;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = String::new();
    tokio::time::timeout(TIMEOUT, s.read_to_string(&mut out)).await.context("admin read timed out")??;
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    Ok((status, out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
}
