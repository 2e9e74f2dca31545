//! The answer cache: responses stored ready to send, keyed by lower-cased question name, type,
//! class and the DO/CD bits. A hit copies the stored bytes and rewrites only the id, the
//! question's letter case, RD and the TTLs (aged by the time spent in the cache). Positive and
//! negative answers (RFC 2308: negative TTL from the authority SOA), min/max TTL caps, a bound in
//! bytes (quick_cache), and stale answers kept for a while past expiry (RFC 8767) for when the source
//! cannot answer.
//!
//! Cluster answers (from the authority) are also indexed by every owner name they hold, so a
//! change notice evicts exactly the answers it made wrong (see `Update.names` in the contract).
//! The clock is passed in: expiry is tested without sleeping.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
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

/// A cached response, in as few allocations as a hit needs: one for the bytes, and one more for
/// cluster answers' notice-index names (100,000 cached answers are otherwise mostly allocator
/// overhead).
#[derive(Debug)]
pub struct Entry {
    /// The response with id 0 and without OPT (added per client on a hit), followed by the
    /// offsets of its TTL fields (`u16`, native byte order), then its rotation plan
    /// (`nodedns_zone::rotate::plan`, empty for most answers) and the plan's length in bytes
    /// (`u16`): one allocation, and the entry no larger.
    data: Box<[u8]>,
    /// Length of the response in `data`.
    wire_len: u16,
    question_end: u16,
    /// Seconds the entry is fresh for.
    ttl: u32,
    stored: Instant,
    /// Hits served from this entry.
    hits: AtomicU32,
    pub negative: bool,
    /// The response code (0 NOERROR, 3 NXDOMAIN: the only ones cached).
    pub rcode: u8,
    /// A refresh is under way (one per entry).
    prefetching: AtomicBool,
    /// Turns served, for the round-robin order (wrapping: a byte keeps the entry's size).
    turns: AtomicU8,
    /// Cluster answers (from the authority) only: the names a change notice finds them by.
    names: Option<Box<NoticeNames>>,
}

/// The names the notice index holds a cluster answer under.
#[derive(Debug)]
struct NoticeNames {
    /// Owner names in the answer, plus names whose change alters it without being in it.
    owners: Box<[Box<str>]>,
    /// The question name (lower case).
    qname: Box<str>,
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

    /// Came from the authority: indexed for change notices.
    pub fn is_cluster(&self) -> bool {
        self.names.is_some()
    }

    fn wire(&self) -> &[u8] {
        &self.data[..usize::from(self.wire_len)]
    }

    /// The rotation plan: empty unless the answer has an RRset to turn.
    #[inline]
    fn plan(&self) -> &[u8] {
        let len = self.data.len();
        let plan = usize::from(u16::from_ne_bytes([self.data[len - 2], self.data[len - 1]]));
        &self.data[len - 2 - plan..len - 2]
    }

