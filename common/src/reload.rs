//! Configuration reload, the same in both binaries: the files a configuration was read from (the
//! `--config` file, and whatever else it reads, such as the node's resolv.conf) are polled for a
//! change of *content* (a mounted ConfigMap changes by swapping a symlink, which neither the
//! path's inode nor its mtime shows reliably), and SIGHUP asks for a reload at once. Each binary
//! supplies the step that re-resolves its configuration and applies what can change live; this
//! module does the logging, the metric and the status tests wait on.
//!
//! A reload either applies as a whole or not at all: a file that does not parse, names an
//! unknown key or holds an invalid value keeps the running configuration and logs one error
//! naming the key. A bad file is reported once, not at every poll; the next change (or SIGHUP)
//! tries again.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::ConfigError;

/// The counter of reload attempts, labelled `result="ok"|"error"`.
pub const METRIC: &str = "nodedns_config_reloads_total";

/// Registers the help text of [`METRIC`] (each binary calls it where it describes its metrics).
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC,
        "Configuration reloads (file change or SIGHUP) by result (ok, error: the running configuration kept)."
    );
}

/// What a good reload did, as the binary's apply step reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Keys whose new values are now in force.
    pub changed: Vec<&'static str>,
    /// Keys that changed in the file but keep their running value until a restart.
    pub restart: Vec<&'static str>,
}

/// Where reloads stand, for tests and anything else that waits on them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Good reloads so far (also those that changed nothing).
    pub applied: u64,
    /// Refused reloads so far.
    pub failed: u64,
    /// What the last good reload did.
    pub last: Applied,
    /// The last refusal, as logged.
    pub last_error: Option<String>,
}

struct Shared {
    requested: Notify,
    status: watch::Sender<Status>,
}

/// A handle on one binary's reloads: [`Reloads::request`] is what SIGHUP does, and
/// [`Reloads::status`] changes with every attempt. Cheap to clone.
#[derive(Clone)]
pub struct Reloads(Arc<Shared>);

impl Default for Reloads {
    fn default() -> Self {
        Self(Arc::new(Shared { requested: Notify::new(), status: watch::channel(Status::default()).0 }))
    }
}

impl std::fmt::Debug for Reloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Reloads").field(&*self.0.status.borrow()).finish()
    }
}

/// The content of each watched file (`None`: unreadable), to notice any change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(Vec<(PathBuf, Option<Vec<u8>>)>);

impl Snapshot {
    /// Reads every file now.
    pub fn take(files: &[PathBuf]) -> Self {
        Self(files.iter().map(|f| (f.clone(), std::fs::read(f).ok())).collect())
    }

    fn files(&self) -> Vec<PathBuf> {
        self.0.iter().map(|(f, _)| f.clone()).collect()
    }
}

impl Reloads {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks for a reload now, whether or not a file changed (SIGHUP). A request made while no
    /// reload loop waits is kept until one does.
    pub fn request(&self) {
        self.0.requested.notify_one();
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.0.status.subscribe()
    }

    /// Runs until `stop`: every `interval` the files of `since` are read again and, when any
    /// content differs, `apply` runs; a [`Reloads::request`] runs it at once. `apply` re-resolves
    /// the configuration, applies it, and returns what it did plus the files the new
    /// configuration reads (watched from then on). `since` should be taken when the running
    /// configuration was read, so a change made meanwhile is not missed.
    pub async fn watch<F>(&self, since: Snapshot, interval: Duration, stop: CancellationToken, mut apply: F)
    where
        F: FnMut() -> Result<(Applied, Vec<PathBuf>), ConfigError>,
    {
        let mut last = since;
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.0.requested.notified() => info!("configuration reload requested"),
                _ = tick.tick() => {
                    if Snapshot::take(&last.files()) == last {
                        continue;
                    }
                }
            }
            // Read before applying: a change landing during the apply is seen at the next poll.
            let before = Snapshot::take(&last.files());
            let result = apply();
            last = match &result {
                Ok((_, files)) if *files != before.files() => Snapshot::take(files),
                _ => before,
            };
            self.report(result.map(|(applied, _)| applied));
        }
    }

    fn report(&self, result: Result<Applied, ConfigError>) {
        match result {
            Ok(applied) => {
                for key in &applied.restart {
                    warn!(key = *key, "{key} changed; takes effect after a restart");
                }
                info!(changed = ?applied.changed, restart_needed = ?applied.restart, "config reloaded");
                metrics::counter!(METRIC, "result" => "ok").increment(1);
                self.0.status.send_modify(|s| {
                    s.applied += 1;
                    s.last = applied;
                });
            }
            Err(e) => {
                error!(error = %e, "config reload failed; keeping the running configuration");
                metrics::counter!(METRIC, "result" => "error").increment(1);
                self.0.status.send_modify(|s| {
                    s.failed += 1;
                    s.last_error = Some(e.to_string());
                });
            }
        }
    }
}

