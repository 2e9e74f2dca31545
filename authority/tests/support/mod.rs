//! Starting an authority in-process on port-0 loopback sockets, as the integration tests do.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;

use clap::Parser;
use nodedns_authority::config::{Args, Config};
use nodedns_authority::{Authority, Listeners};
use nodedns_common::reload::Reloads;
use nodedns_zone::ClusterStore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct Running {
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    pub grpc: SocketAddr,
    pub store: Arc<ClusterStore>,
    /// Config reloads (`--config` re-read): request one, or wait on its status.
    pub reloads: Reloads,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), nodedns_authority::AuthorityError>>,
}

impl Running {
    /// Runs `change` and waits until the store has published at least one new index after it.
    pub async fn after_change<T>(&self, change: impl FnOnce() -> T) -> T {
        let mut generations = self.store.subscribe();
        let before = *generations.borrow_and_update();
        let out = change();
        tokio::time::timeout(std::time::Duration::from_secs(20), generations.wait_for(|g| *g > before))
            .await
            .expect("the change reached the store within 20s")
            .expect("store dropped");
        out
    }

    /// Waits until `check` holds, re-checking after every index the store publishes.
    pub async fn eventually<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut generations = self.store.subscribe();
        loop {
            // Marked seen before checking: a publication after the check wakes the wait below.
            generations.borrow_and_update();
            if check().await {
                return;
            }
            if tokio::time::timeout_at(deadline, generations.changed()).await.is_err() {
                panic!("{what}: not within 20s");
            }
        }
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let result = self.task.await.expect("authority task panicked");
        assert!(result.is_ok(), "authority stopped with {result:?}");
    }
}

/// Waits (at most 20 s) until the reload status satisfies `done`.
pub async fn reloaded(
    status: &mut tokio::sync::watch::Receiver<nodedns_common::reload::Status>,
    what: &str,
    done: impl FnMut(&nodedns_common::reload::Status) -> bool,
) {
    tokio::time::timeout(std::time::Duration::from_secs(20), status.wait_for(done))
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 20 s"))
        .expect("reloads dropped");
}

/// Parses `extra` flags after the test defaults (loopback port 0, no lameduck).
pub fn args(extra: &[&str]) -> Args {
    let mut argv = vec![
        "nodedns-authority",
        "--dns-listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--grpc-listen",
        "127.0.0.1:0",
    ];
    if !extra.contains(&"--lameduck") {
        argv.extend(["--lameduck", "0"]);
    }
    argv.extend_from_slice(extra);
    Args::try_parse_from(argv).expect("test flags parse")
}

/// The configuration of [`args`].
pub fn config(extra: &[&str]) -> Config {
    Config::resolve(&args(extra)).expect("test config resolves")
}

/// Starts an authority and waits until its cluster is loaded.
pub async fn start(extra: &[&str]) -> Running {
    let running = start_unsynced(extra).await;
    let mut generations = running.store.subscribe();
    // The first publication is the initial load; a failed load ends the task instead.
    tokio::select! {
        r = generations.wait_for(|g| *g > 0) => { r.expect("store dropped"); }
        _ = tokio::time::sleep(std::time::Duration::from_secs(20)) => panic!("authority did not load its cluster within 20s"),
    }
    running
}

/// Starts an authority without waiting for its cluster.
pub async fn start_unsynced(extra: &[&str]) -> Running {
    let args = args(extra);
    let config = Config::resolve(&args).expect("test config resolves");
    let listeners = Listeners::bind(&config).expect("binding port-0 sockets");
    let dns = listeners.dns.addrs()[0];
    let admin = listeners.admin_addr().expect("admin listener");
    let grpc = listeners.grpc_addr().expect("gRPC listener");
    let authority = Authority::new(config).reload_from(args);
    let store = authority.store();
    let reloads = authority.reloads();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(authority.run(listeners, shutdown.clone()));
    Running { dns, admin, grpc, store, reloads, shutdown, task }
}

/// GET an admin path; returns (status, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("admin connect");
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("admin write");
    let mut out = String::new();
    tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_string(&mut out))
        .await
        .expect("admin answer within 5s")
        .expect("admin read");
    let status = out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A fake API server (nodedns-kubesim) loaded with the conformance fixture, and a kubeconfig
/// for it.
pub struct Cluster {
    pub api: nodedns_kubesim::FakeApi,
    _dir: nodedns_testsupport::TempDir,
    pub kubeconfig: String,
}

pub async fn cluster() -> Cluster {
    let api = nodedns_kubesim::FakeApi::start().await.expect("fake API server starts");
    let fixture =
        std::fs::read_to_string(nodedns_testsupport::shared_dir().join("conformance/cluster.yaml")).unwrap();
    assert!(api.load_yaml(&fixture).unwrap() > 30);
    let dir = nodedns_testsupport::TempDir::new("kube");
    let kubeconfig = dir.write("kubeconfig", &api.kubeconfig()).to_str().unwrap().to_owned();
    Cluster { api, _dir: dir, kubeconfig }
}
