//! Configuration reload: the whole [`Config`] is resolved again from the saved flags and the
//! re-read `--config` file (flags and environment still win), and what can change in a running
//! authority is applied: zone settings (`ttl`, `pods`, `reverse-cidr`, `wildcards`,
//! `ns-address`) rebuild and republish the zone, which also tells every agent to drop its
//! cluster answers; `transfer-from` and `log-queries` apply to the next query. The rest
//! ([`crate::config::RESTART_KEYS`]) is logged as needing a restart. The polling, SIGHUP, logs and
//! metric are `nodedns_common::reload`'s.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use nodedns_common::config::ConfigError;
use nodedns_common::reload::{Applied, sort_keys};
use nodedns_zone::ClusterStore;
use tracing::info;

use crate::config::{Args, Config, RESTART_KEYS};
use crate::dns::Shared;
use crate::metrics;

/// Keys that shape the zone: a change rebuilds it.
const ZONE_KEYS: [&str; 5] = ["pods", "ttl", "reverse-cidr", "wildcards", "ns-address"];

/// The files the configuration is read from.
pub fn files(args: &Args) -> Vec<PathBuf> {
    args.config.iter().cloned().collect()
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
}

impl Reloader {
    /// Resolves the configuration again and applies what changed; on an error nothing changes.
    pub fn reload(&mut self) -> Result<(Applied, Vec<PathBuf>), ConfigError> {
        let new = Config::resolve(&self.args)?;
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
        if live("transfer-from") {
            self.shared.transfer_from.store(Arc::new(new.transfer_from.clone()));
        }
        if live("log-queries") {
            self.shared.log_queries.store(new.log_queries, Ordering::Relaxed);
        }
        self.last = new;
        Ok((applied, files(&self.args)))
    }
}
