//! What to ask: the name sets, the simulated pods and the mix of operations. Sans-IO: an
//! [`Op`] says which questions to send, in which rounds, from which source; the engine sends them.
//!
//! One operation is one name a client looks up:
//! - `hit`: a name from the hit set (Zipf popularity), asked once; after warm-up a cache hit;
//! - `cluster-miss`: a unique name in a namespace of the cluster (`m<n>-<tag>.<ns>.svc.<domain>`),
//!   never cached, so a caching resolver asks its authority every time (NXDOMAIN);
//! - `external`: a unique name under `--external-zone`, never cached, so the upstream is asked;
//! - `search-path`: a short name as a pod's stub resolver looks it up with `ndots:5`: each search
//!   candidate in turn, A and AAAA together, from the pod's own address, until one has records.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, bail};
use rand::Rng;
use rand::rngs::SmallRng;
use rand_distr::{Distribution, Zipf};

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;

/// The kinds of operation, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Hit,
    ClusterMiss,
    External,
    SearchPath,
}

impl Kind {
    pub const ALL: [Kind; 4] = [Kind::Hit, Kind::ClusterMiss, Kind::External, Kind::SearchPath];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Hit => "hit",
            Kind::ClusterMiss => "cluster-miss",
            Kind::External => "external",
            Kind::SearchPath => "search-path",
        }
    }

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// How a pod's stub resolver walks its search list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StubResolver {
    /// glibc `res_search`: a name with at least `ndots` dots is tried as given first, then each
    /// search domain; NXDOMAIN, NODATA and SERVFAIL move on to the next candidate, other errors stop.
    Glibc,
    /// musl: a name with at least `ndots` dots is tried as given only (no search); otherwise each
    /// search domain, then the name; NXDOMAIN and NODATA move on, SERVFAIL or any other error stops.
    Musl,
}

impl StubResolver {
    /// The names tried for `name`, in order.
    pub fn candidates(self, name: &str, search: &[String], ndots: u8) -> Vec<String> {
        match self {
            StubResolver::Glibc => glibc_candidates(name, search, ndots),
            StubResolver::Musl => {
                let dots = name.bytes().filter(|b| *b == b'.').count();
                if name.ends_with('.') || dots >= usize::from(ndots) {
                    return vec![format!("{}.", name.trim_end_matches('.'))];
                }
                let mut out: Vec<String> =
                    search.iter().map(|s| format!("{name}.{}.", s.trim_end_matches('.'))).collect();
                out.push(format!("{name}."));
                out
            }
        }
    }

    /// Whether a round whose answers carried no records, with this response code, moves on to
    /// the next candidate (true) or ends the lookup (false).
    pub fn continues_after(self, rcode: u8) -> bool {
        matches!((self, rcode), (_, 0 | 3) | (StubResolver::Glibc, 2))
    }
}

/// The names a glibc resolver tries for `name`, in order (resolv.conf(5), `res_search`): the name
/// as given first when it has at least `ndots` dots, then each search domain, then the name as
/// given if not tried yet. An absolute name (trailing dot) is tried alone.
fn glibc_candidates(name: &str, search: &[String], ndots: u8) -> Vec<String> {
    if let Some(bare) = name.strip_suffix('.') {
        return vec![format!("{bare}.")];
    }
    let dots = name.bytes().filter(|b| *b == b'.').count();
    let as_is = format!("{name}.");
    let mut out = Vec::with_capacity(search.len() + 1);
    if dots >= usize::from(ndots) {
        out.push(as_is.clone());
    }
    out.extend(search.iter().map(|s| format!("{name}.{}.", s.trim_end_matches('.'))));
    if dots < usize::from(ndots) {
        out.push(as_is);
    }
    out
}

/// A simulated pod: the address it sends from and its resolv.conf search list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    pub ip: IpAddr,
    pub search: Vec<String>,
}

/// One question on the wire: encoded name plus type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    pub qname: Arc<[u8]>,
    pub qtype: u16,
}

/// One lookup the engine carries out.
#[derive(Debug, Clone)]
pub struct Op {
    pub kind: Kind,
    /// Index into the sources ([`Workload::sources`]).
    pub source: usize,
    pub steps: Steps,
}

#[derive(Debug, Clone)]
pub enum Steps {
    /// One question, one round.
    Single(Question),
    /// Search candidates (encoded names); each round asks A and AAAA of one candidate.
    Search { candidates: Vec<Arc<[u8]>>, resolver: StubResolver },
}

