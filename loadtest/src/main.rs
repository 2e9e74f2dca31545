//! `nodedns-load`: benchmark helpers. Subcommands:
//! - `gen-cluster`: write a synthetic cluster file and a dnsperf query file;
//! - `zone-memory`: build the zone index of a cluster file and report its heap size;
//! - `kube-bench`: the authority against the fake API server: sync, memory, change latency;
//! - `fanout-bench`: many simulated agents subscribed: memory and notice fan-out time;
//! - `watch-scale`: API watch streams and bytes/s as nodes grow, nodedns vs per-node CoreDNS;
//! - `search-path`: a pod's ndots:5 search-path lookups through the agent, autopath off and on;
//! - `agent-memory`: the agent's RSS holding N cached answers;
//! - `run`: the load generator (closed/open loop, workloads, HDR latency, JSON and SVG output);
//! - `query`: ask one question and print the answer (a dig stand-in for the README demo).

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hickory_proto::op::Message;
use nodedns_load::cluster_gen;

/// Counts live heap bytes so `zone-memory` can report what the index holds.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the only addition is an
// atomic counter update, which cannot affect the validity of the returned memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size, Ordering::Relaxed);
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Parser)]
#[command(name = "nodedns-load", version, about = "nodedns benchmark helpers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The shape of a generated cluster (pods have per-command defaults).
#[derive(clap::Args, Clone, Copy)]
struct ShapeArgs {
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Every Nth service is headless (0: none).
    #[arg(long, default_value_t = 10)]
    headless_every: usize,
    /// Ready endpoints per service.
    #[arg(long, default_value_t = 5)]
    endpoints: usize,
    /// Nodes the pods are spread over.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// The first pod's IP (pod i gets BASE+i); 127.64.0.10 puts pods on loopback so
    /// `nodedns-load run` can send from their addresses.
    #[arg(long, default_value_t = cluster_gen::DEFAULT_POD_BASE)]
    pod_base: std::net::Ipv4Addr,
}

impl ShapeArgs {
    fn with_pods(&self, pods: usize) -> cluster_gen::Shape {
        let ShapeArgs { services, namespaces, headless_every, endpoints, nodes, pod_base } = *self;
        cluster_gen::Shape { namespaces, services, headless_every, endpoints, pods, nodes, pod_base }
    }
}

