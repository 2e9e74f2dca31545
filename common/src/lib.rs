//! nodedns-common: what the nodedns binaries share at their edges, so each deployable keeps only
//! what is its own. No DNS, no Kubernetes.
//!
//! - [`config`]: the error every setting problem becomes (naming the key), durations, the YAML
//!   file with unknown keys refused, the log format;
//! - [`telemetry`]: logging set-up and the process-wide Prometheus recorder;
//! - [`process`]: flag errors as one line, shutdown on SIGTERM/SIGINT, the admin listener.

pub mod config;
pub mod process;
pub mod telemetry;
