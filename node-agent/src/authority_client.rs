//! The agent's side of the contract with the authority: one Resolve stream carrying every
//! cluster-domain miss (multiplexed by id, no connection per query) and one Subscribe stream
//! bringing this node's pod table and the change notices that evict cached answers. Both run on
//! one HTTP/2 connection to one endpoint; when it fails or the authority says it is draining, the
//! agent moves to the next `--authority` endpoint with backoff and resumes its subscription from
//! the last revision it applied. Meanwhile misses fail fast and the cache serves stale.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use nodedns_common::tls::ClientTlsFiles;
use nodedns_proto::v1::authority_client::AuthorityClient;
use nodedns_proto::v1::subscribe_response::Event;
use nodedns_proto::v1::{
    PodEntry, ResolveRequest, ResolveResponse, ResolveStatus, SubscribeRequest, Transport,
};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::{debug, info, warn};

use crate::autopath::{self, PodContext};
use crate::cache::Cache;
use crate::config::ResolvConf;

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum AuthorityError {
    #[error("no authority connected")]
    Disconnected,
    #[error("the authority did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the authority is not ready or draining")]
    Unavailable,
    #[error("the authority dropped the query")]
    Dropped,
}

type Pending = Mutex<HashMap<u64, oneshot::Sender<ResolveResponse>>>;

/// Where the link to the authority stands, for a query that finds no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// Session `n` (counted from 1) is up.
    Up(u64),
    /// Between sessions: starting, or a session just ended and the next endpoint is being tried.
    /// A query waits (within its timeout) for the next session instead of failing.
    FailingOver,
    /// Every endpoint failed since the last session: queries fail at once (and the cache serves
    /// stale) until one connects.
    Down,
}

/// What the agent knows from its subscription.
#[derive(Debug, Default)]
pub struct ClusterView {
    /// Zones the authority is authoritative for (lower case, absolute).
    pub zones: Vec<String>,
    /// This node's pod addresses.
    pub pods: HashMap<IpAddr, PodEntry>,
    /// The autopath context of each pod address that may be autopathed.
    pub contexts: HashMap<IpAddr, PodContext>,
}

impl ClusterView {
    fn new(zones: Vec<String>, pods: HashMap<IpAddr, PodEntry>, node: &ResolvConf) -> Self {
        let contexts = pods.iter().filter_map(|(ip, p)| Some((*ip, autopath::context(p, node)?))).collect();
        Self { zones, pods, contexts }
    }
}

pub struct AuthorityLink {
    sender: ArcSwap<Option<mpsc::Sender<ResolveRequest>>>,
    pending: Arc<Pending>,
    next_id: AtomicU64,
    /// `--timeout` in microseconds (a config reload changes it).
    timeout_us: AtomicU64,
    view: ArcSwap<ClusterView>,
    /// The node's resolv.conf (its search domains join the pods').
    node: ResolvConf,
    /// The last revision applied (resumed from on reconnect).
    revision: AtomicU64,
    /// True while a Resolve stream is up.
    connected: watch::Sender<bool>,
    /// The revision of each Subscribe message applied (a readiness signal for tests and `/ready`).
    applied: watch::Sender<u64>,
    link: watch::Sender<Link>,
    sessions: AtomicU64,
}

/// Takes a query's id out of `pending` however its wait ends (answer, lost session, timeout).
struct Forget<'a>(&'a Pending, u64);

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.1);
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?)),
        _ => None,
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The zones in `new` that `old` did not have.
fn new_zones(old: &[String], new: &[String]) -> Vec<String> {
    new.iter().filter(|z| !old.contains(z)).cloned().collect()
}

/// tonic's TLS settings from the files, read now: a rotated certificate is used from the next
/// connection on. The expected server name is `--tls-server-name`, else the URL's host.
fn client_tls(files: &ClientTlsFiles) -> Result<ClientTlsConfig, String> {
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(files.ca.read().map_err(|e| e.to_string())?));
    if let Some((cert, key)) = &files.identity {
        let cert = cert.read().map_err(|e| e.to_string())?;
        let key = key.read().map_err(|e| e.to_string())?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    if let Some(name) = &files.server_name {
        config = config.domain_name(name.clone());
    }
    Ok(config)
}

