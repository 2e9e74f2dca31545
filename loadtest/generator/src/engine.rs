//! The sending and receiving loop of one worker thread: its sockets (one per source address,
//! UDP or TCP), a table of queries in flight keyed by DNS id, the operations those queries belong
//! to, and the pacing (closed loop: keep N operations in flight; open loop: start operations on a
//! fixed schedule and measure from the scheduled time, so a slow server cannot slow the load down
//! and hide its own latency).
//!
//! Plain nonblocking sockets and `ppoll`: the generator must outrun the servers it measures on
//! one core, and a runtime's per-query task would cost more than the server's answer.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use nix::poll::{PollFd, PollFlags};
use rand::rngs::SmallRng;
use socket2::{Domain, Protocol, Socket, Type};

use super::workload::{Kind, Op, RoundQuestions, TYPE_A, TYPE_AAAA, Workload};

/// How operations are started.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// Keep this many operations in flight.
    Closed { outstanding: usize },
    /// Start this many operations per second, whatever the answers do.
    Open { rate: f64 },
}

/// What one worker runs.
#[derive(Debug, Clone)]
pub struct Settings {
    pub server: SocketAddr,
    pub tcp: bool,
    pub pace: Pace,
    pub duration: Duration,
    /// Operations to start at most (None: as many as the duration allows).
    pub max_names: Option<u64>,
    /// A query unanswered after this long is lost.
    pub timeout: Duration,
    /// Add an EDNS OPT record (payload 1232) to every query.
    pub edns: bool,
}

/// Counters the main thread reads for the progress line.
#[derive(Debug, Default)]
pub struct Progress {
    pub sent: AtomicU64,
    pub answered: AtomicU64,
    pub lost: AtomicU64,
    /// Set to end every worker's run early (Ctrl-C).
    pub stop: AtomicBool,
}

/// Where operations come from.
pub enum Feed<'a> {
    /// Drawn from the workload, forever.
    Workload { workload: &'a Workload, rng: SmallRng, worker: usize },
    /// A fixed list (warm-up), then the run ends.
    List(std::vec::IntoIter<Op>),
}

impl Feed<'_> {
    fn next(&mut self, seq: u64) -> anyhow::Result<Option<Op>> {
        match self {
            Feed::Workload { workload, rng, worker } => workload.next_op(rng, *worker, seq).map(Some),
            Feed::List(it) => Ok(it.next()),
        }
    }
}

/// Per-kind results: names looked up, how many found records (or, for one-question kinds, got
/// any answer), client round trips, and the time from an operation's (scheduled) start to its end.
#[derive(Debug, Clone)]
pub struct KindStats {
    pub started: u64,
    pub resolved: u64,
    pub unresolved: u64,
    pub rounds: u64,
    pub latency: Histogram<u64>,
}

impl KindStats {
    fn new() -> Self {
        Self { started: 0, resolved: 0, unresolved: 0, rounds: 0, latency: new_histogram() }
    }

    pub fn add(&mut self, o: &KindStats) {
        self.started += o.started;
        self.resolved += o.resolved;
        self.unresolved += o.unresolved;
        self.rounds += o.rounds;
        let _ = self.latency.add(&o.latency);
    }
}

/// Latencies are kept in nanoseconds, 3 significant figures, up to a minute.
pub fn new_histogram() -> Histogram<u64> {
    // Constant bounds that hdrhistogram accepts (low ≥ 1, high ≥ 2 × low, sigfig ≤ 5).
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid constant histogram bounds")
}

/// One worker's results.
#[derive(Debug, Clone)]
pub struct WorkerStats {
    pub sent: u64,
    pub answered: u64,
    /// Answers received before the run's window closed (the QPS numerator).
    pub answered_in_window: u64,
    pub lost: u64,
    pub truncated: u64,
    /// Answers that matched no query in flight (late after a timeout, or a wrong question).
    pub unexpected: u64,
    pub send_errors: u64,
    pub reconnects: u64,
    pub rcodes: [u64; 16],
    pub query_latency: Histogram<u64>,
    pub kinds: [KindStats; 4],
    /// Round trips per name: index = rounds (last bucket: that many or more).
    pub rounds_histogram: [u64; 8],
    /// From the first operation to the moment no more were started.
    pub window: Duration,
    /// Open loop: the most an operation started after its scheduled time.
    pub max_lag: Duration,
}

