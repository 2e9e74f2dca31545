//! nodedns-common: what the nodedns binaries share at their edges, so each deployable keeps only
//! what is its own. No DNS, no Kubernetes.
//!
//! - [`config`]: the error every setting problem becomes (naming the key), durations, the YAML
//!   file with unknown keys refused, the log format;
//! - [`telemetry`]: logging set-up and the process-wide Prometheus recorder;
//! - [`reload`]: the config file re-read when its content changes or on SIGHUP, with the log
//!   lines, the metric and a status both binaries share;
//! - [`process`]: flag errors as one line, shutdown on SIGTERM/SIGINT, reload on SIGHUP, the
//!   admin listener.

pub mod config;
pub mod process;
pub mod reload;
pub mod telemetry;
