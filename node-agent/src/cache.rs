//! The answer cache: responses stored ready to send, keyed by lower-cased question name, type,
//! class and the DO/CD bits. A hit copies the stored bytes and rewrites only the id, the
//! question's letter case, RD and the TTLs (aged by the time spent in the cache). Positive and
//! negative answers (RFC 2308: negative TTL from the authority SOA), min/max TTL caps, a bound in
//! bytes (moka), and stale answers kept for a while past expiry (RFC 8767) for when the source
//! cannot answer.
//!
//! Cluster answers (from the authority) are also indexed by every owner name they hold, so a
//! change notice evicts exactly the answers it made wrong (see `Update.names` in the contract).
//! The clock is passed in: expiry is tested without sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::wire::{self, Query};

/// TTL of an answer served stale (RFC 8767 section 4 recommends 30 s).
pub const STALE_TTL: u32 = 30;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub min_ttl: u32,
    pub max_ttl: u32,
    /// Cap on the TTL of negative answers (CoreDNS `cache`: 1800 s for denials).
    pub max_negative_ttl: u32,
    /// How long past expiry an answer may still be served stale.
    pub stale_for: Duration,
    /// Bytes of cached responses and keys.
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            min_ttl: 0,
            max_ttl: 3600,
            max_negative_ttl: 1800,
            stale_for: Duration::from_secs(3600),
            max_bytes: 32 << 20,
        }
    }
}

/// A cached response.
#[derive(Debug)]
pub struct Entry {
    /// The response with id 0 and without OPT (added per client on a hit).
    wire: Box<[u8]>,
    ttl_offsets: Box<[u16]>,
    question_end: usize,
    stored: Instant,
    /// Seconds the entry is fresh for.
    ttl: u32,
    pub negative: bool,
    /// The response code (0 NOERROR, 3 NXDOMAIN: the only ones cached).
    pub rcode: u8,
    /// Came from the authority: indexed for change notices.
    pub cluster: bool,
    /// Owner names (for the notice index).
    owners: Box<[Box<str>]>,
    /// The question name (lower case).
    qname: Box<str>,
    /// Hits served from this entry.
    hits: AtomicU32,
    /// A refresh is under way (one per entry).
    prefetching: AtomicBool,
}

/// Hits after which an entry is popular enough to be refreshed before it expires.
pub const PREFETCH_HITS: u32 = 3;

impl Entry {
    /// Counts a hit, and says whether this hit should start a refresh: the entry is popular and
    /// in the last tenth of its life (at least the last second), and no refresh is running.
    /// Popular names then never expire under their clients (CoreDNS `cache` `prefetch`).
    pub fn hit_wants_prefetch(&self, now: Instant) -> bool {
        let hits = self.hits.fetch_add(1, Ordering::Relaxed) + 1;
        if hits < PREFETCH_HITS || self.ttl < 2 {
            return false;
        }
        let left = Duration::from_secs(u64::from(self.ttl))
            .saturating_sub(now.saturating_duration_since(self.stored));
        let threshold = Duration::from_secs(u64::from((self.ttl / 10).max(1)));
        left <= threshold && !self.prefetching.swap(true, Ordering::Relaxed)
    }

    pub fn is_fresh(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.stored) < Duration::from_secs(u64::from(self.ttl))
    }

    /// Seconds left of freshness.
    pub fn remaining(&self, now: Instant) -> u32 {
        let age = now.saturating_duration_since(self.stored).as_secs();
        u32::try_from(u64::from(self.ttl).saturating_sub(age)).unwrap_or(0)
    }

    /// Writes the answer to `query` (sent as `packet`) into `out`: the stored bytes with the
    /// client's id, question case and RD, TTLs aged (or `STALE_TTL` when `stale`), an OPT record
    /// if the client sent one, truncated to the client's UDP limit when `udp`.
    pub fn write(
        &self,
        packet: &[u8],
        query: &Query,
        now: Instant,
        stale: bool,
        udp: bool,
        out: &mut Vec<u8>,
    ) {
        out.clear();
        out.extend_from_slice(&self.wire);
        out[..2].copy_from_slice(&query.id.to_be_bytes());
        out[2] = (out[2] & !0x01) | u8::from(query.rd);
        if self.question_end == query.question_end && out.len() >= self.question_end {
            out[wire::HEADER..self.question_end].copy_from_slice(&packet[wire::HEADER..query.question_end]);
        }
        let age = u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        for &at in self.ttl_offsets.iter() {
            let at = usize::from(at);
            let Some(field) = out.get_mut(at..at + 4) else { continue };
            let original = u32::from_be_bytes([field[0], field[1], field[2], field[3]]);
            let ttl = if stale { STALE_TTL } else { original.saturating_sub(age) };
            field.copy_from_slice(&ttl.to_be_bytes());
        }
        if query.edns.is_some() {
            wire::push_opt(out, query.dnssec_ok);
        }
        if udp && out.len() > query.udp_limit() {
            wire::truncate(out, query);
        }
    }
}

