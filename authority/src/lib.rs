//! nodedns-authority: the only nodedns component that knows the cluster. It loads cluster state
//! from the Kubernetes API (or a cluster file), keeps the zone index of `nodedns-zone` current, and
//! answers the Kubernetes DNS specification over UDP and TCP.
//!
//! Modules, in the order data and queries meet them:
//! - [`config`]: flags, environment and YAML file into one [`Config`];
//! - [`reload`]: the config file re-read on a change or SIGHUP, what can change applied live;
//! - [`kube_source`]: `kube` watchers on the four kinds feeding the store (the file source is
//!   `nodedns_zone::file_source`);
//! - [`dns`]: sockets, the UDP and TCP loops, and the place that counts and logs each answer
//!   (the bytes-to-bytes work is `nodedns_zone::serve`);
//! - [`forward`]: names outside the zones (`--upstream`) and ExternalName targets, through the
//!   node agent's resolver;
//! - [`grpc`]: the `nodedns.v1.Authority` service for node agents (Resolve, Subscribe), from
//!   the `nodedns-grpc` crate;
//! - [`admin`]: `/health`, `/ready`, `/metrics`;
//! - [`metrics`]: metric names and pre-registered handles;
//! - [`migrate`]: the `migrate` subcommand, a CoreDNS Corefile and kube-dns ConfigMap read into
//!   nodedns settings.
//!
//! `main.rs` only parses flags, sets up logging and calls [`Authority::run`]; tests call it with
//! sockets bound to port 0.

pub mod admin;
pub mod config;
pub mod dns;
pub mod forward;
pub mod kube_source;
pub mod metrics;
pub mod migrate;
pub mod reload;

/// The agents' gRPC service (a kube-free crate, so the agent's standalone mode shares it).
pub use nodedns_grpc as grpc;

use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32};
use std::time::Duration;

use arc_swap::ArcSwap;
use nodedns_agent::rewrite::LiveRewrites;
use nodedns_common::reload::{Reloads, Snapshot};
use nodedns_common::tls::ReloadingServerConfig;
use nodedns_zone::file_source::{FileSource, SourceError};
use nodedns_zone::{ClusterStore, ZoneKind};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use config::Args;
pub use config::Config;
pub use dns::{BindError, DnsSockets};
use reload::Reloader;

#[derive(Debug, thiserror::Error)]
pub enum AuthorityError {
    #[error(transparent)]
    Kube(#[from] kube_source::KubeError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("admin listener: {0}")]
    Admin(std::io::Error),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error(transparent)]
    Tls(#[from] nodedns_common::tls::TlsError),
}

/// Every socket the authority serves, bound before it starts so errors surface at once and tests
/// can bind port 0.
#[derive(Debug)]
pub struct Listeners {
    pub dns: DnsSockets,
    pub admin: Option<StdTcpListener>,
    pub grpc: Option<StdTcpListener>,
}

impl Listeners {
    pub fn bind(config: &Config) -> Result<Self, BindError> {
        let dns = DnsSockets::bind(&config.dns_listen)?;
        let admin = match config.admin_listen {
            Some(addr) => Some(dns::bind_tcp(addr).map_err(|e| BindError { what: "admin", ..e })?),
            None => None,
        };
        let grpc = match config.grpc_listen {
            Some(addr) => Some(dns::bind_tcp(addr).map_err(|e| BindError { what: "gRPC", ..e })?),
            None => None,
        };
        Ok(Self { dns, admin, grpc })
    }

    pub fn grpc_addr(&self) -> Option<SocketAddr> {
        self.grpc.as_ref().and_then(|l| l.local_addr().ok())
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|l| l.local_addr().ok())
    }
}

pub struct Authority {
    config: Config,
    store: Arc<ClusterStore>,
    /// Cancelled when shutdown begins: `/ready` turns false and agents are told to move.
    draining: CancellationToken,
    /// The flags to resolve the configuration from again, and its files as they were then.
    reload: Option<(Args, Snapshot)>,
    reloads: Reloads,
}

impl Authority {
    pub fn new(config: Config) -> Self {
        // Before anything records a metric: earlier values would go to the no-op recorder.
        metrics::prometheus();
        let store = ClusterStore::new(config.zone.clone());
        if let Some(custom) = &config.custom_records {
            // Kept for the first complete cluster's index.
            store.set_custom(Arc::clone(&custom.records));
        }
        Self { config, store, draining: CancellationToken::new(), reload: None, reloads: Reloads::new() }
    }

    /// Re-reads the configuration from `args` (what `config` was resolved from) when `--config`
    /// changes and on [`Reloads::request`] (SIGHUP), applying what can change live. Call right
    /// after resolving: the file is read now, so any later change is seen.
    pub fn reload_from(mut self, args: Args) -> Self {
        let since = Snapshot::take(&reload::files(&args, &self.config));
        self.reload = Some((args, since));
        self
    }

    /// Requests reloads and reports them (`status` changes with every attempt).
    pub fn reloads(&self) -> Reloads {
        self.reloads.clone()
    }

