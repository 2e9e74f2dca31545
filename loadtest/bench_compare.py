#!/usr/bin/env python3
"""nodedns next to its peers, driven by `nodedns-load run`: the driver behind loadtest/bench-compare.sh.

  bench_compare.py run   --out DIR [options]   start the knot backend, then each server in turn (fresh),
                                               run every workload REPS times, one JSON file per run in DIR
  bench_compare.py table DIR [--title TEXT]    the markdown tables (medians [min–max], ratios) from DIR

Servers: `nodedns` = nodedns-agent (the server under test, 127.0.0.14:53, CPU 1) with nodedns-authority
(127.0.0.15, CPU 0) over the cluster file; `unbound-1t`, `dnsdist-1l`, `kresd-1` = ../shared/peerbench's
peers (CPU 1), each forwarding everything to the knot backend (127.0.0.2:53, CPU 0), which serves the
same cluster.local records (`nodedns-load zone-file`) plus peerbench's example.test. The load generator
runs on CPU 0 too. Everything binds to and sends to 127.0.0.0/8 only; every server is started with Popen
and stopped by its PID (pidfiles in RUNDIR/pids for the shell script's EXIT trap); every load run is
bounded by --duration.

CPU per process = utime+stime from /proc/PID/stat (all threads), delta over the load run; RSS = VmRSS
and VmHWM from /proc/PID/status right after the run. Runs during which processes outside the test used
more than --foreign-max cores are flagged "contaminated" and retried (--retries); the table uses clean
runs where there are any.
"""
import argparse
import json
import os
import re
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections import OrderedDict

HZ = os.sysconf("SC_CLK_TCK")
LOAD_CPU = "0"      # load generator, knot backend, nodedns-authority
SERVER_CPU = "1"    # the server under test
NICE = ["nice", "-n", "-20"]   # as peerbench: everything under test at nice -20 (other tenants get fewer cycles)
BACKEND = "127.0.0.2"
AGENT_ADDR = "127.0.0.14"
AUTHORITY_ADDR = "127.0.0.15"
READY_NAME = "svc1.ns1.svc.cluster.local"   # a ClusterIP service of the generated cluster

# workload name -> (nodedns-load run arguments, what it is)
WORKLOADS = OrderedDict([
    ("hit-max", (["--workload", "hit"], "cache hits, closed loop ({outstanding} outstanding): max throughput")),
    ("hit-rate", (["--workload", "hit"], "cache hits, open loop at {rate:,} names/s: latency at a fixed load")),
    ("cluster-miss", (["--workload", "cluster-miss"],
                      "unique names in cluster.local (NXDOMAIN), closed loop ({outstanding} outstanding)")),
    ("external", (["--workload", "external"],
                  "unique names under {external_zone} (answered by the backend's wildcard), closed loop ({outstanding} outstanding)")),
    ("search-path", (["--workload", "search-path"],
                     "names looked up as {node}'s pods do ({resolver}, ndots {ndots}, from the pods' own addresses), "
                     "closed loop ({outstanding} outstanding); peers have no autopath")),
    ("hit-tcp", (["--workload", "hit", "--tcp"], "cache hits over TCP, closed loop ({outstanding} outstanding)")),
])


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def assert_loopback(addr):
    if not addr.startswith("127."):
        raise SystemExit(f"refusing non-loopback address {addr}")


# ---------------------------------------------------------------- processes (started and stopped by PID)
class Proc:
    def __init__(self, name, argv, cpus, rundir):
        self.name, self.rundir = name, rundir
        self.logf = open(f"{rundir}/logs/{name}.log", "w")
        # taskset and nice exec, so the PID is the server's own
        self.p = subprocess.Popen(["taskset", "-c", cpus] + NICE + argv, stdin=subprocess.DEVNULL,
                                  stdout=self.logf, stderr=subprocess.STDOUT)
        self.pid = self.p.pid
        with open(f"{rundir}/pids/{name}.{self.pid}", "w") as f:
            f.write(str(self.pid))

    def alive(self):
        return self.p.poll() is None

    def stop(self):
        if self.p.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.p.wait(5)
        self.logf.close()
        try:
            os.unlink(f"{self.rundir}/pids/{self.name}.{self.pid}")
        except FileNotFoundError:
            pass


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])          # utime + stime, all threads