/// What a lookup found.
pub enum Lookup {
    Fresh(Arc<Entry>),
    /// Expired but within the stale window: refresh, and serve it if that fails.
    Stale(Arc<Entry>),
    Miss,
}

/// Names and keys of cluster answers, for eviction by change notice.
#[derive(Default)]
struct Index {
    /// Owner name or question name → keys of entries holding it.
    by_name: HashMap<Box<str>, HashSet<Box<[u8]>>>,
    /// Negative answers by question name, labels reversed (`local.cluster.svc.x.`), so the
    /// answers below a name are one range.
    negative: BTreeMap<String, HashSet<Box<[u8]>>>,
    /// Answers to wildcard questions by the name after the wildcard labels.
    wildcard: HashMap<Box<str>, HashSet<Box<[u8]>>>,
}

fn reversed(name: &str) -> String {
    let mut labels: Vec<&str> = name.trim_end_matches('.').split('.').collect();
    labels.reverse();
    let mut out = labels.join(".");
    out.push('.');
    out
}

/// `name` and its ancestors (`a.b.c.`, `b.c.`, `c.`).
fn ancestors(name: &str) -> impl Iterator<Item = &str> {
    let mut next = Some(name);
    std::iter::from_fn(move || {
        let current = next?;
        next = current.split_once('.').map(|(_, rest)| rest).filter(|r| !r.is_empty());
        Some(current)
    })
}

fn wildcard_parent(qname: &str) -> Option<&str> {
    qname.starts_with("*.").then(|| qname.trim_start_matches("*."))
}

fn remove_key(map: &mut HashMap<Box<str>, HashSet<Box<[u8]>>>, name: &str, key: &[u8]) {
    if let Some(set) = map.get_mut(name) {
        set.remove(key);
        if set.is_empty() {
            map.remove(name);
        }
    }
}

impl Index {
    fn add(&mut self, key: &[u8], e: &Entry) {
        for name in e.owners.iter().chain(std::iter::once(&e.qname)) {
            self.by_name.entry(name.clone()).or_default().insert(key.into());
        }
        if e.negative {
            self.negative.entry(reversed(&e.qname)).or_default().insert(key.into());
        }
        if let Some(parent) = wildcard_parent(&e.qname) {
            self.wildcard.entry(parent.into()).or_default().insert(key.into());
        }
    }

    fn remove(&mut self, key: &[u8], e: &Entry) {
        for name in e.owners.iter().chain(std::iter::once(&e.qname)) {
            remove_key(&mut self.by_name, name, key);
        }
        if e.negative {
            let r = reversed(&e.qname);
            if let Some(set) = self.negative.get_mut(&r) {
                set.remove(key);
                if set.is_empty() {
                    self.negative.remove(&r);
                }
            }
        }
        if let Some(parent) = wildcard_parent(&e.qname) {
            remove_key(&mut self.wildcard, parent, key);
        }
    }

    /// Keys a change of `name`'s records makes wrong (the contract's eviction rules).
    fn affected(&self, name: &str, out: &mut Vec<Box<[u8]>>) {
        if let Some(keys) = self.by_name.get(name) {
            out.extend(keys.iter().cloned());
        }
        let r = reversed(name);
        // Negative answers for names below it, and for it.
        for (_, keys) in self.negative.range(r.clone()..).take_while(|(k, _)| k.starts_with(&r)) {
            out.extend(keys.iter().cloned());
        }
        for ancestor in ancestors(name) {
            // Negative answers above it (an empty non-terminal may have appeared or gone), and
            // wildcard answers whose parent is above it.
            if let Some(keys) = self.negative.get(&reversed(ancestor)) {
                out.extend(keys.iter().cloned());
            }
            if let Some(keys) = self.wildcard.get(ancestor) {
                out.extend(keys.iter().cloned());
            }
        }
    }
}

pub struct Cache {
    entries: moka::sync::Cache<Box<[u8]>, Arc<Entry>>,
    limits: Limits,
    index: Arc<Mutex<Index>>,
}

struct Expiry(Duration);

impl moka::Expiry<Box<[u8]>, Arc<Entry>> for Expiry {
    fn expire_after_create(
        &self,
        _key: &Box<[u8]>,
        value: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_secs(u64::from(value.ttl)) + self.0)
    }
}

/// Bytes an entry holds: response, key and the entry's fixed part.
#[allow(clippy::borrowed_box)] // moka's weigher signature takes `&K`
fn weigh(key: &Box<[u8]>, entry: &Arc<Entry>) -> u32 {
    let names: usize = entry.owners.iter().map(|n| n.len() + 16).sum();
    u32::try_from(key.len() + entry.wire.len() + entry.ttl_offsets.len() * 2 + names + 160)
        .unwrap_or(u32::MAX)
}

