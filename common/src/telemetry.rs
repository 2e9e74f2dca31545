//! Logs and metrics set-up shared by the binaries.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::config::LogFormat;

/// Logs to stderr (what `kubectl logs` shows), filtered by `RUST_LOG` (default `info`).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// Installs the process-wide Prometheus recorder once and returns its handle. `describe` runs
/// once, after the recorder is installed, to register the binary's help texts.
pub fn prometheus(describe: fn()) -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let buckets = [
            0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
            2.5,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .expect("static buckets are valid")
            .build_recorder();
        let handle = recorder.handle();
        // Histogram samples pile up in the recorder until upkeep drains them into buckets
        // (16 bytes per sample otherwise). `install()` would spawn this on a runtime; a plain
        // thread works whichever runtime, if any, the caller has.
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the metrics upkeep thread; histograms will grow");
        }
        // Another recorder may already be installed (several servers in one test process): then
        // this handle renders an empty registry, which only tests can observe.
        let _ = metrics::set_global_recorder(recorder);
        describe();
        handle
    })
}

/// Help texts of the metrics every nodedns DNS server exports under the same names.
pub fn describe_dns_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "coredns_dns_requests_total",
        "DNS requests by transport, address family and query type."
    );
    describe_counter!("coredns_dns_responses_total", "DNS responses by response code.");
    describe_histogram!("coredns_dns_request_duration_seconds", "Time to answer a DNS request.");
    describe_counter!("nodedns_dns_dropped_total", "Packets dropped without an answer, by reason.");
    describe_gauge!("nodedns_tcp_connections", "Open client TCP connections.");
    describe_counter!(
        "nodedns_tcp_rejected_total",
        "TCP connections closed at accept because the cap was reached."
    );
}