/// Wakes the query waiting for `answer` (by id); an answer nobody waits for is dropped.
fn deliver(pending: &Pending, answer: ResolveResponse) {
    if let Some(waiter) = pending.lock().unwrap_or_else(PoisonError::into_inner).remove(&answer.id) {
        let _ = waiter.send(answer);
    }
}

impl AuthorityLink {
    /// `zones`: what to route to the authority before the first snapshot (the cluster domain).
    pub fn new(timeout: Duration, zones: Vec<String>, node: ResolvConf) -> Arc<Self> {
        Arc::new(Self {
            sender: ArcSwap::from_pointee(None),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            timeout_us: AtomicU64::new(micros(timeout)),
            view: ArcSwap::from_pointee(ClusterView { zones, ..ClusterView::default() }),
            node,
            revision: AtomicU64::new(0),
            connected: watch::channel(false).0,
            applied: watch::channel(0).0,
            link: watch::channel(Link::FailingOver).0,
            sessions: AtomicU64::new(0),
        })
    }

    /// The budget of one Resolve round trip from now on (a config reload).
    pub fn set_timeout(&self, timeout: Duration) {
        self.timeout_us.store(micros(timeout), Ordering::Relaxed);
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.load_full()
    }

    /// The view without touching its reference count (the hit path's read).
    pub fn view_guard(&self) -> arc_swap::Guard<Arc<ClusterView>> {
        self.view.load()
    }

    pub fn connected(&self) -> watch::Receiver<bool> {
        self.connected.subscribe()
    }

