//! nodedns-agent: the per-node caching resolver. It answers pods on a link-local address from its
//! cache, sends cluster-domain misses to the authority over one gRPC stream, and other names to
//! stub domains or upstream resolvers. It links no Kubernetes client: its standalone mode runs
//! the authority's gRPC service (`nodedns-grpc`) over a cluster file (`nodedns-zone`) in-process.
//!
//! A query passes through, in order:
//! - [`listener`]: socket2 sockets (SO_REUSEPORT, IP_FREEBIND), the UDP and TCP loops;
//! - [`wire`]: the query's header and question read in place into a reusable cache key;
//! - [`request`]: malformed input rejected, cache lookup, the route of a miss, coalescing;
//! - [`cache`]: responses stored ready to send, aged on a hit, evicted exactly by change notices;
//! - [`autopath`]: a pod's first search expansion walked here, answered in one round trip;
//! - [`chase`]: an ExternalName's alias to a name outside the cluster completed with the
//!   target's records, resolved through the same routes;
//! - [`authority_client`] / [`upstream`]: the Resolve and Subscribe streams; forwarding over UDP
//!   and TCP with failover;
//! - [`respond`]: the one place an answer is counted and logged.
//!
//! Around them: [`config`] (flags, environment, YAML), [`reload`] (the config file re-read on a
//! change or SIGHUP, what can change swapped in live), [`interface`] (`--setup-interface`) and
//! [`admin`] (`/health`, `/ready`, `/metrics`). `main.rs` parses flags and calls [`Agent::run`];
//! tests call it with port-0 sockets.

pub mod admin;
pub mod authority_client;
pub mod autopath;
pub mod cache;
pub mod chase;
pub mod config;
pub mod interface;
pub mod listener;
pub mod reload;
pub mod request;
pub mod respond;
pub mod rewrite;
pub mod upstream;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodedns_common::reload::{Reloads, Snapshot};
use nodedns_zone::file_source::{FileSource, SourceError};
use nodedns_zone::{ClusterStore, ZoneConfig};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::authority_client::AuthorityLink;
use crate::cache::Cache;
use crate::config::Args;
pub use crate::config::Config;
use crate::listener::{BindError, DnsSockets, TcpSettings};
use crate::reload::Reloader;
use crate::request::Resolver;

/// How often the cache drops entries past their stale window.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("standalone cluster file: {0}")]
    Standalone(#[from] SourceError),
    #[error("standalone authority: {0}")]
    StandaloneSetup(String),
    #[error(transparent)]
    Interface(#[from] interface::InterfaceError),
}

/// Every socket the agent serves, bound before it starts so errors surface at once and tests
/// can bind port 0.
#[derive(Debug)]
pub struct Listeners {
    pub dns: Vec<DnsSockets>,
    pub admin: Option<std::net::TcpListener>,
}

/// UDP sockets (and receive loops) per listen address.
fn workers() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8)
}

impl Listeners {
    pub fn bind(config: &Config) -> Result<Self, BindError> {
        let dns = config
            .listen
            .iter()
            .map(|a| DnsSockets::bind(*a, workers(), config.udp_recv_buffer))
            .collect::<Result<Vec<_>, _>>()?;
        let admin = match config.admin_listen {
            Some(addr) => Some(listener::bind_tcp(addr).map_err(|e| BindError { what: "admin", ..e })?),
            None => None,
        };
        Ok(Self { dns, admin })
    }