impl WorkerStats {
    pub fn new() -> Self {
        Self {
            sent: 0,
            answered: 0,
            answered_in_window: 0,
            lost: 0,
            truncated: 0,
            unexpected: 0,
            send_errors: 0,
            reconnects: 0,
            rcodes: [0; 16],
            query_latency: new_histogram(),
            kinds: [KindStats::new(), KindStats::new(), KindStats::new(), KindStats::new()],
            rounds_histogram: [0; 8],
            window: Duration::ZERO,
            max_lag: Duration::ZERO,
        }
    }

    pub fn add(&mut self, o: &WorkerStats) {
        self.sent += o.sent;
        self.answered += o.answered;
        self.answered_in_window += o.answered_in_window;
        self.lost += o.lost;
        self.truncated += o.truncated;
        self.unexpected += o.unexpected;
        self.send_errors += o.send_errors;
        self.reconnects += o.reconnects;
        for (a, b) in self.rcodes.iter_mut().zip(o.rcodes) {
            *a += b;
        }
        let _ = self.query_latency.add(&o.query_latency);
        for (a, b) in self.kinds.iter_mut().zip(&o.kinds) {
            a.add(b);
        }
        for (a, b) in self.rounds_histogram.iter_mut().zip(o.rounds_histogram) {
            *a += b;
        }
        self.window = self.window.max(o.window);
        self.max_lag = self.max_lag.max(o.max_lag);
    }
}

impl Default for WorkerStats {
    fn default() -> Self {
        Self::new()
    }
}

/// A TCP connection with its unsent bytes and unparsed input.
struct Tcp {
    stream: TcpStream,
    source: Option<IpAddr>,
    out: Vec<u8>,
    out_pos: usize,
    input: Vec<u8>,
}

enum Conn {
    Udp(UdpSocket),
    Tcp(Tcp),
}

impl Conn {
    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Conn::Udp(s) => s.as_fd(),
            Conn::Tcp(t) => t.stream.as_fd(),
        }
    }

    fn wants_write(&self) -> bool {
        matches!(self, Conn::Tcp(t) if t.out_pos < t.out.len())
    }
}

fn open(server: SocketAddr, source: Option<IpAddr>, tcp: bool) -> anyhow::Result<Conn> {
    let domain = Domain::for_address(server);
    let (ty, proto) = if tcp { (Type::STREAM, Protocol::TCP) } else { (Type::DGRAM, Protocol::UDP) };
    let socket = Socket::new(domain, ty, Some(proto)).context("creating a socket")?;
    // Big buffers so bursts are not dropped on our side and counted against the server.
    let _ = socket.set_recv_buffer_size(4 << 20);
    let _ = socket.set_send_buffer_size(4 << 20);
    if let Some(ip) = source {
        socket
            .bind(&SocketAddr::new(ip, 0).into())
            .with_context(|| format!("binding the source address {ip} (is it on this machine?)"))?;
    }
    let what = if tcp { "TCP" } else { "UDP" };
    socket.connect(&server.into()).with_context(|| format!("connecting to {server} over {what}"))?;
    socket.set_nonblocking(true)?;
    Ok(if tcp {
        let _ = socket.set_tcp_nodelay(true);
        Conn::Tcp(Tcp { stream: socket.into(), source, out: Vec::new(), out_pos: 0, input: Vec::new() })
    } else {
        Conn::Udp(socket.into())
    })
}

#[derive(Clone, Copy)]
struct Slot {
    busy: bool,
    generation: u32,
    op: u32,
    conn: u32,
    /// When the query was (due to be) sent: latency is measured from here.
    sent: Instant,
    question_hash: u64,
}

struct LiveOp {
    op: Op,
    started: Instant,
    round: usize,
    pending: u8,
    found: bool,
    stop: bool,
}

