//! The results of a run: a serialisable [`Report`] (the JSON output), the table printed at the
//! end, and an optional SVG plot of the latency percentile distribution.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::engine::{WorkerStats, kinds_seen};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |ns: u64| ns as f64 / 1e6;
        if h.is_empty() {
            return Self { p50: 0.0, p90: 0.0, p99: 0.0, p99_9: 0.0, max: 0.0, mean: 0.0 };
        }
        Self {
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1e6,
        }
    }
}

/// Names looked up: how many, how many resolved, client round trips and latency per name.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Names {
    pub started: u64,
    pub resolved: u64,
    pub unresolved: u64,
    pub rounds_mean: f64,
    pub latency_ms: Latency,
}

/// What `nodedns-load run` measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub label: Option<String>,
    pub server: String,
    pub transport: &'static str,
    pub mode: &'static str,
    /// Open loop: names started per second (target).
    pub rate: Option<f64>,
    /// Closed loop: names in flight.
    pub outstanding: Option<usize>,
    pub workload: String,
    pub threads: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub answered: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    /// Answers received per second within the run's window.
    pub qps: f64,
    /// Names (operations) finished per second within the window.
    pub names_per_s: f64,
    pub truncated: u64,
    pub unexpected: u64,
    pub send_errors: u64,
    pub reconnects: u64,
    pub rcodes: std::collections::BTreeMap<String, u64>,
    /// Per query, from its (scheduled) send to its answer.
    pub latency_ms: Latency,
    pub names: Names,
    /// Names by round trips: index = rounds (last: that many or more).
    pub rounds_histogram: Vec<u64>,
    pub kinds: std::collections::BTreeMap<String, Names>,
    /// Open loop: the most an operation started after its scheduled time (the generator's own lag).
    pub max_start_lag_ms: f64,
    #[serde(skip)]
    pub query_histogram: Histogram<u64>,
    #[serde(skip)]
    pub name_histogram: Histogram<u64>,
}

pub const RCODE_NAMES: [&str; 16] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN", "YXRRSET", "NXRRSET",
    "NOTAUTH", "NOTZONE", "RCODE11", "RCODE12", "RCODE13", "RCODE14", "RCODE15",
];

fn names_of(started: u64, resolved: u64, unresolved: u64, rounds: u64, h: &Histogram<u64>) -> Names {
    let done = resolved + unresolved;
    Names {
        started,
        resolved,
        unresolved,
        rounds_mean: if done == 0 { 0.0 } else { rounds as f64 / done as f64 },
        latency_ms: Latency::of(h),
    }
}

/// How the run was set up, for the report's header fields.
pub struct Header {
    pub label: Option<String>,
    pub server: String,
    pub tcp: bool,
    pub rate: Option<f64>,
    pub outstanding: Option<usize>,
    pub workload: String,
    pub threads: usize,
}

