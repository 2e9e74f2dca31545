//! `nodedns-load fanout-bench`: many node agents subscribed to one authority. Runs the fake API
//! server with a generated cluster, starts a `nodedns-authority` binary against it, opens one
//! Subscribe stream per simulated agent (each on its own HTTP/2 connection, as real agents are),
//! then makes Service changes in the API and times how long each takes to reach every agent.

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

pub struct Options {
    pub shape: Shape,
    pub authority: PathBuf,
    pub agents: usize,
    pub changes: usize,
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
    println!(
        "one Service change to all {} agents, {} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        opts.agents,
        all_reached.len(),
        percentile(&all_reached, 0.5),
        percentile(&all_reached, 0.99),
        all_reached.last().copied().unwrap_or(0.0)
    );
    println!(
        "per-agent delivery, {} notices: p50 {:.1} ms, p99 {:.1} ms; authority CPU {:.1} ms per change",
        deliveries.len(),
        percentile(&deliveries, 0.5),
        percentile(&deliveries, 0.99),
        cpu * 1e3 / opts.changes.max(1) as f64
    );
    let (rss_after, rss_peak) = rss(pid);
    println!("authority RSS after the changes {rss_after:.1} MiB (peak {rss_peak:.1} MiB)");
    drop(authority);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
