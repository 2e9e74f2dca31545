//! `nodedns-load kube-bench`: the authority's Kubernetes API source at scale. Runs the fake API
//! server (nodedns-kubesim) in-process with a generated cluster, starts a `nodedns-authority`
//! binary against it, and measures the initial sync, the authority's memory, and how long a change
//! made in the API takes to show in DNS answers.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use nodedns_kubesim::FakeApi;
use serde_json::json;

use crate::cluster_gen::{self, Shape};

pub struct Options {
    pub shape: Shape,
    pub authority: PathBuf,
    pub changes: usize,
    /// Background churn (service address changes per second) while the latency is measured
    /// again; 0 skips that phase.
    pub churn_rate: u32,
}

/// Stops the child on every exit path.
pub(crate) struct Authority(pub(crate) Child);

impl Authority {
    /// Starts `binary` against `kubeconfig` with `extra` flags (listen addresses), its admin
    /// listener on `admin`, and waits up to 300 s for `/ready`.
    pub(crate) async fn start(
        binary: &std::path::Path,
        kubeconfig: &std::path::Path,
        admin: SocketAddr,
        extra: &[&str],
    ) -> anyhow::Result<Self> {
        let child = Command::new(binary)
            .args(["--kubeconfig", kubeconfig.to_str().context("utf-8 path")?])
            .args(["--admin-listen", &admin.to_string(), "--lameduck", "0"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let authority = Authority(child);
        wait_ready(admin, Duration::from_secs(300), "the authority").await?;
        Ok(authority)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Authority {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Polls `admin`'s `/ready` every 20 ms until it answers 200 (a child process we started gives no
/// other readiness signal), failing after `limit`.
pub(crate) async fn wait_ready(admin: SocketAddr, limit: Duration, what: &str) -> anyhow::Result<()> {
    let ready = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if http_status(admin, "/ready") == Some(200) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    })
    .await?;
    if !ready {
        bail!("{what} was not ready within {} s", limit.as_secs());
    }
    Ok(())
}

pub(crate) fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).map(|(status, _)| status)
}

/// `GET path` over HTTP/1.1: the status and the body.
pub(crate) fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// `(VmRSS, VmHWM)` in MiB.
pub(crate) fn rss(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The A records of `name`, or `None` when the answer is not NOERROR.
fn lookup(sock: &UdpSocket, server: SocketAddr, name: &Name, id: u16) -> Option<Vec<String>> {
    let mut msg = Message::query();
    msg.metadata.id = id;
    msg.queries.push(Query::query(name.clone(), RecordType::A));
    sock.send_to(&msg.to_vec().ok()?, server).ok()?;
    let mut buf = [0u8; 4096];
    loop {
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        let reply = Message::from_vec(&buf[..n]).ok()?;
        if reply.metadata.id != id {
            continue; // a late answer to an earlier probe
        }
        if reply.metadata.response_code != ResponseCode::NoError {
            return None;
        }
        return Some(
            reply
                .answers
                .iter()
                .filter_map(|r| if let RData::A(a) = &r.data { Some(a.0.to_string()) } else { None })
                .collect(),
        );
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let generated = Instant::now();
    let objects = cluster_gen::objects(&opts.shape);
    let count = objects.len();
    for o in objects {
        api.apply(o);
    }
    println!(
        "fake API: {count} objects ({} services, {} endpoints, {} pods) loaded in {:.1} s",
        opts.shape.services,
        opts.shape.services * opts.shape.endpoints,
        opts.shape.pods,
        generated.elapsed().as_secs_f64()
    );
    let dir = std::env::temp_dir().join(format!("nodedns-kube-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, api.kubeconfig())?;
    let dns: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;

    let started = Instant::now();
    let authority =
        Authority::start(&opts.authority, &kubeconfig, admin, &["--dns-listen", &dns.to_string()]).await?;
    let pid = authority.pid();
    let sync = started.elapsed();
    let (rss_now, rss_peak) = rss(pid);
    println!(
        "initial sync (start to /ready): {:.2} s; authority RSS {rss_now:.1} MiB (peak {rss_peak:.1} MiB)",
        sync.as_secs_f64()
    );
    println!(
        "watch connections served: {}, open: {}, list requests: {}",
        api.watch_requests(),
        api.open_watches(),
        api.list_requests()
    );

    // Change latency: create a service (or move one to a new address) in the API and time how
    // long until the authority answers with it, probing every 100 µs.
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(Duration::from_millis(100)))?;
    let mut latencies = Vec::with_capacity(opts.changes);
    let ns_count = opts.shape.namespaces.max(1);
    for i in 0..opts.changes {
        // Even: a new service. Odd: an existing service of ns0 moved to a new address.
        let name = if i % 2 == 0 {
            format!("bench{i}")
        } else {
            format!("svc{}", (i * ns_count) % opts.shape.services.max(1))
        };
        // From the service CIDR, above the generated services: inside the reverse zones served.
        let ip = format!("10.96.{}.{}", 200 + i / 250, i % 250 + 1);
        let qname = Name::from_ascii(format!("{name}.ns0.svc.cluster.local."))?;
        latencies.push(change_and_wait(&api, &sock, dns, &qname, &name, &ip, i)?);
    }
    report("change to answer", &mut latencies);

    if opts.churn_rate > 0 {
        // The same measurement for 10 s while the API churns: R address changes per second over
        // the other namespaces' services, as a busy cluster's rollouts would make them.
        let churner = api.clone();
        let (rate, services, namespaces) = (opts.churn_rate, opts.shape.services.max(2), ns_count);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = std::sync::Arc::clone(&stop);
        let churn = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
            let mut n = 0usize;
            while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                let svc = (n % services) | 1; // odd: never ns0 when there are 100 namespaces
                let ip = format!("10.96.{}.{}", 100 + (n / 250) % 100, n % 250 + 1);
                churner.apply(json!({"apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": format!("svc{svc}"), "namespace": format!("ns{}", svc % namespaces)},
                    "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}));
                n += 1;
            }
            n
        });
        let cpu0 = cpu_seconds(pid);
        let t0 = Instant::now();
        let mut under_churn = Vec::new();
        let mut i = opts.changes;
        while t0.elapsed() < Duration::from_secs(10) {
            i += 1;
            // Paced, so the churn, not our probing, dominates the load.
            tokio::time::sleep(Duration::from_millis(20)).await;
            let name = format!("bench{i}");
            let ip = format!("10.96.{}.{}", 200 + i / 250, i % 250 + 1);
            let qname = Name::from_ascii(format!("{name}.ns0.svc.cluster.local."))?;
            under_churn.push(change_and_wait(&api, &sock, dns, &qname, &name, &ip, i)?);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let churned = churn.await.unwrap_or(0);
        let secs = t0.elapsed().as_secs_f64();
        println!(
            "churn: {churned} service changes in {secs:.1} s ({:.0}/s); authority CPU {:.2} cores",
            churned as f64 / secs,
            (cpu_seconds(pid) - cpu0) / secs
        );
        report("change to answer under churn", &mut under_churn);
    }
    let (rss_now, rss_peak) = rss(pid);
    println!(
        "authority RSS after the changes {rss_now:.1} MiB (peak {rss_peak:.1} MiB); API bytes sent {:.1} MiB",
        api.bytes_sent() as f64 / 1048576.0
    );
    drop(authority);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn report(what: &str, latencies: &mut [f64]) {
    latencies.sort_by(f64::total_cmp);
    println!(
        "{what}, {} changes: p50 {:.1} ms, p90 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        percentile(latencies, 0.5),
        percentile(latencies, 0.9),
        percentile(latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0)
    );
}

/// User plus system CPU seconds the process has used.
pub(crate) fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/PID/stat; 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn change_and_wait(
    api: &FakeApi,
    sock: &UdpSocket,
    dns: SocketAddr,
    qname: &Name,
    name: &str,
    ip: &str,
    i: usize,
) -> anyhow::Result<f64> {
    api.apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "ns0"},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "protocol": "TCP", "port": 80}]}}));
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(10);
    let mut id = (i as u16).wrapping_mul(97);
    loop {
        id = id.wrapping_add(1);
        if lookup(sock, dns, qname, id).is_some_and(|a| a.iter().any(|x| x == ip)) {
            return Ok(t0.elapsed().as_secs_f64() * 1e3);
        }
        if Instant::now() > deadline {
            bail!("change {i} ({name} -> {ip}) not answered within 10 s");
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}
