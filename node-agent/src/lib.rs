//! nodedns-agent: the per-node caching resolver with server-side autopath. It is built by the
//! agent issue on top of `nodedns-zone` (for its standalone mode) and the gRPC contract; until
//! then this crate is empty.