impl Report {
    pub fn new(h: Header, s: &WorkerStats) -> Self {
        let window = s.window.as_secs_f64().max(1e-9);
        let mut all = super::engine::new_histogram();
        let (mut started, mut resolved, mut unresolved, mut rounds) = (0, 0, 0, 0);
        let mut kinds = std::collections::BTreeMap::new();
        for (kind, k) in kinds_seen(s) {
            let _ = all.add(&k.latency);
            started += k.started;
            resolved += k.resolved;
            unresolved += k.unresolved;
            rounds += k.rounds;
            kinds.insert(
                kind.as_str().to_owned(),
                names_of(k.started, k.resolved, k.unresolved, k.rounds, &k.latency),
            );
        }
        let rcodes = s
            .rcodes
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (RCODE_NAMES[i].to_owned(), *n))
            .collect();
        let names = names_of(started, resolved, unresolved, rounds, &all);
        Report {
            label: h.label,
            server: h.server,
            transport: if h.tcp { "tcp" } else { "udp" },
            mode: if h.rate.is_some() { "open" } else { "closed" },
            rate: h.rate,
            outstanding: h.outstanding,
            workload: h.workload,
            threads: h.threads,
            duration_s: window,
            sent: s.sent,
            answered: s.answered,
            lost: s.lost,
            loss_ratio: if s.sent == 0 { 0.0 } else { s.lost as f64 / s.sent as f64 },
            qps: s.answered_in_window as f64 / window,
            names_per_s: (resolved + unresolved) as f64 / window,
            truncated: s.truncated,
            unexpected: s.unexpected,
            send_errors: s.send_errors,
            reconnects: s.reconnects,
            rcodes,
            latency_ms: Latency::of(&s.query_latency),
            names,
            rounds_histogram: s.rounds_histogram.to_vec(),
            kinds,
            max_start_lag_ms: s.max_lag.as_secs_f64() * 1e3,
            query_histogram: s.query_latency.clone(),
            name_histogram: all,
        }
    }

    /// The human-readable summary.
    pub fn table(&self) -> String {
        let mut t = String::new();
        let pace = match (self.rate, self.outstanding) {
            (Some(r), _) => format!("open loop at {r:.0} names/s"),
            (None, Some(n)) => format!("closed loop, {n} names in flight"),
            (None, None) => "closed loop".to_owned(),
        };
        let _ = writeln!(
            t,
            "{}{} over {}, {pace}, workload {}, {:.1} s, {} thread(s)",
            self.label.as_deref().map(|l| format!("[{l}] ")).unwrap_or_default(),
            self.server,
            self.transport,
            self.workload,
            self.duration_s,
            self.threads
        );
        let _ = writeln!(
            t,
            "queries   sent {}  answered {}  lost {} ({:.3}%)  {:.0} answers/s",
            self.sent,
            self.answered,
            self.lost,
            self.loss_ratio * 100.0,
            self.qps
        );
        let rc: Vec<String> = self.rcodes.iter().map(|(k, v)| format!("{k} {v}")).collect();
        let _ = writeln!(t, "rcodes    {}", if rc.is_empty() { "-".to_owned() } else { rc.join("  ") });
        let mut extra = Vec::new();
        for (what, n) in [
            ("truncated", self.truncated),
            ("unexpected answers", self.unexpected),
            ("send errors", self.send_errors),
            ("reconnects", self.reconnects),
        ] {
            if n > 0 {
                extra.push(format!("{what} {n}"));
            }
        }
        if self.rate.is_some() {
            extra.push(format!("max start lag {:.3} ms", self.max_start_lag_ms));
        }
        if !extra.is_empty() {
            let _ = writeln!(t, "notes     {}", extra.join("  "));
        }
        let l = &self.latency_ms;
        let _ = writeln!(
            t,
            "latency   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3} ms (per query)",
            l.p50, l.p90, l.p99, l.p99_9, l.max, l.mean
        );
        let _ = writeln!(
            t,
            "{:<13} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>9} {:>9}",
            "names", "started", "resolved", "unresolved", "rounds", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        let rows = self.kinds.iter().map(|(k, n)| (k.as_str(), n));
        let all = std::iter::once(("all", &self.names));
        for (kind, n) in rows.chain(if self.kinds.len() > 1 { Some(all) } else { None }.into_iter().flatten())
        {
            let _ = writeln!(
                t,
                "{:<13} {:>10} {:>10} {:>10} {:>8.2} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                kind,
                n.started,
                n.resolved,
                n.unresolved,
                n.rounds_mean,
                n.latency_ms.p50,
                n.latency_ms.p99,
                n.latency_ms.p99_9,
                n.latency_ms.max
            );
        }
        t
    }

    /// The latency percentile distribution (per query and per name) as an SVG line plot: x is
    /// the percentile on the usual log scale of 1/(1-p), y the latency in milliseconds.
    pub fn svg(&self) -> String {
        let (w, h, left, right, top, bottom) = (760.0, 420.0, 70.0, 20.0, 40.0, 50.0);
        let plot_w = w - left - right;
        let plot_h = h - top - bottom;
        // x: log10(1/(1-p)) from 0 (p=0) to 5 (p=99.999%).
        let x_max = 5.0f64;
        let series: Vec<Series<'_>> =
            [("per query", "#1f77b4", &self.query_histogram), ("per name", "#d62728", &self.name_histogram)]
                .into_iter()
                .filter(|(_, _, h)| !h.is_empty())
                .map(|(name, colour, h)| {
                    let pts = (0..=100)
                        .map(|i| {
                            let x = x_max * f64::from(i) / 100.0;
                            let q = 1.0 - 10f64.powf(-x);
                            (x, h.value_at_quantile(q.min(1.0)) as f64 / 1e6)
                        })
                        .collect();
                    (name, colour, pts)
                })
                .collect();
        let y_max =
            series.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y)).fold(0.0f64, f64::max).max(1e-3);
        let y_top = nice_ceiling(y_max);
        let sx = |x: f64| left + plot_w * x / x_max;
        let sy = |y: f64| top + plot_h * (1.0 - y / y_top);
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let title = format!(
            "{}{} {} {}: latency by percentile",
            self.label.as_deref().map(|l| format!("{l}: ")).unwrap_or_default(),
            self.server,
            self.transport,
            self.workload
        );
        let _ = writeln!(s, r#"<text x="{left}" y="20" font-size="14">{}</text>"#, xml_escape(&title));
        for (i, label) in ["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"].iter().enumerate() {
            let x = sx(i as f64);
            let _ = writeln!(
                s,
                r##"<line x1="{x:.1}" y1="{top}" x2="{x:.1}" y2="{:.1}" stroke="#ddd"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
                top + plot_h,
                top + plot_h + 18.0
            );
        }
        for i in 0..=4 {
            let y = y_top * f64::from(i) / 4.0;
            let py = sy(y);
            let _ = writeln!(
                s,
                r##"<line x1="{left}" y1="{py:.1}" x2="{:.1}" y2="{py:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{y:.3}</text>"##,
                left + plot_w,
                left - 6.0,
                py + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">percentile</text><text x="14" y="{:.1}" transform="rotate(-90 14 {:.1})" text-anchor="middle">latency (ms)</text>"#,
            left + plot_w / 2.0,
            h - 8.0,
            top + plot_h / 2.0,
            top + plot_h / 2.0
        );
        for (n, (name, colour, pts)) in series.iter().enumerate() {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                path.join(" ")
            );
            let ly = top + 16.0 * n as f64 + 12.0;
            let _ = writeln!(
                s,
                r#"<rect x="{:.1}" y="{:.1}" width="12" height="3" fill="{colour}"/><text x="{:.1}" y="{:.1}">{name}</text>"#,
                left + 10.0,
                ly - 4.0,
                left + 28.0,
                ly
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

/// A plotted line: its name, colour and (x, y) points.
type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

/// 1, 2 or 5 times a power of ten, at least `v`.
fn nice_ceiling(v: f64) -> f64 {
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * p).find(|c| *c >= v).unwrap_or(10.0 * p)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_ceilings_round_up_to_1_2_5() {
        assert_eq!(nice_ceiling(0.3), 0.5);
        assert_eq!(nice_ceiling(1.0), 1.0);
        assert_eq!(nice_ceiling(1.2), 2.0);
        assert_eq!(nice_ceiling(7.0), 10.0);
    }
}
