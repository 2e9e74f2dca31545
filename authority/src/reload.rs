//! Configuration reload: the whole [`Config`] is resolved again from the saved flags and the
//! re-read `--config` file (flags and environment still win), and what can change in a running
//! authority is applied:
//! - zone settings (`ttl`, `pods`, `reverse-cidr`, `wildcards`, `ns-address`,
//!   `endpoint-pod-names`) rebuild and republish the zone, which also tells every agent to drop
//!   its cluster answers;
//! - `transfer-from`, `log-queries`, `no-rotate` and `rewrite` apply to the next query;
//! - forwarding (`upstream`, the `--resolv-conf` nameservers, `stub-domain`, `timeout`) gets new
//!   routes at once, with the servers' health marks kept, and `cache-bytes` bounds its cache anew;
//! - the `--custom-records` file is watched with `--config` and read again at every reload: new
//!   records rebuild the zone and agents are told the names that changed (and new zones); a file
//!   that does not parse fails the reload, naming its line, and the records served stay.
//!
//! The rest ([`crate::config::RESTART_KEYS`]) is logged as needing a restart. The polling,
//! SIGHUP, logs and metric are `nodedns_common::reload`'s.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nodedns_common::config::ConfigError;
use nodedns_common::reload::{Applied, sort_keys};
use nodedns_zone::ClusterStore;
use tracing::info;

use crate::config::{Args, Config, RESTART_KEYS};
use crate::dns::Shared;
use crate::forward;
use crate::metrics;

/// Keys that shape the zone: a change rebuilds it.
const ZONE_KEYS: [&str; 6] = ["pods", "ttl", "reverse-cidr", "wildcards", "ns-address", "endpoint-pod-names"];

/// The files the configuration is read from: `--config`, the `--custom-records` file, and the
/// `--resolv-conf` the upstreams come from.
pub fn files(args: &Args, config: &Config) -> Vec<PathBuf> {
    let custom = config.custom_records.as_ref().map(|c| c.path.clone());
    let resolv = config.resolv_conf.clone().filter(|_| config.upstreams_from_resolv_conf());
    args.config.iter().cloned().chain(custom).chain(resolv).collect()
}

/// What a reload needs: how to resolve the configuration again and the parts it changes.
pub(crate) struct Reloader {
    pub args: Args,
    /// What the authority started with (restart-only settings keep these values).
    pub start: Config,
    /// The last configuration resolved.
    pub last: Config,
    pub store: Arc<ClusterStore>,
    pub shared: Arc<Shared>,
    /// Every address the DNS listens on: configured, and as bound (port 0 in tests).
    pub listen: Vec<SocketAddr>,
}

impl Reloader {
    /// Resolves the configuration again and applies what changed; on an error nothing changes.
    pub fn reload(&mut self) -> Result<(Applied, Vec<PathBuf>), ConfigError> {
        let new = Config::resolve(&self.args)?;
        new.check_loops(&self.listen)?;
        let changed = self.last.changed_keys(&new);
        let applied = sort_keys(changed, RESTART_KEYS, &self.start.changed_keys(&new));
        let live = |key: &str| applied.changed.contains(&key);
        if ZONE_KEYS.into_iter().any(live)
            && let Some(p) = self.store.reconfigure(new.zone.clone())
        {
            metrics::zone_published(&p);
            info!(
                serial = p.serial,
                records = p.stats.records,
                build_ms = p.build_time.as_secs_f64() * 1e3,
                "zone rebuilt with the new settings"
            );
        }
        if live("custom-records") {
            let records = new.custom_records.as_ref().map(|c| Arc::clone(&c.records)).unwrap_or_default();
            if let Some(p) = self.store.set_custom(records) {
                metrics::zone_published(&p);
                info!(serial = p.serial, records = p.stats.records, "custom records reloaded");
            }
        }
        if live("transfer-from") {
            self.shared.transfer_from.store(Arc::new(new.transfer_from.clone()));
        }
        if live("log-queries") {
            self.shared.log_queries.store(new.log_queries, Ordering::Relaxed);
        }
        if live("rewrite") {
            self.shared.rewrites.set(new.rewrites.clone());
        }
        if live("no-rotate") {
            self.shared.rotate.store(!new.no_rotate, Ordering::Relaxed);
            self.shared.forwarding.resolver.set_rotate(!new.no_rotate);
        }
        let forwarding = &self.shared.forwarding;
        if ["upstream", "resolv-conf", "stub-domain", "timeout"].into_iter().any(live) {
            forwarding.set_routes(forward::routes(&new));
        }
        if live("cache-bytes") {
            forwarding.cache.set_limits(forward::limits(&new));
        }
        let files = files(&self.args, &new);
        self.last = new;
        Ok((applied, files))
    }
}