def mem_kib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def sys_cpu():
    """per-CPU (busy, total) jiffies from /proc/stat"""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            if re.match(r"cpu\d", line):
                v = list(map(int, line.split()[1:9]))
                idle = v[3] + v[4]
                out[line.split()[0]] = (sum(v) - idle, sum(v))
    return out


def quiet_gate(max_wait, quiet_for, threshold=0.10):
    """wait (at most max_wait s) until the machine has been idle (< threshold cores busy) for quiet_for s;
    returns the seconds waited beyond quiet_for"""
    t0 = quiet_since = last_log = time.time()
    last_log -= 10
    while True:
        a = sys_cpu()
        time.sleep(0.25)
        b = sys_cpu()
        busy = sum(b[k][0] - a[k][0] for k in b) / HZ / 0.25
        now = time.time()
        if busy >= threshold:
            quiet_since = now
            if now - last_log > 10:
                log(f"   machine busy ({busy:.2f} cores used by others), waiting")
                last_log = now
        if now - quiet_since >= quiet_for or now - t0 >= max_wait + quiet_for:
            return round(max(0.0, now - t0 - quiet_for), 1)


def dns_rcode(addr, qname, port=53, timeout=0.5):
    q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(x)]) + x.encode() for x in qname.rstrip(".").split(".")) + b"\0"
    q += struct.pack(">HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(timeout)
    try:
        s.sendto(q, (addr, port))
        return s.recv(4096)[3] & 0x0F
    except OSError:
        return None
    finally:
        s.close()


def wait_ready(addr, procs, qname=READY_NAME, limit=20):
    t0 = time.time()
    while time.time() - t0 < limit:
        if dns_rcode(addr, qname) == 0:
            return True
        if not all(p.alive() for p in procs):
            return False
        time.sleep(0.2)
    return False


# ---------------------------------------------------------------- servers
def servers(a):
    """name -> dict(addr, threads, start = [(proc name, argv, cpus)], roles = {role: proc name})"""
    conf, rd = a.conf, a.rundir
    return OrderedDict([
        ("nodedns", dict(
            addr=AGENT_ADDR, threads="agent: 1 core",
            start=[("nodedns-authority",
                    [a.authority, "--cluster-file", a.cluster, "--dns-listen", f"{AUTHORITY_ADDR}:53",
                     "--grpc-listen", f"{AUTHORITY_ADDR}:8053", "--admin-listen", f"{AUTHORITY_ADDR}:9153",
                     "--lameduck", "0"], LOAD_CPU),
                   ("nodedns-agent",
                    [a.agent, "--listen", f"{AGENT_ADDR}:53", "--admin-listen", f"{AGENT_ADDR}:9254",
                     "--authority", f"http://{AUTHORITY_ADDR}:8053", "--node-name", a.node,
                     "--upstream", f"{BACKEND}:53"] + a.agent_arg, SERVER_CPU)],
            server="nodedns-agent", authority="nodedns-authority")),
        ("unbound-1t", dict(addr="127.0.0.11", threads="1 thread",
                            start=[("unbound-1t", ["unbound", "-d", "-c", f"{conf}/unbound-1t.conf"], SERVER_CPU)],
                            server="unbound-1t")),
        ("dnsdist-1l", dict(addr="127.0.0.13", threads="1 listener",
                            start=[("dnsdist-1l", ["dnsdist", "--supervised", "--disable-syslog", "-C",
                                                   f"{conf}/dnsdist-1l.conf"], SERVER_CPU)],
                            server="dnsdist-1l")),
        ("kresd-1", dict(addr="127.0.0.12", threads="1 process",
                         start=[("kresd-1", ["kresd", "-n", "-c", f"{conf}/kresd.conf", f"{rd}/kresd"], SERVER_CPU)],
                         server="kresd-1")),
    ])


# ---------------------------------------------------------------- the load generator
def load_argv(a, wl, addr, json_path, label, warm=False):
    base, _ = WORKLOADS[wl]
    argv = [a.load, "run", "--server", f"{addr}:53", "--duration", str(a.dur), "--timeout", str(a.timeout),
            "--cluster", a.cluster, "--cluster-domain", "cluster.local", "--names", a.names,
            "--external-zone", a.external_zone, "--node", a.node, "--resolver", a.resolver,
            "--ndots", str(a.ndots), "--zipf", str(a.zipf), "--threads", str(a.threads),
            "--json", json_path, "--svg", json_path.replace(".gen.json", ".svg"), "--quiet", "--label", label] + base
    if wl == "hit-rate":
        argv += ["--rate", str(a.rate)]
    else:
        argv += ["--outstanding", str(a.outstanding)]
    if warm:
        argv += ["--warm"]
    return argv


def run_load(argv, rundir):
    """run the generator pinned to LOAD_CPU; returns (exit code, its CPU seconds, console text)"""
    full = ["taskset", "-c", LOAD_CPU] + NICE + argv
    with open(f"{rundir}/load.out", "w+") as out:
        p = subprocess.Popen(full, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
        out.seek(0)
        text = out.read()
    return os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime, text


def warm(a, wl, addr, label):
    """query every hit name once (in its own short generator run, so the measured run's CPU figures
    hold no warm-up) and say how it went"""
    path = f"{a.rundir}/warm.gen.json"
    argv = load_argv(a, "hit-max", addr, path, label + " warm-up", warm=True)
    argv[argv.index("--duration") + 1] = "2"
    argv[argv.index("--outstanding") + 1] = "10"
    argv += ["--max-names", "1"]
    argv.remove("--quiet")          # the generator reports the warm-up ("warmed: ...") only with progress on
    rc, _, text = run_load(argv, a.rundir)
    m = re.search(r"warmed: [^\r\n]*", text)
    return f"warm-up rc={rc}: " + (m.group(0) if m else text.strip()[-300:])


def measured(a, wl, addr, roles, label, json_path):
    """one load run with the CPU, RSS and foreign-CPU figures around it"""
    argv = load_argv(a, wl, addr, json_path, label)
    pids = {role: p.pid for role, p in roles.items()}
    t0, s0 = time.time(), sys_cpu()
    c0 = {role: cpu_ticks(pid) for role, pid in pids.items()}
    rc, gen_cpu_s, text = run_load(argv, a.rundir)
    c1 = {role: cpu_ticks(pid) for role, pid in pids.items()}
    t1, s1 = time.time(), sys_cpu()
    wall = t1 - t0
    try:
        gen = json.load(open(json_path))
    except (OSError, ValueError):
        gen = None
    dur = (gen or {}).get("duration_s") or wall
    answered = (gen or {}).get("answered") or 0
    resolved = ((gen or {}).get("names") or {}).get("resolved") or 0
    procs = {}
    for role, pid in pids.items():
        cpu_s = (c1[role] - c0[role]) / HZ
        procs[role] = dict(pid=pid, cpu_s=cpu_s, cores=cpu_s / dur,
                           us_per_query=1e6 * cpu_s / answered if answered else None,
                           us_per_name=1e6 * cpu_s / resolved if resolved else None,
                           **{k.lower() + "_kib": v for k, v in mem_kib(pid).items()})
    busy = {k: round(100.0 * (s1[k][0] - s0[k][0]) / max(1, s1[k][1] - s0[k][1]), 1) for k in s1}
    ours = sum(x["cpu_s"] for x in procs.values()) + gen_cpu_s
    foreign = sum(busy.values()) / 100 - ours / wall
    return dict(cmd=" ".join(argv), rc=rc, wall_s=wall, console=text[-2000:] if rc else text[-500:],
                gen=gen, procs=procs, loadgen=dict(cpu_s=gen_cpu_s, cores=gen_cpu_s / wall),
                cpu_busy_pct=busy, foreign_cores=foreign)


def run(a):
    os.makedirs(a.out, exist_ok=True)
    for d in ("pids", "logs"):
        os.makedirs(f"{a.rundir}/{d}", exist_ok=True)
    wls = [w for w in a.workloads.split(",") if w]
    for w in wls:
        if w not in WORKLOADS:
            raise SystemExit(f"unknown workload {w}; known: {', '.join(WORKLOADS)}")
    S = servers(a)
    names = [s for s in a.servers.split(",") if s]
    for s in names:
        if s not in S:
            raise SystemExit(f"unknown server {s}; known: {', '.join(S)}")
        assert_loopback(S[s]["addr"])
    meta = dict(started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), dur=a.dur, reps=a.reps, servers=names,
                workloads=wls, rate=a.rate, outstanding=a.outstanding, timeout=a.timeout, zipf=a.zipf,
                threads=a.threads, node=a.node, resolver=a.resolver, ndots=a.ndots,
                external_zone=a.external_zone, retries=a.retries, foreign_max=a.foreign_max,
                layout=f"server under test (nodedns-agent or the peer) on CPU {SERVER_CPU}; load generator, "
                       f"knot backend and nodedns-authority on CPU {LOAD_CPU}; all at nice -20",
                descriptions={w: WORKLOADS[w][1].format(**vars(a)) for w in wls},
                cluster=a.cluster_desc, versions=a.versions, host=a.host)
    with open(f"{a.out}/meta.json", "w") as f:
        json.dump(meta, f, indent=1)
    log(f"== layout: {meta['layout']}")

    started = []
    knot = Proc("knotd", ["knotd", "-c", f"{a.conf}/knot.conf"], LOAD_CPU, a.rundir)
    started.append(knot)
    gate_used = 0.0
    try:
        if not wait_ready(BACKEND, [knot]):
            raise SystemExit(f"knotd did not answer {READY_NAME} on {BACKEND}:53; see {a.rundir}/logs/knotd.log")
        for q, want in (("www1.example.test", 0), ("x.rnd.example.test", 0), ("nonesuch.cluster.local", 3)):
            if dns_rcode(BACKEND, q) != want:
                raise SystemExit(f"knotd: {q} did not get rcode {want}; see {a.rundir}/logs/knotd.log")
        for line in open(f"{a.rundir}/logs/knotd.log"):
            log(f"   knotd: {line.rstrip()}")
        for name in names:
            spec = S[name]
            log(f"== {name} on {spec['addr']}:53 ({spec['threads']})")
            if name.startswith("kresd"):
                subprocess.run(["rm", "-rf", f"{a.rundir}/kresd"], check=True)
                os.makedirs(f"{a.rundir}/kresd")
            procs = OrderedDict()
            for pname, argv, cpus in spec["start"]:
                procs[pname] = Proc(pname, argv, cpus, a.rundir)
                started.append(procs[pname])
            if not wait_ready(spec["addr"], list(procs.values())):
                raise SystemExit(f"{name} did not answer {READY_NAME} on {spec['addr']}:53; see {a.rundir}/logs/")
            roles = OrderedDict([("server", procs[spec["server"]])])
            if "authority" in spec:
                roles["authority"] = procs[spec["authority"]]
            roles["backend"] = knot
            start_mem = {role: mem_kib(p.pid) for role, p in roles.items()}
            for wl in wls:
                for rep in range(1, a.reps + 1):
                    for attempt in range(a.retries + 1):
                        label = f"{name} {wl} r{rep}" + (f" a{attempt}" if attempt else "")
                        base = f"{a.out}/{name}.{wl}.r{rep}" + (f".a{attempt}" if attempt else "")
                        waited = quiet_gate(min(a.gate, max(0.0, a.gate_total - gate_used)), a.quiet_for)
                        gate_used += waited
                        if wl.startswith("hit"):
                            log(f"   {warm(a, wl, spec['addr'], label)}")
                        r = measured(a, wl, spec["addr"], {k: v.p for k, v in roles.items()}, label, base + ".gen.json")
                        dead = [p.name for p in procs.values() if not p.alive()]
                        r.update(server=name, threads=spec["threads"], workload=wl, rep=rep, attempt=attempt,
                                 gate_waited_s=waited, start_mem=start_mem, dead=dead,
                                 contaminated=r["foreign_cores"] > a.foreign_max)
                        with open(base + ".json", "w") as f:
                            json.dump(r, f, indent=1)
                        log("   " + one_line(r))
                        if r["rc"] != 0:
                            log("   generator: " + r["console"].strip().replace("\n", "\n   generator: "))
                        if dead:
                            raise SystemExit(f"{', '.join(dead)} exited during the run; see {a.rundir}/logs/")
                        if not r["contaminated"]:
                            break
                        log(f"   ^ other processes used {r['foreign_cores']:.2f} cores during the run"
                            + ("; running it again" if attempt < a.retries else "; kept, flagged"))
            for p in procs.values():
                p.stop()
                started.remove(p)
    finally:
        for p in reversed(started):
            p.stop()


def one_line(r):
    g = r["gen"] or {}
    lat = g.get("latency_ms") or {}
    srv = r["procs"]["server"]
    s = (f"{r['workload']:12s} r{r['rep']} qps={g.get('qps') or 0:>9,.0f} p50={lat.get('p50', 0):.3f} "
         f"p99={lat.get('p99', 0):.3f}ms lost={g.get('lost')} rounds={(g.get('names') or {}).get('rounds_mean')} "
         f"srv={srv['cores']:.2f}c/{fmt(srv['us_per_query'], 1)}us/q")
    if "authority" in r["procs"]:
        s += f" auth={r['procs']['authority']['cores']:.2f}c"
    s += (f" knot={r['procs']['backend']['cores']:.2f}c gen={r['loadgen']['cores']:.2f}c "
          f"foreign={r['foreign_cores']:.2f} rc={r['rc']} rcodes={g.get('rcodes')}")
    return s


# ---------------------------------------------------------------- tables
def fmt(v, nd=1):
    if v is None:
        return "–"
    return f"{v:,.{nd}f}"


def cell(vals, nd=1, scale=1.0):
    """median [min–max] of the values that exist"""
    vals = [v * scale for v in vals if v is not None]
    if not vals:
        return "–"
    m = statistics.median(vals)
    if fmt(min(vals), nd) == fmt(max(vals), nd):
        return fmt(m, nd)
    return f"{fmt(m, nd)} [{fmt(min(vals), nd)}–{fmt(max(vals), nd)}]"


def metrics(r):
    """the figures of one run, flat"""
    g = r.get("gen") or {}
    nm = g.get("names") or {}
    lat, nlat = g.get("latency_ms") or {}, nm.get("latency_ms") or {}
    p = r["procs"]
    srv, auth, be = p["server"], p.get("authority"), p["backend"]
    started = nm.get("started") or 0
    return dict(
        qps=g.get("qps"), names_per_s=g.get("names_per_s"),
        p50=lat.get("p50"), p99=lat.get("p99"), p99_9=lat.get("p99_9"), pmax=lat.get("max"),
        np50=nlat.get("p50"), np99=nlat.get("p99"),
        loss=100.0 * g["loss_ratio"] if g.get("loss_ratio") is not None else None,
        unresolved=100.0 * (nm.get("unresolved") or 0) / started if started else None,
        rounds=nm.get("rounds_mean"),
        srv_cores=srv["cores"], srv_us=srv["us_per_query"], srv_us_name=srv["us_per_name"],
        srv_rss=srv.get("vmrss_kib"), srv_hwm=srv.get("vmhwm_kib"),
        auth_us=auth["us_per_query"] if auth else None, auth_rss=auth.get("vmrss_kib") if auth else None,
        auth_hwm=auth.get("vmhwm_kib") if auth else None,
        be_us=be["us_per_query"], gen_cores=r["loadgen"]["cores"], foreign=r["foreign_cores"],
        rcodes=g.get("rcodes") or {})


# (header, metric, decimals, scale); MiB = KiB / 1024
COLS_QUERY = [("QPS", "qps", 0, 1), ("p50 ms", "p50", 3, 1), ("p99 ms", "p99", 3, 1), ("p99.9 ms", "p99_9", 3, 1),
              ("loss %", "loss", 2, 1), ("srv CPU %", "srv_cores", 0, 100), ("srv µs/q", "srv_us", 1, 1),
              ("srv RSS MiB (HWM)", "srv_rss", 1, 1 / 1024),
              ("authority µs/q", "auth_us", 1, 1), ("authority RSS MiB (HWM)", "auth_rss", 1, 1 / 1024),
              ("knot µs/q", "be_us", 1, 1), ("rounds/name", "rounds", 2, 1), ("gen CPU %", "gen_cores", 0, 100)]
COLS_NAMES = [("names/s", "names_per_s", 0, 1), ("QPS", "qps", 0, 1), ("rounds/name", "rounds", 2, 1),
              ("name p50 ms", "np50", 3, 1), ("name p99 ms", "np99", 3, 1), ("query p99 ms", "p99", 3, 1),
              ("loss %", "loss", 2, 1), ("unresolved %", "unresolved", 2, 1), ("srv CPU %", "srv_cores", 0, 100),
              ("srv µs/name", "srv_us_name", 1, 1), ("srv µs/q", "srv_us", 1, 1),
              ("srv RSS MiB (HWM)", "srv_rss", 1, 1 / 1024), ("authority µs/name", None, 1, 1),
              ("authority RSS MiB (HWM)", "auth_rss", 1, 1 / 1024), ("knot µs/q", "be_us", 1, 1),
              ("gen CPU %", "gen_cores", 0, 100)]


def load_runs(d):
    runs = []
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".json") and not fn.endswith(".gen.json") and fn != "meta.json":
            with open(os.path.join(d, fn)) as f:
                runs.append(json.load(f))
    return runs