/// Flags of `watch-scale`, boxed in [`Command`] to keep the enum small.
#[derive(clap::Args)]
struct WatchScaleArgs {
    #[command(flatten)]
    shape: ShapeArgs,
    /// Running pods (every simulated node lists them all at start; see bench-scale.sh).
    #[arg(long, default_value_t = 1_000)]
    pods: usize,
    /// Node counts for the per-node CoreDNS rows (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "10,50,100,250,500")]
    node_counts: Vec<usize>,
    /// Authority replica counts for the nodedns rows (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    replicas: Vec<usize>,
    /// Pod replacements per second (7 API events each).
    #[arg(long, default_value_t = 10.0)]
    replacements_per_s: f64,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 10.0)]
    window: f64,
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Set-ups not started within this many seconds are skipped.
    #[arg(long, default_value_t = 1200)]
    time_limit: u64,
    #[arg(long, default_value = "target/release/nodedns-authority")]
    authority: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic cluster (YAML) and a dnsperf query file over its names.
    GenCluster {
        #[command(flatten)]
        shape: ShapeArgs,
        /// Running pods.
        #[arg(long, default_value_t = 50_000)]
        pods: usize,
        #[arg(long, default_value = "cluster.local")]
        cluster_domain: String,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        queries: Option<PathBuf>,
    },
    /// Parse a cluster file, build its zone index and print the heap the index holds.
    ZoneMemory {
        cluster_file: PathBuf,
        #[arg(long, default_value = "verified")]
        pods: String,
    },
    /// Write the cluster zone of a cluster file in zone-file text (what AXFR would send), so
    /// another server can serve exactly the same records in a benchmark.
    ZoneFile {
        cluster_file: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// TTL of the records (the authority's default is 5 s; a peer in a hit benchmark should
        /// keep its answers as long as the agent keeps cluster answers, until they change).
        #[arg(long, default_value_t = 5)]
        ttl: u32,
    },
    /// Run the authority binary against the fake API server with a generated cluster and measure
    /// initial sync, memory and the time from an API change to the answer.
    KubeBench {
        #[command(flatten)]
        shape: ShapeArgs,
        /// Running pods.
        #[arg(long, default_value_t = 100_000)]
        pods: usize,
        /// Changes whose latency is measured.
        #[arg(long, default_value_t = 200)]
        changes: usize,
        /// The authority binary.
        #[arg(long, default_value = "target/release/nodedns-authority")]
        authority: PathBuf,
        /// Service changes per second made in the background while the latency is measured a
        /// second time (0: skip).
        #[arg(long, default_value_t = 100)]
        churn_rate: u32,
    },
    /// Run the authority binary against the fake API server, subscribe many simulated agents over
    /// gRPC and measure the authority's memory and how long a Service change takes to reach all.
    FanoutBench {
        #[command(flatten)]
        shape: ShapeArgs,
        /// Running pods.
        #[arg(long, default_value_t = 50_000)]
        pods: usize,
        /// Simulated agents (one Subscribe stream and connection each; node i mod --nodes).
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        /// Service changes timed.
        #[arg(long, default_value_t = 50)]
        changes: usize,
        #[arg(long, default_value = "target/release/nodedns-authority")]
        authority: PathBuf,
        /// Runs, each from a fresh start; the summary is their median, min and max.
        #[arg(long, default_value_t = 3)]
        runs: usize,
    },
    /// Count the Kubernetes API load (watch streams, list bytes, watch bytes/s under a fixed rate
    /// of pod churn) of nodedns's authority replicas and of a per-node CoreDNS with `pods
    /// verified` at growing node counts, against the fake API server.
    WatchScale(Box<WatchScaleArgs>),
    /// Resolve names as a pod with ndots:5 does (each search suffix in turn, A and AAAA) through
    /// the agent binary in standalone mode, with autopath off and then on, and report client
    /// round trips, queries and latency per name.
    SearchPath {
        #[arg(long, default_value = "target/release/nodedns-agent")]
        agent: PathBuf,
        /// Names resolved per pass.
        #[arg(long, default_value_t = 2000)]
        names: usize,
        /// Milliseconds the upstream stand-in waits before answering (a real upstream's RTT).
        #[arg(long, default_value_t = 0.0)]
        upstream_delay_ms: f64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Fill the agent's cache (standalone mode, upstream stand-in) with N unique answers and
    /// report its RSS and the cache's own figures.
    AgentMemory {
        #[arg(long, default_value = "target/release/nodedns-agent")]
        agent: PathBuf,
        #[arg(long, default_value_t = 100_000)]
        entries: usize,
        /// Extra flags for the agent, e.g. `--agent-arg=--cache-bytes=67108864`; repeatable.
        #[arg(long = "agent-arg", allow_hyphen_values = true)]
        agent_args: Vec<String>,
    },
    /// Run the upstream stand-in of `search-path` (every `*.example.com` has an A record, the
    /// rest is NXDOMAIN) on ADDR for SECONDS, for benchmarks that start the agent themselves.
    StandInUpstream {
        listen: std::net::IpAddr,
        #[arg(long, default_value_t = 600)]
        seconds: u64,
    },
    /// The load generator: closed or open loop, UDP or TCP, hit/miss/external/search-path
    /// workloads; reports QPS, loss, latency percentiles and round trips per name.
    Run(Box<nodedns_load::generator::RunArgs>),
    /// Ask SERVER one question and print the answer.
    Query {
        /// Server address, e.g. 127.0.0.1:5353.
        server: SocketAddr,
        name: String,
        #[arg(default_value = "A")]
        qtype: String,
        /// Ask over TCP instead of UDP.
        #[arg(long)]
        tcp: bool,
        /// Give up after this many seconds.
        #[arg(long, default_value_t = 3.0)]
        timeout: f64,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::GenCluster { shape, pods, cluster_domain, out, queries } => {
            let shape = shape.with_pods(pods);
            let (services, namespaces) = (shape.services, shape.namespaces);
            std::fs::write(&out, cluster_gen::cluster_yaml(&shape))
                .with_context(|| format!("writing {}", out.display()))?;
            if let Some(q) = queries {
                std::fs::write(&q, cluster_gen::queries(&shape, &cluster_domain))
                    .with_context(|| format!("writing {}", q.display()))?;
            }
            println!("wrote {} ({services} services in {namespaces} namespaces, {pods} pods)", out.display());
        }
        Command::ZoneMemory { cluster_file, pods } => zone_memory(&cluster_file, &pods)?,
        Command::ZoneFile { cluster_file, out, ttl } => zone_file(&cluster_file, &out, ttl)?,
        Command::KubeBench { shape, pods, changes, authority, churn_rate } => {
            let shape = shape.with_pods(pods);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(nodedns_load::kube_bench::run(nodedns_load::kube_bench::Options {
                shape,
                authority,
                changes,
                churn_rate,
            }))?;
        }
        Command::FanoutBench { shape, pods, agents, changes, authority, runs } => {
            let shape = shape.with_pods(pods);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(nodedns_load::fanout_bench::run(nodedns_load::fanout_bench::Options {
                shape,
                authority,
                agents,
                changes,
                runs,
            }))?;
        }
        Command::WatchScale(args) => {
            let WatchScaleArgs {
                shape,
                pods,
                node_counts,
                replicas,
                replacements_per_s,
                window,
                runs,
                time_limit,
                authority,
            } = *args;
            let opts = nodedns_load::watch_scale::Options {
                shape: shape.with_pods(pods),
                authority,
                nodes: node_counts,
                replicas,
                replacements_per_s,
                window: std::time::Duration::try_from_secs_f64(window).context("--window")?,
                runs,
                time_limit: std::time::Duration::from_secs(time_limit),
            };
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(nodedns_load::watch_scale::run(opts))?;
        }
        Command::SearchPath { agent, names, upstream_delay_ms, json } => {
            let opts = nodedns_load::search_path::Options {
                agent,
                names,
                upstream_delay: std::time::Duration::from_secs_f64(upstream_delay_ms.max(0.0) / 1e3),
                json,
            };
            tokio::runtime::Runtime::new()?.block_on(nodedns_load::search_path::run(opts))?
        }
        Command::AgentMemory { agent, entries, agent_args } => {
            let opts = nodedns_load::agent_memory::Options { agent, entries, agent_args };
            tokio::runtime::Runtime::new()?.block_on(nodedns_load::agent_memory::run(opts))?
        }
        Command::StandInUpstream { listen, seconds } => tokio::runtime::Runtime::new()?.block_on(async {
            let upstream =
                nodedns_load::search_path::UpstreamStandIn::start(listen, std::time::Duration::ZERO).await?;
            println!("{}", upstream.addr);
            tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
            upstream.stop();
            anyhow::Ok(())
        })?,
        Command::Run(args) => nodedns_load::generator::run(*args)?,
        Command::Query { server, name, qtype, tcp, timeout } => query(server, &name, &qtype, tcp, timeout)?,
    }
    Ok(())
}

