//! The cluster-file source: loads a cluster file into a [`ClusterStore`] and reloads it when the
//! file changes. A bad file keeps the last good state. Free of `kube`, so the agent's standalone
//! mode reuses it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::file::{FileError, parse_cluster};
use crate::store::{ClusterStore, Published};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("cannot read cluster file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cluster file {path}: {source}")]
    Parse { path: PathBuf, source: FileError },
}

/// The result of a successful (re)load.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    pub objects: usize,
    pub skipped: usize,
    /// `None` when the content parsed to the cluster already served.
    pub published: Option<Published>,
}

/// File identity and content stamp used to notice changes, including a ConfigMap's symlink swap.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

pub struct FileSource {
    path: PathBuf,
    store: Arc<ClusterStore>,
    last: Option<Stamp>,
}

impl FileSource {
    pub fn new(path: impl Into<PathBuf>, store: Arc<ClusterStore>) -> Self {
        Self { path: path.into(), store, last: None }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads and parses the file and replaces the store's cluster with it.
    pub fn load(&mut self) -> Result<Loaded, SourceError> {
        self.last = stamp(&self.path);
        let text = std::fs::read_to_string(&self.path)
            .map_err(|source| SourceError::Read { path: self.path.clone(), source })?;
        let parsed =
            parse_cluster(&text).map_err(|source| SourceError::Parse { path: self.path.clone(), source })?;
        let objects = parsed.objects.len();
        let published = self.store.replace(parsed.objects);
        Ok(Loaded { objects, skipped: parsed.skipped, published })
    }

    /// Reloads if the file changed since the last load attempt; `None` if it did not.
    pub fn reload_if_changed(&mut self) -> Option<Result<Loaded, SourceError>> {
        let now = stamp(&self.path);
        if now == self.last {
            return None;
        }
        Some(self.load())
    }

    /// Polls the file every `interval` until `shutdown` resolves, reporting each reload attempt.
    /// Polling (rather than inotify) also sees a mounted ConfigMap's atomic symlink swap.
    pub async fn watch(
        mut self,
        interval: Duration,
        shutdown: impl std::future::Future<Output = ()>,
        mut report: impl FnMut(&Result<Loaded, SourceError>),
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tick.tick() => {
                    if let Some(result) = self.reload_if_changed() {
                        report(&result);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ZoneConfig;
    use hickory_proto::rr::{Name, RecordType};

    fn svc(ip: &str) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s, namespace: a}}\nspec: {{clusterIP: {ip}}}\n"
        )
    }

    fn answer(store: &ClusterStore) -> Vec<String> {
        let name = Name::from_ascii("s.a.svc.cluster.local.").unwrap();
        store
            .index()
            .lookup(&name, RecordType::A)
            .unwrap()
            .answers
            .iter()
            .map(|r| r.data.to_string())
            .collect()
    }

    #[test]
    fn reload_follows_changes_and_keeps_the_last_good_cluster() {
        let d = nodedns_testsupport::TempDir::new("fs-reload");
        let path = d.write("cluster.yaml", &svc("10.0.0.1"));
        let store = ClusterStore::new(ZoneConfig::default());
        let mut source = FileSource::new(&path, Arc::clone(&store));
        assert!(!store.is_synced());
        let first = source.load().unwrap();
        assert_eq!((first.objects, first.published.map(|p| p.generation)), (1, Some(1)));
        assert!(store.is_synced());
        assert_eq!(answer(&store), ["10.0.0.1"]);

        assert!(source.reload_if_changed().is_none(), "untouched file: no reload");

        d.write("cluster.yaml", &svc("10.0.0.2"));
        let loaded = source.reload_if_changed().expect("changed").unwrap();
        assert_eq!(loaded.published.map(|p| p.generation), Some(2));
        assert_eq!(answer(&store), ["10.0.0.2"]);

        // Same content under a new inode: re-read, but nothing to publish.
        d.write("cluster.yaml", &svc("10.0.0.2"));
        assert!(source.reload_if_changed().expect("changed").unwrap().published.is_none());

        d.write("cluster.yaml", &svc("10.0.0.x"));
        let err = source.reload_if_changed().expect("changed").unwrap_err().to_string();
        assert!(err.contains("Service a/s: spec.clusterIP"), "{err}");
        assert_eq!(answer(&store), ["10.0.0.2"], "last good cluster still served");
        assert!(source.reload_if_changed().is_none(), "a bad file is reported once, not every poll");

        std::fs::remove_file(&path).unwrap();
        let err = source.reload_if_changed().expect("gone").unwrap_err();
        assert!(matches!(err, SourceError::Read { .. }), "{err}");
        assert_eq!(answer(&store), ["10.0.0.2"]);
    }

    #[test]
    fn a_missing_file_fails_the_first_load() {
        let store = ClusterStore::new(ZoneConfig::default());
        let err = FileSource::new("/nonexistent/nodedns.yaml", Arc::clone(&store)).load().unwrap_err();
        assert!(err.to_string().starts_with("cannot read cluster file /nonexistent/nodedns.yaml"), "{err}");
        assert!(!store.is_synced());
    }
}