def table(d, title=None):
    meta = json.load(open(os.path.join(d, "meta.json")))
    runs = load_runs(d)
    groups = OrderedDict()
    for s in meta["servers"]:
        for w in meta["workloads"]:
            groups[(s, w)] = []
    for r in runs:
        groups.setdefault((r["server"], r["workload"]), []).append(r)
    used = {}
    for k, allr in groups.items():
        ok = [r for r in allr if r.get("gen") and r["rc"] == 0]
        clean = [r for r in ok if not r.get("contaminated")]
        used[k] = (clean or ok, allr, bool(ok) and not clean)
    out = []
    P = out.append
    P(f"# {title or 'nodedns-agent next to its peers (nodedns-load)'}\n")
    P(f"Run {meta['started']}; {meta['reps']} repetitions of {meta['dur']} s per server and workload; "
      f"each cell is the median [min–max] over the repetitions.\n")
    P(f"**Pinning: {meta['layout']}.** The 2-core layout of ../shared/peerbench: the load generator shares "
      f"CPU 0 with the knot backend and nodedns-authority, so on misses the generator competes with them.\n")
    P(f"- Machine: {meta['host']}")
    P(f"- Versions: {meta['versions']}")
    P(f"- Data: {meta['cluster']}")
    P(f"- Load generator: `nodedns-load run`, {meta['threads']} thread(s), zipf {meta['zipf']}, "
      f"timeout {meta['timeout']} s (unanswered after that = lost); hit names = the cluster's service A names "
      f"plus www0..99.example.test, warmed (every name asked once) in a separate short run before each hit run")
    P("- Servers: nodedns = nodedns-agent (CPU 1, the server under test: `srv` columns) + nodedns-authority "
      "(CPU 0: `authority` columns; the agent reaches it over gRPC); peers from ../shared/peerbench, each started "
      "fresh, forwarding everything to the knot backend (127.0.0.2, 1 UDP worker, CPU 0: `knot` column)")
    P("- CPU: utime+stime of the process (all threads) over the run, from /proc/PID/stat; "
      "`CPU %` = CPU s / run s in % of one core; `µs/q` = CPU µs per answered query (`µs/name` per resolved name). RSS (HWM): VmRSS after the run, median [min–max] "
      "(VmHWM, the peak, max over the runs)")
    P(f"- `n` = runs used / runs made: runs during which other processes used > {meta['foreign_max']} cores are "
      f"re-run up to {meta['retries']} time(s) and left out when clean runs exist (`*` = only contaminated runs)\n")
    for w in meta["workloads"]:
        P(f"## {w}: {meta['descriptions'].get(w, '')}\n")
        cols = COLS_NAMES if w == "search-path" else COLS_QUERY
        P("| server | n | " + " | ".join(c[0] for c in cols) + " | rcodes | foreign cores (max) |")
        P("|---" * (len(cols) + 4) + "|")
        for s in meta["servers"]:
            rs, allr, star = used.get((s, w), ([], [], False))
            label = "nodedns-agent" if s == "nodedns" else s
            if not rs:
                P(f"| {label} | 0/{len(allr)} |" + " – |" * (len(cols) + 2))
                continue
            ms = [metrics(r) for r in rs]
            row = [f"{label}{' *' if star else ''}", f"{len(rs)}/{len(allr)}"]
            for hdr, key, nd, scale in cols:
                if key is None:   # authority per resolved name
                    vals = [r["procs"]["authority"]["us_per_name"] if "authority" in r["procs"] else None for r in rs]
                else:
                    vals = [m[key] for m in ms]
                c = cell(vals, nd, scale)
                hwm = [m[key.replace("rss", "hwm")] for m in ms] if key in ("srv_rss", "auth_rss") else []
                if c != "–" and any(h is not None for h in hwm):
                    c += f" ({fmt(max(h for h in hwm if h is not None) * scale, nd)})"
                row.append(c)
            rc = OrderedDict()
            for m in ms:
                for k, v in m["rcodes"].items():
                    rc[k] = rc.get(k, 0) + v
            row.append(" ".join(f"{k}:{v}" for k, v in rc.items()) or "–")
            row.append(fmt(max(m["foreign"] for m in ms), 2))
            P("| " + " | ".join(row) + " |")
        P("")
    # ratios, nodedns-agent to each peer, medians of the same run
    peers = [s for s in meta["servers"] if s != "nodedns"]
    if "nodedns" in meta["servers"] and peers:
        P("## nodedns-agent ÷ peer (medians from this run)\n")
        P("Throughput > 1: the agent answered more; latency, CPU and round trips < 1: the agent needed less. "
          "search-path compares names/s, per-name latency and CPU per resolved name.\n")
        P("| workload | peer | throughput | p50 | p99 | p99.9 | srv µs per answer | srv + authority µs per answer | srv RSS | rounds/name |")
        P("|---|---|---|---|---|---|---|---|---|---|")
        for w in meta["workloads"]:
            a_rs = used.get(("nodedns", w), ([],))[0]
            if not a_rs:
                continue
            am = [metrics(r) for r in a_rs]
            names = w == "search-path"

            def med(ms, key):
                v = [m[key] for m in ms if m[key] is not None]
                return statistics.median(v) if v else None

            def ratio(x, y):
                return f"{x / y:.2f}×" if x is not None and y else "–"
            for s in peers:
                p_rs = used.get((s, w), ([],))[0]
                if not p_rs:
                    continue
                pm = [metrics(r) for r in p_rs]
                thr = "names_per_s" if names else "qps"
                us = "srv_us_name" if names else "srv_us"
                lat = ("np50", "np99", None) if names else ("p50", "p99", "p99_9")
                a_tot = med(am, us)
                if not names and med(am, "auth_us") is not None and a_tot is not None:
                    a_tot += med(am, "auth_us")
                if names and a_tot is not None:
                    auth_name = [r["procs"]["authority"]["us_per_name"] for r in a_rs
                                 if "authority" in r["procs"] and r["procs"]["authority"]["us_per_name"] is not None]
                    if auth_name:
                        a_tot += statistics.median(auth_name)
                P(f"| {w} | {s} | {ratio(med(am, thr), med(pm, thr))} | {ratio(med(am, lat[0]), med(pm, lat[0]))} "
                  f"| {ratio(med(am, lat[1]), med(pm, lat[1]))} "
                  f"| {ratio(med(am, lat[2]), med(pm, lat[2])) if lat[2] else '–'} "
                  f"| {ratio(med(am, us), med(pm, us))} | {ratio(a_tot, med(pm, us))} "
                  f"| {ratio(med(am, 'srv_rss'), med(pm, 'srv_rss'))} | {ratio(med(am, 'rounds'), med(pm, 'rounds'))} |")
        P("")
        P("`srv + authority`: the agent's and the authority's CPU together against the peer's alone (the peers' "
          "backend, knot, is left out on both sides).\n")
    failed = [r for r in runs if r["rc"] != 0 or not r.get("gen")]
    if failed:
        P("Runs that failed (generator exit code ≠ 0 or no JSON report), left out above: "
          + ", ".join(f"{r['server']} {r['workload']} r{r['rep']} (rc {r['rc']})" for r in failed) + "\n")
    return "\n".join(out)


