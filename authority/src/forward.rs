//! Names outside the served zones (`--upstream`, `--resolv-conf`, `--stub-domain`). The authority's
//! DNS Service can stand in as `kube-dns` for clients without a node agent (hostNetwork pods with
//! `ClusterFirstWithHostNet`, a node whose agent is down), and those ask for external names too.
//! They are forwarded with the node agent's own resolver ([`nodedns_agent::request::Resolver`]):
//! its cache, coalescing, truncation and TCP retry, failover, stub domains and loop probe, one
//! implementation for both. An ExternalName alias to a name outside the zones is completed with
//! the target's records through the same routes ([`Resolver::chase`]), as the agent completes the
//! answers it gets over gRPC.
//!
//! Without upstreams or stub domains nothing changes: a name outside the zones is REFUSED, and
//! an ExternalName answer is the alias alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::Name;
use nodedns_agent::cache::{Cache, Limits};
use nodedns_agent::chase::dangling_target;
use nodedns_agent::request::{Resolver, Routes, Transport as AgentTransport};
use nodedns_agent::wire;
use nodedns_zone::handler::EDNS_PAYLOAD;
use nodedns_zone::{ClusterStore, Served, Transport};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// How often the cache drops entries past their stale window (as the agent's).
const SWEEP_EVERY: Duration = Duration::from_secs(5);
/// How often the loop probe goes out through every upstream and stub server (as the agent's).
const PROBE_EVERY: Duration = Duration::from_secs(600);

/// What forwarding does to an answer of the zones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// REFUSED, the name is outside the zones: forward the query.
    Forward,
    /// An alias to this name outside the zones, without its records: resolve and append them.
    Chase(String),
}

pub struct Forwarding {
    pub resolver: Arc<Resolver>,
    pub cache: Arc<Cache>,
    /// An upstream or a stub domain is configured: read for every answer of the zones, so a
    /// flag rather than a look at the routes.
    on: AtomicBool,
}

/// The routes `config` asks for (the agent's builder).
pub fn routes(config: &Config) -> Routes {
    nodedns_agent::reload::forwarders(&config.upstreams, &config.stub_domains, config.timeout)
}

/// The agent's cache limits, with the authority's bound.
pub fn limits(config: &Config) -> Limits {
    Limits { max_bytes: config.cache_bytes, ..Limits::default() }
}

/// Whether `routes` forward anything.
fn any(routes: &Routes) -> bool {
    routes.upstream.servers().next().is_some() || !routes.stubs.is_empty()
}

fn transport(t: Transport) -> AgentTransport {
    match t {
        Transport::Udp => AgentTransport::Udp,
        Transport::Tcp => AgentTransport::Tcp,
    }
}

impl Forwarding {
    pub fn new(config: &Config) -> Self {
        let cache = Arc::new(Cache::new(limits(config)));
        let routes = routes(config);
        let on = AtomicBool::new(any(&routes));
        let resolver = Arc::new(Resolver::forwarding(Arc::clone(&cache), routes, config.timeout));
        Self { resolver, cache, on }
    }

    /// Whether anything is forwarded at all (an upstream or a stub domain is configured).
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// New routes (a config reload): the servers in both keep their health marks, and a loop
    /// probe goes through the new ones at once rather than in 10 minutes.
    pub fn set_routes(&self, routes: Routes) {
        routes.keep_health(&self.resolver.routes());
        self.on.store(any(&routes), Ordering::Relaxed);
        self.resolver.set_routes(routes);
        if self.enabled() {
            let resolver = Arc::clone(&self.resolver);
            tokio::spawn(async move { resolver.probe_for_loops().await });
        }
    }

    /// What to do with `served`, the zones' answer; `None` (the answer as it is) for nearly
    /// every answer, and for all when forwarding is off. A REFUSED to a query of class IN is a
    /// name outside the zones (the zones refuse nothing else of that class but transfers, which
    /// [`Resolver::forward`] leaves alone).
    pub fn plan(&self, served: &Served, store: &ClusterStore) -> Option<Plan> {
        let rcode = served.rcode?;
        if !(rcode == ResponseCode::Refused || rcode == ResponseCode::NoError) || !self.enabled() {
            return None;
        }
        if rcode == ResponseCode::Refused {
            return Some(Plan::Forward);
        }
        let [answer] = served.messages.as_slice() else { return None };
        let target = dangling_target(answer)?;
        // An alias into our own zones that ends without data is the zones' final word.
        let ours = Name::from_ascii(&target).map_or(true, |n| store.index().serves(&n));
        (!ours).then_some(Plan::Chase(target))
    }

    /// Carries out `plan` for the query `packet` (answered by the zones as `served`), returning
    /// what to send instead; `served` unchanged when forwarding does not take the query, or the
    /// target cannot be resolved (the client then follows the alias itself).
    pub async fn complete(
        &self,
        plan: Plan,
        packet: &[u8],
        mut served: Served,
        t: Transport,
        client: SocketAddr,
    ) -> Served {
        let mut out = Vec::new();
        match plan {
            Plan::Forward => {
                if self.resolver.forward(packet, client, transport(t), &mut out).await.is_none() {
                    return served;
                }
            }
            Plan::Chase(target) => {
                let Some(answer) = served.messages.first() else { return served };
                let Some(whole) = self.resolver.chase(packet, answer, &target, client, transport(t)).await
                else {
                    return served;
                };
                out = whole;
                // The zones' own size rule for UDP (RFC 9715's 1232 at most), TC when it does
                // not fit: the client asks again over TCP.
                if t == Transport::Udp {
                    let mut key = Vec::new();
                    if let Ok(query) = wire::parse_query(packet, &mut key)
                        && out.len() > query.udp_limit().min(usize::from(EDNS_PAYLOAD))
                    {
                        wire::truncate(&mut out, &query);
                    }
                }
            }
        }
        if out.len() < wire::HEADER {
            return served;
        }
        served.rcode = Some(ResponseCode::from_low(out[3] & 0x0f));
        served.truncated = out[2] & 0x02 != 0;
        served.messages = vec![out];
        served
    }

    /// Keeps the cache swept and probes for forwarding loops (a `--resolv-conf` naming the
    /// cluster DNS, an upstream forwarding back here) until `stop`; the probe only while
    /// forwarding is on.
    pub async fn maintain(self: Arc<Self>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_EVERY);
        let mut probe = tokio::time::interval(PROBE_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = sweep.tick() => {
                    let cache = Arc::clone(&self.cache);
                    let _ = tokio::task::spawn_blocking(move || cache.sweep(Instant::now())).await;
                }
                _ = probe.tick() => {
                    if self.enabled() {
                        self.resolver.probe_for_loops().await;
                    }
                }
            }
        }
    }
}
