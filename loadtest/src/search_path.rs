//! `nodedns-load search-path`: what a pod's resolver really sends for one name, and how many round
//! trips that takes through the agent with and without server-side autopath.
//!
//! A pod with the default `ndots:5` asks a name with fewer dots through its whole search list
//! before the name itself, as glibc's `res_search` does: each candidate as an A and an AAAA query
//! in parallel (getaddrinfo with `AF_UNSPEC`), the next candidate only when neither came back with
//! records. This module replays that sequence from the pod's own address, so the agent sees the
//! client it would see in a cluster and can autopath it, and counts round trips, queries and time
//! per resolved name.
//!
//! [`run`] sets up the whole measurement: a one-pod cluster file, an upstream stand-in that answers
//! `example.com` names (after an optional delay, standing in for a real upstream's round trip), and
//! the agent binary in standalone mode, once with `--autopath=true` and once with `false`.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::kube_bench::{free_port, percentile, wait_ready};

/// The names a glibc resolver tries for `name`, in order (see the generator's [`StubResolver`]).
///
/// [`StubResolver`]: nodedns_loadgen::workload::StubResolver
pub fn candidates(name: &str, search: &[String], ndots: u8) -> Vec<String> {
    nodedns_loadgen::workload::StubResolver::Glibc.candidates(name, search, ndots)
}

/// One name resolved the way a pod's resolver does it.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// Client round trips: one per candidate tried (its A and AAAA go together).
    pub rounds: u32,
    /// Queries sent.
    pub queries: u32,
    /// The candidate that answered with records, if any.
    pub answered: Option<String>,
    /// IPv4 addresses in the A answer (after any CNAME).
    pub addresses: Vec<IpAddr>,
    pub elapsed: Duration,
}

/// A pod's stub resolver: a UDP socket bound to the pod's address, its search list and ndots.
pub struct PodResolver {
    socket: UdpSocket,
    server: SocketAddr,
    search: Vec<String>,
    ndots: u8,
    next_id: u16,
}

impl PodResolver {
    pub fn new(source: IpAddr, server: SocketAddr, search: Vec<String>, ndots: u8) -> anyhow::Result<Self> {
        let socket =
            UdpSocket::bind(SocketAddr::new(source, 0)).with_context(|| format!("binding {source}"))?;
        socket.set_read_timeout(Some(Duration::from_secs(3)))?;
        Ok(Self { socket, server, search, ndots, next_id: rand_id() })
    }

    /// Resolves `name` (A and AAAA), as getaddrinfo would.
    pub fn resolve(&mut self, name: &str) -> anyhow::Result<Resolved> {
        let started = Instant::now();
        let mut out = Resolved {
            rounds: 0,
            queries: 0,
            answered: None,
            addresses: Vec::new(),
            elapsed: Duration::ZERO,
        };
        for candidate in candidates(name, &self.search, self.ndots) {
            out.rounds += 1;
            let qname =
                Name::from_ascii(&candidate).with_context(|| format!("{candidate:?} is not a name"))?;
            let ids = [self.id(), self.id()];
            for (id, qtype) in ids.iter().zip([RecordType::A, RecordType::AAAA]) {
                let mut msg = Message::query();
                msg.metadata.id = *id;
                msg.metadata.recursion_desired = true;
                msg.queries.push(Query::query(qname.clone(), qtype));
                self.socket.send_to(&msg.to_vec()?, self.server)?;
                out.queries += 1;
            }
            let mut pending = 2;
            let mut positive = false;
            let mut buf = [0u8; 4096];
            while pending > 0 {
                let (n, _) = self
                    .socket
                    .recv_from(&mut buf)
                    .with_context(|| format!("no answer for {candidate} from {} within 3 s", self.server))?;
                let Ok(reply) = Message::from_vec(&buf[..n]) else { continue };
                if !ids.contains(&reply.metadata.id) {
                    continue; // a late answer to an earlier round
                }
                pending -= 1;
                if reply.metadata.response_code == ResponseCode::NoError && !reply.answers.is_empty() {
                    positive = true;
                    out.addresses.extend(reply.answers.iter().filter_map(|r| match &r.data {
                        RData::A(a) => Some(IpAddr::V4(a.0)),
                        _ => None,
                    }));
                }
            }
            if positive {
                out.answered = Some(candidate);
                break;
            }
        }
        out.elapsed = started.elapsed();
        Ok(out)
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }
}

fn rand_id() -> u16 {
    (std::process::id() as u16).wrapping_mul(2654)
}

