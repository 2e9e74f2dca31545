//! The DNS load generator behind `nodedns-load run` (a library of its own, free of Kubernetes
//! crates, so the agent's tests can put load on it too). Closed loop (N names in flight) or open loop (a
//! fixed rate of names per second), over UDP or TCP, always bounded by a duration and optionally a
//! count. Workloads follow what pods send: cache hits over a name set (Zipf popularity), unique
//! cluster misses, unique external names, and the full glibc/musl search-path sequence of a pod
//! with `ndots:5`, sent from the pod's own address so a server doing autopath can recognise it.
//!
//! Stages: [`workload`] decides what to ask, [`engine`] sends and receives on one thread per
//! `--threads`, [`report`] turns the merged counts and HDR histograms into the table, JSON and SVG.

pub mod engine;
pub mod report;
pub mod workload;

pub use report::Report;

use std::io::IsTerminal;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use rand::SeedableRng;
use rand::rngs::SmallRng;

use engine::{Feed, Pace, Progress, Settings, Worker, WorkerStats};
use report::Header;
use workload::{Kind, Mix, Pod, Popularity, Question, StubResolver, Workload};

/// Flags of `nodedns-load run`.
#[derive(Parser, Debug, Clone)]
#[command(name = "run")]
pub struct RunArgs {
    /// Resolver to drive, e.g. 127.0.0.1:53 (any DNS server: nodedns or a peer).
    #[arg(long)]
    pub server: std::net::SocketAddr,
    /// Ask over TCP (pipelined on one connection per source) instead of UDP.
    #[arg(long)]
    pub tcp: bool,
    /// Closed loop: names in flight (default 100 unless --rate is given).
    #[arg(long)]
    pub outstanding: Option<usize>,
    /// Open loop: names started per second, whatever the answers do; unanswered queries are lost.
    #[arg(long, conflicts_with = "outstanding")]
    pub rate: Option<f64>,
    /// Seconds to run (the run always ends by then, plus the query timeout to collect answers).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Names to start at most (across threads).
    #[arg(long)]
    pub max_names: Option<u64>,
    /// Seconds after which an unanswered query counts as lost.
    #[arg(long, default_value_t = 1.0)]
    pub timeout: f64,
    /// hit, cluster-miss, external, search-path, or mix (then see --mix).
    #[arg(long, default_value = "hit")]
    pub workload: String,
    /// Weights for --workload mix.
    #[arg(long, default_value = "hit=90,cluster-miss=2,external=3,search-path=5")]
    pub mix: String,
    /// A cluster file (nodedns-load gen-cluster, or the demo's): hit names are its Services'
    /// A names, cluster misses go to its namespaces, search-path pods are its pods on --node.
    #[arg(long)]
    pub cluster: Option<PathBuf>,
    /// The node whose pods send search-path lookups (pods of --cluster with this spec.nodeName).
    #[arg(long)]
    pub node: Option<String>,
    /// A simulated pod, IP=NAMESPACE (repeatable; in addition to those from --cluster/--node).
    #[arg(long = "pod", value_name = "IP=NAMESPACE")]
    pub pods: Vec<String>,
    /// Search domains after the cluster's (the node's resolv.conf), repeatable.
    #[arg(long = "node-search")]
    pub node_search: Vec<String>,
    #[arg(long, default_value = "cluster.local")]
    pub cluster_domain: String,
    /// Hit names, dnsperf format ("name TYPE" per line); added to the cluster's.
    #[arg(long)]
    pub names: Option<PathBuf>,
    /// Short names pods look up in the search-path workload, one per line (default: the
    /// cluster's services as `svc.namespace` and the --names names outside the cluster domain).
    #[arg(long)]
    pub search_names: Option<PathBuf>,
    /// Unique external names are `<unique>.ZONE`; the resolver's upstream must answer them.
    #[arg(long, default_value = "rnd.example.test")]
    pub external_zone: String,
    /// Zipf exponent of name popularity (0: uniform).
    #[arg(long, default_value_t = 1.0)]
    pub zipf: f64,
    /// Before measuring, ask every hit name once (and every search name from every pod), so a
    /// caching server starts warm.
    #[arg(long)]
    pub warm: bool,
    /// The pods' stub resolver.
    #[arg(long, value_enum, default_value_t = StubResolver::Glibc)]
    pub resolver: StubResolver,
    #[arg(long, default_value_t = 5)]
    pub ndots: u8,
    /// Sender threads, each with its own sockets and a share of the load.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Sockets (source ports) per thread for non-pod queries; a server with SO_REUSEPORT spreads
    /// them over its listeners.
    #[arg(long, default_value_t = 4)]
    pub sockets: usize,
    /// Add an EDNS OPT record (payload 1232) to every query.
    #[arg(long)]
    pub edns: bool,
    /// Seed of the name choices (default: random).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the report as JSON here ("-": stdout instead of the table).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write an SVG plot of the latency percentiles here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
    /// A label carried into the report (e.g. the server's name).
    #[arg(long)]
    pub label: Option<String>,
}

