//! The agent's configuration: one typed [`Config`] from flags, environment variables
//! (`NODEDNS_*`, and `NODE_NAME` as the downward API sets it) and an optional YAML `--config FILE`
//! whose keys are the flag names. Flags and environment win over the file; unknown keys in the
//! file are an error naming the key; every error names the setting at fault.
//!
//! The file is re-read when it changes and on SIGHUP ([`crate::reload`]): [`Config::changed_keys`]
//! names what differs, and [`RESTART_KEYS`] are the settings only a restart applies.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
pub use nodedns_common::config::{ConfigError, LogFormat};
use nodedns_common::config::{invalid, list, read_yaml, seconds};
use nodedns_common::tls::{ClientTlsFiles, TlsFile};
use serde::Deserialize;

use crate::cache::Limits;
use crate::rewrite::{Rewrites, parse_rule};

/// The default address pods are pointed at (kubelet `--cluster-dns`), as NodeLocal DNSCache uses.
pub const DEFAULT_LISTEN: &str = "169.254.20.10:53";
/// The admin port, on the first listen address: uncommon, since 8080 and 9153 on the host
/// network collide with other daemons.
pub const DEFAULT_ADMIN_PORT: u16 = 9254;

#[derive(Debug, Parser, Default)]
#[command(
    name = "nodedns-agent",
    version,
    about = "nodedns node agent: a caching resolver on a link-local address, with cluster names from the nodedns authority."
)]
pub struct Args {
    /// YAML file with any of the settings below (keys are the flag names, e.g. `upstream`).
    #[arg(long, env = "NODEDNS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Listen address, UDP and TCP; repeatable [default: 169.254.20.10:53].
    #[arg(long, env = "NODEDNS_LISTEN", value_name = "ADDR:PORT", value_delimiter = ',')]
    pub listen: Vec<SocketAddr>,
    /// Authority gRPC endpoint, e.g. http://nodedns-authority.kube-system:8053; repeatable.
    #[arg(long, env = "NODEDNS_AUTHORITY", value_name = "URL", value_delimiter = ',')]
    pub authority: Vec<String>,
    /// Upstream resolver for names outside the cluster; repeatable [default: the nameservers of
    /// --resolv-conf].
    #[arg(long, env = "NODEDNS_UPSTREAM", value_name = "ADDR:PORT", value_delimiter = ',')]
    pub upstream: Vec<SocketAddr>,
    /// The node's resolv.conf: upstream nameservers (without --upstream) [default: /etc/resolv.conf].
    #[arg(long, env = "NODEDNS_RESOLV_CONF", value_name = "PATH")]
    pub resolv_conf: Option<PathBuf>,
    /// Resolve a name as another and answer under the asked name (CoreDNS `rewrite name` with
    /// `answer auto`): `exact:FROM=TO` or `suffix:.FROM=.TO`; repeatable, first match applies.
    #[arg(long, env = "NODEDNS_REWRITE", value_name = "RULE", value_delimiter = ',')]
    pub rewrite: Vec<String>,
    /// Send names under ZONE to these servers instead of the upstreams; repeatable.
    #[arg(long, env = "NODEDNS_STUB_DOMAIN", value_name = "ZONE=ADDR:PORT[,ADDR:PORT]")]
    pub stub_domain: Vec<String>,
    /// This node's name (the pods whose table the authority sends).
    #[arg(long, env = "NODE_NAME", value_name = "NAME")]
    pub node_name: Option<String>,
    /// The cluster domain [default: cluster.local].
    #[arg(long, env = "NODEDNS_CLUSTER_DOMAIN", value_name = "DOMAIN")]
    pub cluster_domain: Option<String>,
    /// Admin listener for /health, /ready and /metrics [default: the first listen IP, port 9254].
    #[arg(long, env = "NODEDNS_ADMIN_LISTEN", value_name = "ADDR:PORT")]
    pub admin_listen: Option<SocketAddr>,
    /// Run an authority in-process over this cluster file (no Kubernetes needed): the demo mode.
    #[arg(long, env = "NODEDNS_STANDALONE_CLUSTER_FILE", value_name = "PATH")]
    pub standalone_cluster_file: Option<PathBuf>,
    /// Create (or reuse) this dummy interface holding the listen addresses, as NodeLocal
    /// DNSCache makes `nodelocaldns`; removed on exit unless --keep-interface.
    #[arg(long, env = "NODEDNS_SETUP_INTERFACE", value_name = "NAME")]
    pub setup_interface: Option<String>,
    /// Leave the --setup-interface interface in place on exit (rolling updates with surge).
    #[arg(long, env = "NODEDNS_KEEP_INTERFACE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub keep_interface: Option<bool>,
    /// Bytes of cached answers at most [default: 33554432].
    #[arg(long, env = "NODEDNS_CACHE_BYTES", value_name = "BYTES")]
    pub cache_bytes: Option<u64>,
    /// Cached answers live at least this long [default: 0].
    #[arg(long, env = "NODEDNS_MIN_TTL", value_name = "SECONDS")]
    pub min_ttl: Option<u32>,
    /// Cached answers live at most this long [default: 3600].
    #[arg(long, env = "NODEDNS_MAX_TTL", value_name = "SECONDS")]
    pub max_ttl: Option<u32>,
    /// Negative answers live at most this long [default: 1800].
    #[arg(long, env = "NODEDNS_MAX_NEGATIVE_TTL", value_name = "SECONDS")]
    pub max_negative_ttl: Option<u32>,
    /// Keep expired answers this long to serve when the source cannot answer [default: 3600].
    #[arg(long, env = "NODEDNS_STALE_FOR", value_name = "SECONDS")]
    pub stale_for: Option<f64>,
    /// Give up on an upstream or the authority after this long, across retries [default: 2].
    #[arg(long, env = "NODEDNS_TIMEOUT", value_name = "SECONDS")]
    pub timeout: Option<f64>,
    /// Close client TCP connections idle this long [default: 10].
    #[arg(long, env = "NODEDNS_TCP_IDLE_TIMEOUT", value_name = "SECONDS")]
    pub tcp_idle_timeout: Option<f64>,
    /// Most client TCP connections at once; more are closed at accept [default: 1024].
    #[arg(long, env = "NODEDNS_TCP_MAX_CONNECTIONS", value_name = "N")]
    pub tcp_max_connections: Option<usize>,
    /// Receive buffer of each DNS UDP socket, so a burst or a moment without CPU (a restart
    /// beside the old instance, a noisy neighbour) queues instead of dropping; beyond the kernel's
    /// rmem_max it is forced with CAP_NET_ADMIN; 0 keeps the kernel default [default: 4194304].
    #[arg(long, env = "NODEDNS_UDP_RECV_BUFFER", value_name = "BYTES")]
    pub udp_recv_buffer: Option<usize>,
    /// Server-side autopath for the node's pods: answer a pod's first search expansion with the
    /// walk of its whole search list [default: true].
    #[arg(long, env = "NODEDNS_AUTOPATH", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub autopath: Option<bool>,
    /// Log one line per answered query.
    #[arg(long, env = "NODEDNS_LOG_QUERIES", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub log_queries: Option<bool>,
    /// Keep the records of A, AAAA, MX and SRV answers in the order stored instead of turning
    /// them round-robin per response (CoreDNS `loadbalance`).
    #[arg(long, env = "NODEDNS_NO_ROTATE", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub no_rotate: Option<bool>,
    /// Log format: text or json [default: text].
    #[arg(long, env = "NODEDNS_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// How often --config (and the resolv.conf the upstreams come from) and the standalone
    /// cluster file are checked for changes; SIGHUP re-reads the config at once [default: 1].
    #[arg(long, env = "NODEDNS_RELOAD_INTERVAL", value_name = "SECONDS")]
    pub reload_interval: Option<f64>,
    /// CA (PEM) that signs the authority's certificate: `https://` authorities are verified
    /// against it.
    #[arg(long, env = "NODEDNS_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This agent's certificate (PEM) for mutual TLS with the authority; with --tls-key.
    #[arg(long, env = "NODEDNS_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "NODEDNS_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// The name the authority's certificate must carry [default: the host of each --authority URL].
    #[arg(long, env = "NODEDNS_TLS_SERVER_NAME", value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// Validate the configuration, print the result and exit.
    #[arg(long)]
    pub check_config: bool,
}

