//! Configuration reload: the whole [`Config`] is resolved again from the saved flags and the
//! re-read `--config` file (flags and environment still win), checked, and what can change in a
//! running agent is swapped in without stopping a query: the forwarders (`upstream`, the
//! resolv.conf nameservers, `stub-domain`, `timeout`), the cache limits, `log-queries`,
//! `autopath`, `no-rotate` and `rewrite`. The rest ([`crate::config::RESTART_KEYS`]) is logged as needing a
//! restart. The polling, SIGHUP, logs and metric are `nodedns_common::reload`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nodedns_common::config::ConfigError;
use nodedns_common::reload::{Applied, Snapshot, sort_keys};

use crate::authority_client::AuthorityLink;
use crate::cache::Cache;
use crate::config::{Args, Config, RESTART_KEYS, StubDomain};
use crate::request::{Resolver, Routes};
use crate::upstream::Forwarder;

/// The forwarders `config` asks for.
pub fn routes(config: &Config) -> Routes {
    forwarders(&config.upstreams, &config.stub_domains, config.timeout)
}

/// Forwarders to these upstreams and stub domains (the authority's `--upstream` builds its own
/// with this too).
pub fn forwarders(upstreams: &[SocketAddr], stub_domains: &[StubDomain], timeout: Duration) -> Routes {
    let upstream = Forwarder::new(upstreams, timeout, "upstream");
    let stubs =
        stub_domains.iter().map(|s| (s.zone.clone(), Forwarder::new(&s.servers, timeout, &s.zone))).collect();
    Routes::new(upstream, stubs)
}

/// The files a configuration was read from and is re-read from on a change.
pub fn files(args: &Args, config: &Config) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = args.config.iter().cloned().collect();
    if config.upstreams_from_resolv_conf() {
        files.push(config.resolv_conf.clone());
    }
    files
}

/// What a reload needs: how to resolve the configuration again and the parts it changes.
pub(crate) struct Reloader {
    pub args: Args,
    /// What the agent started with (restart-only settings keep these values).
    pub start: Config,
    /// The last configuration resolved.
    pub last: Config,
    /// Every address the agent listens on: configured, and as bound (port 0 in tests).
    pub listen: Vec<SocketAddr>,
    pub resolver: Arc<Resolver>,
    pub cache: Arc<Cache>,
    pub authority: Arc<AuthorityLink>,
}

impl Reloader {
    /// The files of the configuration now, read (taken when the configuration was resolved).
    pub fn snapshot(args: &Args, config: &Config) -> Snapshot {
        Snapshot::take(&files(args, config))
    }

    /// Resolves the configuration again and applies what changed; on an error nothing changes.
    pub fn reload(&mut self) -> Result<(Applied, Vec<PathBuf>), ConfigError> {
        let new = Config::resolve(&self.args)?;
        new.check_loops(&self.listen)?;
        let changed = self.last.changed_keys(&new);
        let applied = sort_keys(changed, RESTART_KEYS, &self.start.changed_keys(&new));
        let live = |key: &str| applied.changed.contains(&key);
        if live("upstream") || live("stub-domain") || live("timeout") {
            let routes = routes(&new);
            routes.keep_health(&self.resolver.routes());
            self.resolver.set_routes(routes);
            // New servers may forward back to us: probe them now rather than in 10 minutes.
            let resolver = Arc::clone(&self.resolver);
            tokio::spawn(async move { resolver.probe_for_loops().await });
        }
        if live("timeout") {
            self.authority.set_timeout(new.timeout);
        }
        if ["cache-bytes", "min-ttl", "max-ttl", "max-negative-ttl", "stale-for"].into_iter().any(live) {
            self.cache.set_limits(new.cache);
        }
        if live("log-queries") {
            self.resolver.set_log_queries(new.log_queries);
        }
        if live("autopath") {
            self.resolver.set_autopath(new.autopath);
        }
        if live("no-rotate") {
            self.resolver.set_rotate(!new.no_rotate);
        }
        if live("rewrite") {
            self.resolver.set_rewrites(new.rewrites.clone());
        }
        let files = files(&self.args, &new);
        self.last = new;
        Ok((applied, files))
    }
}