impl Op {
    /// The questions of round `round` (0-based), or None when there is no such round.
    pub fn round(&self, round: usize) -> Option<RoundQuestions<'_>> {
        match &self.steps {
            Steps::Single(q) if round == 0 => Some(RoundQuestions::One(q)),
            Steps::Single(_) => None,
            Steps::Search { candidates, .. } => candidates.get(round).map(RoundQuestions::Pair),
        }
    }

    pub fn resolver(&self) -> StubResolver {
        match &self.steps {
            Steps::Search { resolver, .. } => *resolver,
            Steps::Single(_) => StubResolver::Glibc,
        }
    }
}

pub enum RoundQuestions<'a> {
    One(&'a Question),
    /// The same name as A and AAAA.
    Pair(&'a Arc<[u8]>),
}

/// Encodes a dotted name into DNS wire format (uncompressed labels), lower-casing nothing.
pub fn encode_name(name: &str) -> anyhow::Result<Arc<[u8]>> {
    let trimmed = name.trim_end_matches('.');
    let mut out = Vec::with_capacity(trimmed.len() + 2);
    if !trimmed.is_empty() {
        for label in trimmed.split('.') {
            if label.is_empty() || label.len() > 63 {
                bail!("bad name {name:?}: empty label or label over 63 bytes");
            }
            out.push(label.len() as u8);
            out.extend_from_slice(label.as_bytes());
        }
    }
    out.push(0);
    if out.len() > 255 {
        bail!("bad name {name:?}: over 255 bytes on the wire");
    }
    Ok(out.into())
}

/// Parses a record type name as dnsperf query files write it.
pub fn parse_qtype(s: &str) -> anyhow::Result<u16> {
    use std::str::FromStr;
    let t = hickory_proto::rr::RecordType::from_str(&s.to_ascii_uppercase())
        .map_err(|e| anyhow::anyhow!("unknown record type {s:?}: {e}"))?;
    Ok(u16::from(t))
}

/// Weights of the operation kinds (`hit=90,cluster-miss=2,external=3,search-path=5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mix(pub [u32; 4]);

impl Mix {
    pub fn only(kind: Kind) -> Mix {
        let mut w = [0; 4];
        w[kind.index()] = 1;
        Mix(w)
    }

    pub fn parse(s: &str) -> anyhow::Result<Mix> {
        let mut w = [0u32; 4];
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) =
                part.split_once('=').with_context(|| format!("--mix: {part:?} is not KIND=WEIGHT"))?;
            let kind = Kind::parse(k.trim()).with_context(|| {
                format!("--mix: unknown kind {k:?} (hit, cluster-miss, external, search-path)")
            })?;
            w[kind.index()] =
                v.trim().parse().with_context(|| format!("--mix: weight of {k} is not a number"))?;
        }
        if w.iter().all(|x| *x == 0) {
            bail!("--mix: every weight is zero");
        }
        Ok(Mix(w))
    }

    pub fn includes(&self, kind: Kind) -> bool {
        self.0[kind.index()] > 0
    }

    fn pick(&self, rng: &mut SmallRng) -> Kind {
        let total: u32 = self.0.iter().sum();
        let mut x = rng.random_range(0..total);
        for kind in Kind::ALL {
            let w = self.0[kind.index()];
            if x < w {
                return kind;
            }
            x -= w;
        }
        Kind::Hit
    }
}

/// A set of items drawn with Zipf popularity (exponent 0: uniform). Item 0 is the most popular.
#[derive(Debug, Clone)]
pub struct Popularity {
    len: usize,
    zipf: Option<Zipf<f64>>,
}

impl Popularity {
    pub fn new(len: usize, exponent: f64) -> anyhow::Result<Self> {
        if len == 0 || exponent <= 0.0 {
            return Ok(Self { len, zipf: None });
        }
        let zipf = Zipf::new(len as f64, exponent).map_err(|e| anyhow::anyhow!("--zipf {exponent}: {e}"))?;
        Ok(Self { len, zipf: Some(zipf) })
    }

    pub fn sample(&self, rng: &mut SmallRng) -> usize {
        match &self.zipf {
            // Zipf samples are 1..=len as floats.
            Some(z) => (z.sample(rng) as usize).saturating_sub(1).min(self.len.saturating_sub(1)),
            None => rng.random_range(0..self.len.max(1)),
        }
    }
}