/// The YAML file: the same settings as the flags, under the flag names.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub listen: Option<Vec<SocketAddr>>,
    pub authority: Option<Vec<String>>,
    pub upstream: Option<Vec<SocketAddr>>,
    pub resolv_conf: Option<PathBuf>,
    pub stub_domain: Option<Vec<String>>,
    pub rewrite: Option<Vec<String>>,
    pub node_name: Option<String>,
    pub cluster_domain: Option<String>,
    pub admin_listen: Option<SocketAddr>,
    pub standalone_cluster_file: Option<PathBuf>,
    pub setup_interface: Option<String>,
    pub keep_interface: Option<bool>,
    pub cache_bytes: Option<u64>,
    pub min_ttl: Option<u32>,
    pub max_ttl: Option<u32>,
    pub max_negative_ttl: Option<u32>,
    pub stale_for: Option<f64>,
    pub timeout: Option<f64>,
    pub tcp_idle_timeout: Option<f64>,
    pub tcp_max_connections: Option<usize>,
    pub udp_recv_buffer: Option<usize>,
    pub autopath: Option<bool>,
    pub log_queries: Option<bool>,
    pub no_rotate: Option<bool>,
    pub log_format: Option<String>,
    pub reload_interval: Option<f64>,
    pub tls_ca: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_server_name: Option<String>,
}

