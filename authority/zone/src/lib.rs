//! nodedns-zone: the cluster model, the cluster-file source and the sans-IO zone engine that answer
//! the Kubernetes DNS specification (schema 1.1.0). Shared by the authority and by the agent's
//! standalone mode; it links no Kubernetes client and opens no sockets.
//!
//! A query passes through, in order:
//! - [`model`]: the compact cluster (Namespaces, Services, EndpointSlices, Pods; DNS fields only);
//! - [`file`]: cluster-file text (`kubectl get -o yaml`) into model objects, errors naming the field;
//! - [`file_source`]: loads that file into the store and reloads it when it changes;
//! - [`custom`]: custom records (`--custom-records`, zone-file text), checked, errors naming the line;
//! - [`store`]: holds the model and swaps in a freshly built index on every change;
//! - [`feed`]: per-node pod tables and the change log node agents follow (Subscribe);
//! - [`index`]: every record of the cluster, reverse and custom zones, as trees of labels;
//! - [`engine`]: a question against the index, the records of the answer out;
//! - [`handler`]: wire bytes in, wire bytes out (header checks, rcodes, EDNS0, TC, AXFR);
//! - [`rotate`]: round-robin order of a finished answer's RRsets, in place (the agent's too).

pub mod custom;
pub mod engine;
pub mod feed;
pub mod file;
pub mod file_source;
pub mod handler;
pub mod index;
pub mod model;
pub mod rotate;
pub mod store;

pub use custom::{CustomError, CustomRecords, parse_custom};
pub use engine::Answer;
pub use handler::{Context, Served, Transport, serve};
pub use index::{PodsMode, ZoneConfig, ZoneIndex, ZoneKind};
pub use store::ClusterStore;
