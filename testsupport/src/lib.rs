//! Test support shared by nodedns crates: DNS clients over real sockets ([`client`]), the
//! conformance corpus of `../shared/conformance` and its checker ([`corpus`]), the deployment
//! manifests as data ([`manifests`]), and where the shared folder is ([`shared_dir`]). One copy,
//! used by every crate's tests.

pub mod client;
pub mod corpus;
pub mod logs;
pub mod manifests;
pub mod tls;
pub mod upstream;

use std::path::PathBuf;

/// `../shared` beside the workspace root (override with `NODEDNS_SHARED_DIR`).
pub fn shared_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("NODEDNS_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("..").join("shared")
}

/// A path inside the workspace (for fixtures kept in the repository).
pub fn workspace_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

/// A temporary directory for one test, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("nodedns-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&p).expect("creating a temporary directory");
        TempDir(p)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    /// Writes `name` by writing a sibling and renaming it over, as a ConfigMap volume swaps files,
    /// so a reader never sees half a file. Returns the path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let tmp = self.0.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("writing a temporary file");
        let path = self.0.join(name);
        std::fs::rename(&tmp, &path).expect("renaming a temporary file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
