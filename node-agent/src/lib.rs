//! nodedns-agent: the per-node caching resolver with server-side autopath. It answers pods on a
//! link-local address from its cache, sends cluster-domain misses to the authority over gRPC and
//! other names upstream. It links no Kubernetes client: its standalone mode reuses
//! `nodedns-zone` and `nodedns-grpc`.
//!
//! A query passes through, in order (modules land one by one with the agent issue):
//! - [`wire`]: the query's header and question read in place into a reusable cache key, and the
//!   layout of responses (TTL offsets, OPT, owner names) for caching;
//! - [`cache`]: responses stored ready to send, aged on a hit, evicted exactly by change notices.

pub mod cache;
pub mod wire;
