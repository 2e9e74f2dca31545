//! nodedns-proto: the gRPC contract (package `nodedns.v1`, `nodedns/v1/authority.proto`) between
//! node agents and the authority, compiled in pure Rust (protox + tonic-prost-build). The proto
//! file is the documentation of every message.

pub mod v1 {
    tonic::include_proto!("nodedns.v1");
}

/// The response header carrying the Resolve in-flight limit per stream.
pub const MAX_IN_FLIGHT_HEADER: &str = "x-nodedns-max-in-flight";
