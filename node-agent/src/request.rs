//! A query from parse to answer bytes: reject malformed input, look in the cache, and on a miss
//! route it (authority for the cluster zones, a stub domain's servers, or the upstreams), with
//! identical misses in flight coalesced into one query. The answer is written by
//! [`crate::respond`], the one place that counts and logs.
//!
//! What a config reload changes is read here without a lock: the forwarders ([`Routes`]) are
//! swapped whole, so a miss routes and forwards with one consistent set while later misses use
//! the new one; `log-queries` and `autopath` are flags read with a relaxed atomic load.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};

use crate::authority_client::AuthorityLink;
use crate::autopath;
use crate::cache::{Cache, Entry, Lookup};
use crate::chase;
use crate::config::ResolvConf;
use crate::respond::{self, Outcome, Source};
use crate::rewrite::{self, LiveRewrites, Rewrites};
use crate::upstream::Forwarder;
use crate::wire::{self, Query, Reject};

/// Where a miss goes, decided from the question name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Authority,
    Stub(usize),
    Upstream,
}

/// How the client reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// The result of fetching a miss, shared by every client waiting for the same key.
#[derive(Debug, Clone)]
enum Fetched {
    /// Cached: written per client from the entry.
    Entry(Arc<Entry>),
    /// Not cacheable (SERVFAIL, REFUSED, truncated...): the raw response.
    Raw(Arc<Vec<u8>>),
    /// No answer, and why (`upstream: no upstream answered within 2s`), for the error log.
    Failed(Arc<str>),
}

type InFlight = Shared<BoxFuture<'static, Fetched>>;

/// Where names outside the authority's zones go: swapped whole by a config reload.
pub struct Routes {
    pub upstream: Forwarder,
    /// `(zone, forwarder)`, longest zone first.
    pub stubs: Vec<(String, Forwarder)>,
}

impl Routes {
    pub fn new(upstream: Forwarder, mut stubs: Vec<(String, Forwarder)>) -> Self {
        stubs.sort_by_key(|(zone, _)| std::cmp::Reverse(zone.len()));
        Self { upstream, stubs }
    }

    /// Takes over the health marks of `old`'s servers (see [`Forwarder::keep_health`]).
    pub fn keep_health(&self, old: &Routes) {
        self.upstream.keep_health(&old.upstream);
        for (zone, stub) in &self.stubs {
            if let Some((_, o)) = old.stubs.iter().find(|(z, _)| z == zone) {
                stub.keep_health(o);
            }
        }
    }

    /// Whether a name outside the authority's zones has somewhere to go: a stub domain holding
    /// it, or any upstream (the agent always has one; the authority forwards only then).
    pub fn takes(&self, qname: &str) -> bool {
        self.upstream.servers().next().is_some() || self.stubs.iter().any(|(zone, _)| in_zone(qname, zone))
    }

    /// The most specific zone holding `qname` decides, as CoreDNS picks the server block: a stub
    /// domain, or a zone the authority announced on Subscribe (the cluster domain, its reverse
    /// zones, custom-record zones); a stub domain wins a tie. Lock-free: one atomic load of the
    /// view.
    fn route(&self, qname: &str, authority: &AuthorityLink) -> Route {
        // Longest first, so the first match is the most specific.
        let stub = self.stubs.iter().position(|(zone, _)| in_zone(qname, zone));
        let view = authority.view_guard();
        let ours = view.zones.iter().filter(|z| in_zone(qname, z)).map(|z| z.len()).max();
        match (stub, ours) {
            (Some(i), Some(len)) if len > self.stubs[i].0.len() => Route::Authority,
            (Some(i), _) => Route::Stub(i),
            (None, Some(_)) => Route::Authority,
            (None, None) => Route::Upstream,
        }
    }
}

pub struct Resolver {
    pub cache: Arc<Cache>,
    pub authority: Arc<AuthorityLink>,
    routes: ArcSwap<Routes>,
    log_queries: AtomicBool,
    /// Whether to autopath the node's pods (`--autopath`).
    autopath: AtomicBool,
    /// Whether answers come round-robin (not `--no-rotate`).
    rotate: AtomicBool,
    /// `--rewrite` rules, swapped whole by a reload.
    rewrites: LiveRewrites,
    /// The node's resolv.conf: its search domains join the pods' for autopath.
    pub node: ResolvConf,
    inflight: Mutex<HashMap<Box<[u8]>, InFlight>>,
    /// The name of our loop probe, wire form: if a query for it reaches us, a server we forward
    /// to sends our queries back (CoreDNS `loop`).
    probe: Box<[u8]>,
    /// Seconds (since `started`) of the last loop warning, to log at most one a minute.
    last_loop_log: std::sync::atomic::AtomicU64,
    started: Instant,
}

