//! `nodedns-load fanout-bench`: many node agents subscribed to one authority. Runs the fake API
//! server with a generated cluster, starts a `nodedns-authority` binary against it, opens one
//! Subscribe stream per simulated agent (each on its own HTTP/2 connection, as real agents are),
//! then makes Service changes in the API and times how long each takes to reach every agent.
//! Each of `runs` runs starts afresh (API server, authority, agents); the summary gives the median
//! with min and max of the runs.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nodedns_kubesim::FakeApi;
use nodedns_proto::v1::SubscribeRequest;
use nodedns_proto::v1::authority_client::AuthorityClient;
use nodedns_proto::v1::subscribe_response::Event;
use serde_json::json;
use tokio::sync::mpsc;

use crate::cluster_gen::{self, Shape};
use crate::kube_bench::{Authority, cpu_seconds, free_port, percentile, rss};
use crate::watch_scale::{Spread, raise_nofile_limit};

pub struct Options {
    pub shape: Shape,
    pub authority: PathBuf,
    pub agents: usize,
    pub changes: usize,
    pub runs: usize,
}

/// The figures of one run.
struct Sample {
    subscribe_s: f64,
    rss_before: f64,
    rss_subscribed: f64,
    all_p50: f64,
    all_p99: f64,
    all_max: f64,
    delivery_p50: f64,
    delivery_p99: f64,
    cpu_ms_per_change: f64,
    rss_after: f64,
    rss_peak: f64,
}

/// One agent saw change `k`.
struct Seen {
    change: usize,
    at: Instant,
}

/// Subscribes as `node` and reports every bench change it is notified of. Returns after the
/// snapshot with the number of pods in it; the reading goes on in a task.
async fn agent(url: String, node: String, seen: mpsc::UnboundedSender<Seen>) -> anyhow::Result<usize> {
    let mut client = AuthorityClient::connect(url).await.context("gRPC connect")?;
    let request = SubscribeRequest { node_name: node, resume_from: 0 };
    let mut stream = client.subscribe(request).await.context("Subscribe")?.into_inner();
    let first = stream.message().await?.context("stream ended before the snapshot")?;
    let Some(Event::Snapshot(snapshot)) = first.event else { bail!("the first message is not a snapshot") };
    tokio::spawn(async move {
        // Keeps the client (and its connection) alive with the stream.
        let _client = client;
        while let Ok(Some(msg)) = stream.message().await {
            let Some(Event::Update(update)) = msg.event else { continue };
            let at = Instant::now();
            for name in &update.names {
                let change = name
                    .strip_prefix("fanout")
                    .and_then(|rest| rest.split_once('.'))
                    .and_then(|(k, _)| k.parse().ok());
                if let Some(change) = change
                    && seen.send(Seen { change, at }).is_err()
                {
                    return;
                }
            }
        }
    });
    Ok(snapshot.pods.len())
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    if opts.runs == 0 {
        bail!("--runs must be at least 1");
    }
    // One connection per agent in this process and one in the authority (which inherits the
    // limit), plus the API server's and a margin.
    let fds = raise_nofile_limit();
    let needed = opts.agents as u64 + 256;
    if fds < needed {
        bail!(
            "open-file limit {fds} is below the {needed} that {} agents need (raise the hard limit)",
            opts.agents
        );
    }
    let mut samples = Vec::with_capacity(opts.runs);
    for run in 1..=opts.runs {
        println!("run {run} of {}:", opts.runs);
        samples.push(run_once(&opts).await.with_context(|| format!("run {run}"))?);
    }
    let spread = |f: &dyn Fn(&Sample) -> f64| Spread::of(samples.iter().map(f));
    let per_agent = |s: &Sample| (s.rss_subscribed - s.rss_before) * 1024.0 / opts.agents.max(1) as f64;
    println!();
    println!(
        "{} agents, {} changes per run; median [min–max] of {} runs:",
        opts.agents, opts.changes, opts.runs
    );
    println!();
    println!("| figure | {} agents |", opts.agents);
    println!("|---|---|");
    println!("| all agents subscribed (snapshots read), s | {} |", spread(&|s| s.subscribe_s).show(2));
    println!("| authority RSS before agents, MiB | {} |", spread(&|s| s.rss_before).show(1));
    println!("| authority RSS with all subscribed, MiB | {} |", spread(&|s| s.rss_subscribed).show(1));
    println!("| authority RSS per agent, KiB | {} |", spread(&per_agent).show(0));
    println!("| one Service change reaches all agents, p50 ms | {} |", spread(&|s| s.all_p50).show(1));
    println!("| same, p99 ms | {} |", spread(&|s| s.all_p99).show(1));
    println!("| same, max ms | {} |", spread(&|s| s.all_max).show(1));
    println!("| per-agent delivery, p50 ms | {} |", spread(&|s| s.delivery_p50).show(1));
    println!("| per-agent delivery, p99 ms | {} |", spread(&|s| s.delivery_p99).show(1));
    println!("| authority CPU per change fanned out, ms | {} |", spread(&|s| s.cpu_ms_per_change).show(1));
    println!(
        "| authority RSS after the changes (peak), MiB | {} ({}) |",
        spread(&|s| s.rss_after).show(1),
        spread(&|s| s.rss_peak).show(1)
    );
    Ok(())
}