    /// Changes with every Subscribe message applied (its revision).
    pub fn applied(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Where the link stands (changes as sessions start and end).
    pub fn link(&self) -> watch::Receiver<Link> {
        self.link.subscribe()
    }

    /// Sends a query over the Resolve stream and waits for its answer. A query that finds no
    /// session, or loses its answer with a session that ends, while the agent fails over to the
    /// next endpoint waits for the next session and is sent again there, once, within the same
    /// timeout: failing it at once would fail every cluster miss of the failover although another
    /// replica answers. When every endpoint is down it fails at once.
    pub async fn resolve(&self, query: &[u8], client: IpAddr, tcp: bool) -> Result<Vec<u8>, AuthorityError> {
        let started = Instant::now();
        let timeout = Duration::from_micros(self.timeout_us.load(Ordering::Relaxed));
        let result = tokio::time::timeout(timeout, async {
            let mut retried = false;
            loop {
                let seen = *self.link.borrow();
                match self.exchange(query, client, tcp).await {
                    Err(AuthorityError::Disconnected) if !retried => {
                        retried = true;
                        let mut link = self.link.subscribe();
                        let next = link
                            .wait_for(|l| match *l {
                                Link::Up(_) => *l != seen,
                                Link::Down => true,
                                Link::FailingOver => false,
                            })
                            .await
                            .map(|l| *l);
                        if !matches!(next, Ok(Link::Up(_))) {
                            return Err(AuthorityError::Disconnected);
                        }
                    }
                    other => return other,
                }
            }
        })
        .await;
        metrics::histogram!("nodedns_authority_request_duration_seconds")
            .record(started.elapsed().as_secs_f64());
        let response = match result {
            Ok(r) => r?,
            Err(_) => return Err(AuthorityError::Timeout(timeout)),
        };
        match ResolveStatus::try_from(response.status) {
            Ok(ResolveStatus::Ok) => Ok(response.response),
            Ok(ResolveStatus::Dropped) => Err(AuthorityError::Dropped),
            _ => Err(AuthorityError::Unavailable),
        }
    }

    /// One round trip on the current session.
    async fn exchange(
        &self,
        query: &[u8],
        client: IpAddr,
        tcp: bool,
    ) -> Result<ResolveResponse, AuthorityError> {
        let Some(sender) = self.sender.load_full().as_ref().clone() else {
            return Err(AuthorityError::Disconnected);
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).insert(id, tx);
        let _forget = Forget(&self.pending, id);
        let transport = if tcp { Transport::Tcp } else { Transport::Udp };
        let request = ResolveRequest {
            id,
            query: query.to_vec(),
            client_ip: ip_bytes(client),
            transport: transport as i32,
        };
        sender.send(request).await.map_err(|_| AuthorityError::Disconnected)?;
        rx.await.map_err(|_| AuthorityError::Disconnected)
    }

    /// Keeps a connection to one of `endpoints` until `stop`; `https://` endpoints over TLS with
    /// `tls` (read again at each connection, so rotated files apply at the next one).
    pub async fn run(
        self: Arc<Self>,
        endpoints: Vec<String>,
        tls: Option<ClientTlsFiles>,
        node: String,
        cache: Arc<Cache>,
        stop: CancellationToken,
    ) {
        let mut backoff = Duration::from_millis(100);
        let mut next = 0usize;
        let mut failing_since: Option<Instant> = None;
        // Connection attempts failed since the last session: one per endpoint means all are down.
        let mut failed_attempts = 0usize;
        while !stop.is_cancelled() && !endpoints.is_empty() {
            let url = &endpoints[next % endpoints.len()];
            next += 1;
            let started = Instant::now();
            let outcome = tokio::select! {
                () = stop.cancelled() => break,
                outcome = self.session(url, tls.as_ref(), &node, &cache) => outcome,
            };
            if *self.connected.borrow() {
                failed_attempts = 0;
                self.link.send_replace(Link::FailingOver);
            } else {
                failed_attempts += 1;
                if failed_attempts >= endpoints.len() {
                    self.link.send_replace(Link::Down);
                }
            }
            self.disconnect();
            metrics::counter!("nodedns_authority_disconnects_total").increment(1);
            match outcome {
                Ok(why) => {
                    info!(authority = %url, why, "authority session ended; moving to the next endpoint")
                }
                Err(e) => {
                    if failing_since.is_none() {
                        warn!(authority = %url, error = %e, "authority unreachable; serving from cache, retrying with backoff");
                    } else {
                        debug!(authority = %url, error = %e, "authority still unreachable");
                    }
                    failing_since.get_or_insert_with(Instant::now);
                }
            }
            // A session that lasted resets the backoff; one that failed at once doubles it.
            if started.elapsed() > Duration::from_secs(10) {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            if let Some(since) = failing_since.filter(|_| *self.connected.borrow()) {
                info!(down_s = since.elapsed().as_secs_f64(), "authority reachable again");
                failing_since = None;
            }
        }
        self.link.send_replace(Link::Down);
        self.disconnect();
    }

    fn disconnect(&self) {
        self.sender.store(Arc::new(None));
        // Waiting queries fail now (their senders drop) instead of at their timeout.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.connected.send_replace(false);
    }

    /// One connection: Resolve and Subscribe until either ends. `Ok` with a reason for an orderly
    /// end (draining), `Err` for a failure.
    async fn session(
        &self,
        url: &str,
        tls: Option<&ClientTlsFiles>,
        node: &str,
        cache: &Cache,
    ) -> Result<&'static str, String> {
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| format!("bad URL: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .keep_alive_while_idle(true);
        if url.starts_with("https://") {
            let tls = tls.ok_or("an https:// authority needs --tls-ca")?;
            endpoint = endpoint.tls_config(client_tls(tls)?).map_err(|e| format!("TLS: {e}"))?;
        }
        let channel: Channel = endpoint.connect().await.map_err(|e| format!("connect: {e}"))?;
        let mut client = AuthorityClient::new(channel);
        let resume_from = self.revision.load(Ordering::Relaxed);
        let mut updates = client
            .subscribe(SubscribeRequest { node_name: node.to_owned(), resume_from })
            .await
            .map_err(|e| format!("Subscribe: {}", e.message()))?
            .into_inner();
        let (tx, rx) = mpsc::channel(1024);
        let mut answers = client
            .resolve(ReceiverStream::new(rx))
            .await
            .map_err(|e| format!("Resolve: {}", e.message()))?
            .into_inner();
        self.sender.store(Arc::new(Some(tx)));
        self.connected.send_replace(true);
        self.link.send_replace(Link::Up(self.sessions.fetch_add(1, Ordering::Relaxed) + 1));
        info!(authority = %url, node, resume_from, "authority connected");
        let pending = Arc::clone(&self.pending);
        let reader = async move {
            loop {
                match answers.message().await {
                    Ok(Some(answer)) => deliver(&pending, answer),
                    Ok(None) => return Err("Resolve stream ended".to_owned()),
                    Err(e) => return Err(format!("Resolve stream: {}", e.message())),
                }
            }
        };
        let follow = async {
            loop {
                let msg = match updates.message().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => return Err("Subscribe stream ended".to_owned()),
                    Err(e) => return Err(format!("Subscribe stream: {}", e.message())),
                };
                if self.apply(msg.revision, msg.event, cache) {
                    return Ok("the authority is draining");
                }
            }
        };
        tokio::select! {
            r = reader => r.map(|()| "Resolve stream ended"),
            r = follow => r,
        }
    }

    /// A Resolve stream without a connection: queries go to the returned receiver, answers come
    /// back through [`AuthorityLink::deliver`]. For fuzzing and tests that drive the request path
    /// without sockets.
    #[doc(hidden)]
    pub fn attach(&self) -> mpsc::Receiver<ResolveRequest> {
        let (tx, rx) = mpsc::channel(1024);
        self.sender.store(Arc::new(Some(tx)));
        self.connected.send_replace(true);
        // A session like `session()` opens, so a miss does not wait for one as during failover.
        self.link.send_replace(Link::Up(self.sessions.fetch_add(1, Ordering::Relaxed) + 1));
        rx
    }

    /// Hands an answer to the query waiting for it, as the Resolve stream's reader does.
    #[doc(hidden)]
    pub fn deliver(&self, answer: ResolveResponse) {
        deliver(&self.pending, answer);
    }

    /// Applies one Subscribe message; returns true for Draining. Public for fuzzing.
    #[doc(hidden)]
    pub fn apply(&self, revision: u64, event: Option<Event>, cache: &Cache) -> bool {
        let current = self.view.load();
        match event {
            Some(Event::Snapshot(s)) => {
                // Whatever changed while we were away is unknown: every cluster answer goes, and
                // answers an upstream gave for names in zones new to us.
                let evicted =
                    cache.evict_subtrees(&s.zones) + cache.evict_under(&new_zones(&current.zones, &s.zones));
                let pods =
                    s.pods.into_iter().filter_map(|p| Some((ip_of(&p.ip)?, p))).collect::<HashMap<_, _>>();
                info!(revision, pods = pods.len(), zones = ?s.zones, evicted, "authority snapshot applied");
                self.view.store(Arc::new(ClusterView::new(s.zones, pods, &self.node)));
            }
            Some(Event::Update(u)) => {
                let mut evicted = cache.evict_names(u.names.iter().map(String::as_str));
                if !u.subtrees.is_empty() {
                    evicted += cache.evict_subtrees(&u.subtrees);
                }
                // A zone the authority now serves (custom records): what an upstream answered for
                // its names before is not the authority's answer.
                if !u.zones.is_empty() {
                    evicted += cache.evict_under(&new_zones(&current.zones, &u.zones));
                }
                metrics::counter!("nodedns_notice_evictions_total").increment(evicted as u64);
                // Notices alone (the common case) leave the view as it is.
                if !(u.upserted.is_empty() && u.removed.is_empty() && u.zones.is_empty()) {
                    let mut pods = current.pods.clone();
                    for ip in u.removed.iter().filter_map(|b| ip_of(b)) {
                        pods.remove(&ip);
                    }
                    for p in u.upserted {
                        if let Some(ip) = ip_of(&p.ip) {
                            pods.insert(ip, p);
                        }
                    }
                    let zones = if u.zones.is_empty() { current.zones.clone() } else { u.zones };
                    self.view.store(Arc::new(ClusterView::new(zones, pods, &self.node)));
                }
                debug!(revision, names = u.names.len(), evicted, "authority update applied");
            }
            Some(Event::Draining(d)) => {
                info!(seconds_left = d.seconds_left, "authority draining");
                return true;
            }
            None => {}
        }
        self.revision.store(revision, Ordering::Relaxed);
        self.applied.send_replace(revision);
        false
    }
}
