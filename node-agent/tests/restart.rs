//! A rolling restart under load: a second agent process binds the same address (SO_REUSEPORT),
//! the first gets SIGTERM and drains, and an open-loop load of 5,000 queries a second from
//! `nodedns-loadgen` running throughout loses nothing. This is the DaemonSet's update strategy
//! (`maxSurge: 1, maxUnavailable: 0`) reduced to two processes on loopback.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use nodedns_testsupport::workspace_path;

const BIN: &str = env!("CARGO_BIN_EXE_nodedns-agent");

struct Agent {
    child: Child,
    admin: SocketAddr,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A port free for UDP and TCP on `ip` (both instances must share one fixed address).
fn free_port(ip: IpAddr) -> u16 {
    loop {
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(SocketAddr::new(ip, port)).is_ok() {
            return port;
        }
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Some((status, body))
}

/// Sum of `coredns_dns_requests_total` over its series.
fn requests(admin: SocketAddr) -> u64 {
    let Some((_, body)) = http_get(admin, "/metrics") else { return 0 };
    body.lines()
        .filter(|l| l.starts_with("coredns_dns_requests_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !cond() {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn start(listen: SocketAddr, log: &std::path::Path) -> Agent {
    let admin = SocketAddr::new(listen.ip(), free_port(listen.ip()));
    let log = std::fs::File::create(log).unwrap();
    let child = Command::new(BIN)
        .args(["--standalone-cluster-file", workspace_path("authority/demo/cluster.yaml").to_str().unwrap()])
        .args(["--listen", &listen.to_string(), "--admin-listen", &admin.to_string()])
        // Nothing here leaves the cluster domain; a closed local port stands in for upstreams.
        .args(["--upstream", "127.0.0.1:9", "--node-name", "restart-node"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting the agent");
    let agent = Agent { child, admin };
    wait_for("the agent's /ready", Duration::from_secs(20), || {
        http_get(admin, "/ready").is_some_and(|(status, _)| status == 200)
    });
    agent
}

#[test]
fn a_rolling_restart_under_5000_qps_open_loop_loses_no_query() {
    let tmp = nodedns_testsupport::TempDir::new("restart");
    let dir = tmp.path().to_path_buf();
    let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 93));
    let listen = SocketAddr::new(ip, free_port(ip));
    let names = dir.join("names");
    std::fs::write(
        &names,
        "web.shop.svc.cluster.local A\ndb.shop.svc.cluster.local A\n_http._tcp.web.shop.svc.cluster.local SRV\n\
         missing.shop.svc.cluster.local A\nkubernetes.default.svc.cluster.local A\n",
    )
    .unwrap();

    let drops_before = udp_rcvbuf_errors();
    let old = start(listen, &dir.join("old.log"));
    // 5,000 names a second for 4 s, open loop: a query not answered within 2 s is lost.
    let args = nodedns_loadgen::RunArgs::try_parse_from([
        "run",
        "--server",
        &listen.to_string(),
        "--names",
        names.to_str().unwrap(),
        "--rate",
        "5000",
        "--duration",
        "4",
        "--timeout",
        "2",
        "--quiet",
    ])
    .unwrap();
    let load = std::thread::spawn(move || nodedns_loadgen::measure(&args, false));

    // Once the old instance is carrying the load, start the new one beside it, then stop the old.
    wait_for("load on the old instance", Duration::from_secs(10), || requests(old.admin) >= 2000);
    let new = start(listen, &dir.join("new.log"));
    let mut old = old;
    let pid = nix::unistd::Pid::from_raw(old.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = old.child.wait().unwrap();
    assert!(status.success(), "the old instance exited with {status}");
    let old_logged_its_drain = clean_shutdown_logged(&dir.join("old.log"));

    let report = load.join().unwrap().unwrap();
    let logs = || {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!(
            "{}kernel UDP receive-buffer drops during the run: {}\n--- old instance:\n{}\n--- new instance:\n{}",
            report.table(),
            udp_rcvbuf_errors() - drops_before,
            read("old.log"),
            read("new.log")
        )
    };
    assert_eq!(report.sent, 20_000, "{}", logs());
    assert_eq!((report.answered, report.lost, report.send_errors), (20_000, 0, 0), "{}", logs());
    let failures: u64 = report
        .rcodes
        .iter()
        .filter(|(rc, _)| !["NOERROR", "NXDOMAIN"].contains(&rc.as_str()))
        .map(|(_, n)| n)
        .sum();
    assert_eq!(failures, 0, "{:?}", report.rcodes);
    // Both instances carried part of it.
    assert!(requests(new.admin) > 1000, "the new instance took {} queries", requests(new.admin));
    assert!(old_logged_its_drain, "the old instance's log has no clean shutdown");
}

/// Whether the old instance logged its drain and its stop.
fn clean_shutdown_logged(log: &std::path::Path) -> bool {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.contains("shutting down") && text.contains("stopped")
}

/// The kernel's count of UDP datagrams dropped for a full receive buffer (all sockets).
fn udp_rcvbuf_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}