/// Everything a worker needs to make operations; shared read-only between workers.
#[derive(Debug)]
pub struct Workload {
    pub mix: Mix,
    pub hits: Vec<Question>,
    pub hit_popularity: Popularity,
    pub namespaces: Vec<String>,
    pub cluster_domain: String,
    pub external_zone: String,
    pub pods: Vec<Pod>,
    pub search_names: Vec<String>,
    pub search_popularity: Popularity,
    pub resolver: StubResolver,
    pub ndots: u8,
    /// Addresses non-pod operations are sent from (None: the kernel picks).
    pub plain_sources: usize,
    /// Makes this run's unique names differ from every earlier run's.
    pub tag: u32,
}

impl Workload {
    /// Source sockets a worker opens: `plain_sources` unbound-address ones, then one per pod.
    /// Pods' sockets only when pods send: every socket is polled on every wake-up, and a hundred
    /// idle ones would cost the generator more than the server's answer.
    pub fn sources(&self) -> Vec<Option<IpAddr>> {
        let mut v: Vec<Option<IpAddr>> = vec![None; self.plain_sources.max(1)];
        if self.mix.includes(Kind::SearchPath) {
            v.extend(self.pods.iter().map(|p| Some(p.ip)));
        }
        v
    }

    /// The next operation for worker `worker` (its `seq`-th).
    pub fn next_op(&self, rng: &mut SmallRng, worker: usize, seq: u64) -> anyhow::Result<Op> {
        let kind = self.mix.pick(rng);
        self.op_of(kind, rng, worker, seq)
    }

    pub fn op_of(&self, kind: Kind, rng: &mut SmallRng, worker: usize, seq: u64) -> anyhow::Result<Op> {
        let plain = rng.random_range(0..self.plain_sources.max(1));
        Ok(match kind {
            Kind::Hit => {
                let q = self.hits[self.hit_popularity.sample(rng)].clone();
                Op { kind, source: plain, steps: Steps::Single(q) }
            }
            Kind::ClusterMiss => {
                let ns = &self.namespaces[rng.random_range(0..self.namespaces.len())];
                let name = format!("m{seq}-{worker}-{:x}.{ns}.svc.{}", self.tag, self.cluster_domain);
                Op {
                    kind,
                    source: plain,
                    steps: Steps::Single(Question { qname: encode_name(&name)?, qtype: TYPE_A }),
                }
            }
            Kind::External => {
                let name = format!("x{seq}-{worker}-{:x}.{}", self.tag, self.external_zone);
                Op {
                    kind,
                    source: plain,
                    steps: Steps::Single(Question { qname: encode_name(&name)?, qtype: TYPE_A }),
                }
            }
            Kind::SearchPath => {
                let p = rng.random_range(0..self.pods.len());
                let name = &self.search_names[self.search_popularity.sample(rng)];
                self.search_op(p, name)?
            }
        })
    }

    /// Pod `p` looking up `name` through its search list.
    pub fn search_op(&self, p: usize, name: &str) -> anyhow::Result<Op> {
        let pod = &self.pods[p];
        let candidates = self
            .resolver
            .candidates(name, &pod.search, self.ndots)
            .iter()
            .map(|c| encode_name(c))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Op {
            kind: Kind::SearchPath,
            source: self.plain_sources.max(1) + p,
            steps: Steps::Search { candidates, resolver: self.resolver },
        })
    }

    /// Every operation that warms a cache for this workload: each hit name once and each search
    /// name from each pod once, at most `cap` in all.
    pub fn warm_ops(&self, cap: usize) -> anyhow::Result<Vec<Op>> {
        let mut out = Vec::new();
        if self.mix.includes(Kind::Hit) {
            for q in self.hits.iter().take(cap) {
                out.push(Op { kind: Kind::Hit, source: 0, steps: Steps::Single(q.clone()) });
            }
        }
        if self.mix.includes(Kind::SearchPath) {
            'outer: for name in &self.search_names {
                for p in 0..self.pods.len() {
                    if out.len() >= cap {
                        break 'outer;
                    }
                    out.push(self.search_op(p, name)?);
                }
            }
        }
        Ok(out)
    }
}

/// Reads a dnsperf-style query file: `name TYPE` per line (TYPE defaults to A), `#` comments.
pub fn read_names_file(path: &Path) -> anyhow::Result<Vec<(String, u16)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--names: reading {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let name = parts.next().unwrap_or_default();
        let qtype = match parts.next() {
            Some(t) => parse_qtype(t).with_context(|| format!("--names: {}:{}", path.display(), n + 1))?,
            None => TYPE_A,
        };
        encode_name(name).with_context(|| format!("--names: {}:{}", path.display(), n + 1))?;
        out.push((name.to_owned(), qtype));
    }
    Ok(out)
}

