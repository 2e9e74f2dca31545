//! The authority's configuration: one typed [`Config`], from flags, environment variables
//! (`NODEDNS_*`) and an optional YAML `--config FILE` whose keys are the flag names. Flags and
//! environment win over the file; unknown keys in the file are an error naming the key.
//!
//! The file is re-read when it changes and on SIGHUP: [`Config::changed_keys`] names what
//! differs, and [`RESTART_KEYS`] are the settings only a restart applies.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use hickory_proto::rr::Name;
use ipnet::IpNet;
use nodedns_agent::config::{StubDomain, check_loops, parse_resolv_conf, parse_stub_domain};
use nodedns_agent::rewrite::{Rewrites, parse_rule};
pub use nodedns_common::config::{ConfigError, LogFormat};
use nodedns_common::config::{invalid, list, read_yaml, seconds};
use nodedns_common::tls::{ServerTlsFiles, TlsFile};
use nodedns_zone::{CustomRecords, PodsMode, ZoneConfig, parse_custom};
use serde::Deserialize;

use crate::kube_source::KubeSettings;

/// Largest `--ttl` accepted (CoreDNS's `ttl` maximum).
pub const MAX_TTL: u32 = 3600;

#[derive(Debug, Parser, Default)]
#[command(
    name = "nodedns-authority",
    version,
    about = "nodedns authority: answers the Kubernetes DNS specification for the cluster domain and the reverse zones of cluster addresses.",
    after_help = "Migrating from CoreDNS: nodedns-authority migrate --corefile FILE [--kube-dns-configmap FILE] (see migrate --help)."
)]
pub struct Args {
    /// YAML file with any of the settings below (keys are the flag names, e.g. `cluster-file`).
    #[arg(long, env = "NODEDNS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Read the cluster from this file (a `kind: List` or multi-document YAML of Namespaces,
    /// Services, EndpointSlices and Pods) instead of the Kubernetes API; re-read when it changes.
    #[arg(long, env = "NODEDNS_CLUSTER_FILE", value_name = "PATH")]
    pub cluster_file: Option<PathBuf>,
    /// Also serve the records in this zone-file text: names in the cluster domain (they win over
    /// the generated ones) or in zones the file declares ($ORIGIN or SOA); re-read when it changes.
    #[arg(long, env = "NODEDNS_CUSTOM_RECORDS", value_name = "FILE")]
    pub custom_records: Option<PathBuf>,
    /// Kubeconfig for the Kubernetes API source [default: in-cluster config, else KUBECONFIG].
    #[arg(long, env = "NODEDNS_KUBECONFIG", value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Serve only this namespace (repeatable); names elsewhere answer NXDOMAIN [default: all].
    #[arg(long, env = "NODEDNS_NAMESPACE", value_name = "NS", value_delimiter = ',')]
    pub namespace: Vec<String>,
    /// Serve only Services and EndpointSlices matching this label selector (e.g. `tier!=internal`).
    #[arg(long, env = "NODEDNS_LABEL_SELECTOR", value_name = "SELECTOR")]
    pub label_selector: Option<String>,
    /// The cluster domain [default: cluster.local].
    #[arg(long, env = "NODEDNS_CLUSTER_DOMAIN", value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// DNS listen address, UDP and TCP; repeatable [default: 0.0.0.0:53].
    #[arg(long, env = "NODEDNS_DNS_LISTEN", value_name = "ADDR:PORT", value_delimiter = ',')]
    pub dns_listen: Vec<SocketAddr>,
    /// gRPC listen address for node agents (nodedns.v1.Authority) [default: 0.0.0.0:8053].
    #[arg(long, env = "NODEDNS_GRPC_LISTEN", value_name = "ADDR:PORT")]
    pub grpc_listen: Option<SocketAddr>,
    /// Admin listen address for /health, /ready and /metrics [default: 0.0.0.0:9153].
    #[arg(long, env = "NODEDNS_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Pod records `a-b-c-d.<ns>.pod.<zone>`: verified, insecure or disabled [default: verified].
    #[arg(long, env = "NODEDNS_PODS", value_name = "MODE")]
    pub pods: Option<String>,
    /// TTL of every answer and of negative caching (SOA minimum) [default: 5].
    #[arg(long, env = "NODEDNS_TTL", value_name = "SECONDS")]
    pub ttl: Option<u32>,
    /// Answer PTR queries only inside these CIDRs; repeatable [default: the IPv4 /16 and IPv6 /64
    /// around every service, endpoint and pod address seen].
    #[arg(long, env = "NODEDNS_REVERSE_CIDR", value_name = "CIDR", value_delimiter = ',')]
    pub reverse_cidr: Vec<IpNet>,
    /// Treat `*` labels as wildcards (`*.<ns>.svc.<zone>` lists a namespace's services).
    #[arg(long, env = "NODEDNS_WILDCARDS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub wildcards: Option<bool>,
    /// Name endpoints without a hostname after their pod (CoreDNS `endpoint_pod_names`) instead of
    /// their dashed address.
    #[arg(long, env = "NODEDNS_ENDPOINT_POD_NAMES", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub endpoint_pod_names: Option<bool>,
    /// Allow zone transfers (AXFR over TCP) to clients in this CIDR; repeatable [default: none].
    #[arg(long, env = "NODEDNS_TRANSFER_FROM", value_name = "CIDR", value_delimiter = ',')]
    pub transfer_from: Vec<IpNet>,
    /// Addresses of `ns.dns.<zone>`, the apex NS target; repeatable [default: the specific
    /// --dns-listen addresses].
    #[arg(long, env = "NODEDNS_NS_ADDRESS", value_name = "IP", value_delimiter = ',')]
    pub ns_address: Vec<IpAddr>,
    /// How often the cluster file and --config are checked for changes; SIGHUP re-reads the
    /// config at once [default: 1].
    #[arg(long, env = "NODEDNS_RELOAD_INTERVAL", value_name = "SECONDS")]
    pub reload_interval: Option<f64>,
    /// Close TCP connections idle this long [default: 10].
    #[arg(long, env = "NODEDNS_TCP_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub tcp_idle_timeout: Option<f64>,
    /// Most TCP connections served at once; more are closed at accept [default: 1024].
    #[arg(long, env = "NODEDNS_TCP_MAX_CONNECTIONS", value_name = "N")]
    pub tcp_max_connections: Option<usize>,
    /// On SIGTERM, keep answering this long with /ready false before stopping [default: 5].
    #[arg(long, env = "NODEDNS_LAMEDUCK", value_name = "SECONDS")]
    pub lameduck: Option<f64>,
    /// Forward names outside the served zones to this resolver; repeatable [default: none, such
    /// names are REFUSED].
    #[arg(long, env = "NODEDNS_UPSTREAM", value_name = "ADDR:PORT", value_delimiter = ',')]
    pub upstream: Vec<SocketAddr>,
    /// Forward names outside the served zones to this resolv.conf's nameservers (without
    /// --upstream). Never read unless given: in a pod, /etc/resolv.conf names the cluster DNS,
    /// which is this server.
    #[arg(long, env = "NODEDNS_RESOLV_CONF", value_name = "PATH")]
    pub resolv_conf: Option<PathBuf>,
    /// Send names under ZONE to these servers instead of the upstreams; repeatable.
    #[arg(long, env = "NODEDNS_STUB_DOMAIN", value_name = "ZONE=ADDR:PORT[,ADDR:PORT]")]
    pub stub_domain: Vec<String>,
    /// Bytes of cached forwarded answers at most [default: 33554432].
    #[arg(long, env = "NODEDNS_CACHE_BYTES", value_name = "BYTES")]
    pub cache_bytes: Option<u64>,
    /// Give up on an upstream or stub server after this long, across retries [default: 2].
    #[arg(long, env = "NODEDNS_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Log one line per answered query.
    #[arg(long, env = "NODEDNS_LOG_QUERIES", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_queries: Option<bool>,
    /// Keep the records of A, AAAA, MX and SRV answers in the zone's order instead of turning
    /// them round-robin per response (CoreDNS `loadbalance`).
    #[arg(long, env = "NODEDNS_NO_ROTATE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub no_rotate: Option<bool>,
    /// Resolve a name as another and answer under the asked name (CoreDNS `rewrite name` with
    /// `answer auto`): `exact:FROM=TO` or `suffix:.FROM=.TO`; repeatable, first match applies.
    #[arg(long, env = "NODEDNS_REWRITE", value_name = "RULE", value_delimiter = ',')]
    pub rewrite: Vec<String>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "NODEDNS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Serve gRPC over TLS with this certificate (PEM, chain leaf first); with --tls-key.
    #[arg(long, env = "NODEDNS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "NODEDNS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// Require agents to present a certificate signed by this CA (PEM): mutual TLS.
    #[arg(long, env = "NODEDNS_TLS_CLIENT_CA", value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Validate the configuration (and the cluster file), print the result and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The YAML file: the same settings as the flags, under the flag names.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub cluster_file: Option<PathBuf>,
    pub custom_records: Option<PathBuf>,
    pub kubeconfig: Option<PathBuf>,
    pub namespace: Option<Vec<String>>,
    pub label_selector: Option<String>,
    pub cluster_domain: Option<String>,
    pub dns_listen: Option<Vec<SocketAddr>>,
    pub admin_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub pods: Option<String>,
    pub ttl: Option<u32>,
    pub reverse_cidr: Option<Vec<IpNet>>,
    pub wildcards: Option<bool>,
    pub endpoint_pod_names: Option<bool>,
    pub transfer_from: Option<Vec<IpNet>>,
    pub ns_address: Option<Vec<IpAddr>>,
    pub reload_interval: Option<f64>,
    pub tcp_idle_timeout: Option<f64>,
    pub tcp_max_connections: Option<usize>,
    pub lameduck: Option<f64>,
    pub upstream: Option<Vec<SocketAddr>>,
    pub resolv_conf: Option<PathBuf>,
    pub stub_domain: Option<Vec<String>>,
    pub cache_bytes: Option<u64>,
    pub timeout: Option<f64>,
    pub log_queries: Option<bool>,
    pub no_rotate: Option<bool>,
    pub rewrite: Option<Vec<String>>,
    pub log_format: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_client_ca: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Read the cluster from this file; `None`: from the Kubernetes API with `kube`.
    pub cluster_file: Option<PathBuf>,
    /// `--custom-records`, read and checked.
    pub custom_records: Option<CustomRecordsFile>,
    pub kube: KubeSettings,
    pub zone: ZoneConfig,
    pub dns_listen: Vec<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
    pub grpc_listen: Option<SocketAddr>,
    pub transfer_from: Vec<IpNet>,
    pub reload_interval: Duration,
    pub tcp_idle_timeout: Duration,
    pub tcp_max_connections: usize,
    pub lameduck: Duration,
    /// Where names outside the served zones go (none and no stub domain: REFUSED).
    pub upstreams: Vec<SocketAddr>,
    /// `--upstream`, the resolv.conf they came from, or empty without upstreams.
    pub upstream_source: String,
    pub resolv_conf: Option<PathBuf>,
    pub stub_domains: Vec<StubDomain>,
    /// The forwarded answers' cache bound, in bytes.
    pub cache_bytes: u64,
    /// Forwarding's time budget per query.
    pub timeout: Duration,
    pub log_queries: bool,
    /// Answers in the zone's order, not round-robin (`--no-rotate`).
    pub no_rotate: bool,
    pub rewrites: Rewrites,
    pub log_format: LogFormat,
    /// gRPC over TLS (mutual with a client CA); `None`: plain text.
    pub grpc_tls: Option<ServerTlsFiles>,
}