/// An upstream stand-in: `*.example.com` has an A record (192.0.2.1) and no AAAA; every other name
/// is NXDOMAIN. Answers after `delay` (a real upstream's round trip).
pub struct UpstreamStandIn {
    pub addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl UpstreamStandIn {
    pub async fn start(ip: IpAddr, delay: Duration) -> anyhow::Result<Self> {
        let socket = std::sync::Arc::new(tokio::net::UdpSocket::bind(SocketAddr::new(ip, 0)).await?);
        let addr = socket.local_addr()?;
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut buf = [0u8; 4096];
            loop {
                let (n, from) = tokio::select! {
                    _ = &mut stopped => return,
                    r = socket.recv_from(&mut buf) => match r { Ok(r) => r, Err(_) => continue },
                };
                let Some(reply) = upstream_answer(&buf[..n]) else { continue };
                let socket = std::sync::Arc::clone(&socket);
                tokio::spawn(async move {
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    let _ = socket.send_to(&reply, from).await;
                });
            }
        });
        Ok(Self { addr, stop })
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
    }
}

fn upstream_answer(packet: &[u8]) -> Option<Vec<u8>> {
    let query = Message::from_vec(packet).ok()?;
    let q = query.queries.first()?.clone();
    let zone = Name::from_ascii("example.com.").ok()?;
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.queries.push(q.clone());
    let soa = || {
        let soa = SOA::new(
            zone.clone(),
            Name::from_ascii("hostmaster.example.com.").ok()?,
            1,
            3600,
            600,
            86400,
            60,
        );
        Some(Record::from_rdata(zone.clone(), 60, RData::SOA(soa)))
    };
    if zone.zone_of(&q.name) && q.name != zone {
        if q.query_type == RecordType::A {
            reply.answers.push(Record::from_rdata(q.name.clone(), 300, RData::A(A::new(192, 0, 2, 1))));
        } else {
            reply.authorities.push(soa()?);
        }
    } else {
        reply.metadata.response_code = ResponseCode::NXDomain;
        reply.authorities.push(soa()?);
    }
    reply.to_vec().ok()
}

/// The pod the measurement speaks as, and the node's search domain its search list ends with.
pub(crate) const POD_IP: &str = "127.0.0.71";
const NODE_SEARCH: &str = "corp.internal";

/// A one-namespace cluster with a service `web.shop` and one pod (`POD_IP`, ClusterFirst) on
/// node `bench-node`.
const CLUSTER: &str = "---
apiVersion: v1
kind: Namespace
metadata: {name: bench}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{name: http, protocol: TCP, port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench}
spec: {nodeName: bench-node, dnsPolicy: ClusterFirst, containers: [{name: app, image: pause}]}
status: {phase: Running, podIP: 127.0.0.71, podIPs: [{ip: 127.0.0.71}]}
";

/// The agent binary in standalone mode over [`CLUSTER`] on 127.0.0.70, node `bench-node`, with
/// the node searching `corp.internal`; stopped (and its files removed) on drop.
pub(crate) struct StandaloneAgent {
    child: Child,
    pub listen: SocketAddr,
    pub admin: SocketAddr,
    dir: PathBuf,
}