def _on_signal(signum, frame):
    raise SystemExit(f"bench_compare.py: got signal {signum}, stopping servers")


def main():
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True, help="directory for the per-run JSON files")
    r.add_argument("--rundir", required=True, help="runtime directory (logs, pids, confs, caches)")
    r.add_argument("--conf", required=True, help="directory of the knot/unbound/dnsdist/kresd confs")
    r.add_argument("--cluster", required=True, help="cluster file (authority, and the generator's names)")
    r.add_argument("--names", required=True, help="extra hit names (dnsperf format): www*.example.test")
    r.add_argument("--load", required=True, help="nodedns-load binary")
    r.add_argument("--agent", required=True)
    r.add_argument("--authority", required=True)
    r.add_argument("--agent-arg", action="append", default=[], help="extra nodedns-agent flag (repeatable)")
    r.add_argument("--servers", default="nodedns,unbound-1t,dnsdist-1l,kresd-1")
    r.add_argument("--workloads", default="hit-max,hit-rate,cluster-miss,external,search-path")
    r.add_argument("--dur", type=int, default=10)
    r.add_argument("--reps", type=int, default=3)
    r.add_argument("--rate", type=int, default=20000, help="names/s of the open-loop hit workload")
    r.add_argument("--outstanding", type=int, default=100)
    r.add_argument("--timeout", type=float, default=1.0)
    r.add_argument("--zipf", type=float, default=1.0)
    r.add_argument("--threads", type=int, default=1, help="load generator threads")
    r.add_argument("--node", default="node0")
    r.add_argument("--resolver", default="glibc")
    r.add_argument("--ndots", type=int, default=5)
    r.add_argument("--external-zone", default="rnd.example.test")
    r.add_argument("--gate", type=float, default=10, help="max s to wait for an idle machine before a run")
    r.add_argument("--gate-total", type=float, default=120, help="max s of such waiting in all")
    r.add_argument("--quiet-for", type=float, default=0.5, help="s of machine idleness wanted before a run")
    r.add_argument("--foreign-max", type=float, default=0.10)
    r.add_argument("--retries", type=int, default=1)
    r.add_argument("--cluster-desc", default="")
    r.add_argument("--versions", default="")
    r.add_argument("--host", default="")
    t = sub.add_parser("table")
    t.add_argument("dir")
    t.add_argument("--title")
    t.add_argument("--into", help="replace the text between the bench-compare markers of this file "
                   "(BENCHMARKS.md) with the tables, headings one level down, instead of printing them")
    a = ap.parse_args()
    if a.cmd == "run":
        run(a)
    elif a.into:
        into(a.into, table(a.dir, a.title))
    else:
        print(table(a.dir, a.title))


BEGIN = "<!-- bench-compare:begin (written by loadtest/bench_compare.py table --into) -->"
END = "<!-- bench-compare:end -->"


def into(path, text):
    """Puts `text` between the markers in `path`, its headings demoted by two levels (the
    file's section is a `##`), so re-running the benchmark replaces the previous tables."""
    doc = open(path).read()
    if BEGIN not in doc or END not in doc:
        sys.exit(f"{path}: the markers are missing; add these two lines where the tables go:\n{BEGIN}\n{END}")
    lines = []
    for line in text.splitlines():
        if line.startswith("#"):
            line = "##" + line
        lines.append(line)
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    open(path, "w").write(head + BEGIN + "\n" + "\n".join(lines).strip() + "\n" + END + tail)
    log(f"wrote the tables into {path}")


if __name__ == "__main__":
    main()