/// The probe's name: two random labels under a name no resolver answers.
fn probe_name() -> String {
    format!("{:016x}.{:016x}.nodedns-loop.invalid.", rand::random::<u64>(), rand::random::<u64>())
}

/// Whether `name` (absolute, lower case) is `zone` or below it.
pub fn in_zone(name: &str, zone: &str) -> bool {
    zone == "."
        || name == zone
        || (name.len() > zone.len()
            && name.ends_with(zone)
            && name.as_bytes()[name.len() - zone.len() - 1] == b'.')
}

thread_local! {
    /// The hit path's key buffer: no allocation per query.
    static KEY: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// What the listener does next.
pub enum Step {
    /// The answer is in the output buffer: send it.
    Answer,
    /// Send the answer, and refresh this popular entry in the background (run
    /// [`Resolver::prefetch`] off the receive loop).
    AnswerAndPrefetch(Miss),
    /// Nothing to send (not a query).
    Drop,
    /// A miss: run [`Resolver::miss`] with these (off the receive loop).
    Miss(Miss),
}

/// A miss to fetch, owning what it needs.
pub struct Miss {
    packet: Vec<u8>,
    /// With an autopath client's tag appended when `autopath`.
    key: Box<[u8]>,
    query: Query,
    autopath: bool,
    /// The name a `--rewrite` rule resolves instead of the asked one.
    rewrite: Option<Box<str>>,
}

impl Resolver {
    pub fn new(
        cache: Arc<Cache>,
        authority: Arc<AuthorityLink>,
        routes: Routes,
        node: ResolvConf,
        autopath: bool,
        log_queries: bool,
    ) -> Self {
        Self {
            cache,
            authority,
            routes: ArcSwap::from_pointee(routes),
            log_queries: AtomicBool::new(log_queries),
            autopath: AtomicBool::new(autopath),
            rotate: AtomicBool::new(true),
            rewrites: LiveRewrites::default(),
            node,
            inflight: Mutex::default(),
            probe: wire::encode_name(&probe_name()).unwrap_or_default().into_boxed_slice(),
            last_loop_log: std::sync::atomic::AtomicU64::new(u64::MAX),
            started: Instant::now(),
        }
    }

    /// A resolver for the names outside a server's own zones (the authority's `--upstream`):
    /// cache, coalescing, stub domains, upstream failover and the loop probe as in the agent; no
    /// autopath, and an authority link that is never connected and routes no zone (the server
    /// answers its zones itself).
    pub fn forwarding(cache: Arc<Cache>, routes: Routes, timeout: Duration) -> Self {
        let authority = AuthorityLink::new(timeout, Vec::new(), ResolvConf::default());
        Self::new(cache, authority, routes, ResolvConf::default(), false, false)
    }

    pub fn route(&self, qname: &str) -> Route {
        self.routes.load().route(qname, &self.authority)
    }

    /// The forwarders in use.
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.load_full()
    }

    /// New forwarders (a config reload): misses already routed finish with the old ones.
    pub fn set_routes(&self, routes: Routes) {
        self.routes.store(Arc::new(routes));
    }

    pub fn set_log_queries(&self, on: bool) {
        self.log_queries.store(on, Ordering::Relaxed);
    }

    pub fn set_autopath(&self, on: bool) {
        self.autopath.store(on, Ordering::Relaxed);
    }

    /// The `--rewrite` rules from now on (a config reload).
    pub fn set_rewrites(&self, rewrites: Rewrites) {
        self.rewrites.set(rewrites);
    }

    /// Round-robin answers on or off (`--no-rotate`); on unless set.
    pub fn set_rotate(&self, on: bool) {
        self.rotate.store(on, Ordering::Relaxed);
    }

    /// Writes `entry`'s answer to `query` into `out` (see [`Entry::write`]), its RRsets turned one
    /// step on from the last client's unless `--no-rotate`.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    fn write(
        &self,
        entry: &Entry,
        packet: &[u8],
        query: &Query,
        now: Instant,
        stale: bool,
        udp: bool,
        out: &mut Vec<u8>,
    ) {
        entry.write(packet, query, now, stale, udp, out);
        if self.rotate.load(Ordering::Relaxed) {
            entry.rotate(out);
        }
    }

    fn log_queries(&self) -> bool {
        self.log_queries.load(Ordering::Relaxed)
    }

    /// The hit path: parse, look up, and write a cached answer into `out` when there is one.
    pub fn answer(
        &self,
        packet: &[u8],
        client: SocketAddr,
        transport: Transport,
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Step {
        KEY.with_borrow_mut(|key| {
            let query = match wire::parse_query(packet, key) {
                Ok(q) => q,
                Err(Reject::Drop) => {
                    respond::dropped("not_a_query");
                    return Step::Drop;
                }
                Err(Reject::Rcode(rcode)) => {
                    wire::error_response(packet, None, rcode, out);
                    let cause = if rcode == 4 { "opcode not implemented" } else { "malformed query" };
                    nodedns_common::client_error!(
                        client = %client,
                        name = "",
                        qtype = "",
                        rcode = if rcode == 4 { "NOTIMP" } else { "FORMERR" },
                        cause,
                        "error answer sent"
                    );
                    respond::answered(
                        &Outcome {
                            transport,
                            qtype: 0,
                            rcode,
                            source: Source::Error,
                            client,
                            started: now,
                            query: None,
                            request_len: packet.len(),
                        },
                        key,
                        out,
                        self.log_queries(),
                    );
                    return Step::Answer;
                }
            };
            // EDNS versions above ours (0) get BADVERS (RFC 6891); classes other than IN and ANY
            // NOTIMP.
            let refuse = if query.edns_version != 0 {
                Some(16)
            } else if query.qclass != 1 && query.qclass != 255 {
                Some(4)
            } else {
                None
            };
            if let Some(rcode) = refuse {
                wire::error_response(packet, Some(&query), rcode, out);
                nodedns_common::client_error!(
                    client = %client,
                    name = wire::key_name(key),
                    qtype = %respond::qtype_name(query.qtype),
                    rcode = if rcode == 16 { "BADVERS" } else { "NOTIMP" },
                    cause = if rcode == 16 { "EDNS version above 0" } else { "query class other than IN" },
                    "error answer sent"
                );
                respond::answered(
                    &Outcome {
                        transport,
                        qtype: query.qtype,
                        rcode,
                        source: Source::Error,
                        client,
                        started: now,
                        query: Some(query),
                        request_len: packet.len(),
                    },
                    key,
                    out,
                    self.log_queries(),
                );
                return Step::Answer;
            }
            if key.starts_with(&self.probe) {
                self.loop_detected(client);
                wire::error_response(packet, Some(&query), 2, out);
                return Step::Answer;
            }
            // A `--rewrite` rule's name: resolved off the receive loop as the rewritten name
            // (one relaxed load here when there are no rules).
            if self.rewrites.any()
                && let Some(target) = self.rewrites.target(&wire::key_name(key))
            {
                let key = key.as_slice().into();
                return Step::Miss(Miss {
                    packet: packet.to_vec(),
                    key,
                    query,
                    autopath: false,
                    rewrite: Some(target.into()),
                });
            }
            // A pod's possible first search expansion is answered per search context: walked
            // answers are cached under the context's tag, never served to other clients.
            let autopath = self.autopath.load(Ordering::Relaxed) && {
                let view = self.authority.view_guard();
                match view.contexts.get(&client.ip()) {
                    Some(ctx) if query.qclass == 1 && autopath::may_apply(key, ctx) => {
                        key.extend_from_slice(&ctx.tag);
                        true
                    }
                    _ => false,
                }
            };
            if let Lookup::Fresh(entry) = self.cache.lookup(key, now) {
                self.write(&entry, packet, &query, now, false, transport == Transport::Udp, out);
                let prefetch = entry.hit_wants_prefetch(now);
                let source = if entry.negative { Source::CacheDenial } else { Source::CacheSuccess };
                respond::answered(
                    &Outcome {
                        transport,
                        qtype: query.qtype,
                        rcode: out[3] & 0x0f,
                        source,
                        client,
                        started: now,
                        query: Some(query),
                        request_len: packet.len(),
                    },
                    key,
                    out,
                    self.log_queries(),
                );
                if prefetch {
                    return Step::AnswerAndPrefetch(Miss {
                        packet: packet.to_vec(),
                        key: key.as_slice().into(),
                        query,
                        autopath,
                        rewrite: None,
                    });
                }
                return Step::Answer;
            }
            respond::cache_miss();
            Step::Miss(Miss {
                packet: packet.to_vec(),
                key: key.as_slice().into(),
                query,
                autopath,
                rewrite: None,
            })
        })
    }

    /// For a server that answers its own zones and forwards the rest (the authority): answers
    /// `packet` into `out` from the cache or through the routes, as [`Resolver::answer`] and
    /// [`Resolver::miss`] do for the agent, but without counting or logging (the caller does,
    /// with its own metrics); returns where the answer came from. `None` when the query is not
    /// one to forward (a class other than IN, an EDNS version above 0, a zone transfer, a packet
    /// our parser refuses, a name no route takes): the caller answers it itself.
    pub async fn forward(
        self: &Arc<Self>,
        packet: &[u8],
        client: SocketAddr,
        transport: Transport,
        out: &mut Vec<u8>,
    ) -> Option<Source> {
        let now = Instant::now();
        let udp = transport == Transport::Udp;
        let (step, source) = KEY.with_borrow_mut(|key| {
            let Ok(query) = wire::parse_query(packet, key) else { return (Step::Drop, Source::Error) };
            // IXFR 251, AXFR 252: transfers are the zones' own business.
            if query.qclass != 1 || query.edns_version != 0 || matches!(query.qtype, 251 | 252) {
                return (Step::Drop, Source::Error);
            }
            if key.starts_with(&self.probe) {
                self.loop_detected(client);
                wire::error_response(packet, Some(&query), 2, out);
                return (Step::Answer, Source::Error);
            }
            let miss = || Miss {
                packet: packet.to_vec(),
                key: key.as_slice().into(),
                query,
                autopath: false,
                rewrite: None,
            };
            match self.cache.lookup(key, now) {
                Lookup::Fresh(entry) => {
                    self.write(&entry, packet, &query, now, false, udp, out);
                    let source = if entry.negative { Source::CacheDenial } else { Source::CacheSuccess };
                    if entry.hit_wants_prefetch(now) {
                        (Step::AnswerAndPrefetch(miss()), source)
                    } else {
                        (Step::Answer, source)
                    }
                }
                _ => (Step::Miss(miss()), Source::Fetched),
            }
        });
        match step {
            Step::Drop => None,
            Step::Answer => Some(source),
            Step::AnswerAndPrefetch(miss) => {
                let this = Arc::clone(self);
                tokio::spawn(async move { this.prefetch(miss, client, transport).await });
                Some(source)
            }
            Step::Miss(Miss { packet, key, query, .. }) => {
                if !self.routes.load().takes(&wire::key_name(&key)) {
                    return None;
                }
                let fetched = self.fetch(&key, &packet, client, transport).await;
                Some(self.write_fetched(fetched, &packet, &query, &key, udp, out))
            }
        }
    }

    /// Fetches a miss (coalesced with identical ones in flight) and writes the answer into `out`.
    pub async fn miss(
        self: &Arc<Self>,
        miss: Miss,
        client: SocketAddr,
        transport: Transport,
        started: Instant,
        out: &mut Vec<u8>,
    ) {
        let Miss { packet, key, query, autopath, rewrite } = miss;
        if let Some(target) = rewrite {
            return self.rewritten(&packet, &key, query, &target, client, transport, started, out).await;
        }
        let plain = autopath::untagged(&key, autopath);
        let candidates = if autopath { self.autopath(plain, client) } else { None };
        let fetched = match candidates {
            Some(candidates) => self.walk(&key, &packet, &query, candidates, client, transport).await,
            // Tagged but not an expansion after all: the plain entry may be cached.
            None if autopath => self.cached_or_fetch(plain, &packet, client, transport).await,
            None => self.fetch(plain, &packet, client, transport).await,
        };
        let failed = match &fetched {
            Fetched::Failed(why) => Some(Arc::clone(why)),
            _ => None,
        };
        let source = self.write_fetched(fetched, &packet, &query, plain, transport == Transport::Udp, out);
        let rcode = out.get(3).map_or(2, |b| b & 0x0f);
        if rcode == 2 {
            // SERVFAIL: ours when nothing answered (and nothing stale was left), else passed on.
            let cause = failed.as_deref().unwrap_or("the server asked answered SERVFAIL");
            nodedns_common::client_error!(
                client = %client,
                name = wire::key_name(plain),
                qtype = %respond::qtype_name(query.qtype),
                rcode = "SERVFAIL",
                cause,
                "error answer sent"
            );
        }
        respond::answered(
            &Outcome {
                transport,
                qtype: query.qtype,
                rcode,
                source,
                client,
                started,
                query: Some(query),
                request_len: packet.len(),
            },
            &key,
            out,
            self.log_queries(),
        );
    }

    /// A query a `--rewrite` rule matched: `target` is resolved as a client's own query for it
    /// would be (cache, routes, ExternalName chase; no autopath), and the answer goes back under
    /// the asked name ([`rewrite::answer_as_asked`]), cut to the client's UDP limit only then,
    /// since the asked name may be longer than the target.
    #[allow(clippy::too_many_arguments)]
    async fn rewritten(
        self: &Arc<Self>,
        packet: &[u8],
        key: &[u8],
        query: Query,
        target: &str,
        client: SocketAddr,
        transport: Transport,
        started: Instant,
        out: &mut Vec<u8>,
    ) {
        let mut tkey = Vec::new();
        let tpacket =
            autopath::candidate_query(packet, query.question_end, query.qtype, query.qclass, target);
        let tquery = tpacket.as_deref().and_then(|p| wire::parse_query(p, &mut tkey).ok());
        let mut cause = "the rewritten name's answer does not parse";
        let mut source = Source::Error;
        if let (Some(tpacket), Some(tquery)) = (tpacket, tquery) {
            let fetched = self.cached_or_fetch(&tkey, &tpacket, client, transport).await;
            if let Fetched::Failed(_) = &fetched {
                cause = "no server answered for the rewritten name";
            }
            let mut answer = Vec::new();
            source = self.write_fetched(fetched, &tpacket, &tquery, &tkey, false, &mut answer);
            let limit = if transport == Transport::Udp { query.udp_limit() } else { usize::from(u16::MAX) };
            match rewrite::answer_as_asked(&answer, packet, target, limit) {
                Some(bytes) => {
                    out.clear();
                    out.extend_from_slice(&bytes);
                }
                None => source = Source::Error,
            }
        }
        if source == Source::Error {
            wire::error_response(packet, Some(&query), 2, out);
        }
        if out.get(3).map_or(2, |b| b & 0x0f) == 2 {
            nodedns_common::client_error!(
                client = %client,
                name = wire::key_name(key),
                qtype = %respond::qtype_name(query.qtype),
                rcode = "SERVFAIL",
                cause,
                target,
                "error answer sent"
            );
        }
        respond::answered(
            &Outcome {
                transport,
                qtype: query.qtype,
                rcode: out.get(3).map_or(2, |b| b & 0x0f),
                source,
                client,
                started,
                query: Some(query),
                request_len: packet.len(),
            },
            key,
            out,
            self.log_queries(),
        );
    }

    /// Writes what a fetch brought into `out` for the client's `query`; when it failed, the
    /// stale answer under `key` (the plain key), else SERVFAIL.
    fn write_fetched(
        &self,
        fetched: Fetched,
        packet: &[u8],
        query: &Query,
        key: &[u8],
        udp: bool,
        out: &mut Vec<u8>,
    ) -> Source {
        let now = Instant::now();
        match fetched {
            Fetched::Entry(entry) => {
                self.write(&entry, packet, query, now, false, udp, out);
                Source::Fetched
            }
            Fetched::Raw(raw) => {
                out.clear();
                out.extend_from_slice(&raw);
                out[..2].copy_from_slice(&query.id.to_be_bytes());
                if wire::parse_question_end(out) == Some(query.question_end) {
                    out[wire::HEADER..query.question_end]
                        .copy_from_slice(&packet[wire::HEADER..query.question_end]);
                }
                if udp && out.len() > query.udp_limit() {
                    wire::truncate(out, query);
                }
                Source::Fetched
            }
            Fetched::Failed(why) => match self.cache.lookup(key, now) {
                // RFC 8767: the source cannot answer, the stale answer is better than none.
                Lookup::Stale(entry) | Lookup::Fresh(entry) => {
                    tracing::debug!(name = wire::key_name(key), cause = %why, "serving stale");
                    self.write(&entry, packet, query, now, true, udp, out);
                    Source::Stale
                }
                Lookup::Miss => {
                    tracing::debug!(name = wire::key_name(key), cause = %why, "SERVFAIL");
                    wire::error_response(packet, Some(query), 2, out);
                    Source::Error
                }
            },
        }
    }

    /// ExternalName: completes `response`, an authoritative answer to `packet` ending in a CNAME
    /// to `target` (found by [`chase::dangling_target`], and outside the caller's zones), with
    /// the target's records of the asked type, resolved through the routes and the cache
    /// (stub domains included) as a client's own query for it would be. `None` leaves the
    /// response as it is: no route takes the target, or it could not be resolved (the client's
    /// resolver may still follow the alias itself). The combined answer's TTLs are the alias's
    /// and the target's as aged in the cache, so whatever caches it keeps it no longer than the
    /// shorter.
    pub async fn chase(
        self: &Arc<Self>,
        packet: &[u8],
        response: &[u8],
        target: &str,
        client: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        if !self.routes.load().takes(target) {
            return None;
        }
        let query = wire::parse_query(packet, &mut Vec::new()).ok()?;
        let tpacket =
            autopath::candidate_query(packet, query.question_end, query.qtype, query.qclass, target)?;
        let mut tkey = Vec::new();
        let tquery = wire::parse_query(&tpacket, &mut tkey).ok()?;
        let tail = match self.fetch_target(tkey, tpacket.clone(), client, transport).await {
            Fetched::Entry(entry) => {
                let mut bytes = Vec::new();
                entry.write(&tpacket, &tquery, Instant::now(), false, false, &mut bytes);
                bytes
            }
            // Not cacheable: a TTL of 0 is still an answer; an error leaves the alias alone.
            Fetched::Raw(raw) => raw.to_vec(),
            Fetched::Failed(_) => return None,
        };
        chase::append(response, &tail)
    }

    /// Our probe came back: a forwarding loop. Logged at most once a minute, counted always;
    /// the probe gets SERVFAIL so the loop ends.
    fn loop_detected(&self, from: SocketAddr) {
        use std::sync::atomic::Ordering;
        metrics::counter!("nodedns_loops_detected_total").increment(1);
        let now = self.started.elapsed().as_secs();
        let last = self.last_loop_log.load(Ordering::Relaxed);
        if (last == u64::MAX || now >= last + 60) && self.last_loop_log.swap(now, Ordering::Relaxed) == last {
            tracing::error!(
                from = %from,
                "forwarding loop: a query the agent sent upstream came back to it; an upstream or stub server forwards to this agent (check --upstream, --stub-domain and the node's resolv.conf)"
            );
        }
    }

    /// Sends the loop probe through every upstream and stub server (the answer does not matter:
    /// only whether the probe comes back to us).
    pub async fn probe_for_loops(&self) {
        let name = crate::wire::key_name(&self.probe);
        let mut query = vec![0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
        query.extend_from_slice(&self.probe);
        query.extend_from_slice(&[0, 13, 0, 1]); // HINFO IN, as CoreDNS's loop plugin asks
        let routes = self.routes();
        let _ = routes.upstream.forward(&query).await;
        for (_, stub) in &routes.stubs {
            let _ = stub.forward(&query).await;
        }
        tracing::debug!(probe = name, "loop probe sent");
    }

    /// Refreshes a popular entry before it expires (the walk again for an autopath answer).
    pub async fn prefetch(self: &Arc<Self>, miss: Miss, client: SocketAddr, transport: Transport) {
        let Miss { packet, key, query, autopath, .. } = miss;
        crate::respond::prefetched();
        let plain = autopath::untagged(&key, autopath);
        match if autopath { self.autopath(plain, client) } else { None } {
            Some(candidates) => {
                // The asked name is fetched anew; the walk then reads the other steps through
                // the cache.
                self.fetch(plain, &packet, client, transport).await;
                self.walk(&key, &packet, &query, candidates, client, transport).await;
            }
            None => {
                self.fetch(plain, &packet, client, transport).await;
            }
        }
    }

    /// The names to walk when this query is the client pod's first search expansion.
    fn autopath(&self, key: &[u8], client: SocketAddr) -> Option<Vec<String>> {
        let view = self.authority.view();
        let pod = view.pods.get(&client.ip())?;
        let candidates = autopath::candidates(&wire::key_name(key), pod, &self.node)?;
        // A walk fetches its candidates directly: one a `--rewrite` rule takes would be answered
        // past the rule. Leave that walk to the pod, whose own query then meets the rule.
        if self.rewrites.any() && candidates.iter().any(|c| self.rewrites.target(c).is_some()) {
            return None;
        }
        Some(candidates)
    }

    /// Autopath: the asked name, then each candidate until one is not NXDOMAIN; that one is
    /// answered as `asked CNAME hit` plus the hit's answer and cached under `tagged` (the asked
    /// key with the client's search-context tag), indexed by every name tried so a change to any
    /// of them evicts it. Each step goes through the cache, so the client's own later attempts at
    /// the other names are cache hits.
    async fn walk(
        self: &Arc<Self>,
        tagged: &[u8],
        packet: &[u8],
        query: &Query,
        candidates: Vec<String>,
        client: SocketAddr,
        transport: Transport,
    ) -> Fetched {
        let started = Instant::now();
        let key = autopath::untagged(tagged, true);
        let first = self.cached_or_fetch(key, packet, client, transport).await;
        if !matches!(&first, Fetched::Entry(e) if e.rcode == 3) {
            autopath::count("asked_name", started);
            return first;
        }
        let asked = wire::key_name(key);
        let mut tried = vec![asked.clone()];
        for name in candidates {
            let Some(cpacket) =
                autopath::candidate_query(packet, query.question_end, query.qtype, query.qclass, &name)
            else {
                break;
            };
            let mut ckey = Vec::new();
            let Ok(cquery) = wire::parse_query(&cpacket, &mut ckey) else { break };
            match self.cached_or_fetch(&ckey, &cpacket, client, transport).await {
                Fetched::Entry(e) if e.rcode == 3 => tried.push(name),
                Fetched::Entry(e) => {
                    let mut hit = Vec::new();
                    e.write(&cpacket, &cquery, Instant::now(), false, false, &mut hit);
                    let Some(bytes) = autopath::cname_answer(&asked, query.qtype, &name, &hit) else { break };
                    autopath::count("hit", started);
                    return match self.cache.insert_with(tagged, &bytes, Instant::now(), true, &tried) {
                        Some(entry) => Fetched::Entry(entry),
                        None => Fetched::Raw(Arc::new(bytes)),
                    };
                }
                // A step failed: answer the asked name as itself, and the client searches on.
                _ => break,
            }
        }
        autopath::count("nxdomain", started);
        // The asked name's own NXDOMAIN, remembered for this context too.
        if let Fetched::Entry(e) = &first {
            let mut bytes = Vec::new();
            if let Ok(q) = wire::parse_query(packet, &mut Vec::new()) {
                e.write(packet, &q, Instant::now(), false, false, &mut bytes);
                self.cache.insert_with(tagged, &bytes, Instant::now(), true, &tried);
            }
        }
        first
    }

    /// [`Resolver::cached_or_fetch`] for a chased target, boxed: the fetch of the authority's
    /// answer awaits this fetch of the target, and the compiler sees that loop's futures are
    /// Send only through a future of declared type.
    fn fetch_target(
        self: &Arc<Self>,
        key: Vec<u8>,
        packet: Vec<u8>,
        client: SocketAddr,
        transport: Transport,
    ) -> BoxFuture<'static, Fetched> {
        let this = Arc::clone(self);
        async move { this.cached_or_fetch(&key, &packet, client, transport).await }.boxed()
    }

    /// A fresh cached answer for `key`, else a fetch.
    async fn cached_or_fetch(
        self: &Arc<Self>,
        key: &[u8],
        packet: &[u8],
        client: SocketAddr,
        transport: Transport,
    ) -> Fetched {
        match self.cache.lookup(key, Instant::now()) {
            Lookup::Fresh(entry) => Fetched::Entry(entry),
            _ => self.fetch(key, packet, client, transport).await,
        }
    }

    async fn fetch(
        self: &Arc<Self>,
        key: &[u8],
        packet: &[u8],
        client: SocketAddr,
        transport: Transport,
    ) -> Fetched {
        let shared = {
            let mut inflight = self.inflight.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = inflight.get(key) {
                respond::coalesced();
                f.clone()
            } else {
                let this = Arc::clone(self);
                let (owned, packet) = (Box::<[u8]>::from(key), packet.to_vec());
                let fut = async move {
                    let fetched = this.fetch_once(&owned, &packet, client, transport).await;
                    this.inflight.lock().unwrap_or_else(PoisonError::into_inner).remove(&owned);
                    fetched
                }
                .boxed()
                .shared();
                inflight.insert(key.into(), fut.clone());
                fut
            }
        };
        shared.await
    }

    async fn fetch_once(
        self: &Arc<Self>,
        key: &[u8],
        packet: &[u8],
        client: SocketAddr,
        transport: Transport,
    ) -> Fetched {
        let qname = wire::key_name(key);
        // One set of forwarders for the route and the forwarding, whatever a reload swaps in.
        let routes = self.routes();
        let route = routes.route(&qname, &self.authority);
        // Why there is no answer, for the error log (only a failure formats it).
        let result = match route {
            Route::Authority => {
                self.authority.resolve(packet, client.ip(), transport == Transport::Tcp).await.map_err(|e| {
                    tracing::debug!(name = qname, error = %e, "authority could not answer");
                    format!("authority: {e}")
                })
            }
            Route::Stub(i) => match routes.stubs.get(i) {
                Some((zone, stub)) => {
                    stub.forward(packet).await.map_err(|e| format!("stub domain {zone}: {e}"))
                }
                None => Err("stub domain".to_owned()),
            },
            Route::Upstream => routes.upstream.forward(packet).await.map_err(|e| format!("upstream: {e}")),
        };
        let result = match result {
            // An ExternalName's alias to a name outside the cluster: completed here, through the
            // node's routes (the authority answers only its zones).
            Ok(response) if route == Route::Authority => {
                let whole = match chase::dangling_target(&response) {
                    Some(target) if !self.authority.view().zones.iter().any(|z| in_zone(&target, z)) => {
                        self.chase(packet, &response, &target, client, transport).await
                    }
                    _ => None,
                };
                Ok(whole.unwrap_or(response))
            }
            other => other,
        };
        match result {
            // Nothing shorter than a header is passed on: the id and flags could not be set.
            Ok(response) if response.len() < wire::HEADER => {
                Fetched::Failed(Arc::from(format!("{route:?}: answer shorter than a header").as_str()))
            }
            Ok(response) => {
                match self.cache.insert(key, &response, Instant::now(), route == Route::Authority) {
                    Some(entry) => Fetched::Entry(entry),
                    None => Fetched::Raw(Arc::new(response)),
                }
            }
            Err(why) => Fetched::Failed(Arc::from(why.as_str())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Route, Routes, in_zone};
    use crate::authority_client::AuthorityLink;
    use crate::upstream::Forwarder;
    use std::time::Duration;

    #[test]
    fn the_most_specific_zone_routes_and_a_stub_wins_a_tie() {
        let forwarder = || Forwarder::new(&["127.0.0.1:53".parse().unwrap()], Duration::from_secs(1), "t");
        let stubs = ["example.", "cluster.local.", "corp.example."];
        let routes = Routes::new(forwarder(), stubs.iter().map(|z| (z.to_string(), forwarder())).collect());
        let announced = ["cluster.local.", "corp.example.", "in.corp.example.", "other.test."];
        let link = AuthorityLink::new(
            Duration::from_secs(1),
            announced.map(String::from).to_vec(),
            Default::default(),
        );
        let stub = |zone: &str| Route::Stub(routes.stubs.iter().position(|(z, _)| z == zone).unwrap());
        for (name, want) in [
            ("www.other.test.", Route::Authority),
            ("www.example.", stub("example.")),
            ("www.corp.example.", stub("corp.example.")),
            ("a.in.corp.example.", Route::Authority),
            ("a.svc.cluster.local.", stub("cluster.local.")),
            ("example.com.", Route::Upstream),
        ] {
            assert_eq!(routes.route(name, &link), want, "{name}");
        }
    }

    #[test]
    fn zones_contain_names_at_label_boundaries() {
        assert!(in_zone("a.cluster.local.", "cluster.local."));
        assert!(in_zone("cluster.local.", "cluster.local."));
        assert!(!in_zone("acluster.local.", "cluster.local."));
        assert!(!in_zone("local.", "cluster.local."));
        assert!(in_zone("anything.", "."));
    }
}
