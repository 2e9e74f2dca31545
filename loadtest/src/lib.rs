//! nodedns-load: tools to measure nodedns and its peers. Today: a generator of synthetic clusters
//! (with the query list that exercises them) for benchmarks of the authority, and a one-shot
//! query command. The load generator proper (closed/open loop, workloads, HDR latency) comes with
//! the loadtest issue.
//!
//! - [`cluster_gen`]: synthetic cluster YAML in the shape `kubectl get -o yaml` prints, plus a dnsperf
//!   query file over its names.

pub mod cluster_gen;
pub mod kube_bench;