/// Longest run allowed: every load loop is bounded.
const MAX_DURATION: f64 = 3600.0;
/// Queries a worker can have in flight (DNS ids); a search-path name has two at a time.
const MAX_IN_FLIGHT: usize = 30_000;
/// Warm-up operations at most.
const WARM_CAP: usize = 200_000;

/// A run ready to go: the workload and each worker's settings.
pub struct Plan {
    pub workload: Workload,
    pub settings: Vec<Settings>,
    pub header_workload: String,
    pub warm: bool,
    pub seed: u64,
}

fn secs(what: &str, v: f64, max: f64) -> anyhow::Result<Duration> {
    if !(v > 0.0 && v <= max) {
        bail!("--{what} must be above 0 and at most {max} (got {v})");
    }
    Ok(Duration::from_secs_f64(v))
}

impl Plan {
    pub fn new(args: &RunArgs) -> anyhow::Result<Plan> {
        let duration = secs("duration", args.duration, MAX_DURATION)?;
        let timeout = secs("timeout", args.timeout, 60.0)?;
        if args.threads == 0 || args.threads > 64 {
            bail!("--threads must be 1..=64");
        }
        if args.sockets == 0 || args.sockets > 1024 {
            bail!("--sockets must be 1..=1024");
        }
        let mix = match args.workload.as_str() {
            "mix" => Mix::parse(&args.mix)?,
            w => Mix::only(Kind::parse(w).with_context(|| {
                format!("--workload: unknown {w:?} (hit, cluster-miss, external, search-path, mix)")
            })?),
        };
        let domain = args.cluster_domain.trim_end_matches('.').to_owned();
        let cluster = match &args.cluster {
            Some(path) => workload::read_cluster(path, &domain, args.node.as_deref())?,
            None => workload::ClusterNames::default(),
        };
        if args.node.is_some() && args.cluster.is_none() {
            bail!("--node needs --cluster");
        }
        let file_names = match &args.names {
            Some(p) => workload::read_names_file(p)?,
            None => Vec::new(),
        };
        let mut hits = Vec::new();
        for name in &cluster.service_fqdns {
            hits.push(Question { qname: workload::encode_name(name)?, qtype: workload::TYPE_A });
        }
        for (name, qtype) in &file_names {
            hits.push(Question { qname: workload::encode_name(name)?, qtype: *qtype });
        }
        if mix.includes(Kind::Hit) && hits.is_empty() {
            bail!("the hit workload needs names: --cluster FILE or --names FILE");
        }
        let mut pods = Vec::new();
        for (ip, ns) in &cluster.pods {
            pods.push(Pod { ip: *ip, search: workload::pod_search(ns, &domain, &args.node_search) });
        }
        for spec in &args.pods {
            let (ip, ns) =
                spec.split_once('=').with_context(|| format!("--pod {spec:?}: expected IP=NAMESPACE"))?;
            let ip: IpAddr = ip.parse().with_context(|| format!("--pod {spec:?}: bad IP"))?;
            pods.push(Pod { ip, search: workload::pod_search(ns, &domain, &args.node_search) });
        }
        let search_names: Vec<String> = match &args.search_names {
            Some(p) => std::fs::read_to_string(p)
                .with_context(|| format!("--search-names: reading {}", p.display()))?
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_owned)
                .collect(),
            None => {
                let suffix = format!(".{domain}");
                let external = file_names
                    .iter()
                    .map(|(n, _)| n.trim_end_matches('.'))
                    .filter(|n| !n.ends_with(&suffix))
                    .map(str::to_owned);
                cluster.service_short.iter().cloned().chain(external).collect()
            }
        };
        if mix.includes(Kind::SearchPath) {
            if pods.is_empty() {
                bail!(
                    "the search-path workload needs pods: --cluster FILE --node NODE, or --pod IP=NAMESPACE"
                );
            }
            if search_names.is_empty() {
                bail!("the search-path workload needs names: --cluster, --names or --search-names");
            }
        }
        let namespaces =
            if cluster.namespaces.is_empty() { vec!["default".to_owned()] } else { cluster.namespaces };
        let seed = args.seed.unwrap_or_else(rand::random);
        let workload = Workload {
            mix,
            hit_popularity: Popularity::new(hits.len(), args.zipf)?,
            hits,
            namespaces,
            cluster_domain: domain,
            external_zone: args.external_zone.trim_end_matches('.').to_owned(),
            pods,
            search_popularity: Popularity::new(search_names.len(), args.zipf)?,
            search_names,
            resolver: args.resolver,
            ndots: args.ndots,
            plain_sources: args.sockets,
            tag: (seed as u32) ^ std::process::id(),
        };
        let threads = args.threads;
        let pace = match (args.rate, args.outstanding) {
            (Some(rate), _) => {
                if !(rate > 0.0 && rate.is_finite()) {
                    bail!("--rate must be above 0");
                }
                Pace::Open { rate: rate / threads as f64 }
            }
            (None, outstanding) => {
                let n = outstanding.unwrap_or(100);
                if n == 0 || n.div_ceil(threads) > MAX_IN_FLIGHT / 2 {
                    bail!("--outstanding must be 1..={} per thread", MAX_IN_FLIGHT / 2);
                }
                Pace::Closed { outstanding: n.div_ceil(threads) }
            }
        };
        let settings = (0..threads)
            .map(|i| Settings {
                server: args.server,
                tcp: args.tcp,
                pace,
                duration,
                max_names: args
                    .max_names
                    .map(|m| m / threads as u64 + u64::from((i as u64) < m % threads as u64)),
                timeout,
                edns: args.edns,
            })
            .collect();
        Ok(Plan { workload, settings, header_workload: args.workload.clone(), warm: args.warm, seed })
    }

    /// Runs the workers (after the warm-up, if asked) and merges their results.
    pub fn execute(&self, progress: &Progress, show_progress: bool) -> anyhow::Result<WorkerStats> {
        let sources = self.workload.sources();
        if self.warm {
            let ops = self.workload.warm_ops(WARM_CAP)?;
            let n = ops.len();
            let warm = Settings {
                pace: Pace::Closed { outstanding: 200 },
                duration: Duration::from_secs(120),
                max_names: None,
                ..self.settings[0].clone()
            };
            let quiet = Progress::default();
            let stats = Worker::new(&warm, &quiet, &sources)?.run(Feed::List(ops.into_iter()))?;
            if show_progress {
                eprintln!("warmed: {n} names, {} queries, {} lost", stats.sent, stats.lost);
            }
        }
        let results: Vec<anyhow::Result<WorkerStats>> = std::thread::scope(|scope| {
            let handles: Vec<_> = self
                .settings
                .iter()
                .enumerate()
                .map(|(i, settings)| {
                    let sources = &sources;
                    let workload = &self.workload;
                    scope.spawn(move || {
                        let worker = Worker::new(settings, progress, sources)?;
                        let rng = SmallRng::seed_from_u64(self.seed.wrapping_add(i as u64));
                        worker.run(Feed::Workload { workload, rng, worker: i })
                    })
                })
                .collect();
            if show_progress {
                print_progress(progress, &handles, self.settings[0].duration);
            }
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a sender thread panicked"))))
                .collect()
        });
        let mut total = WorkerStats::new();
        for r in results {
            total.add(&r?);
        }
        Ok(total)
    }
}