/// Hash of a question section (name lower-cased, type, class), to match an answer to its query
/// beyond the 16-bit id.
fn question_hash(name: &[u8], qtype: u16) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.iter().map(u8::to_ascii_lowercase).chain(qtype.to_be_bytes()) {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The question name at offset 12 of a message (uncompressed, as every answer repeats it) and
/// the type after it; None when the message is too short or the name is malformed.
fn answer_question(msg: &[u8]) -> Option<(&[u8], u16)> {
    let mut i = 12usize;
    loop {
        let len = usize::from(*msg.get(i)?);
        if len == 0 {
            i += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        i += 1 + len;
    }
    let name = msg.get(12..i)?;
    let qtype = u16::from_be_bytes([*msg.get(i)?, *msg.get(i + 1)?]);
    Some((name, qtype))
}

/// One worker: its sockets, queries and operations in flight, and results.
pub struct Worker<'a> {
    settings: &'a Settings,
    progress: &'a Progress,
    conns: Vec<Conn>,
    slots: Vec<Slot>,
    free: VecDeque<u16>,
    deadlines: VecDeque<(u16, u32, Instant)>,
    ops: Vec<Option<LiveOp>>,
    free_ops: Vec<u32>,
    live: usize,
    stats: WorkerStats,
    packet: Vec<u8>,
    recv: Vec<u8>,
    in_window: bool,
    reported: (u64, u64, u64),
}

impl<'a> Worker<'a> {
    /// Opens one socket per source (see [`Workload::sources`]).
    pub fn new(
        settings: &'a Settings,
        progress: &'a Progress,
        sources: &[Option<IpAddr>],
    ) -> anyhow::Result<Self> {
        let conns =
            sources.iter().map(|s| open(settings.server, *s, settings.tcp)).collect::<anyhow::Result<_>>()?;
        let now = Instant::now();
        let slot = Slot { busy: false, generation: 0, op: 0, conn: 0, sent: now, question_hash: 0 };
        Ok(Self {
            settings,
            progress,
            conns,
            slots: vec![slot; 65536],
            // Ids are handed out oldest-freed first, so a late answer rarely meets its id reused.
            free: (0..=u16::MAX).collect(),
            deadlines: VecDeque::new(),
            ops: Vec::new(),
            free_ops: Vec::new(),
            live: 0,
            stats: WorkerStats::new(),
            packet: Vec::with_capacity(512),
            recv: vec![0; 65535],
            in_window: true,
            reported: (0, 0, 0),
        })
    }

    /// Runs until the duration or the operation budget is spent (or the feed ends), then waits
    /// for what is in flight (at most the query timeout) and returns the results.
    pub fn run(mut self, mut feed: Feed<'_>) -> anyhow::Result<WorkerStats> {
        let s = self.settings;
        let start = Instant::now();
        let end = start + s.duration;
        let mut started: u64 = 0;
        let mut exhausted = false;
        let mut window_end: Option<Instant> = None;
        let mut ready: Vec<(bool, bool)> = Vec::with_capacity(self.conns.len());
        loop {
            let now = Instant::now();
            // Open loop: the window closes when every start scheduled before the end is out (a
            // generator that fell behind catches up first); closed loop: at the end.
            let over = match s.pace {
                Pace::Open { rate } => start + Duration::from_secs_f64(started as f64 / rate) >= end,
                Pace::Closed { .. } => now >= end,
            };
            if window_end.is_none()
                && (over
                    || exhausted
                    || s.max_names.is_some_and(|m| started >= m)
                    || self.progress.stop.load(Ordering::Relaxed))
            {
                window_end = Some(now);
                self.stats.window = now - start;
                self.in_window = false;
            }
            if window_end.is_none() {
                match s.pace {
                    Pace::Closed { outstanding } => {
                        while self.live < outstanding && s.max_names.is_none_or(|m| started < m) {
                            match feed.next(started)? {
                                Some(op) => self.start(op, now),
                                None => {
                                    exhausted = true;
                                    break;
                                }
                            }
                            started += 1;
                        }
                    }
                    Pace::Open { rate } => loop {
                        let due = start + Duration::from_secs_f64(started as f64 / rate);
                        if due > now || due >= end || s.max_names.is_some_and(|m| started >= m) {
                            break;
                        }
                        // Out of slots means the server is far behind: the operation is lost.
                        match feed.next(started)? {
                            Some(op) => {
                                self.stats.max_lag = self.stats.max_lag.max(now - due);
                                self.start(op, due);
                            }
                            None => {
                                exhausted = true;
                                break;
                            }
                        }
                        started += 1;
                    },
                }
            }
            self.expire(now);
            self.report_progress();
            if let Some(closed) = window_end {
                if self.live == 0 {
                    break;
                }
                // Every query times out within `timeout`; this is only a backstop.
                if now > closed + s.timeout * 2 + Duration::from_millis(100) {
                    self.expire(Instant::now() + s.timeout * 4);
                    break;
                }
            }
            // Sleep until an answer, the next scheduled start, or the next timeout.
            let mut wake = match (window_end, s.pace) {
                (None, Pace::Open { rate }) => {
                    (start + Duration::from_secs_f64(started as f64 / rate)).min(end)
                }
                (None, Pace::Closed { .. }) => end,
                (Some(_), _) => now + Duration::from_millis(50),
            };
            if let Some((_, _, deadline)) = self.deadlines.front() {
                wake = wake.min(*deadline);
            }
            let wait = wake.saturating_duration_since(Instant::now());
            self.wait(wait, &mut ready)?;
            for (i, (readable, writable)) in ready.iter().copied().enumerate() {
                if writable {
                    self.flush(i);
                }
                if readable {
                    self.receive(i);
                }
            }
        }
        self.report_progress();
        Ok(self.stats)
    }

    fn wait(&mut self, wait: Duration, ready: &mut Vec<(bool, bool)>) -> anyhow::Result<()> {
        ready.clear();
        let mut fds: Vec<PollFd<'_>> = self
            .conns
            .iter()
            .map(|c| {
                let mut flags = PollFlags::POLLIN;
                if c.wants_write() {
                    flags |= PollFlags::POLLOUT;
                }
                PollFd::new(c.fd(), flags)
            })
            .collect();
        let timeout = nix::sys::time::TimeSpec::from_duration(wait);
        match nix::poll::ppoll(&mut fds, Some(timeout), None) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e).context("ppoll"),
        }
        ready.extend(fds.iter().map(|f| {
            let r = f.revents().unwrap_or(PollFlags::empty());
            (
                r.intersects(PollFlags::POLLIN | PollFlags::POLLERR | PollFlags::POLLHUP),
                r.contains(PollFlags::POLLOUT),
            )
        }));
        Ok(())
    }

    fn report_progress(&mut self) {
        let now = (self.stats.sent, self.stats.answered, self.stats.lost);
        let p = self.progress;
        p.sent.fetch_add(now.0 - self.reported.0, Ordering::Relaxed);
        p.answered.fetch_add(now.1 - self.reported.1, Ordering::Relaxed);
        p.lost.fetch_add(now.2 - self.reported.2, Ordering::Relaxed);
        self.reported = now;
    }

    fn start(&mut self, op: Op, started: Instant) {
        self.stats.kinds[op.kind.index()].started += 1;
        let idx = match self.free_ops.pop() {
            Some(i) => i,
            None => {
                self.ops.push(None);
                (self.ops.len() - 1) as u32
            }
        };
        self.ops[idx as usize] =
            Some(LiveOp { op, started, round: 0, pending: 0, found: false, stop: false });
        self.live += 1;
        self.send_round(idx, started);
    }

    /// Sends the questions of the operation's current round; ends it when there are none.
    fn send_round(&mut self, idx: u32, due: Instant) {
        let Some(live) = self.ops[idx as usize].as_ref() else { return };
        let conn = live.op.source;
        let questions: [Option<(Arc<[u8]>, u16)>; 2] = match live.op.round(live.round) {
            None => {
                self.finish(idx);
                return;
            }
            Some(RoundQuestions::One(q)) => [Some((q.qname.clone(), q.qtype)), None],
            Some(RoundQuestions::Pair(name)) => {
                [Some((name.clone(), TYPE_A)), Some((name.clone(), TYPE_AAAA))]
            }
        };
        // Count the round's queries first: a query that cannot be sent settles at once, and the
        // operation must not end before its other query is out.
        if let Some(live) = self.ops[idx as usize].as_mut() {
            live.pending = questions.iter().flatten().count() as u8;
        }
        for (name, qtype) in questions.into_iter().flatten() {
            self.send(idx, conn, &name, qtype, due);
        }
    }

    fn send(&mut self, op: u32, conn: usize, name: &[u8], qtype: u16, due: Instant) {
        let Some(id) = self.free.pop_front() else {
            // 65,536 queries in flight: count it as lost rather than block.
            self.stats.lost += 1;
            self.settle(op, false, true);
            return;
        };
        let p = &mut self.packet;
        p.clear();
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(self.settings.edns)]);
        p.extend_from_slice(name);
        p.extend_from_slice(&qtype.to_be_bytes());
        p.extend_from_slice(&[0, 1]);
        if self.settings.edns {
            p.extend_from_slice(&[0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
        }
        let now = Instant::now();
        let slot = &mut self.slots[usize::from(id)];
        slot.busy = true;
        slot.generation = slot.generation.wrapping_add(1);
        slot.op = op;
        slot.conn = conn as u32;
        slot.sent = due.min(now);
        slot.question_hash = question_hash(name, qtype);
        self.deadlines.push_back((id, slot.generation, now + self.settings.timeout));
        self.stats.sent += 1;
        let ok = match &mut self.conns[conn] {
            Conn::Udp(s) => s.send(&self.packet).is_ok(),
            Conn::Tcp(t) => {
                t.out.extend_from_slice(&(self.packet.len() as u16).to_be_bytes());
                t.out.extend_from_slice(&self.packet);
                true
            }
        };
        if ok {
            if matches!(self.conns[conn], Conn::Tcp(_)) {
                self.flush(conn);
            }
        } else {
            // Left to time out: counted as lost then, like any unanswered query.
            self.stats.send_errors += 1;
        }
    }

    fn flush(&mut self, i: usize) {
        let Conn::Tcp(t) = &mut self.conns[i] else { return };
        while t.out_pos < t.out.len() {
            match t.stream.write(&t.out[t.out_pos..]) {
                Ok(0) => break,
                Ok(n) => t.out_pos += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    self.reconnect(i);
                    return;
                }
            }
        }
        if t.out_pos == t.out.len() {
            t.out.clear();
            t.out_pos = 0;
        }
    }

    /// A TCP connection the server closed: open a new one; what was in flight on it times out.
    fn reconnect(&mut self, i: usize) {
        let source = match &self.conns[i] {
            Conn::Tcp(t) => t.source,
            Conn::Udp(_) => return,
        };
        self.stats.reconnects += 1;
        if let Ok(c) = open(self.settings.server, source, true) {
            self.conns[i] = c;
        } else if let Conn::Tcp(t) = &mut self.conns[i] {
            // Keep the dead one; queries sent on it time out and count as lost.
            t.out.clear();
            t.out_pos = 0;
        }
    }

    fn receive(&mut self, i: usize) {
        let mut buf = std::mem::take(&mut self.recv);
        self.receive_into(i, &mut buf);
        self.recv = buf;
    }

    fn receive_into(&mut self, i: usize, buf: &mut [u8]) {
        loop {
            match &mut self.conns[i] {
                Conn::Udp(s) => match s.recv(buf) {
                    Ok(n) => self.answer(i, &buf[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    // ICMP port unreachable and the like: the query times out and counts as lost.
                    Err(_) => {
                        self.stats.send_errors += 1;
                        return;
                    }
                },
                Conn::Tcp(t) => match t.stream.read(buf) {
                    Ok(0) => {
                        self.reconnect(i);
                        return;
                    }
                    Ok(n) => {
                        t.input.extend_from_slice(&buf[..n]);
                        let mut input = std::mem::take(&mut t.input);
                        let mut at = 0;
                        while input.len() >= at + 2 {
                            let len = usize::from(u16::from_be_bytes([input[at], input[at + 1]]));
                            if input.len() < at + 2 + len {
                                break;
                            }
                            self.answer(i, &input[at + 2..at + 2 + len]);
                            at += 2 + len;
                        }
                        input.drain(..at);
                        if let Conn::Tcp(t) = &mut self.conns[i] {
                            t.input = input;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => {
                        self.reconnect(i);
                        return;
                    }
                },
            }
        }
    }

    /// One answer: match it to its query, record its latency and move its operation on.
    fn answer(&mut self, conn: usize, msg: &[u8]) {
        let now = Instant::now();
        if msg.len() < 12 || msg[2] & 0x80 == 0 {
            self.stats.unexpected += 1;
            return;
        }
        let id = u16::from_be_bytes([msg[0], msg[1]]);
        let slot = self.slots[usize::from(id)];
        let matches = slot.busy
            && slot.conn as usize == conn
            && answer_question(msg)
                .is_some_and(|(name, qtype)| question_hash(name, qtype) == slot.question_hash);
        if !matches {
            self.stats.unexpected += 1;
            return;
        }
        self.release(id);
        let rcode = msg[3] & 0x0f;
        let ancount = u16::from_be_bytes([msg[6], msg[7]]);
        self.stats.answered += 1;
        if self.in_window {
            self.stats.answered_in_window += 1;
        }
        self.stats.rcodes[usize::from(rcode)] += 1;
        if msg[2] & 0x02 != 0 {
            self.stats.truncated += 1;
        }
        let _ = self.stats.query_latency.record(nanos(now.saturating_duration_since(slot.sent)));
        let found = rcode == 0 && ancount > 0;
        let Some(live) = self.ops[slot.op as usize].as_ref() else { return };
        let stop = !found && !live.op.resolver().continues_after(rcode);
        self.settle(slot.op, found, stop);
    }

    fn release(&mut self, id: u16) {
        self.slots[usize::from(id)].busy = false;
        self.free.push_back(id);
    }

    /// One query of an operation is over (answered, or lost when `stop` with no answer).
    fn settle(&mut self, idx: u32, found: bool, stop: bool) {
        let Some(live) = self.ops[idx as usize].as_mut() else { return };
        live.pending = live.pending.saturating_sub(1);
        live.found |= found;
        live.stop |= stop;
        if live.pending > 0 {
            return;
        }
        let single = matches!(live.op.steps, super::workload::Steps::Single(_));
        if live.found || live.stop || single {
            self.finish(idx);
        } else {
            live.round += 1;
            // A query that cannot be sent settles as lost, which ends the op unresolved.
            self.send_round(idx, Instant::now());
        }
    }

    fn finish(&mut self, idx: u32) {
        let Some(live) = self.ops[idx as usize].take() else { return };
        self.free_ops.push(idx);
        self.live -= 1;
        let now = Instant::now();
        let k = &mut self.stats.kinds[live.op.kind.index()];
        // One-question kinds count any answer as resolved; search lookups need records.
        let single = matches!(live.op.steps, super::workload::Steps::Single(_));
        let rounds = (live.round + 1) as u64;
        let resolved = if single { !live.stop } else { live.found };
        if resolved {
            k.resolved += 1;
        } else {
            k.unresolved += 1;
        }
        k.rounds += rounds;
        let _ = k.latency.record(nanos(now.saturating_duration_since(live.started)));
        let bucket = (rounds as usize).min(self.stats.rounds_histogram.len() - 1);
        self.stats.rounds_histogram[bucket] += 1;
    }

    /// Queries past their deadline are lost.
    fn expire(&mut self, now: Instant) {
        while let Some(&(id, generation, deadline)) = self.deadlines.front() {
            let slot = self.slots[usize::from(id)];
            if slot.busy && slot.generation == generation {
                if deadline > now {
                    break;
                }
                self.release(id);
                self.stats.lost += 1;
                self.settle(slot.op, false, true);
            }
            self.deadlines.pop_front();
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1_000)
}

/// Which kinds a stats value has seen (for the report).
pub fn kinds_seen(stats: &WorkerStats) -> impl Iterator<Item = (Kind, &KindStats)> {
    Kind::ALL.into_iter().map(|k| (k, &stats.kinds[k.index()])).filter(|(_, s)| s.started > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_question_is_read_and_hashed_case_blind() {
        let mut msg = vec![0u8; 12];
        msg.extend_from_slice(b"\x03WWW\x07example\x00\x00\x1c\x00\x01");
        let (name, qtype) = answer_question(&msg).unwrap();
        assert_eq!(qtype, 28);
        assert_eq!(question_hash(name, qtype), question_hash(b"\x03www\x07EXAMPLE\x00", 28));
        assert_ne!(question_hash(name, qtype), question_hash(name, 1));
        assert!(answer_question(&msg[..20]).is_none());
        let mut bad = vec![0u8; 12];
        bad.extend_from_slice(b"\xc0\x0c\x00\x01");
        assert!(answer_question(&bad).is_none());
    }
}
