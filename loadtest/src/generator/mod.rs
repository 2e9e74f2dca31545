//! `nodedns-load run`: the DNS load generator. Closed loop (N names in flight) or open loop (a
//! fixed rate of names per second), over UDP or TCP, always bounded by a duration and optionally a
//! count. Workloads follow what pods send: cache hits over a name set (Zipf popularity), unique
//! cluster misses, unique external names, and the full glibc/musl search-path sequence of a pod
//! with `ndots:5`, sent from the pod's own address so a server doing autopath can recognise it.

use clap::Args;

/// Flags of `nodedns-load run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Resolver to drive, e.g. 127.0.0.1:53.
    #[arg(long)]
    pub server: std::net::SocketAddr,
}

/// Runs the load generator and prints its report.
pub fn run(args: RunArgs) -> anyhow::Result<()> {
    anyhow::bail!("not built yet: {args:?}")
}
