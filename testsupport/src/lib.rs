//! Test support shared by nodedns crates: DNS clients over real sockets ([`client`]), the
//! conformance corpus of `../shared/conformance` and its checker ([`corpus`]), and where the shared
//! folder is ([`shared_dir`]). One copy, used by every crate's tests.

pub mod client;
pub mod corpus;

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