/// One line a second on stderr (overwritten in place on a terminal) until the workers end.
fn print_progress<T>(p: &Progress, handles: &[std::thread::ScopedJoinHandle<'_, T>], duration: Duration) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last = (started, 0u64);
    while !handles.iter().all(|h| h.is_finished()) {
        std::thread::sleep(Duration::from_millis(100));
        let now = Instant::now();
        if now.duration_since(last.0) < Duration::from_secs(1) && !handles.iter().all(|h| h.is_finished()) {
            continue;
        }
        let answered = p.answered.load(Ordering::Relaxed);
        let rate = (answered - last.1) as f64 / now.duration_since(last.0).as_secs_f64();
        last = (now, answered);
        let line = format!(
            "{:>5.1}/{:.0} s  sent {}  answered {}  lost {}  {:.0} answers/s",
            now.duration_since(started).as_secs_f64(),
            duration.as_secs_f64(),
            p.sent.load(Ordering::Relaxed),
            answered,
            p.lost.load(Ordering::Relaxed),
            rate
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
    if tty {
        eprintln!();
    }
}

/// Plans, runs and reports; what `nodedns-load run` and the tests call.
pub fn measure(args: &RunArgs, show_progress: bool) -> anyhow::Result<Report> {
    let plan = Plan::new(args)?;
    let progress = Progress::default();
    let stats = plan.execute(&progress, show_progress)?;
    Ok(Report::new(
        Header {
            label: args.label.clone(),
            server: args.server.to_string(),
            tcp: args.tcp,
            rate: args.rate,
            outstanding: if args.rate.is_some() { None } else { Some(args.outstanding.unwrap_or(100)) },
            workload: plan.header_workload.clone(),
            threads: args.threads,
        },
        &stats,
    ))
}

/// Runs the load generator and prints its report.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let report = measure(&args, !args.quiet)?;
    let json = serde_json::to_string_pretty(&report)?;
    match &args.json {
        Some(p) if p.as_os_str() == "-" => println!("{json}"),
        Some(p) => {
            std::fs::write(p, format!("{json}\n")).with_context(|| format!("writing {}", p.display()))?;
            print!("{}", report.table());
        }
        None => print!("{}", report.table()),
    }
    if let Some(p) = &args.svg {
        std::fs::write(p, report.svg()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