/// A zone whose names go to its own servers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StubDomain {
    /// Lower case, absolute (`corp.example.`).
    pub zone: String,
    pub servers: Vec<SocketAddr>,
}

/// What the node's resolv.conf says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResolvConf {
    pub nameservers: Vec<IpAddr>,
    /// Lower case, without trailing dot.
    pub search: Vec<String>,
    pub ndots: Option<u8>,
}

/// Parses resolv.conf text (resolv.conf(5)): `nameserver`, `search`/`domain`, `options ndots:N`.
pub fn parse_resolv_conf(text: &str) -> ResolvConf {
    let mut out = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut words = line.split_whitespace();
        match words.next() {
            Some("nameserver") => {
                // A scoped IPv6 address (`fe80::1%eth0`) keeps only the address.
                if let Some(ip) = words.next().and_then(|w| w.split('%').next()?.parse().ok()) {
                    out.nameservers.push(ip);
                }
            }
            // The last search or domain line wins.
            Some("search" | "domain") => {
                out.search = words.map(|w| w.trim_end_matches('.').to_ascii_lowercase()).collect();
            }
            Some("options") => {
                for option in words {
                    if let Some(n) = option.strip_prefix("ndots:").and_then(|n| n.parse::<u32>().ok()) {
                        out.ndots = Some(u8::try_from(n.min(15)).unwrap_or(15));
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub authority: Vec<String>,
    pub upstreams: Vec<SocketAddr>,
    /// Where the upstreams came from (for the start-up log).
    pub upstream_source: String,
    /// The node's resolv.conf (`--resolv-conf`).
    pub resolv_conf: PathBuf,
    pub node_resolv: ResolvConf,
    pub stub_domains: Vec<StubDomain>,
    pub node_name: String,
    /// Lower case, absolute.
    pub cluster_domain: String,
    pub admin_listen: Option<SocketAddr>,
    pub standalone_cluster_file: Option<PathBuf>,
    pub setup_interface: Option<String>,
    pub keep_interface: bool,
    pub cache: Limits,
    pub timeout: Duration,
    pub tcp_idle_timeout: Duration,
    pub tcp_max_connections: usize,
    /// Bytes asked for each DNS UDP socket's receive buffer (0: the kernel's default).
    pub udp_recv_buffer: usize,
    pub autopath: bool,
    pub log_queries: bool,
    /// Answers in stored order, not round-robin (`--no-rotate`).
    pub no_rotate: bool,
    pub rewrites: Rewrites,
    pub log_format: LogFormat,
    pub reload_interval: Duration,
    /// TLS towards `https://` authorities; `None` when every authority is `http://`.
    pub authority_tls: Option<ClientTlsFiles>,
}

/// Settings a reload cannot change in a running agent: sockets, the interface, the authority
/// session and what its routing and autopath contexts were built from. A reload that changes one
/// logs it as needing a restart and keeps the running value.
pub const RESTART_KEYS: &[&str] = &[
    "listen",
    "authority",
    "node-name",
    "cluster-domain",
    "admin-listen",
    "standalone-cluster-file",
    "setup-interface",
    "keep-interface",
    "tcp-idle-timeout",
    "tcp-max-connections",
    "udp-recv-buffer",
    "log-format",
    "reload-interval",
    // Its nameservers are `upstream` (live); its search domains and ndots join the pods' for
    // autopath, whose contexts are built as the authority's pod table arrives.
    "resolv-conf",
    // The files are read again at each connection (rotation needs no restart); which files, and
    // the name expected, are fixed with the session's settings.
    "tls-ca",
    "tls-cert",
    "tls-key",
    "tls-server-name",
];

/// A domain name as written in a setting, lower case and absolute (`corp.example.`).
pub(crate) fn domain(key: &'static str, text: &str) -> Result<String, ConfigError> {
    let bare = text.trim_end_matches('.').to_ascii_lowercase();
    let ok = !bare.is_empty()
        && bare.len() <= 253
        && bare.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if !ok {
        return Err(invalid(key, format!("{text:?} is not a domain name")));
    }
    Ok(format!("{bare}."))
}

/// Parses `ZONE=ADDR:PORT[,ADDR:PORT]` (a port-less address means port 53).
pub fn parse_stub_domain(text: &str) -> Result<StubDomain, ConfigError> {
    let (zone, servers) = text
        .split_once('=')
        .ok_or_else(|| invalid("stub-domain", format!("{text:?} is not ZONE=ADDR:PORT[,ADDR:PORT]")))?;
    let zone = domain("stub-domain", zone)?;
    let servers = servers
        .split(',')
        .map(|s| {
            let s = s.trim();
            s.parse::<SocketAddr>()
                .or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53)))
                .map_err(|_| invalid("stub-domain", format!("{s:?} in {text:?} is not an address")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StubDomain { zone, servers })
}

/// TLS towards the authority: every file read and parsed now, so a bad one stops the start naming
/// its flag. `https://` authorities need the CA; TLS files with only `http://` authorities are a
/// mistake worth stopping for (the operator believes the link is encrypted).
fn authority_tls(
    authority: &[String],
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    server_name: Option<String>,
) -> Result<Option<ClientTlsFiles>, ConfigError> {
    let https = authority.iter().any(|url| url.starts_with("https://"));
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((TlsFile::new("tls-cert", cert), TlsFile::new("tls-key", key))),
        (None, None) => None,
        (Some(_), None) => return Err(invalid("tls-key", "--tls-cert needs --tls-key")),
        (None, Some(_)) => return Err(invalid("tls-cert", "--tls-key needs --tls-cert")),
    };
    let Some(ca) = ca else {
        if https {
            return Err(invalid("tls-ca", "an https:// --authority needs the CA that signs its certificate"));
        }
        if identity.is_some() || server_name.is_some() {
            let key = if identity.is_some() { "tls-cert" } else { "tls-server-name" };
            return Err(invalid(key, "needs --tls-ca and an https:// --authority"));
        }
        return Ok(None);
    };
    if !https {
        return Err(invalid("tls-ca", "no --authority is https://: the link would not be encrypted"));
    }
    let files = ClientTlsFiles { ca: TlsFile::new("tls-ca", ca), identity, server_name };
    files.check().map_err(|e| invalid(e.key, format!("{}: {}", e.path.display(), e.message)))?;
    Ok(Some(files))
}

/// Reads a YAML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    read_yaml(path)
}

/// Refuses upstream and stub servers that are our own listen addresses: forwarding there would
/// loop. The authority applies it to its `--dns-listen` too. (A server that forwards back to us
/// from elsewhere is found at run time by the loop probe.)
pub fn check_loops(
    upstreams: &[SocketAddr],
    upstream_source: &str,
    stub_domains: &[StubDomain],
    listen: &[SocketAddr],
) -> Result<(), ConfigError> {
    if let Some(server) = upstreams.iter().find(|s| is_own(s, listen)) {
        return Err(invalid(
            if upstream_source == "--upstream" { "upstream" } else { "resolv-conf" },
            format!(
                "{server} is one of our own listen addresses: forwarding there would loop (point it at real resolvers)"
            ),
        ));
    }
    for stub in stub_domains {
        if let Some(server) = stub.servers.iter().find(|s| is_own(s, listen)) {
            return Err(invalid(
                "stub-domain",
                format!("{server} for {} is one of our own listen addresses: it would loop", stub.zone),
            ));
        }
    }
    Ok(())
}

/// Whether sending to `server` would reach one of our own listeners.
fn is_own(server: &SocketAddr, listen: &[SocketAddr]) -> bool {
    listen.iter().any(|l| {
        l.port() == server.port()
            && (l.ip() == server.ip()
                || (l.ip().is_unspecified() && (server.ip().is_loopback() || server.ip().is_unspecified())))
    })
}

impl Config {
    /// Flags (and environment) over the file over the defaults.
    pub fn resolve(args: &Args) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let mut listen = list(&args.listen, file.listen);
        if listen.is_empty() {
            listen.push(DEFAULT_LISTEN.parse().expect("static address"));
        }
        let cluster_domain = domain(
            "cluster-domain",
            args.cluster_domain.as_deref().or(file.cluster_domain.as_deref()).unwrap_or("cluster.local"),
        )?;

        let resolv_path =
            args.resolv_conf.clone().or(file.resolv_conf).unwrap_or_else(|| "/etc/resolv.conf".into());
        let explicit = list(&args.upstream, file.upstream);
        let (upstreams, upstream_source, node_resolv) = if explicit.is_empty() {
            let text = std::fs::read_to_string(&resolv_path)
                .map_err(|e| invalid("resolv-conf", format!("{}: {e}", resolv_path.display())))?;
            let resolv = parse_resolv_conf(&text);
            if resolv.nameservers.is_empty() {
                return Err(invalid("resolv-conf", format!("{} lists no nameserver", resolv_path.display())));
            }
            let servers = resolv.nameservers.iter().map(|ip| SocketAddr::new(*ip, 53)).collect();
            (servers, format!("{}", resolv_path.display()), resolv)
        } else {
            // The node's search list still matters for autopath; a missing file is no error here.
            let resolv =
                std::fs::read_to_string(&resolv_path).map(|t| parse_resolv_conf(&t)).unwrap_or_default();
            (explicit, "--upstream".to_owned(), resolv)
        };
        let stub_domains = list(&args.stub_domain, file.stub_domain)
            .iter()
            .map(|s| parse_stub_domain(s))
            .collect::<Result<Vec<_>, _>>()?;
        check_loops(&upstreams, &upstream_source, &stub_domains, &listen)?;
        let rewrites = Rewrites::new(
            list(&args.rewrite, file.rewrite).iter().map(|r| parse_rule(r)).collect::<Result<Vec<_>, _>>()?,
        );

        let standalone_cluster_file = args.standalone_cluster_file.clone().or(file.standalone_cluster_file);
        let authority = list(&args.authority, file.authority);
        for url in &authority {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid("authority", format!("{url:?} is not an http:// or https:// URL")));
            }
        }
        if authority.is_empty() && standalone_cluster_file.is_none() {
            return Err(invalid(
                "authority",
                "no authority: give --authority URL, or --standalone-cluster-file PATH",
            ));
        }
        let authority_tls = authority_tls(
            &authority,
            args.tls_ca.clone().or(file.tls_ca),
            args.tls_cert.clone().or(file.tls_cert),
            args.tls_key.clone().or(file.tls_key),
            args.tls_server_name.clone().or(file.tls_server_name),
        )?;
        let node_name = args.node_name.clone().or(file.node_name).unwrap_or_default();
        if node_name.is_empty() && standalone_cluster_file.is_none() {
            return Err(invalid("node-name", "required (set NODE_NAME from spec.nodeName)"));
        }

        let defaults = Limits::default();
        let cache = Limits {
            min_ttl: args.min_ttl.or(file.min_ttl).unwrap_or(defaults.min_ttl),
            max_ttl: args.max_ttl.or(file.max_ttl).unwrap_or(defaults.max_ttl),
            max_negative_ttl: args
                .max_negative_ttl
                .or(file.max_negative_ttl)
                .unwrap_or(defaults.max_negative_ttl),
            stale_for: seconds(
                "stale-for",
                args.stale_for.or(file.stale_for).unwrap_or(defaults.stale_for.as_secs_f64()),
            )?,
            max_bytes: args.cache_bytes.or(file.cache_bytes).unwrap_or(defaults.max_bytes),
        };
        if cache.min_ttl > cache.max_ttl {
            return Err(invalid("min-ttl", format!("{} is above max-ttl {}", cache.min_ttl, cache.max_ttl)));
        }
        if cache.max_bytes < 4096 {
            return Err(invalid("cache-bytes", "must be at least 4096"));
        }
        let timeout = seconds("timeout", args.timeout.or(file.timeout).unwrap_or(2.0))?;
        if timeout.is_zero() {
            return Err(invalid("timeout", "must be above 0"));
        }
        let tcp_max_connections = args.tcp_max_connections.or(file.tcp_max_connections).unwrap_or(1024);
        if tcp_max_connections == 0 {
            return Err(invalid("tcp-max-connections", "must be at least 1"));
        }
        let udp_recv_buffer = args.udp_recv_buffer.or(file.udp_recv_buffer).unwrap_or(4 << 20);
        if udp_recv_buffer > 1 << 30 {
            return Err(invalid("udp-recv-buffer", "must be at most 1 GiB"));
        }
        let log_format = LogFormat::parse(args.log_format.as_deref().or(file.log_format.as_deref()))?;
        let admin_listen = args
            .admin_listen
            .or(file.admin_listen)
            .unwrap_or_else(|| SocketAddr::new(listen[0].ip(), DEFAULT_ADMIN_PORT));

        let setup_interface = args.setup_interface.clone().or(file.setup_interface);
        if let Some(name) = &setup_interface {
            let ok = !name.is_empty() && name.len() < 16 && !name.contains(['/', ' ', ':']);
            if !ok {
                return Err(invalid(
                    "setup-interface",
                    format!("{name:?} is not an interface name (1-15 characters)"),
                ));
            }
        }

        let reload_interval =
            seconds("reload-interval", args.reload_interval.or(file.reload_interval).unwrap_or(1.0))?;
        if reload_interval.is_zero() {
            return Err(invalid("reload-interval", "must be above 0"));
        }

        Ok(Config {
            listen,
            authority,
            upstreams,
            upstream_source,
            resolv_conf: resolv_path,
            node_resolv,
            stub_domains,
            node_name,
            cluster_domain,
            admin_listen: Some(admin_listen),
            standalone_cluster_file,
            setup_interface,
            keep_interface: args.keep_interface.or(file.keep_interface).unwrap_or(false),
            cache,
            timeout,
            tcp_idle_timeout: seconds(
                "tcp-idle-timeout",
                args.tcp_idle_timeout.or(file.tcp_idle_timeout).unwrap_or(10.0),
            )?,
            tcp_max_connections,
            udp_recv_buffer,
            autopath: args.autopath.or(file.autopath).unwrap_or(true),
            log_queries: args.log_queries.or(file.log_queries).unwrap_or(false),
            no_rotate: args.no_rotate.or(file.no_rotate).unwrap_or(false),
            rewrites,
            log_format,
            reload_interval,
            authority_tls,
        })
    }

    /// [`check_loops`] against `listen` (the addresses actually bound, which a reload must not
    /// forward to either, whatever the file now says `listen` is).
    pub fn check_loops(&self, listen: &[SocketAddr]) -> Result<(), ConfigError> {
        check_loops(&self.upstreams, &self.upstream_source, &self.stub_domains, listen)
    }

    /// Whether the upstreams come from the node's resolv.conf (which is then worth watching).
    pub fn upstreams_from_resolv_conf(&self) -> bool {
        self.upstream_source != "--upstream"
    }

    /// The keys (flag names) whose values differ between `self` and `new`.
    pub fn changed_keys(&self, new: &Config) -> Vec<&'static str> {
        let (a, b) = (self, new);
        let (ca, cb) = (&a.cache, &b.cache);
        [
            ("listen", a.listen != b.listen),
            ("authority", a.authority != b.authority),
            ("upstream", a.upstreams != b.upstreams),
            (
                "resolv-conf",
                a.node_resolv.search != b.node_resolv.search || a.node_resolv.ndots != b.node_resolv.ndots,
            ),
            ("stub-domain", a.stub_domains != b.stub_domains),
            ("node-name", a.node_name != b.node_name),
            ("cluster-domain", a.cluster_domain != b.cluster_domain),
            ("admin-listen", a.admin_listen != b.admin_listen),
            ("standalone-cluster-file", a.standalone_cluster_file != b.standalone_cluster_file),
            ("tls-ca", a.authority_tls.as_ref().map(|t| &t.ca) != b.authority_tls.as_ref().map(|t| &t.ca)),
            (
                "tls-cert",
                a.authority_tls.as_ref().map(|t| &t.identity)
                    != b.authority_tls.as_ref().map(|t| &t.identity),
            ),
            (
                "tls-server-name",
                a.authority_tls.as_ref().map(|t| &t.server_name)
                    != b.authority_tls.as_ref().map(|t| &t.server_name),
            ),
            ("setup-interface", a.setup_interface != b.setup_interface),
            ("keep-interface", a.keep_interface != b.keep_interface),
            ("cache-bytes", ca.max_bytes != cb.max_bytes),
            ("min-ttl", ca.min_ttl != cb.min_ttl),
            ("max-ttl", ca.max_ttl != cb.max_ttl),
            ("max-negative-ttl", ca.max_negative_ttl != cb.max_negative_ttl),
            ("stale-for", ca.stale_for != cb.stale_for),
            ("timeout", a.timeout != b.timeout),
            ("tcp-idle-timeout", a.tcp_idle_timeout != b.tcp_idle_timeout),
            ("tcp-max-connections", a.tcp_max_connections != b.tcp_max_connections),
            ("udp-recv-buffer", a.udp_recv_buffer != b.udp_recv_buffer),
            ("autopath", a.autopath != b.autopath),
            ("log-queries", a.log_queries != b.log_queries),
            ("no-rotate", a.no_rotate != b.no_rotate),
            ("rewrite", a.rewrites != b.rewrites),
            ("log-format", a.log_format != b.log_format),
            ("reload-interval", a.reload_interval != b.reload_interval),
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
        let mut all = vec!["nodedns-agent"];
        all.extend_from_slice(argv);
        Args::try_parse_from(all).unwrap()
    }

    fn err(argv: &[&str]) -> String {
        Config::resolve(&args(argv)).unwrap_err().to_string()
    }

    #[test]
    fn resolv_conf_parses_like_the_c_library() {
        let r = parse_resolv_conf(
            "# node\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\nnameserver bogus\nsearch Corp.Example. example.net\noptions ndots:2 timeout:1\n",
        );
        assert_eq!(r.nameservers, ["10.0.0.2".parse::<IpAddr>().unwrap(), "fe80::1".parse().unwrap()]);
        assert_eq!(r.search, ["corp.example", "example.net"]);
        assert_eq!(r.ndots, Some(2));
    }

    #[test]
    fn stub_domains_and_defaults() {
        let c = Config::resolve(&args(&[
            "--authority",
            "http://a:8053",
            "--upstream",
            "10.0.0.2:53",
            "--node-name",
            "n1",
            "--stub-domain",
            "Corp.Example=10.1.0.1,10.1.0.2:5353",
        ]))
        .unwrap();
        assert_eq!(
            c.stub_domains,
            [StubDomain {
                zone: "corp.example.".into(),
                servers: vec!["10.1.0.1:53".parse().unwrap(), "10.1.0.2:5353".parse().unwrap()]
            }]
        );
        assert_eq!(c.listen, ["169.254.20.10:53".parse::<SocketAddr>().unwrap()]);
        assert_eq!(c.admin_listen, Some("169.254.20.10:9254".parse().unwrap()));
        assert_eq!(c.cluster_domain, "cluster.local.");
        assert!(c.autopath, "autopath is on unless turned off");
        let base = ["--authority", "http://a:8053", "--upstream", "10.0.0.2:53", "--node-name", "n1"];
        let off = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            Config::resolve(&args(&v)).unwrap().autopath
        };
        assert!(!off(&["--autopath=false"]));
        assert!(off(&["--autopath"]));
    }

    #[test]
    fn a_changed_file_names_its_keys_and_flags_still_win() {
        let dir = nodedns_testsupport::TempDir::new("agent-cfg");
        let path =
            dir.write("agent.yaml", "upstream: ['10.0.0.2:53']\nmax-ttl: 600\nlisten: ['127.0.0.1:53']\n");
        let a = args(&[
            "--config",
            path.to_str().unwrap(),
            "--authority",
            "http://a:1",
            "--node-name",
            "n1",
            "--max-ttl",
            "60",
        ]);
        let first = Config::resolve(&a).unwrap();
        assert_eq!(first.cache.max_ttl, 60, "the flag wins over the file");
        dir.write(
            "agent.yaml",
            "upstream: ['10.0.0.3:53']\nmax-ttl: 900\nlisten: ['127.0.0.2:53']\nlog-queries: true\n",
        );
        let second = Config::resolve(&a).unwrap();
        assert_eq!(second.cache.max_ttl, 60, "and still wins after a reload");
        // The admin address follows the first listen IP when not set.
        assert_eq!(first.changed_keys(&second), ["listen", "upstream", "admin-listen", "log-queries"]);
        assert!(RESTART_KEYS.contains(&"listen") && !RESTART_KEYS.contains(&"upstream"));
        // A reload is checked against the addresses the agent really listens on.
        let own: SocketAddr = "10.0.0.3:53".parse().unwrap();
        assert!(second.check_loops(&[own]).unwrap_err().to_string().starts_with("upstream: 10.0.0.3:53"));
        assert!(second.check_loops(&first.listen).is_ok());
    }

    #[test]
    fn no_rotate_comes_from_the_flag_or_the_file_and_reloads_live() {
        let dir = nodedns_testsupport::TempDir::new("agent-cfg");
        let path = dir.write("agent.yaml", "upstream: ['10.0.0.2:53']\n");
        let a = args(&["--config", path.to_str().unwrap(), "--authority", "http://a:1", "--node-name", "n1"]);
        let first = Config::resolve(&a).unwrap();
        assert!(!first.no_rotate, "answers turn unless told not to");
        dir.write("agent.yaml", "upstream: ['10.0.0.2:53']\nno-rotate: true\n");
        let second = Config::resolve(&a).unwrap();
        assert!(second.no_rotate);
        assert_eq!(first.changed_keys(&second), ["no-rotate"]);
        assert!(!RESTART_KEYS.contains(&"no-rotate"));
        let flag = args(&[
            "--authority",
            "http://a:1",
            "--node-name",
            "n1",
            "--upstream",
            "10.0.0.2:53",
            "--no-rotate",
        ]);
        assert!(Config::resolve(&flag).unwrap().no_rotate);
    }

    #[test]
    fn errors_name_the_setting() {
        let base = ["--authority", "http://a:8053", "--node-name", "n1"];
        let with = |extra: &[&str]| {
            let mut v = base.to_vec();
            v.extend_from_slice(extra);
            err(&v)
        };
        assert!(
            with(&["--upstream", "169.254.20.10:53"])
                .starts_with("upstream: 169.254.20.10:53 is one of our own")
        );
        assert!(with(&["--upstream", "127.0.0.1:5300", "--listen", "0.0.0.0:5300"]).starts_with("upstream:"));
        assert!(with(&["--upstream", "10.0.0.2:53", "--stub-domain", "x"]).starts_with("stub-domain:"));
        assert!(
            with(&["--upstream", "10.0.0.2:53", "--min-ttl", "10", "--max-ttl", "5"]).starts_with("min-ttl:")
        );
        assert!(
            with(&["--upstream", "10.0.0.2:53", "--cluster-domain", "bad..domain"])
                .starts_with("cluster-domain:")
        );
        assert!(with(&["--resolv-conf", "/nonexistent/resolv.conf"]).starts_with("resolv-conf:"));
        assert!(err(&["--upstream", "10.0.0.2:53", "--node-name", "n1"]).starts_with("authority:"));
        assert!(err(&["--upstream", "10.0.0.2:53", "--authority", "http://a:1"]).starts_with("node-name:"));
        assert!(with(&["--upstream", "10.0.0.2:53", "--authority", "a:1"]).starts_with("authority:"));
    }
}