impl Cache {
    pub fn new(limits: Limits) -> Self {
        let index: Arc<Mutex<Index>> = Arc::default();
        let listener_index = Arc::clone(&index);
        let entries = moka::sync::Cache::builder()
            .max_capacity(limits.max_bytes)
            .weigher(weigh)
            .expire_after(Expiry(limits.stale_for))
            .eviction_listener(move |key: Arc<Box<[u8]>>, value: Arc<Entry>, cause| {
                if value.cluster && cause != moka::notification::RemovalCause::Replaced {
                    listener_index.lock().unwrap_or_else(PoisonError::into_inner).remove(&key, &value);
                }
                if cause.was_evicted() {
                    metrics::counter!("coredns_cache_evictions_total").increment(1);
                }
            })
            .build();
        Self { entries, limits, index }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        match self.entries.get(key) {
            Some(e) if e.is_fresh(now) => Lookup::Fresh(e),
            Some(e)
                if now.saturating_duration_since(e.stored)
                    < Duration::from_secs(u64::from(e.ttl)) + self.limits.stale_for =>
            {
                Lookup::Stale(e)
            }
            _ => Lookup::Miss,
        }
    }

    /// Stores `response` (an answer to the question in `key`) if it is cacheable, returning the
    /// entry. Not cached: truncated responses, rcodes other than NOERROR and NXDOMAIN, and
    /// responses that do not parse.
    pub fn insert(&self, key: &[u8], response: &[u8], now: Instant, cluster: bool) -> Option<Arc<Entry>> {
        self.insert_with(key, response, now, cluster, &[])
    }

    /// [`Cache::insert`], indexing the entry under `extra` names too (names whose change alters
    /// the answer without being in it, such as the candidates an autopath walk found absent).
    pub fn insert_with(
        &self,
        key: &[u8],
        response: &[u8],
        now: Instant,
        cluster: bool,
        extra: &[String],
    ) -> Option<Arc<Entry>> {
        let mut wire = response.to_vec();
        let mut layout = wire::layout(&wire)?;
        if let Some((start, end)) = layout.opt {
            wire.drain(start..end);
            let ar = u16::from_be_bytes([wire[10], wire[11]]).saturating_sub(1);
            wire[10..12].copy_from_slice(&ar.to_be_bytes());
            layout = wire::layout(&wire)?;
        }
        if layout.truncated || !(layout.rcode == 0 || layout.rcode == 3) {
            return None;
        }
        let negative = layout.rcode == 3 || layout.answers == 0;
        let ttl = if negative {
            // Without an SOA there is nothing to go on (RFC 2308 section 5): a short time.
            layout.negative_ttl.unwrap_or(5).min(self.limits.max_negative_ttl)
        } else {
            layout.min_ttl.unwrap_or(0).min(self.limits.max_ttl)
        }
        .max(self.limits.min_ttl);
        if ttl == 0 {
            return None;
        }
        wire[..2].fill(0);
        let question_end = wire::parse_question_end(&wire)?;
        let entry = Arc::new(Entry {
            wire: wire.into_boxed_slice(),
            ttl_offsets: layout.ttl_offsets.into_boxed_slice(),
            question_end,
            stored: now,
            ttl,
            negative,
            rcode: layout.rcode,
            cluster,
            owners: layout
                .owners
                .into_iter()
                .chain(extra.iter().cloned())
                .map(String::into_boxed_str)
                .collect(),
            qname: wire::key_name(key).into_boxed_str(),
            hits: AtomicU32::new(0),
            prefetching: AtomicBool::new(false),
        });
        // A replaced entry's names leave the index here (the eviction listener skips
        // replacements). The index lock is never held across a moka call: moka may run its
        // eviction listener, which takes that lock, on this thread.
        let old = self.entries.get(key).filter(|old| old.cluster);
        if old.is_some() || cluster {
            let mut index = self.lock_index();
            if let Some(old) = &old {
                index.remove(key, old);
            }
            if cluster {
                index.add(key, &entry);
            }
        }
        self.entries.insert(key.into(), Arc::clone(&entry));
        Some(entry)
    }

    fn lock_index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Evicts the answers a change of these owner names made wrong; returns how many.
    pub fn evict_names<'n>(&self, names: impl IntoIterator<Item = &'n str>) -> usize {
        let mut keys = Vec::new();
        {
            let index = self.lock_index();
            for name in names {
                index.affected(name, &mut keys);
            }
        }
        keys.sort();
        keys.dedup();
        for key in &keys {
            self.entries.invalidate(key);
        }
        keys.len()
    }

    /// Evicts every cluster answer whose question is at or below one of `subtrees`.
    pub fn evict_subtrees(&self, subtrees: &[String]) -> usize {
        let mut n = 0;
        for (key, entry) in self.entries.iter() {
            let under = subtrees.iter().any(|s| {
                entry.qname.as_ref() == s.as_str() || entry.qname.ends_with(&format!(".{s}")) || s == "."
            });
            if entry.cluster && under {
                self.entries.invalidate(key.as_ref());
                n += 1;
            }
        }
        n
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.entry_count()
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.weighted_size()
    }

    /// Runs moka's pending maintenance (tests and metrics want exact counts).
    pub fn sync(&self) {
        self.entries.run_pending_tasks();
    }
}
