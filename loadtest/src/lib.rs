//! nodedns-load: tools to measure nodedns and its peers: the load generator ([`generator`], its
//! own crate `nodedns-loadgen`), a generator of synthetic clusters, benchmarks of the authority
//! and the agent, and a one-shot query command.
//!
//! - [`cluster_gen`]: synthetic cluster YAML in the shape `kubectl get -o yaml` prints, plus a dnsperf
//!   query file over its names.
//! - [`kube_bench`]: the authority's API source at scale (sync time, memory, change latency).
//! - [`fanout_bench`]: many simulated agents subscribed over gRPC: memory and notice fan-out time.
//! - [`watch_scale`]: API watch connections and bytes/s of nodedns vs per-node CoreDNS as nodes grow.
//! - [`agent_memory`]: the agent's RSS holding N cached answers.
//! - [`search_path`]: a pod's `ndots:5` search-path sequence through the agent, with and without
//!   autopath: client round trips per resolved name.

pub mod agent_memory;
pub mod cluster_gen;
pub mod fanout_bench;
pub use nodedns_loadgen as generator;
pub mod kube_bench;
pub mod search_path;
pub mod watch_scale;