    /// The store queries are answered from; tests subscribe to it to see reloads land.
    pub fn store(&self) -> Arc<ClusterStore> {
        Arc::clone(&self.store)
    }

    /// Loads the cluster file once (`None` without `--cluster-file`). A failure here is a start-up
    /// failure; later reload failures keep the last good cluster.
    pub fn load(&self) -> Result<Option<FileSource>, AuthorityError> {
        let Some(path) = self.config.cluster_file.as_ref() else { return Ok(None) };
        let mut source = FileSource::new(path, Arc::clone(&self.store));
        let loaded = source.load()?;
        metrics::reload(true);
        if let Some(p) = &loaded.published {
            metrics::zone_published(p);
        }
        metrics::store_counts(&self.store.counts());
        let stats = self.store.index().stats();
        info!(
            path = %path.display(),
            objects = loaded.objects,
            skipped_other_kinds = loaded.skipped,
            records = stats.records,
            build_ms = loaded.published.map_or(0.0, |p| p.build_time.as_secs_f64() * 1e3),
            "cluster file loaded"
        );
        Ok(Some(source))
    }

    /// Serves until `shutdown` is cancelled, then drains: `/ready` turns false, answers go on for
    /// the lameduck period (so endpoints are withdrawn first), listeners stop, open TCP queries
    /// finish.
    pub async fn run(
        mut self,
        listeners: Listeners,
        shutdown: CancellationToken,
    ) -> Result<(), AuthorityError> {
        // Forwarding to an address we listen on would loop: checked against the addresses as
        // bound too (the configured ones were checked with the configuration).
        let mut listen = self.config.dns_listen.clone();
        listen.extend(listeners.dns.addrs());
        self.config.check_loops(&listen)?;
        let stop = CancellationToken::new();
        let tracker = TaskTracker::new();
        match self.load()? {
            Some(file) => self.watch_file(file, &tracker, &stop),
            None => {
                let client = kube_source::client(&self.config.kube).await?;
                let settings = self.config.kube.clone();
                tracker.spawn(kube_source::run(client, settings, Arc::clone(&self.store), stop.clone()));
            }
        }
        self.log_startup(&listeners);
        let shared = Arc::new(dns::Shared {
            store: Arc::clone(&self.store),
            transfer_from: Arc::new(ArcSwap::from_pointee(self.config.transfer_from.clone())),
            metrics: metrics::DnsMetrics::new(),
            log_queries: AtomicBool::new(self.config.log_queries),
            tcp_idle_timeout: self.config.tcp_idle_timeout,
            tcp_slots: Arc::new(Semaphore::new(self.config.tcp_max_connections)),
            forwarding: Arc::new(forward::Forwarding::new(&self.config)),
            tasks: tracker.clone(),
            rotate: AtomicBool::new(!self.config.no_rotate),
            turns: AtomicU32::new(0),
            rewrites: LiveRewrites::new(self.config.rewrites.clone()),
        });
        // Forwarded answers turn as the zones' do (or not, with --no-rotate).
        shared.forwarding.resolver.set_rotate(!self.config.no_rotate);
        tracker.spawn(Arc::clone(&shared.forwarding).maintain(stop.clone()));
        self.serve(listeners, &shared, &tracker, &stop)?;
        if let Some((args, since)) = self.reload.take() {
            let mut reloader = Reloader {
                args,
                start: self.config.clone(),
                last: self.config.clone(),
                store: Arc::clone(&self.store),
                shared,
                listen,
            };
            let (reloads, stop, interval) = (self.reloads.clone(), stop.clone(), self.config.reload_interval);
            tracker
                .spawn(async move { reloads.watch(since, interval, stop, move || reloader.reload()).await });
        }

        shutdown.cancelled().await;
        self.draining.cancel();
        info!(
            lameduck_s = self.config.lameduck.as_secs_f64(),
            "shutting down: /ready is false, still answering during lameduck"
        );
        tokio::time::sleep(self.config.lameduck).await;
        stop.cancel();
        tracker.close();
        if tokio::time::timeout(Duration::from_secs(5), tracker.wait()).await.is_err() {
            warn!("some connections did not finish within 5s of shutdown");
        }
        info!("stopped");
        Ok(())
    }

    fn watch_file(&self, source: FileSource, tracker: &TaskTracker, stop: &CancellationToken) {
        let store = Arc::clone(&self.store);
        let interval = self.config.reload_interval;
        tracker.spawn(source.watch(interval, stop.clone().cancelled_owned(), move |result| match result {
            Ok(loaded) => {
                metrics::reload(true);
                if let Some(p) = &loaded.published {
                    metrics::zone_published(p);
                    metrics::store_counts(&store.counts());
                    info!(
                        objects = loaded.objects,
                        serial = p.serial,
                        records = p.stats.records,
                        build_ms = p.build_time.as_secs_f64() * 1e3,
                        "cluster file reloaded"
                    );
                }
            }
            Err(e) => {
                metrics::reload(false);
                error!(error = %e, "cluster file reload failed; still serving the last good cluster");
            }
        }));
    }