fn zone_memory(path: &PathBuf, pods: &str) -> anyhow::Result<()> {
    let baseline = LIVE.load(Ordering::Relaxed);
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let parsed = nodedns_zone::file::parse_cluster(&text)?;
    drop(text);
    // Everything alive now beyond the baseline is the model (the text and YAML values are gone).
    let state = nodedns_zone::model::ClusterState::from_objects(parsed.objects);
    let state_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(baseline);
    let config =
        nodedns_zone::ZoneConfig { pods: pods.parse().map_err(anyhow::Error::msg)?, ..Default::default() };
    let before = LIVE.load(Ordering::Relaxed);
    let started = Instant::now();
    let index = nodedns_zone::ZoneIndex::build(&state, &config, 1);
    let took = started.elapsed();
    let index_bytes = LIVE.load(Ordering::Relaxed).saturating_sub(before);
    let stats = index.stats();
    println!(
        "objects: {:?}\ncluster model: {:.1} MiB\nzone index: {:.1} MiB ({} records, {} nodes, {} zones)\nindex build: {:.1} ms",
        state.counts().map(|(k, n)| format!("{}={n}", k.as_str())),
        state_bytes as f64 / 1048576.0,
        index_bytes as f64 / 1048576.0,
        stats.records,
        stats.nodes,
        stats.zones,
        took.as_secs_f64() * 1e3
    );
    Ok(())
}