    pub fn dns_addrs(&self) -> Vec<SocketAddr> {
        self.dns.iter().map(|d| d.addr).collect()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

pub struct Agent {
    config: Config,
    cache: Arc<Cache>,
    authority: Arc<AuthorityLink>,
    draining: CancellationToken,
    /// The flags to resolve the configuration from again, and its files as they were then.
    reload: Option<(Args, Snapshot)>,
    reloads: Reloads,
}

impl Agent {
    pub fn new(config: Config) -> Self {
        // Before anything records a metric.
        admin::prometheus();
        let cache = Arc::new(Cache::new(config.cache));
        let authority = AuthorityLink::new(
            config.timeout,
            vec![config.cluster_domain.clone()],
            config.node_resolv.clone(),
        );
        Self {
            config,
            cache,
            authority,
            draining: CancellationToken::new(),
            reload: None,
            reloads: Reloads::new(),
        }
    }

    /// Re-reads the configuration from `args` (what `config` was resolved from) when its files
    /// change and on [`Reloads::request`] (SIGHUP), applying what can change live. Call right
    /// after resolving: the files are read now, so any later change is seen.
    pub fn reload_from(mut self, args: Args) -> Self {
        let since = Reloader::snapshot(&args, &self.config);
        self.reload = Some((args, since));
        self
    }

    /// Requests reloads and reports them (`status` changes with every attempt).
    pub fn reloads(&self) -> Reloads {
        self.reloads.clone()
    }

    pub fn authority(&self) -> Arc<AuthorityLink> {
        Arc::clone(&self.authority)
    }

    pub fn cache(&self) -> Arc<Cache> {
        Arc::clone(&self.cache)
    }

    /// Starts the in-process authority of `--standalone-cluster-file` on a loopback port and
    /// returns its URL.
    async fn standalone(
        &self,
        path: &std::path::Path,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<String, AgentError> {
        let cluster_domain = hickory_proto::rr::Name::from_ascii(&self.config.cluster_domain)
            .map_err(|e| AgentError::StandaloneSetup(format!("cluster domain: {e}")))?;
        let store = ClusterStore::new(ZoneConfig { cluster_domain, ..ZoneConfig::default() });
        let mut source = FileSource::new(path, Arc::clone(&store));
        let loaded = source.load()?;
        info!(path = %path.display(), objects = loaded.objects, "standalone: cluster file loaded");
        let interval = self.config.reload_interval;
        tracker.spawn(source.watch(interval, stop.clone().cancelled_owned(), |result| match result {
            Ok(l) if l.published.is_some() => info!(objects = l.objects, "standalone: cluster file reloaded"),
            Ok(_) => {}
            Err(e) => error!(error = %e, "standalone: cluster file reload failed; still serving the last good cluster"),
        }));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|e| AgentError::StandaloneSetup(e.to_string()))?;
        let addr = listener.local_addr().map_err(|e| AgentError::StandaloneSetup(e.to_string()))?;
        let shutdown =
            nodedns_grpc::Shutdown { draining: stop.clone(), stop: stop.clone(), lameduck: Duration::ZERO };
        let service = nodedns_grpc::Service::new(store, nodedns_grpc::TransferAcl::default(), shutdown);
        let stop = stop.clone();
        tracker.spawn(async move {
            if let Err(e) = nodedns_grpc::serve_grpc(listener, service, stop).await {
                error!(error = %e, "standalone gRPC failed");
            }
        });
        Ok(format!("http://{addr}"))
    }

    /// Serves until `shutdown`; then `/ready` turns false, listeners close and in-flight queries
    /// finish (within the timeout) before it returns.
    pub async fn run(mut self, listeners: Listeners, shutdown: CancellationToken) -> Result<(), AgentError> {
        let interface = match &self.config.setup_interface {
            Some(name) => {
                let ips: Vec<_> = self.config.listen.iter().map(SocketAddr::ip).collect();
                Some(interface::setup(name, &ips).await?)
            }
            None => None,
        };
        let stop = CancellationToken::new();
        let background = CancellationToken::new();
        let tracker = TaskTracker::new();
        let mut endpoints = self.config.authority.clone();
        if let Some(path) = self.config.standalone_cluster_file.clone() {
            endpoints.insert(0, self.standalone(&path, &tracker, &background).await?);
        }
        let node = if self.config.node_name.is_empty() {
            "standalone".to_owned()
        } else {
            self.config.node_name.clone()
        };
        tracker.spawn(Arc::clone(&self.authority).run(
            endpoints.clone(),
            self.config.authority_tls.clone(),
            node,
            Arc::clone(&self.cache),
            background.clone(),
        ));

        let resolver = Arc::new(Resolver::new(
            Arc::clone(&self.cache),
            Arc::clone(&self.authority),
            reload::routes(&self.config),
            self.config.node_resolv.clone(),
            self.config.autopath,
            self.config.log_queries,
        ));
        resolver.set_rotate(!self.config.no_rotate);
        resolver.set_rewrites(self.config.rewrites.clone());
        {
            // Loops can appear later (a node's resolv.conf changes): probe now and every 10 min.
            let (resolver, stop) = (Arc::clone(&resolver), background.clone());
            tracker.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(600));
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = every.tick() => resolver.probe_for_loops().await,
                    }
                }
            });
        }
        {
            // The cache's expiry: entries past their stale window leave every few seconds (a
            // lookup never serves them meanwhile).
            let (cache, stop) = (Arc::clone(&self.cache), background.clone());
            tracker.spawn(async move {
                let mut every = tokio::time::interval(SWEEP_EVERY);
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        _ = every.tick() => {
                            let cache = Arc::clone(&cache);
                            let _ = tokio::task::spawn_blocking(move || cache.sweep(Instant::now())).await;
                        }
                    }
                }
            });
        }
        let tcp = Arc::new(TcpSettings {
            idle_timeout: self.config.tcp_idle_timeout,
            slots: Arc::new(Semaphore::new(self.config.tcp_max_connections)),
        });
        let addrs = listeners.dns_addrs();
        let udp_recv_buffer =
            listeners.dns.first().and_then(|d| d.udp.first()).map(listener::recv_buffer_size).unwrap_or(0);
        let admin_addr = listeners.admin_addr();
        let queries = TaskTracker::new();
        let mut udp_sockets = Vec::new();
        for sockets in listeners.dns {
            for socket in sockets.udp {
                // Blocking, with a receive timeout so the loop notices `stop`.
                socket
                    .set_nonblocking(false)
                    .and_then(|()| socket.set_read_timeout(Some(listener::STOP_CHECK)))
                    .map_err(|source| BindError { what: "UDP", addr: sockets.addr, source })?;
                let socket = Arc::new(socket);
                udp_sockets.push(Arc::clone(&socket));
                let (resolver, stop, queries) = (Arc::clone(&resolver), stop.clone(), queries.clone());
                let runtime = tokio::runtime::Handle::current();
                tracker.spawn_blocking(move || {
                    listener::udp_batch_loop(socket, resolver, stop, queries, runtime)
                });
            }
            let tcp_listener = tokio::net::TcpListener::from_std(sockets.tcp)
                .map_err(|source| BindError { what: "TCP", addr: sockets.addr, source })?;
            tracker.spawn(listener::tcp_accept_loop(
                tcp_listener,
                Arc::clone(&resolver),
                Arc::clone(&tcp),
                stop.clone(),
                queries.clone(),
            ));
        }
        if let Some(admin) = listeners.admin {
            let state = Arc::new(admin::AdminState {
                authority: Arc::clone(&self.authority),
                cache: Arc::clone(&self.cache),
                draining: self.draining.clone(),
            });
            let stop = background.clone();
            tracker.spawn(async move {
                if let Err(e) = admin::serve(admin, state, stop).await {
                    error!(error = %e, "admin listener failed");
                }
            });
        }
        if let Some((args, since)) = self.reload.take() {
            let mut listen = self.config.listen.clone();
            listen.extend(&addrs);
            let mut reloader = Reloader {
                args,
                start: self.config.clone(),
                last: self.config.clone(),
                listen,
                resolver: Arc::clone(&resolver),
                cache: Arc::clone(&self.cache),
                authority: Arc::clone(&self.authority),
            };
            let (reloads, stop, interval) =
                (self.reloads.clone(), background.clone(), self.config.reload_interval);
            tracker
                .spawn(async move { reloads.watch(since, interval, stop, move || reloader.reload()).await });
        }
        let c = &self.config;
        info!(
            version = env!("CARGO_PKG_VERSION"),
            listen = ?addrs,
            admin = ?admin_addr,
            node = %c.node_name,
            authority = ?endpoints,
            upstreams = ?c.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
            upstream_source = %c.upstream_source,
            stub_domains = ?c.stub_domains.iter().map(|s| format!("{}={:?}", s.zone, s.servers)).collect::<Vec<_>>(),
            cluster_domain = %c.cluster_domain,
            node_search = ?c.node_resolv.search,
            cache_bytes = c.cache.max_bytes,
            min_ttl = c.cache.min_ttl,
            max_ttl = c.cache.max_ttl,
            max_negative_ttl = c.cache.max_negative_ttl,
            stale_for_s = c.cache.stale_for.as_secs(),
            timeout_s = c.timeout.as_secs_f64(),
            udp_recv_buffer = udp_recv_buffer,
            autopath = c.autopath,
            log_queries = c.log_queries,
            rotate = !c.no_rotate,
            rewrites = ?c.rewrites.rules().iter().map(ToString::to_string).collect::<Vec<_>>(),
            authority_tls = match &c.authority_tls {
                None => "off (plain text)",
                Some(t) if t.identity.is_some() => "mutual (this agent's certificate sent)",
                Some(_) => "server verified (no agent certificate)",
            },
            reload_s = c.reload_interval.as_secs_f64(),
            "nodedns-agent serving"
        );

        shutdown.cancelled().await;
        self.draining.cancel();
        info!("shutting down: /ready is false, listeners close, queued and in-flight queries finish");
        // New queries go to a new instance on the same address from here on; what is queued on
        // our sockets is still answered (the UDP threads drain before they end).
        for socket in &udp_sockets {
            if let Err(e) = listener::leave_reuseport_group(socket) {
                warn!(error = %e, "could not hand the UDP socket's address over; queued queries may be lost");
            }
        }
        stop.cancel();
        // Wake the UDP threads blocked in recvmmsg now rather than at their receive timeout
        // (shutting down the read side wakes a blocked reader even on an unconnected UDP socket;
        // queued datagrams are still read after it).
        for socket in &udp_sockets {
            let _ = socket2::SockRef::from(&**socket).shutdown(std::net::Shutdown::Read);
        }
        queries.close();
        if tokio::time::timeout(self.config.timeout + Duration::from_secs(1), queries.wait()).await.is_err() {
            warn!("some queries did not finish before exit");
        }
        background.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
            warn!("some tasks did not stop within 5 s");
        }
        if let Some(interface) = interface.filter(|_| !self.config.keep_interface) {
            interface.remove().await;
        }
        info!("stopped");
        Ok(())
    }
}