impl StandaloneAgent {
    pub(crate) async fn start(binary: &Path, upstream: SocketAddr, extra: &[String]) -> anyhow::Result<Self> {
        let listen = SocketAddr::new("127.0.0.70".parse()?, free_port()?);
        let admin = SocketAddr::new(listen.ip(), free_port()?);
        let dir =
            std::env::temp_dir().join(format!("nodedns-load-agent-{}-{}", std::process::id(), listen.port()));
        std::fs::create_dir_all(&dir)?;
        let cluster = dir.join("cluster.yaml");
        std::fs::write(&cluster, CLUSTER)?;
        let resolv = dir.join("resolv.conf");
        std::fs::write(
            &resolv,
            format!("nameserver {}\nsearch {NODE_SEARCH}\noptions ndots:5\n", upstream.ip()),
        )?;
        let child = Command::new(binary)
            .args(["--standalone-cluster-file", cluster.to_str().context("utf-8 path")?])
            .args(["--node-name", "bench-node", "--listen", &listen.to_string()])
            .args(["--admin-listen", &admin.to_string(), "--upstream", &upstream.to_string()])
            .args(["--resolv-conf", resolv.to_str().context("utf-8 path")?])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let agent = Self { child, listen, admin, dir };
        wait_ready(admin, Duration::from_secs(30), "the agent").await?;
        Ok(agent)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for StandaloneAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub struct Options {
    pub agent: PathBuf,
    /// Names resolved per pass.
    pub names: usize,
    /// Delay of the upstream stand-in per answer.
    pub upstream_delay: Duration,
    pub json: bool,
}

/// One measured pass.
#[derive(Debug, serde::Serialize)]
pub struct Pass {
    pub autopath: bool,
    pub workload: &'static str,
    pub lookups: usize,
    pub rounds_per_lookup: f64,
    pub queries_per_lookup: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

fn pass(
    resolver: &mut PodResolver,
    autopath: bool,
    workload: &'static str,
    names: &[String],
) -> anyhow::Result<Pass> {
    let (mut rounds, mut queries, mut times) = (0u64, 0u64, Vec::with_capacity(names.len()));
    for name in names {
        let r = resolver.resolve(name)?;
        if r.answered.is_none() {
            bail!("{name} did not resolve (autopath {autopath}): {r:?}");
        }
        rounds += u64::from(r.rounds);
        queries += u64::from(r.queries);
        times.push(r.elapsed.as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let n = names.len().max(1) as f64;
    Ok(Pass {
        autopath,
        workload,
        lookups: names.len(),
        rounds_per_lookup: rounds as f64 / n,
        queries_per_lookup: queries as f64 / n,
        p50_ms: percentile(&times, 0.5),
        p99_ms: percentile(&times, 0.99),
    })
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let upstream = UpstreamStandIn::start("127.0.0.72".parse()?, opts.upstream_delay).await?;
    let pod: IpAddr = POD_IP.parse()?;
    // What kubelet writes into a ClusterFirst pod's resolv.conf on a node searching corp.internal.
    let search: Vec<String> = ["bench.svc.cluster.local", "svc.cluster.local", "cluster.local", NODE_SEARCH]
        .map(String::from)
        .into();

    let mut passes = Vec::new();
    for autopath in [false, true] {
        let agent =
            StandaloneAgent::start(&opts.agent, upstream.addr, &[format!("--autopath={autopath}")]).await?;
        let listen = agent.listen;
        let passes_of = tokio::task::spawn_blocking({
            let search = search.clone();
            let names = opts.names;
            move || -> anyhow::Result<Vec<Pass>> {
                let mut resolver = PodResolver::new(pod, listen, search, 5)?;
                // Wait for the pod table: the cluster name answers once the snapshot is in.
                let probe = resolver.resolve("web.shop")?;
                if probe.answered.is_none() {
                    bail!("the agent does not resolve web.shop: {probe:?}");
                }
                let tag = if autopath { "on" } else { "off" };
                let external: Vec<String> =
                    (0..names).map(|i| format!("host{i}-{tag}.example.com")).collect();
                let cluster: Vec<String> = (0..names).map(|_| "web.shop".to_owned()).collect();
                Ok(vec![
                    pass(&mut resolver, autopath, "external, cold cache", &external)?,
                    pass(&mut resolver, autopath, "external, cached", &external)?,
                    pass(&mut resolver, autopath, "web.shop (other namespace), cached", &cluster)?,
                ])
            }
        })
        .await??;
        passes.extend(passes_of);
    }
    upstream.stop();

    if opts.json {
        println!("{}", serde_json::to_string(&passes)?);
        return Ok(());
    }
    println!(
        "pod {POD_IP} (ClusterFirst, ndots:5, search: {}); upstream delay {:?}",
        search.join(" "),
        opts.upstream_delay
    );
    println!(
        "| workload | autopath | lookups | client round trips / name | queries / name | p50 ms | p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for p in &passes {
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.3} | {:.3} |",
            p.workload,
            if p.autopath { "on" } else { "off" },
            p.lookups,
            p.rounds_per_lookup,
            p.queries_per_lookup,
            p.p50_ms,
            p.p99_ms
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_the_c_library() {
        let search: Vec<String> = ["ns.svc.cluster.local", "svc.cluster.local"].map(String::from).into();
        assert_eq!(
            candidates("example.com", &search, 5),
            ["example.com.ns.svc.cluster.local.", "example.com.svc.cluster.local.", "example.com."]
        );
        assert_eq!(
            candidates("a.b.example.com", &search, 3),
            [
                "a.b.example.com.",
                "a.b.example.com.ns.svc.cluster.local.",
                "a.b.example.com.svc.cluster.local."
            ]
        );
        assert_eq!(candidates("example.com.", &search, 5), ["example.com."]);
    }

    #[test]
    fn the_stand_in_answers_example_com_only() {
        let ask = |name: &str, qtype| {
            let mut q = Message::query();
            q.metadata.id = 7;
            q.queries.push(Query::query(Name::from_ascii(name).unwrap(), qtype));
            Message::from_vec(&upstream_answer(&q.to_vec().unwrap()).unwrap()).unwrap()
        };
        let a = ask("h1.example.com.", RecordType::A);
        assert_eq!((a.metadata.id, a.metadata.response_code, a.answers.len()), (7, ResponseCode::NoError, 1));
        let aaaa = ask("h1.example.com.", RecordType::AAAA);
        assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0));
        let other = ask("h1.example.com.corp.internal.", RecordType::A);
        assert_eq!(other.metadata.response_code, ResponseCode::NXDomain);
    }
}