fn zone_file(path: &PathBuf, out: &PathBuf, ttl: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let state =
        nodedns_zone::model::ClusterState::from_objects(nodedns_zone::file::parse_cluster(&text)?.objects);
    let config = nodedns_zone::ZoneConfig { ttl, ..Default::default() };
    let index = nodedns_zone::ZoneIndex::build(&state, &config, 1);
    let records = index.transfer(&config.cluster_domain).context("the cluster zone is missing")?;
    let mut w = std::io::BufWriter::new(
        std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?,
    );
    // AXFR frames the zone with its SOA twice; a zone file holds it once.
    for r in &records[..records.len().saturating_sub(1)] {
        writeln!(w, "{r}")?;
    }
    w.flush()?;
    println!("wrote {} ({} records)", out.display(), records.len() - 1);
    Ok(())
}

fn query(server: SocketAddr, name: &str, qtype: &str, tcp: bool, timeout: f64) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::str::FromStr;
    let qname = hickory_proto::rr::Name::from_ascii(if name.ends_with('.') {
        name.to_owned()
    } else {
        format!("{name}.")
    })?;
    let rtype = hickory_proto::rr::RecordType::from_str(&qtype.to_ascii_uppercase())?;
    let mut msg = Message::query();
    msg.metadata.id = std::process::id() as u16;
    msg.metadata.recursion_desired = true;
    msg.queries.push(hickory_proto::op::Query::query(qname, rtype));
    let bytes = msg.to_vec()?;
    let wait = std::time::Duration::try_from_secs_f64(timeout).context("--timeout")?;
    let timeout = Some(wait);
    let reply = if tcp {
        let mut s = std::net::TcpStream::connect_timeout(&server, wait)?;
        s.set_read_timeout(timeout)?;
        s.write_all(&(bytes.len() as u16).to_be_bytes())?;
        s.write_all(&bytes)?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len)?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        s.read_exact(&mut buf)?;
        buf
    } else {
        let local = if server.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" };
        let s = std::net::UdpSocket::bind(local)?;
        s.set_read_timeout(timeout)?;
        s.send_to(&bytes, server)?;
        let mut buf = vec![0u8; 65535];
        let n = s.recv(&mut buf).with_context(|| format!("no answer from {server} within {wait:?}"))?;
        buf.truncate(n);
        buf
    };
    let answer = Message::from_vec(&reply)?;
    let m = &answer.metadata;
    println!(
        ";; status: {:?}, id: {}, flags:{}{}{}{}",
        m.response_code,
        m.id,
        if m.authoritative { " aa" } else { "" },
        if m.truncation { " tc" } else { "" },
        if m.recursion_desired { " rd" } else { "" },
        if m.recursion_available { " ra" } else { "" }
    );
    for (section, records) in
        [("ANSWER", &answer.answers), ("AUTHORITY", &answer.authorities), ("ADDITIONAL", &answer.additionals)]
    {
        if !records.is_empty() {
            println!(";; {section}");
            for r in records.iter() {
                println!("{r}");
            }
        }
    }
    Ok(())
}
