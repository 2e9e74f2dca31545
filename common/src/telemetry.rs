//! Logs and metrics set-up shared by the binaries.

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

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

/// Upper bounds (seconds) of every latency histogram's buckets.
pub const BUCKETS: [f64; 15] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// A Prometheus histogram held in atomics, for the per-answer latency of a hot path: recording is
/// a search over 15 bounds and two relaxed adds. (The exporter's histograms queue every sample
/// with a timestamp until upkeep drains them: about 400 instructions and 24 bytes per answer on a
/// cache-hit path of about 2,500.) [`FastHistogram::render`] writes it in the text format the
/// exporter writes its own, so the series look the same to Prometheus.
pub struct FastHistogram {
    /// `proto="udp"`: the series' labels, rendered.
    labels: String,
    /// Per bucket (not cumulative), the last for values above every bound.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_nanos: AtomicU64,
}

impl FastHistogram {
    /// A histogram whose series carry `labels` (`[("proto", "udp")]`).
    pub fn new(labels: &[(&str, &str)]) -> Self {
        let labels = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect::<Vec<_>>().join(",");
        Self { labels, counts: std::array::from_fn(|_| AtomicU64::new(0)), sum_nanos: AtomicU64::new(0) }
    }

    pub fn record(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        let seconds = took.as_secs_f64();
        let bucket = BUCKETS.partition_point(|bound| *bound < seconds);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// Appends this histogram's `_bucket`, `_sum` and `_count` lines for metric `name`.
    pub fn render(&self, name: &str, out: &mut String) {
        let sep = if self.labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (bound, count) in BUCKETS.iter().zip(&self.counts) {
            cumulative += count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{}{sep}le=\"{bound}\"}} {cumulative}", self.labels);
        }
        cumulative += self.counts[BUCKETS.len()].load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{}{sep}le=\"+Inf\"}} {cumulative}", self.labels);
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if self.labels.is_empty() { String::new() } else { format!("{{{}}}", self.labels) };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {cumulative}");
    }
}

/// Appends the `# HELP`/`# TYPE` header and every series of histogram `name`.
pub fn render_histograms(name: &str, help: &str, series: &[&FastHistogram], out: &mut String) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for h in series {
        h.render(name, out);
    }
    out.push('\n');
}

/// Installs the process-wide Prometheus recorder once and returns its handle. `describe` runs
/// once, after the recorder is installed, to register the binary's help texts.
pub fn prometheus(describe: fn()) -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
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
        crate::error_log::describe_metrics();
        build_info();
        handle
    })
}

/// The build's version, compiler and commit (`NODEDNS_COMMIT` at build time, else `unknown`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
pub const RUSTC: &str = env!("NODEDNS_RUSTC_VERSION");
pub const COMMIT: &str = match option_env!("NODEDNS_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

/// `nodedns_build_info{version,rustc,commit} 1`, as CoreDNS's `coredns_build_info`: which build
/// runs where, on a dashboard.
fn build_info() {
    metrics::describe_gauge!(
        "nodedns_build_info",
        "1, labelled with the running build's version, compiler and commit."
    );
    metrics::gauge!("nodedns_build_info", "version" => VERSION, "rustc" => RUSTC, "commit" => COMMIT)
        .set(1.0);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fast_histogram_renders_cumulative_buckets_sum_and_count() {
        let h = FastHistogram::new(&[("proto", "udp")]);
        h.record(Duration::from_micros(30)); // <= 0.00005
        h.record(Duration::from_micros(50)); // exactly on a bound: that bucket (le)
        h.record(Duration::from_millis(3)); // <= 0.005
        h.record(Duration::from_secs(9)); // above every bound
        let mut out = String::new();
        render_histograms("x_seconds", "Test.", &[&h], &mut out);
        assert!(out.starts_with("# HELP x_seconds Test.\n# TYPE x_seconds histogram\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{proto=\"udp\",le=\"0.00005\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{proto=\"udp\",le=\"0.0025\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{proto=\"udp\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{proto=\"udp\",le=\"2.5\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{proto=\"udp\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_seconds_count{proto=\"udp\"} 4\n"), "{out}");
        let sum: f64 = out
            .lines()
            .find_map(|l| l.strip_prefix("x_seconds_sum{proto=\"udp\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        assert!((sum - 9.00308).abs() < 1e-9, "{sum}");
    }
}
