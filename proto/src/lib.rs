//! nodedns-proto: the gRPC contract (package `nodedns.v1`) between node agents and the authority,
//! compiled in pure Rust. It is defined by the gRPC issue; until then this crate is empty and no
//! other crate uses it.