/// What a cluster file gives a workload: service names, namespaces and the pods on one node.
#[derive(Debug, Default)]
pub struct ClusterNames {
    /// `svc.ns.svc.<domain>` of every Service.
    pub service_fqdns: Vec<String>,
    /// `svc.ns`: what a pod in another namespace types.
    pub service_short: Vec<String>,
    pub namespaces: Vec<String>,
    /// Pods on the node (running, with an address): address and namespace.
    pub pods: Vec<(IpAddr, String)>,
}

pub fn read_cluster(path: &Path, domain: &str, node: Option<&str>) -> anyhow::Result<ClusterNames> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--cluster: reading {}", path.display()))?;
    let parsed =
        nodedns_zone::file::parse_cluster(&text).with_context(|| format!("--cluster: {}", path.display()))?;
    let state = nodedns_zone::model::ClusterState::from_objects(parsed.objects);
    let mut out =
        ClusterNames { namespaces: state.namespaces.keys().cloned().collect(), ..Default::default() };
    for s in state.services.values() {
        out.service_fqdns.push(format!("{}.{}.svc.{domain}", s.name, s.namespace));
        out.service_short.push(format!("{}.{}", s.name, s.namespace));
    }
    if let Some(node) = node {
        for p in state.pods.values() {
            let local = p.node_name.as_deref() == Some(node) && p.is_present() && !p.host_network;
            if let (true, Some(ip)) = (local, p.ips.first()) {
                out.pods.push((*ip, p.namespace.clone()));
            }
        }
    }
    if out.namespaces.is_empty() {
        out.namespaces = state.services.keys().map(|(ns, _)| ns.clone()).collect();
        out.namespaces.dedup();
    }
    Ok(out)
}

/// A pod's search list as kubelet writes it for `dnsPolicy: ClusterFirst`, plus the node's own.
pub fn pod_search(namespace: &str, domain: &str, node_search: &[String]) -> Vec<String> {
    let mut v = vec![format!("{namespace}.svc.{domain}"), format!("svc.{domain}"), domain.to_owned()];
    v.extend(node_search.iter().cloned());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn glibc_and_musl_walk_the_search_list_differently() {
        let search = pod_search("ns1", "cluster.local", &[]);
        let glibc = StubResolver::Glibc.candidates("www.example.com", &search, 5);
        assert_eq!(
            glibc,
            [
                "www.example.com.ns1.svc.cluster.local.",
                "www.example.com.svc.cluster.local.",
                "www.example.com.cluster.local.",
                "www.example.com."
            ]
        );
        assert_eq!(StubResolver::Musl.candidates("www.example.com", &search, 5), glibc);
        // With ndots:1 glibc tries the name first and then still walks the list; musl does not.
        let glibc = StubResolver::Glibc.candidates("www.example.com", &search, 1);
        assert_eq!(glibc.len(), 4);
        assert_eq!(glibc[0], "www.example.com.");
        assert_eq!(StubResolver::Musl.candidates("www.example.com", &search, 1), ["www.example.com."]);
        assert!(StubResolver::Glibc.continues_after(2));
        assert!(!StubResolver::Musl.continues_after(2));
        assert!(!StubResolver::Glibc.continues_after(5));
    }

    #[test]
    fn mix_parses_weights_and_names_the_bad_part() {
        assert_eq!(Mix::parse("hit=90, search-path=10").unwrap().0, [90, 0, 0, 10]);
        let err = Mix::parse("hit=90,bogus=1").unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(Mix::parse("hit=0").is_err());
    }

    #[test]
    fn zipf_popularity_prefers_the_first_items_and_uniform_does_not() {
        let mut rng = SmallRng::seed_from_u64(7);
        let zipf = Popularity::new(1000, 1.0).unwrap();
        let head = (0..10_000).filter(|_| zipf.sample(&mut rng) < 10).count();
        // Under Zipf(1) over 1000 items the top 1% draws about 39% of the picks.
        assert!(head > 3000, "{head}");
        let uniform = Popularity::new(1000, 0.0).unwrap();
        let head = (0..10_000).filter(|_| uniform.sample(&mut rng) < 10).count();
        assert!(head < 300, "{head}");
        assert!((0..1000).all(|_| zipf.sample(&mut rng) < 1000));
    }

    #[test]
    fn names_encode_to_wire_and_bad_ones_are_refused() {
        assert_eq!(&*encode_name("a.bc.").unwrap(), b"\x01a\x02bc\x00");
        assert_eq!(&*encode_name(".").unwrap(), b"\x00");
        assert!(encode_name("a..b").is_err());
        assert!(encode_name(&"x".repeat(64)).is_err());
    }
}