    fn ttl_offsets(&self) -> impl Iterator<Item = usize> + '_ {
        let end = self.data.len() - 2 - self.plan().len();
        self.data[usize::from(self.wire_len)..end]
            .chunks_exact(2)
            .map(|c| usize::from(u16::from_ne_bytes([c[0], c[1]])))
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
        out.extend_from_slice(self.wire());
        out[..2].copy_from_slice(&query.id.to_be_bytes());
        out[2] = (out[2] & !0x01) | u8::from(query.rd);
        let question_end = usize::from(self.question_end);
        if question_end == query.question_end && out.len() >= question_end {
            out[wire::HEADER..question_end].copy_from_slice(&packet[wire::HEADER..query.question_end]);
        }
        let age = u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX);
        for at in self.ttl_offsets() {
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

    /// Turns the A, AAAA, MX and SRV RRsets of the answer just written into `out` (by
    /// [`Entry::write`]) one step on from the last client's (CoreDNS `loadbalance`), in place:
    /// clients that take the first address spread over all of them, cache hits included. The
    /// plan was made when the answer was stored, so a hit only moves bytes; an answer truncated
    /// for the client has no records to turn.
    #[inline]
    pub fn rotate(&self, out: &mut [u8]) {
        let plan = self.plan();
        let wire_len = usize::from(self.wire_len);
        if plan.is_empty() || out.len() < wire_len || out[2] & 0x02 != 0 {
            return;
        }
        let turn = self.turns.fetch_add(1, Ordering::Relaxed);
        nodedns_zone::rotate::apply(&mut out[..wire_len], plan, u32::from(turn));
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
        let negative = e.negative;
        let Some(e) = &e.names else { return };
        for name in e.owners.iter().chain(std::iter::once(&e.qname)) {
            self.by_name.entry(name.clone()).or_default().insert(key.into());
        }
        if negative {
            self.negative.entry(reversed(&e.qname)).or_default().insert(key.into());
        }
        if let Some(parent) = wildcard_parent(&e.qname) {
            self.wildcard.entry(parent.into()).or_default().insert(key.into());
        }
    }

    fn remove(&mut self, key: &[u8], e: &Entry) {
        let negative = e.negative;
        let Some(e) = &e.names else { return };
        for name in e.owners.iter().chain(std::iter::once(&e.qname)) {
            remove_key(&mut self.by_name, name, key);
        }
        if negative {
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

/// The store: quick_cache's sharded map with S3-FIFO eviction under a bound in bytes. moka, which
/// the design first used, costs about 340 bytes per entry of its own (its timer wheel, access
/// deques and hash buckets) and 1,500 instructions per lookup; quick_cache about 25 bytes and a
/// few hundred (`BENCHMARKS.md`). Expiry is ours: a lookup checks the entry's age, and
/// [`Cache::sweep`] drops entries past their stale window.
type Store =
    quick_cache::sync::Cache<Box<[u8]>, Arc<Entry>, Weigh, quick_cache::DefaultHashBuilder, Evictions>;

pub struct Cache {
    entries: Store,
    /// Swapped by [`Cache::set_limits`] (a config reload); a fresh hit never reads it.
    limits: arc_swap::ArcSwap<Limits>,
    index: Arc<Mutex<Index>>,
}

/// Bytes an entry holds: response, key and the entry's fixed part.
#[derive(Clone)]
struct Weigh;

impl quick_cache::Weighter<Box<[u8]>, Arc<Entry>> for Weigh {
    fn weight(&self, key: &Box<[u8]>, entry: &Arc<Entry>) -> u64 {
        let names: usize = entry
            .names
            .as_ref()
            .map_or(0, |n| n.qname.len() + 48 + n.owners.iter().map(|o| o.len() + 16).sum::<usize>());
        (key.len() + entry.data.len() + names + 160) as u64
    }
}

/// Collects what an insert evicted, so the notice index is updated after the store's shard lock
/// is released.
#[derive(Clone)]
struct Evictions;

impl quick_cache::Lifecycle<Box<[u8]>, Arc<Entry>> for Evictions {
    type RequestState = Vec<(Box<[u8]>, Arc<Entry>)>;

    fn on_evict(&self, state: &mut Self::RequestState, key: Box<[u8]>, entry: Arc<Entry>) {
        state.push((key, entry));
    }
}

impl Cache {
    pub fn new(limits: Limits) -> Self {
        // Room for about one entry per 256 bytes of the bound (a typical A answer weighs ~250).
        let items = usize::try_from(limits.max_bytes / 256).unwrap_or(usize::MAX).max(16);
        // A shard holds 1/shards of the bound, and an answer must fit in one: no shard under
        // 256 KiB (small caches get one shard), at most 64.
        let shards = usize::try_from(limits.max_bytes >> 18).unwrap_or(64).clamp(1, 64);
        let options = quick_cache::OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(items)
            .weight_capacity(limits.max_bytes)
            .build()
            .expect("items and weight capacity are set");
        let entries =
            Store::with_options(options, Weigh, quick_cache::DefaultHashBuilder::default(), Evictions);
        Self { entries, limits: arc_swap::ArcSwap::from_pointee(limits), index: Arc::default() }
    }

    /// Takes evicted entries out of the notice index and counts them.
    fn evicted(&self, evicted: Vec<(Box<[u8]>, Arc<Entry>)>) {
        if evicted.is_empty() {
            return;
        }
        metrics::counter!("coredns_cache_evictions_total").increment(evicted.len() as u64);
        if evicted.iter().any(|(_, e)| e.is_cluster()) {
            let mut index = self.lock_index();
            for (key, entry) in &evicted {
                index.remove(key, entry);
            }
        }
    }

    /// Removes `key`, and its names from the notice index.
    fn remove(&self, key: &[u8]) -> bool {
        match self.entries.remove(key) {
            Some((key, entry)) => {
                if entry.is_cluster() {
                    self.lock_index().remove(&key, &entry);
                }
                true
            }
            None => false,
        }
    }

    /// Drops entries past their stale window (the cache's own expiry; run every few seconds).
    /// Returns about how many went (exact when nothing is inserted meanwhile).
    pub fn sweep(&self, now: Instant) -> usize {
        let stale_for = self.limits.load().stale_for;
        let gone = Mutex::new(Vec::new());
        let before = self.entries.len();
        self.entries.retain(|key, entry| {
            let keep = now.saturating_duration_since(entry.stored)
                < Duration::from_secs(u64::from(entry.ttl)) + stale_for;
            if !keep && entry.is_cluster() {
                gone.lock().unwrap_or_else(PoisonError::into_inner).push((key.clone(), Arc::clone(entry)));
            }
            keep
        });
        let removed = before.saturating_sub(self.entries.len());
        let gone = gone.into_inner().unwrap_or_else(PoisonError::into_inner);
        if !gone.is_empty() {
            let mut index = self.lock_index();
            for (key, entry) in &gone {
                index.remove(key, entry);
            }
        }
        removed
    }

    pub fn limits(&self) -> Limits {
        **self.limits.load()
    }

    /// New limits (a config reload): TTL caps apply to answers stored from now on, the stale
    /// window to every lookup and sweep, the byte bound at once. The shard count stays as the
    /// bound at start made it. To shrink, entries go through [`Cache::remove`] first, so the
    /// notice index loses them too; what quick_cache's `set_capacity` then still evicts (a shard
    /// above its share) leaves index names behind, which can only cause an extra eviction.
    pub fn set_limits(&self, limits: Limits) {
        let old = self.limits.swap(Arc::new(limits));
        if limits.max_bytes == old.max_bytes {
            return;
        }
        if limits.max_bytes < self.entries.weight() {
            for (key, _) in self.entries.iter() {
                if self.entries.weight() <= limits.max_bytes {
                    break;
                }
                self.remove(&key);
            }
        }
        self.entries.set_capacity(limits.max_bytes);
    }

    pub fn lookup(&self, key: &[u8], now: Instant) -> Lookup {
        match self.entries.get(key) {
            Some(e) if e.is_fresh(now) => Lookup::Fresh(e),
            Some(e)
                if now.saturating_duration_since(e.stored)
                    < Duration::from_secs(u64::from(e.ttl)) + self.limits.load().stale_for =>
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
        // Bytes after the last record would sit between the records and the OPT record a hit
        // appends, hiding it from the client's parser.
        wire.truncate(layout.end);
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
        let limits = self.limits();
        let ttl = if negative {
            // Without an SOA there is nothing to go on (RFC 2308 section 5): a short time.
            layout.negative_ttl.unwrap_or(5).min(limits.max_negative_ttl)
        } else {
            layout.min_ttl.unwrap_or(0).min(limits.max_ttl)
        }
        .max(limits.min_ttl);
        if ttl == 0 {
            return None;
        }
        wire[..2].fill(0);
        let question_end = u16::try_from(wire::parse_question_end(&wire)?).ok()?;
        let wire_len = u16::try_from(wire.len()).ok()?;
        let plan = nodedns_zone::rotate::plan(&wire).unwrap_or_default();
        let plan_len = u16::try_from(plan.len()).ok()?;
        wire.reserve_exact(layout.ttl_offsets.len() * 2 + plan.len() + 2);
        for at in &layout.ttl_offsets {
            wire.extend_from_slice(&at.to_ne_bytes());
        }
        wire.extend_from_slice(&plan);
        wire.extend_from_slice(&plan_len.to_ne_bytes());
        let names = cluster.then(|| {
            Box::new(NoticeNames {
                owners: layout
                    .owners
                    .into_iter()
                    .chain(extra.iter().cloned())
                    .map(String::into_boxed_str)
                    .collect(),
                qname: wire::key_name(key).into_boxed_str(),
            })
        });
        let entry = Arc::new(Entry {
            data: wire.into_boxed_slice(),
            wire_len,
            question_end,
            ttl,
            stored: now,
            hits: AtomicU32::new(0),
            negative,
            rcode: layout.rcode,
            prefetching: AtomicBool::new(false),
            // The first client gets the order as stored, the next one step on.
            turns: AtomicU8::new(0),
            names,
        });
        // A replaced entry's names leave the index here (replacements are not evictions).
        // The index lock is never held across a store call, whose shard lock it would nest.
        let old = self.entries.peek(key).filter(|old| old.is_cluster());
        if old.is_some() || cluster {
            let mut index = self.lock_index();
            if let Some(old) = &old {
                index.remove(key, old);
            }
            if cluster {
                index.add(key, &entry);
            }
        }
        let mut evicted = Vec::new();
        self.entries.insert_with_lifecycle(key.into(), Arc::clone(&entry), &mut evicted);
        self.evicted(evicted);
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
            self.remove(key);
        }
        keys.len()
    }

    /// Evicts every cluster answer whose question is at or below one of `subtrees`.
    pub fn evict_subtrees(&self, subtrees: &[String]) -> usize {
        let mut n = 0;
        for (key, entry) in self.entries.iter() {
            let Some(names) = &entry.names else { continue };
            let qname = names.qname.as_ref();
            let under = subtrees.iter().any(|s| {
                s == "."
                    || qname == s.as_str()
                    || (qname.ends_with(s.as_str()) && qname[..qname.len() - s.len()].ends_with('.'))
            });
            if under && self.remove(&key) {
                n += 1;
            }
        }
        n
    }

    /// Drops every entry whose question name is in one of `zones` (lower case, absolute),
    /// wherever its answer came from: for a zone the authority starts serving, whose names an
    /// upstream may have answered before. Walks the whole cache; zones appear rarely.
    pub fn evict_under(&self, zones: &[String]) -> usize {
        if zones.is_empty() {
            return 0;
        }
        let mut n = 0;
        for (key, _) in self.entries.iter() {
            let qname = crate::wire::key_name(&key);
            let under = zones.iter().any(|z| {
                z == "."
                    || qname == *z
                    || (qname.ends_with(z.as_str()) && qname[..qname.len() - z.len()].ends_with('.'))
            });
            if under && self.remove(&key) {
                n += 1;
            }
        }
        n
    }

    pub fn entry_count(&self) -> u64 {
        self.entries.len() as u64
    }

    pub fn weighted_size(&self) -> u64 {
        self.entries.weight()
    }
}
