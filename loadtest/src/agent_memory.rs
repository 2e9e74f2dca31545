//! `nodedns-load agent-memory`: the agent's resident memory holding a given number of cached
//! answers. Starts the agent binary in standalone mode with the upstream stand-in of
//! [`crate::search_path`] (every `*.example.com` has an A record), asks it `--entries` unique names
//! (at most `WINDOW` outstanding, each answer cached for 300 s), and reports the cache's own
//! figures from `/metrics` next to the process's RSS before and after.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RecordType};

use crate::kube_bench::{http_get, rss};
use crate::search_path::{StandaloneAgent, UpstreamStandIn};

/// Queries outstanding at once.
const WINDOW: usize = 64;

pub struct Options {
    pub agent: PathBuf,
    pub entries: usize,
    /// Extra agent flags (e.g. `--cache-bytes=...`).
    pub agent_args: Vec<String>,
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// Sends `names` unique A queries with at most [`WINDOW`] outstanding; returns answers received.
fn fill(server: SocketAddr, names: usize) -> anyhow::Result<usize> {
    let socket = UdpSocket::bind("127.0.0.1:0")?;
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut buf = [0u8; 4096];
    let (mut sent, mut answered) = (0usize, 0usize);
    while sent < names {
        if Instant::now() > deadline {
            bail!("filling the cache took over 600 s ({answered} of {names} answered)");
        }
        let batch = WINDOW.min(names - sent);
        for i in sent..sent + batch {
            let mut msg = Message::query();
            msg.metadata.id = (i % 65536) as u16;
            msg.metadata.recursion_desired = true;
            msg.queries.push(Query::query(Name::from_ascii(format!("n{i}.example.com."))?, RecordType::A));
            socket.send_to(&msg.to_vec()?, server)?;
        }
        sent += batch;
        for _ in 0..batch {
            match socket.recv_from(&mut buf) {
                Ok(_) => answered += 1,
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) =>
                {
                    break;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(answered)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let upstream = UpstreamStandIn::start("127.0.0.72".parse()?, Duration::ZERO).await?;
    let agent = StandaloneAgent::start(&opts.agent, upstream.addr, &opts.agent_args).await?;
    let (start_rss, _) = rss(agent.pid());
    let (server, entries) = (agent.listen, opts.entries);
    let answered = tokio::task::spawn_blocking(move || fill(server, entries)).await??;
    let (_, body) = http_get(agent.admin, "/metrics").context("scraping the agent's /metrics")?;
    let (now_rss, peak_rss) = rss(agent.pid());
    let cached = metric(&body, "coredns_cache_entries").unwrap_or(0.0);
    let bytes = metric(&body, "nodedns_cache_bytes").unwrap_or(0.0);
    println!("| figure | value |");
    println!("|---|---|");
    println!("| unique names asked / answered | {entries} / {answered} |");
    println!("| coredns_cache_entries | {cached} |");
    println!("| nodedns_cache_bytes (the cache's own weight) | {:.1} MB |", bytes / 1e6);
    println!("| RSS at start | {start_rss:.1} MiB |");
    println!("| RSS holding the entries (peak) | {now_rss:.1} MiB ({peak_rss:.1} MiB) |");
    if cached > 0.0 {
        println!(
            "| RSS above start per entry | {:.0} bytes |",
            (now_rss - start_rss) * 1024.0 * 1024.0 / cached
        );
    }
    drop(agent);
    upstream.stop();
    Ok(())
}