async fn run_once(opts: &Options) -> anyhow::Result<Sample> {
    let api = FakeApi::start().await?;
    let objects = cluster_gen::objects(&opts.shape);
    let count = objects.len();
    for o in objects {
        api.apply(o);
    }
    println!(
        "fake API: {count} objects ({} services, {} pods on {} nodes)",
        opts.shape.services, opts.shape.pods, opts.shape.nodes
    );
    let dir = std::env::temp_dir().join(format!("nodedns-fanout-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let dns = format!("127.0.0.1:{}", free_port()?);
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let grpc = format!("127.0.0.1:{}", free_port()?);
    let authority = Authority::start(
        &opts.authority,
        &kubeconfig,
        admin,
        &["--dns-listen", &dns, "--grpc-listen", &grpc],
    )
    .await?;
    let pid = authority.pid();
    let (rss_before, _) = rss(pid);
    println!("authority ready; RSS {rss_before:.1} MiB before any agent");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let started = Instant::now();
    let mut pods = Vec::with_capacity(opts.agents);
    // Connect in waves of 100, as a DaemonSet rollout would rather than all in one instant.
    for wave in (0..opts.agents).collect::<Vec<_>>().chunks(100) {
        let joins: Vec<_> = wave
            .iter()
            .map(|i| {
                let node = format!("node{}", i % opts.shape.nodes.max(1));
                tokio::spawn(agent(format!("http://{grpc}"), node, tx.clone()))
            })
            .collect();
        for j in joins {
            pods.push(j.await??);
        }
    }
    let subscribe_s = started.elapsed().as_secs_f64();
    let (rss_subscribed, _) = rss(pid);
    pods.sort_unstable();
    println!(
        "{} agents subscribed in {subscribe_s:.2} s (snapshot pods per node: median {}, max {}); authority RSS {rss_subscribed:.1} MiB (+{:.1} MiB, {:.1} KiB per agent)",
        opts.agents,
        pods.get(pods.len() / 2).copied().unwrap_or(0),
        pods.last().copied().unwrap_or(0),
        rss_subscribed - rss_before,
        (rss_subscribed - rss_before) * 1024.0 / opts.agents.max(1) as f64
    );

    // Each change: a new Service in the API; time until every agent has its notice.
    let mut all_reached = Vec::with_capacity(opts.changes);
    let mut deliveries = Vec::with_capacity(opts.changes * opts.agents);
    let cpu0 = cpu_seconds(pid);
    for k in 0..opts.changes {
        let ip = format!("10.96.{}.{}", 200 + k / 250, k % 250 + 1);
        let t0 = Instant::now();
        api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": format!("fanout{k}"), "namespace": "ns0"},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}));
        let mut reached = 0;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while reached < opts.agents {
            let seen = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .with_context(|| {
                    format!("change {k} reached {reached} of {} agents within 30 s", opts.agents)
                })?
                .context("every agent stream ended")?;
            if seen.change == k {
                reached += 1;
                deliveries.push(seen.at.duration_since(t0).as_secs_f64() * 1e3);
                if reached == opts.agents {
                    all_reached.push(seen.at.duration_since(t0).as_secs_f64() * 1e3);
                }
            }
        }
        // Changes a little apart, so each is timed on its own.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = cpu_seconds(pid) - cpu0;
    all_reached.sort_by(f64::total_cmp);
    deliveries.sort_by(f64::total_cmp);
    let sample = Sample {
        subscribe_s,
        rss_before,
        rss_subscribed,
        all_p50: percentile(&all_reached, 0.5),
        all_p99: percentile(&all_reached, 0.99),
        all_max: all_reached.last().copied().unwrap_or(0.0),
        delivery_p50: percentile(&deliveries, 0.5),
        delivery_p99: percentile(&deliveries, 0.99),
        cpu_ms_per_change: cpu * 1e3 / opts.changes.max(1) as f64,
        rss_after: 0.0,
        rss_peak: 0.0,
    };
    println!(
        "one Service change to all {} agents, {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        opts.agents,
        all_reached.len(),
        sample.all_p50,
        sample.all_p99,
        sample.all_max
    );
    println!(
        "per-agent delivery, {} notices: p50 {:.1} ms, p99 {:.1} ms; authority CPU {:.1} ms per change",
        deliveries.len(),
        sample.delivery_p50,
        sample.delivery_p99,
        sample.cpu_ms_per_change
    );
    let (rss_after, rss_peak) = rss(pid);
    println!("authority RSS after the changes {rss_after:.1} MiB (peak {rss_peak:.1} MiB)");
    drop(authority);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Sample { rss_after, rss_peak, ..sample })
}