/// Settings a reload cannot change in a running authority: sockets, the cluster source and its
/// filters, the zone's name, shutdown timing and logging set-up. A reload that changes one logs
/// it as needing a restart and keeps the running value.
pub const RESTART_KEYS: &[&str] = &[
    "cluster-file",
    "kubeconfig",
    "namespace",
    "label-selector",
    "cluster-domain",
    "dns-listen",
    "admin-listen",
    "grpc-listen",
    "reload-interval",
    "tcp-idle-timeout",
    "tcp-max-connections",
    "lameduck",
    "log-format",
    // The files themselves are re-read when they change (certificate rotation); which files is
    // fixed at start.
    "tls-cert",
    "tls-key",
    "tls-client-ca",
];

/// The gRPC TLS files, checked by building the server config once, so a missing, unreadable or
/// mismatched file stops the start naming its flag.
fn grpc_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
) -> Result<Option<ServerTlsFiles>, ConfigError> {
    let (cert, key) = match (cert, key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) if client_ca.is_none() => return Ok(None),
        (None, None) => return Err(invalid("tls-client-ca", "needs --tls-cert and --tls-key")),
        (Some(_), None) => return Err(invalid("tls-key", "--tls-cert needs --tls-key")),
        (None, Some(_)) => return Err(invalid("tls-cert", "--tls-key needs --tls-cert")),
    };
    let files = ServerTlsFiles {
        cert: TlsFile::new("tls-cert", cert),
        key: TlsFile::new("tls-key", key),
        client_ca: client_ca.map(|ca| TlsFile::new("tls-client-ca", ca)),
    };
    files.server_config().map_err(|e| invalid(e.key, format!("{}: {}", e.path.display(), e.message)))?;
    Ok(Some(files))
}

