#!/usr/bin/env bash
# Client-side latency percentiles of cache hits at a fixed rate: the agent and peerbench's C
# reflector (the kernel's floor) in the same run, each pinned to CPU 1 with dnsperf on CPU 0.
# dnsperf 2.10 reports only average and max, so its per-query lines (-v) are collected and the
# percentiles computed here. (nodedns-load's own open-loop mode with an HDR histogram is the
# loadtest issue's; this is the stop-gap for the agent issue's p99 target.)
#
# Prerequisites: apt-get install -y dnsperf gcc; ../shared/peerbench beside the checkout.
# Usage: loadtest/latency-agent.sh           # RATE=50000 DUR=5 REPS=3
# Loopback only; every run is bounded (dnsperf -l).
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=${RATE:-50000}
DUR=${DUR:-5}
REPS=${REPS:-3}
PEERBENCH=$(cd "${PEERBENCH:-../shared/peerbench}" && pwd)
for b in dnsperf gcc taskset python3; do
  command -v "$b" >/dev/null || { echo "missing: $b"; exit 1; }
done
cargo build --release -p nodedns-agent -p nodedns-load --quiet
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT
gcc -O2 -o "$dir/reflector" "$PEERBENCH/reflector.c"

target/release/nodedns-load stand-in-upstream 127.0.0.72 --seconds 900 > "$dir/upstream" &
pids+=($!)
for _ in $(seq 50); do [ -s "$dir/upstream" ] && break; sleep 0.1; done
taskset -c 1 target/release/nodedns-agent --standalone-cluster-file authority/demo/cluster.yaml \
  --node-name bench --listen 127.0.0.70:5399 --admin-listen 127.0.0.70:9299 \
  --upstream "$(head -1 "$dir/upstream")" --resolv-conf /dev/null > "$dir/agent.log" 2>&1 &
pids+=($!)
taskset -c 1 "$dir/reflector" 127.0.0.73 5399 > "$dir/reflector.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf 127.0.0.70:9299/ready >/dev/null 2>&1 && break; sleep 0.1; done
for i in $(seq 0 1099); do echo "h$i.example.com A"; done > "$dir/names"
dnsperf -s 127.0.0.70 -p 5399 -d "$dir/names" -n 2 -Q 5000 > /dev/null   # warm: every name cached

echo "| server | rate | answered | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |"
echo "|---|---|---|---|---|---|---|---|"
for rep in $(seq "$REPS"); do
  for server in 127.0.0.73:reflector 127.0.0.70:nodedns-agent; do
    addr=${server%%:*} name=${server#*:}
    taskset -c 0 dnsperf -s "$addr" -p 5399 -d "$dir/names" -Q "$RATE" -l "$DUR" -c 10 -v 2>/dev/null \
      | python3 -c '
import sys
name, rate = sys.argv[1], sys.argv[2]
lat = sorted(float(l.split()[-1]) * 1e3 for l in sys.stdin if l.startswith("> "))
if not lat:
    print(f"| {name} | {rate} | 0 | | | | | |"); sys.exit()
p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]
print(f"| {name} | {rate} | {len(lat)} | {p(.5):.3f} | {p(.9):.3f} | {p(.99):.3f} | {p(.999):.3f} | {lat[-1]:.3f} |")
' "$name" "$RATE"
  done
done