/// Sorts the keys that differ between the running and the new configuration into those applied
/// live and those that need a restart. `restart_only` lists the latter; `pending` are the keys
/// whose new value differs from the one the process started with (a key changed back to its
/// start value needs nothing).
pub fn sort_keys(changed: Vec<&'static str>, restart_only: &[&str], pending: &[&'static str]) -> Applied {
    let (restart, changed): (Vec<_>, Vec<_>) = changed.into_iter().partition(|k| restart_only.contains(k));
    Applied { changed, restart: restart.into_iter().filter(|k| pending.contains(k)).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_into_live_and_restart() {
        let a = sort_keys(vec!["ttl", "listen", "log-format"], &["listen", "log-format"], &["listen"]);
        assert_eq!(a, Applied { changed: vec!["ttl"], restart: vec!["listen"] });
    }

    /// A ConfigMap volume as kubelet writes it: `agent.yaml -> ..data/agent.yaml`, `..data` a
    /// symlink to a timestamped directory, and an update that writes a new directory and swaps
    /// `..data` by renaming a new symlink over it. The watched path never changes; its content does.
    #[test]
    fn a_configmap_symlink_swap_is_a_change() {
        use std::os::unix::fs::symlink;
        let dir = std::env::temp_dir().join(format!("nodedns-configmap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let version = |n: u32, text: &str| {
            let d = dir.join(format!("..2026_11_29_{n}"));
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("agent.yaml"), text).unwrap();
            let tmp = dir.join("..data_tmp");
            symlink(d.file_name().unwrap(), &tmp).unwrap();
            std::fs::rename(&tmp, dir.join("..data")).unwrap();
        };
        version(1, "timeout: 2\n");
        let file = dir.join("agent.yaml");
        symlink("..data/agent.yaml", &file).unwrap();
        let before = Snapshot::take(std::slice::from_ref(&file));
        assert_eq!(before, Snapshot::take(std::slice::from_ref(&file)), "nothing changed yet");
        version(2, "timeout: 3\n");
        let after = Snapshot::take(std::slice::from_ref(&file));
        assert_ne!(before, after, "the swap is seen through the unchanged path");
        assert_eq!(after.0[0].1.as_deref(), Some(&b"timeout: 3\n"[..]));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Replaces `file` whole, as a ConfigMap update does (a reader never sees half of it).
    fn swap(file: &std::path::Path, text: &str) {
        let tmp = file.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, file).unwrap();
    }

    #[tokio::test]
    async fn a_changed_file_or_a_request_reloads_and_a_bad_file_is_tried_once() {
        let dir = std::env::temp_dir().join(format!("nodedns-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("c.yaml");
        swap(&file, "a: 1\n");
        let reloads = Reloads::new();
        let stop = CancellationToken::new();
        let since = Snapshot::take(std::slice::from_ref(&file));
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let task = {
            let (reloads, stop, file, calls) =
                (reloads.clone(), stop.clone(), file.clone(), Arc::clone(&calls));
            tokio::spawn(async move {
                reloads
                    .watch(since, Duration::from_millis(5), stop, move || {
                        calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let text = std::fs::read_to_string(&file).unwrap_or_default();
                        if text.contains("bad") {
                            Err(crate::config::invalid("a", "bad"))
                        } else {
                            Ok((Applied { changed: vec!["a"], restart: vec![] }, vec![file.clone()]))
                        }
                    })
                    .await;
            })
        };
        let mut status = reloads.status();
        let mut until = async |what: &str, done: fn(&Status) -> bool| -> Status {
            tokio::time::timeout(Duration::from_secs(20), status.wait_for(done))
                .await
                .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
                .unwrap()
                .clone()
        };
        swap(&file, "a: 2\n");
        assert_eq!(until("a change", |s| s.applied == 1).await.last.changed, ["a"]);
        swap(&file, "bad\n");
        let seen = until("a bad file", |s| s.failed == 1).await;
        assert_eq!(seen.last_error.as_deref(), Some("a: bad"));
        // A request reloads although nothing changed; the bad file was tried once only.
        swap(&file, "a: 3\n");
        until("a fixed file", |s| s.applied == 2).await;
        reloads.request();
        until("a request", |s| s.applied == 3).await;
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 4);
        stop.cancel();
        task.await.unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }
}
