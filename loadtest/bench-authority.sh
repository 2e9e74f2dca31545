#!/usr/bin/env bash
# Authority benchmark: queries/second of nodedns-authority (no cache: every answer comes from the
# zone index) over a generated cluster, measured with dnsperf, next to peerbench's C reflector (the
# kernel's floor on this machine) and Knot DNS (an authoritative peer, serving the very same
# records, dumped from our index) in the same run. Also the zone engine's heap for that cluster.
#
# Prerequisites: apt-get install -y dnsperf gcc knot; ../shared/peerbench beside the checkout.
# Without knotd the Knot rows are skipped.
# Usage: loadtest/bench-authority.sh            # 10,000 services, 3 runs of 10 s each, flat out
#                                                # and at a fixed 50,000 queries/s
#        SERVICES=2000 RUNS=1 DUR=3 loadtest/bench-authority.sh
# Pinning: server on CPU 1, dnsperf on CPU 0 (as peerbench runs its peers). Loopback only; every
# run is bounded by dnsperf -l.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVICES=${SERVICES:-10000}
PODS=${PODS:-50000}
RUNS=${RUNS:-3}
DUR=${DUR:-10}
PORT=${PORT:-5391}
WORK=${WORK:-/tmp/nodedns-bench-authority}
PEERBENCH=${PEERBENCH:-../shared/peerbench}

for b in dnsperf taskset gcc; do command -v "$b" >/dev/null || { echo "missing: $b (apt-get install -y dnsperf gcc)"; exit 1; }; done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server on CPU 1, dnsperf on CPU 0)"; exit 1; }
mkdir -p "$WORK"
cargo build --workspace --release --quiet
BIN=target/release
"$BIN/nodedns-load" gen-cluster --services "$SERVICES" --pods "$PODS" --out "$WORK/cluster.yaml" --queries "$WORK/queries.txt" >/dev/null
gcc -O2 -o "$WORK/reflector" "$PEERBENCH/reflector.c"

echo "## zone engine memory ($SERVICES services, $PODS pods)"
"$BIN/nodedns-load" zone-memory "$WORK/cluster.yaml"

pids=()
cleanup() { for p in "${pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# run_dnsperf PID [RATE] -> prints "qps avg_ms lost cpu_us_per_q"
run_dnsperf() {
  local pid=$1 t0 t1 out rate=()
  [ -n "${2:-}" ] && rate=(-Q "$2")
  t0=$(cpu_ticks "$pid")
  out=$(taskset -c 0 dnsperf -s 127.0.0.1 -p "$PORT" -d "$WORK/queries.txt" -c 10 -T 1 -l "$DUR" -t 2 "${rate[@]}" 2>&1)
  t1=$(cpu_ticks "$pid")
  local qps lost avg
  qps=$(awk '/Queries per second/ {print $4}' <<<"$out")
  lost=$(awk '/Queries lost/ {print $3}' <<<"$out")
  avg=$(awk '/Average Latency/ {print $4 * 1000}' <<<"$out")
  local hz; hz=$(getconf CLK_TCK)
  awk -v q="$qps" -v a="$avg" -v l="$lost" -v c0="$t0" -v c1="$t1" -v hz="$hz" -v d="$DUR" \
    'BEGIN { printf "%.0f %.3f %s %.2f\n", q, a, l, ((c1 - c0) / hz) * 1e6 / (q * d) }'
}

median() { sort -n | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%s (%s-%s)", m, a[1], a[NR]}'; }

# measure NAME PID LOAD: RUNS runs at LOAD ("max" or a rate in queries/s), one table row
measure() {
  local name=$1 pid=$2 load=$3 i runs="$WORK/${1%% *}-$3.runs"
  : >"$runs"
  for i in $(seq "$RUNS"); do run_dnsperf "$pid" "${load#max}" >>"$runs"; done
  local rss; rss=$(awk '/VmRSS/ {r=$2} /VmHWM/ {h=$2} END {printf "%.1f / %.1f", r/1024, h/1024}' "/proc/$pid/status")
  printf "| %s | %s | %s | %s | %s | %s | %s MiB |\n" "$name" "$load" \
    "$(cut -d' ' -f1 "$runs" | median)" \
    "$(cut -d' ' -f2 "$runs" | median)" \
    "$(cut -d' ' -f4 "$runs" | median)" \
    "$(cut -d' ' -f3 "$runs" | paste -sd+ | bc)" "$rss"
}

wait_answer() {
  for _ in $(seq 600); do
    "$BIN/nodedns-load" query --timeout 0.1 "127.0.0.1:$PORT" svc1.ns1.svc.cluster.local >/dev/null 2>&1 && return 0
  done
  echo "server on :$PORT did not answer"; exit 1
}

echo
echo "## dnsperf -c 10 -T 1 -l $DUR, $(wc -l <"$WORK/queries.txt") names (A, SRV, NXDOMAIN), $RUNS runs, median (min-max)"
echo
echo "| server | load | QPS | avg latency ms | server CPU µs/query | lost | RSS now / peak |"
echo "|---|---|---|---|---|---|---|"
taskset -c 1 "$WORK/reflector" 127.0.0.1 "$PORT" & pids+=($!)
sleep 0.5
measure reflector "${pids[-1]}" max
measure reflector "${pids[-1]}" 50000
kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true

if command -v knotd >/dev/null; then
  "$BIN/nodedns-load" zone-file "$WORK/cluster.yaml" --out "$WORK/cluster.local.zone" >/dev/null
  mkdir -p "$WORK/knot/db"
  cat >"$WORK/knot.conf" <<KNOT
server:
    rundir: $WORK/knot
    listen: 127.0.0.1@$PORT
    udp-workers: 1
    tcp-workers: 1
    background-workers: 1
log:
  - target: stderr
    any: warning
database:
    storage: $WORK/knot/db
template:
  - id: default
    storage: $WORK
    zonefile-sync: -1
    zonefile-load: whole
    journal-content: none
    semantic-checks: off
zone:
  - domain: cluster.local
    file: cluster.local.zone
KNOT
  taskset -c 1 knotd -c "$WORK/knot.conf" 2>"$WORK/knot.log" & pids+=($!)
  wait_answer
  measure "knot $(knotd -V | awk '{print $NF}') (1 UDP worker)" "${pids[-1]}" max
  measure "knot $(knotd -V | awk '{print $NF}') (1 UDP worker)" "${pids[-1]}" 50000
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true
fi

started=$(date +%s.%N)
taskset -c 1 "$BIN/nodedns-authority" --cluster-file "$WORK/cluster.yaml" --dns-listen "127.0.0.1:$PORT" \
  --admin-listen 127.0.0.1:0 --lameduck 0 2>"$WORK/authority.log" & pids+=($!)
wait_answer
loaded=$(date +%s.%N)
measure nodedns-authority "${pids[-1]}" max
measure nodedns-authority "${pids[-1]}" 50000
echo
echo "authority start-up to first answer: $(awk -v a="$started" -v b="$loaded" 'BEGIN {printf "%.2f s", b - a}') (includes parsing the $(du -h "$WORK/cluster.yaml" | cut -f1) cluster file)"
grep -o 'records=[0-9]*.*build_ms=[0-9.]*' "$WORK/authority.log" | head -1
