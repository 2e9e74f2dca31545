//! nodedns-load: tools to measure nodedns and its peers. Today: a generator of synthetic clusters
//! (with the query list that exercises them) for benchmarks of the authority, and a one-shot
//! query command. The load generator proper (closed/open loop, workloads, HDR latency) comes with
//! the loadtest issue.
//!
//! - [`cluster_gen`]: synthetic cluster YAML in the shape `kubectl get -o yaml` prints, plus a dnsperf
//!   query file over its names.
//! - [`kube_bench`]: the authority's API source at scale (sync time, memory, change latency).
//! - [`fanout_bench`]: many simulated agents subscribed over gRPC: memory and notice fan-out time.

pub mod cluster_gen;
pub mod fanout_bench;
pub mod kube_bench;
