//! A binary run as a child process with `--log-format json`, its stderr read line by line: for
//! tests of what an operator sees in `kubectl logs` (start-up block, query lines, error lines).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The child and the lines it has logged; killed on drop.
pub struct JsonLogs {
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Every line read so far.
    seen: Vec<String>,
}

impl Drop for JsonLogs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl JsonLogs {
    /// Spawns `command` (whose arguments ask for JSON logs) at log level info, stderr captured.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the binary");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines, seen: Vec::new() }
    }

    /// The next log line (JSON) for which `want` holds, within 10 s.
    pub fn wait_for(&mut self, what: &str, want: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.lines.recv_timeout(left).unwrap_or_else(|_| {
                panic!("{what}: no such log line within 10 s; lines so far:\n{}", self.seen.join("\n"))
            });
            self.seen.push(line.clone());
            let value: Value = serde_json::from_str(&line)
                .unwrap_or_else(|e| panic!("every log line is JSON with --log-format json ({e}): {line}"));
            if want(&value) {
                return value;
            }
        }
    }

    /// Every line read so far, as JSON.
    pub fn seen(&self) -> impl Iterator<Item = Value> + '_ {
        self.seen.iter().filter_map(|l| serde_json::from_str::<Value>(l).ok())
    }

    /// Every line read so far for which `want` holds.
    pub fn count(&self, want: impl Fn(&Value) -> bool) -> usize {
        self.seen().filter(|v| want(v)).count()
    }
}

/// A JSON log line's message.
pub fn message(v: &Value) -> &str {
    v["fields"]["message"].as_str().unwrap_or_default()
}

/// `127.0.0.1:5353` out of a start-up field such as `[127.0.0.1:5353]` or `Some(127.0.0.1:9153)`.
pub fn first_addr(text: &str) -> SocketAddr {
    let inner = text.trim_start_matches("Some(").trim_start_matches('[');
    let end = inner.find([',', ']', ')']).unwrap_or(inner.len());
    inner[..end].trim().parse().unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// [`crate::client::http_get`] from synchronous code: status and body, `None` when it failed.
pub fn http_get_blocking(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(crate::client::http_get(addr, path)).ok()
}

/// Waits (20 s at most) until `admin` answers `/ready` with 200.
pub fn wait_ready(admin: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get_blocking(admin, "/ready").map(|(status, _)| status) != Some(200) {
        assert!(Instant::now() < deadline, "{what}'s /ready within 20 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}
