//! nodedns-common: what the nodedns binaries share at their edges, so each deployable keeps only
//! what is its own. No DNS, no Kubernetes.
//!
//! - [`config`]: the error every setting problem becomes (naming the key), durations, the YAML
//!   file with unknown keys refused, the log format;
//! - [`telemetry`]: logging set-up, the process-wide Prometheus recorder, `nodedns_build_info`;
//! - [`error_log`]: the rate limit on log lines of errors clients see;
//! - [`reload`]: the config file re-read when its content changes or on SIGHUP, with the log
//!   lines, the metric and a status both binaries share;
//! - [`process`]: flag errors as one line, shutdown on SIGTERM/SIGINT, reload on SIGHUP, the
//!   admin listener;
//! - [`tls`]: the gRPC link's TLS files read with errors naming the flag, and the authority's
//!   certificate re-read when its files change.

pub mod config;
pub mod error_log;
pub mod process;
pub mod reload;
pub mod telemetry;
pub mod tls;