    /// Starts the DNS, admin and gRPC listeners on `tracker`.
    fn serve(
        &self,
        listeners: Listeners,
        shared: &Arc<dns::Shared>,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<(), AuthorityError> {
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
        for socket in listeners.dns.udp {
            let socket =
                Arc::new(tokio::net::UdpSocket::from_std(socket).map_err(|e| self.bind_error("DNS UDP", e))?);
            for _ in 0..workers {
                tracker.spawn(dns::udp_loop(Arc::clone(&socket), Arc::clone(shared), stop.clone()));
            }
        }
        for listener in listeners.dns.tcp {
            let listener =
                tokio::net::TcpListener::from_std(listener).map_err(|e| self.bind_error("DNS TCP", e))?;
            tracker.spawn(dns::tcp_accept_loop(listener, Arc::clone(shared), stop.clone(), tracker.clone()));
        }
        if let Some(admin) = listeners.admin {
            let state = Arc::new(admin::AdminState {
                store: Arc::clone(&self.store),
                draining: self.draining.clone(),
            });
            let stop = stop.clone();
            tracker.spawn(async move {
                if let Err(e) = admin::serve(admin, state, stop).await {
                    error!(error = %e, "admin listener failed");
                }
            });
        }
        if let Some(listener) = listeners.grpc {
            let shutdown = grpc::Shutdown {
                draining: self.draining.clone(),
                stop: stop.clone(),
                lameduck: self.config.lameduck,
            };
            let service =
                grpc::Service::new(Arc::clone(&self.store), Arc::clone(&shared.transfer_from), shutdown);
            // Read again here (checked at config time too): the files may have changed since.
            let tls = match &self.config.grpc_tls {
                Some(files) => Some(Arc::new(ReloadingServerConfig::new(files.clone())?)),
                None => None,
            };
            let stop = stop.clone();
            tracker.spawn(async move {
                if let Err(e) = grpc::serve_grpc_with(listener, service, tls, stop).await {
                    error!(error = %e, "gRPC listener failed");
                }
            });
        }

        Ok(())
    }

    fn bind_error(&self, what: &'static str, source: std::io::Error) -> AuthorityError {
        let addr = self.config.dns_listen.first().copied().unwrap_or_else(|| ([0, 0, 0, 0], 0).into());
        AuthorityError::Bind(BindError { what, addr, source })
    }

    fn log_startup(&self, listeners: &Listeners) {
        let source = match &self.config.cluster_file {
            Some(path) => format!("file {}", path.display()),
            None => match &self.config.kube.kubeconfig {
                Some(path) => format!("kubernetes API (kubeconfig {})", path.display()),
                None => "kubernetes API (in-cluster or KUBECONFIG)".to_owned(),
            },
        };
        let z = &self.config.zone;
        let index = self.store.index();
        let reverse: Vec<String> =
            index.zones().filter(|(_, k)| *k == ZoneKind::Reverse).map(|(n, _)| n.to_string()).collect();
        let custom = &self.config.custom_records;
        let custom_zones: Vec<String> =
            custom.iter().flat_map(|c| c.records.zones()).map(|z| z.apex.to_string()).collect();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            dns = ?listeners.dns.addrs(),
            admin = ?listeners.admin_addr(),
            grpc = ?listeners.grpc_addr(),
            rewrites = ?self.config.rewrites.rules().iter().map(ToString::to_string).collect::<Vec<_>>(),
            grpc_tls = match &self.config.grpc_tls {
                None => "off (plain text)",
                Some(t) if t.client_ca.is_some() => "mutual (agents' certificates required)",
                Some(_) => "server only (any client)",
            },
            source,
            namespaces = ?self.config.kube.namespaces,
            label_selector = ?self.config.kube.label_selector,
            cluster_domain = %z.cluster_domain,
            pods = ?z.pods,
            ttl = z.ttl,
            wildcards = z.wildcards,
            reverse_zones = ?reverse,
            custom_records = ?custom.as_ref().map(|c| c.path.display().to_string()),
            custom_zones = ?custom_zones,
            reverse_cidrs = ?z.reverse_cidrs.as_ref().map(|c| c.iter().map(ToString::to_string).collect::<Vec<_>>()),
            transfer_from = ?self.config.transfer_from.iter().map(ToString::to_string).collect::<Vec<_>>(),
            rotate = !self.config.no_rotate,
            upstreams = ?self.config.upstreams.iter().map(ToString::to_string).collect::<Vec<_>>(),
            upstream_source = %self.config.upstream_source,
            stub_domains = ?self.config.stub_domains.iter().map(|s| format!("{}={:?}", s.zone, s.servers)).collect::<Vec<_>>(),
            cache_bytes = self.config.cache_bytes,
            timeout_s = self.config.timeout.as_secs_f64(),
            "nodedns-authority serving"
        );
    }
}