/// The `--custom-records` file and the records it held when the configuration was resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct CustomRecordsFile {
    pub path: PathBuf,
    pub records: Arc<CustomRecords>,
}

impl CustomRecordsFile {
    /// Reads and checks the file; an error names the file and the line at fault.
    fn read(path: PathBuf, cluster_domain: &Name, ttl: u32) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| invalid("custom-records", format!("{}: {e}", path.display())))?;
        let records = parse_custom(&text, cluster_domain, ttl)
            .map_err(|e| invalid("custom-records", format!("{}: {e}", path.display())))?;
        Ok(Self { path, records: Arc::new(records) })
    }
}

/// Reads a YAML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    read_yaml(path)
}

impl Config {
    /// Flags (and environment) over the file over the defaults.
    pub fn resolve(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let domain_text =
            args.cluster_domain.clone().or(file.cluster_domain).unwrap_or_else(|| "cluster.local".into());
        let bare = domain_text.trim_end_matches('.');
        let cluster_domain = Name::from_ascii(format!("{bare}."))
            .ok()
            .filter(|n| !bare.is_empty() && n.num_labels() > 0)
            .ok_or_else(|| invalid("cluster-domain", format!("{domain_text:?} is not a domain name")))?
            .to_lowercase();

        let pods_text = args.pods.clone().or(file.pods).unwrap_or_else(|| "verified".into());
        let pods: PodsMode = pods_text.parse().map_err(|e: String| invalid("pods", e))?;

        let ttl = args.ttl.or(file.ttl).unwrap_or(5);
        if ttl > MAX_TTL {
            return Err(invalid("ttl", format!("{ttl} is above the maximum {MAX_TTL}")));
        }

        let mut dns_listen = list(&args.dns_listen, file.dns_listen);
        if dns_listen.is_empty() {
            dns_listen.push("0.0.0.0:53".parse().expect("static address"));
        }
        let reverse = list(&args.reverse_cidr, file.reverse_cidr);
        let mut ns_addresses = list(&args.ns_address, file.ns_address);
        if ns_addresses.is_empty() {
            ns_addresses = dns_listen.iter().map(SocketAddr::ip).filter(|ip| !ip.is_unspecified()).collect();
            ns_addresses.dedup();
        }
        let log_format = LogFormat::parse(args.log_format.as_deref().or(file.log_format.as_deref()))?;
        let tcp_max_connections = args.tcp_max_connections.or(file.tcp_max_connections).unwrap_or(1024);
        if tcp_max_connections == 0 {
            return Err(invalid("tcp-max-connections", "must be at least 1"));
        }
        let reload_interval =
            seconds("reload-interval", args.reload_interval.or(file.reload_interval).unwrap_or(1.0))?;
        if reload_interval.is_zero() {
            return Err(invalid("reload-interval", "must be above 0"));
        }

        // Forwarding, parsed and checked as the agent's (the same functions).
        let resolv_conf = args.resolv_conf.clone().or(file.resolv_conf);
        let explicit = list(&args.upstream, file.upstream);
        let (upstreams, upstream_source) = match &resolv_conf {
            _ if !explicit.is_empty() => (explicit, "--upstream".to_owned()),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid("resolv-conf", format!("{}: {e}", path.display())))?;
                let servers: Vec<SocketAddr> =
                    parse_resolv_conf(&text).nameservers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
                if servers.is_empty() {
                    return Err(invalid("resolv-conf", format!("{} lists no nameserver", path.display())));
                }
                (servers, path.display().to_string())
            }
            None => (Vec::new(), String::new()),
        };
        let stub_domains = list(&args.stub_domain, file.stub_domain)
            .iter()
            .map(|s| parse_stub_domain(s))
            .collect::<Result<Vec<_>, _>>()?;
        check_loops(&upstreams, &upstream_source, &stub_domains, &dns_listen)?;
        let cache_bytes = args
            .cache_bytes
            .or(file.cache_bytes)
            .unwrap_or(nodedns_agent::cache::Limits::default().max_bytes);
        if cache_bytes < 4096 {
            return Err(invalid("cache-bytes", "must be at least 4096"));
        }
        let timeout = seconds("timeout", args.timeout.or(file.timeout).unwrap_or(2.0))?;
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be above 0"));
        }

        let cluster_file = args.cluster_file.clone().or(file.cluster_file);
        // Records without a TTL get the zone's; `--ttl` is checked above.
        let custom_records = match args.custom_records.clone().or(file.custom_records) {
            Some(path) => Some(CustomRecordsFile::read(path, &cluster_domain, ttl)?),
            None => None,
        };
        let kube = KubeSettings {
            kubeconfig: args.kubeconfig.clone().or(file.kubeconfig),
            namespaces: list(&args.namespace, file.namespace),
            label_selector: args
                .label_selector
                .clone()
                .or(file.label_selector)
                .filter(|s| !s.trim().is_empty()),
        };
        for ns in &kube.namespaces {
            let ok = !ns.is_empty()
                && ns.len() <= 63
                && ns.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            if !ok {
                return Err(invalid("namespace", format!("{ns:?} is not a namespace name")));
            }
        }
        if cluster_file.is_some() && (!kube.namespaces.is_empty() || kube.label_selector.is_some()) {
            let key = if kube.namespaces.is_empty() { "label-selector" } else { "namespace" };
            return Err(invalid(key, "filters apply to the Kubernetes API source, not to --cluster-file"));
        }

        let grpc_tls = grpc_tls(
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.tls_client_ca.clone().or(file.tls_client_ca),
        )?;

        Ok(Config {
            cluster_file,
            custom_records,
            kube,
            zone: ZoneConfig {
                cluster_domain,
                ttl,
                pods,
                reverse_cidrs: if reverse.is_empty() {
                    None
                } else {
                    Some(reverse.iter().map(IpNet::trunc).collect())
                },
                wildcards: args.wildcards.or(file.wildcards).unwrap_or(false),
                ns_addresses,
                endpoint_pod_names: args.endpoint_pod_names.or(file.endpoint_pod_names).unwrap_or(false),
            },
            dns_listen,
            admin_listen: Some(
                args.admin_listen
                    .or(file.admin_listen)
                    .unwrap_or_else(|| "0.0.0.0:9153".parse().expect("static address")),
            ),
            grpc_listen: Some(
                args.grpc_listen
                    .or(file.grpc_listen)
                    .unwrap_or_else(|| "0.0.0.0:8053".parse().expect("static address")),
            ),
            transfer_from: list(&args.transfer_from, file.transfer_from),
            reload_interval,
            tcp_idle_timeout: seconds(
                "tcp-idle-timeout",
                args.tcp_idle_timeout.or(file.tcp_idle_timeout).unwrap_or(10.0),
            )?,
            tcp_max_connections,
            lameduck: seconds("lameduck", args.lameduck.or(file.lameduck).unwrap_or(5.0))?,
            upstreams,
            upstream_source,
            resolv_conf,
            stub_domains,
            cache_bytes,
            timeout,
            log_queries: args.log_queries.or(file.log_queries).unwrap_or(false),
            no_rotate: args.no_rotate.or(file.no_rotate).unwrap_or(false),
            rewrites: Rewrites::new(
                list(&args.rewrite, file.rewrite)
                    .iter()
                    .map(|r| parse_rule(r))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            log_format,
            grpc_tls,
        })
    }

    /// Refuses upstream and stub servers among `listen` (the addresses really bound, port 0 in
    /// tests, which a reload must not forward to either).
    pub fn check_loops(&self, listen: &[SocketAddr]) -> Result<(), ConfigError> {
        check_loops(&self.upstreams, &self.upstream_source, &self.stub_domains, listen)
    }

    /// Whether the upstreams come from `--resolv-conf` (which is then watched for changes).
    pub fn upstreams_from_resolv_conf(&self) -> bool {
        !self.upstreams.is_empty() && self.upstream_source != "--upstream"
    }

    /// The keys (flag names) whose values differ between `self` and `new`.
    pub fn changed_keys(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (self, new);
        let (za, zb) = (&a.zone, &b.zone);
        [
            ("cluster-file", a.cluster_file != b.cluster_file),
            // The path or what the file holds.
            ("custom-records", a.custom_records != b.custom_records),
            ("kubeconfig", a.kube.kubeconfig != b.kube.kubeconfig),
            ("namespace", a.kube.namespaces != b.kube.namespaces),
            ("label-selector", a.kube.label_selector != b.kube.label_selector),
            ("cluster-domain", za.cluster_domain != zb.cluster_domain),
            ("dns-listen", a.dns_listen != b.dns_listen),
            ("admin-listen", a.admin_listen != b.admin_listen),
            ("grpc-listen", a.grpc_listen != b.grpc_listen),
            ("pods", za.pods != zb.pods),
            ("ttl", za.ttl != zb.ttl),
            ("reverse-cidr", za.reverse_cidrs != zb.reverse_cidrs),
            ("wildcards", za.wildcards != zb.wildcards),
            ("transfer-from", a.transfer_from != b.transfer_from),
            ("ns-address", za.ns_addresses != zb.ns_addresses),
            ("endpoint-pod-names", za.endpoint_pod_names != zb.endpoint_pod_names),
            ("reload-interval", a.reload_interval != b.reload_interval),
            ("tcp-idle-timeout", a.tcp_idle_timeout != b.tcp_idle_timeout),
            ("tcp-max-connections", a.tcp_max_connections != b.tcp_max_connections),
            ("lameduck", a.lameduck != b.lameduck),
            ("upstream", a.upstreams != b.upstreams),
            ("resolv-conf", a.resolv_conf != b.resolv_conf),
            ("stub-domain", a.stub_domains != b.stub_domains),
            ("cache-bytes", a.cache_bytes != b.cache_bytes),
            ("timeout", a.timeout != b.timeout),
            ("log-queries", a.log_queries != b.log_queries),
            ("no-rotate", a.no_rotate != b.no_rotate),
            ("rewrite", a.rewrites != b.rewrites),
            ("log-format", a.log_format != b.log_format),
            ("tls-cert", a.grpc_tls.as_ref().map(|t| &t.cert) != b.grpc_tls.as_ref().map(|t| &t.cert)),
            ("tls-key", a.grpc_tls.as_ref().map(|t| &t.key) != b.grpc_tls.as_ref().map(|t| &t.key)),
            (
                "tls-client-ca",
                a.grpc_tls.as_ref().map(|t| &t.client_ca) != b.grpc_tls.as_ref().map(|t| &t.client_ca),
            ),
        ]
        .into_iter()
        .filter_map(|(key, changed)| changed.then_some(key))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(argv: &[&str]) -> Args {
        Args::try_parse_from(std::iter::once("nodedns-authority").chain(argv.iter().copied())).unwrap()
    }

    fn write(dir: &nodedns_testsupport::TempDir, text: &str) -> String {
        dir.write("config.yaml", text).to_str().unwrap().to_owned()
    }

    #[test]
    fn defaults() {
        let c = Config::resolve(&args(&[])).unwrap();
        assert_eq!(c.zone.cluster_domain.to_ascii(), "cluster.local.");
        assert_eq!(c.zone.ttl, 5);
        assert_eq!(c.zone.pods, PodsMode::Verified);
        assert_eq!(c.dns_listen, vec!["0.0.0.0:53".parse().unwrap()]);
        assert!(c.zone.ns_addresses.is_empty(), "unspecified listen addresses give no NS glue");
        assert!(!c.zone.wildcards);
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = nodedns_testsupport::TempDir::new("cfg");
        let f = write(&dir, "ttl: 30\npods: insecure\ndns-listen: ['127.0.0.1:5353']\nwildcards: true\n");
        let p = f.as_str();
        let c = Config::resolve(&args(&["--config", p, "--ttl", "7"])).unwrap();
        assert_eq!(c.zone.ttl, 7, "flag wins");
        assert_eq!(c.zone.pods, PodsMode::Insecure, "file fills what flags leave out");
        assert!(c.zone.wildcards);
        assert_eq!(c.zone.ns_addresses, vec!["127.0.0.1".parse::<IpAddr>().unwrap()]);
        let c = Config::resolve(&args(&["--config", p, "--wildcards=false"])).unwrap();
        assert!(!c.zone.wildcards);
    }

    #[test]
    fn a_changed_file_names_its_keys() {
        let dir = nodedns_testsupport::TempDir::new("cfg");
        let f = write(&dir, "ttl: 30\npods: insecure\n");
        let a = args(&["--config", &f, "--pods", "disabled"]);
        let first = Config::resolve(&a).unwrap();
        write(&dir, "ttl: 10\npods: verified\ndns-listen: ['127.0.0.1:5353']\ntransfer-from: [10.0.0.0/8]\n");
        let second = Config::resolve(&a).unwrap();
        assert_eq!(second.zone.pods, PodsMode::Disabled, "the flag still wins");
        assert_eq!(first.changed_keys(&second), ["dns-listen", "ttl", "transfer-from", "ns-address"]);
        assert!(RESTART_KEYS.contains(&"dns-listen") && !RESTART_KEYS.contains(&"ttl"));
    }

    #[test]
    fn no_rotate_comes_from_the_flag_or_the_file_and_reloads_live() {
        let dir = nodedns_testsupport::TempDir::new("cfg");
        let f = write(&dir, "ttl: 5\n");
        let a = args(&["--config", &f]);
        let first = Config::resolve(&a).unwrap();
        assert!(!first.no_rotate, "answers turn unless told not to");
        write(&dir, "ttl: 5\nno-rotate: true\n");
        let second = Config::resolve(&a).unwrap();
        assert!(second.no_rotate);
        assert_eq!(first.changed_keys(&second), ["no-rotate"]);
        assert!(!RESTART_KEYS.contains(&"no-rotate"));
        assert!(Config::resolve(&args(&["--no-rotate"])).unwrap().no_rotate);
    }

    #[test]
    fn errors_name_the_key() {
        let dir = nodedns_testsupport::TempDir::new("cfg");
        let f = write(&dir, "ttl: 5\nclustre-domain: x\n");
        let err = Config::resolve(&args(&["--config", &f])).unwrap_err().to_string();
        assert!(err.contains("clustre-domain"), "{err}");
        for (argv, key) in [
            (&["--pods", "maybe"][..], "pods: "),
            (&["--ttl", "99999"], "ttl: "),
            (&["--cluster-domain", "bad..domain"], "cluster-domain: "),
            (&["--log-format", "xml"], "log-format: "),
            (&["--tcp-idle-timeout=-1"], "tcp-idle-timeout: "),
        ] {
            let err = Config::resolve(&args(argv)).unwrap_err().to_string();
            assert!(err.starts_with(key), "{argv:?}: {err}");
        }
        assert!(Args::try_parse_from(["x", "--dns-listen", "nonsense"]).is_err());
        assert!(Args::try_parse_from(["x", "--reverse-cidr", "10.0.0.0/33"]).is_err());
    }
}
