#!/usr/bin/env bash
# Instructions per cached answer of the agent, as ../shared/perf-notes.md measures them: the
# release agent under valgrind's callgrind (instruction counts repeat where CPU time does not),
# caches warmed with 2 passes over NAMES names, counters zeroed, then QUERIES cached queries at
# RATE per second, dumped. Prints instructions per answer for the whole process and for the
# busiest thread (the UDP receive thread that answered the hits).
#
# Prerequisites: apt-get install -y valgrind dnsperf
# Usage: loadtest/callgrind-agent.sh            # NAMES=1100 QUERIES=5500 RATE=500
# Loopback only; every step is bounded (dnsperf -n/-l, timeouts).
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES=${NAMES:-1100}
QUERIES=${QUERIES:-5500}
RATE=${RATE:-500}
for b in valgrind callgrind_control dnsperf timeout; do
  command -v "$b" >/dev/null || { echo "missing: $b (apt-get install -y valgrind dnsperf)"; exit 1; }
done
cargo build --release -p nodedns-agent -p nodedns-load --quiet
dir=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$dir"; }
trap cleanup EXIT

target/release/nodedns-load stand-in-upstream 127.0.0.72 --seconds 600 > "$dir/upstream" &
pids+=($!)
for _ in $(seq 50); do [ -s "$dir/upstream" ] && break; sleep 0.1; done
upstream=$(head -1 "$dir/upstream")
for i in $(seq 0 $((NAMES - 1))); do echo "h$i.example.com A"; done > "$dir/names"

valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$dir/cg.out" \
  target/release/nodedns-agent --standalone-cluster-file authority/demo/cluster.yaml --node-name bench \
  --listen 127.0.0.70:5399 --admin-listen 127.0.0.70:9299 --upstream "$upstream" \
  --resolv-conf /dev/null > "$dir/agent.log" 2>&1 &
agent=$!
pids+=($agent)
for _ in $(seq 600); do
  curl -sf 127.0.0.70:9299/ready >/dev/null 2>&1 && break
  sleep 0.1
done
curl -sf 127.0.0.70:9299/ready >/dev/null || { echo "agent not ready under valgrind"; cat "$dir/agent.log"; exit 1; }
# Warm: every name cached (first pass misses, second hits).
dnsperf -s 127.0.0.70 -p 5399 -d "$dir/names" -n 2 -Q 2000 -q 50 -l 30 > /dev/null
callgrind_control --zero "$agent" > /dev/null 2>&1
dnsperf -s 127.0.0.70 -p 5399 -d "$dir/names" -n $((QUERIES / NAMES)) -Q "$RATE" -q 10 -l 60 > "$dir/perf"
callgrind_control --dump "$agent" > /dev/null 2>&1
# Keep the dumps for `callgrind_annotate` (by function, inclusive: --inclusive=yes).
OUT=${OUT:-/tmp/callgrind-agent}
rm -rf "$OUT" && mkdir -p "$OUT" && cp "$dir"/cg.out* "$OUT"/
answered=$(awk '/Queries completed:/ {print $3}' "$dir/perf")
python3 - "$dir" "$answered" <<'EOF'
import glob, re, sys
d, answered = sys.argv[1], int(sys.argv[2])
per_thread = {}
for f in glob.glob(d + "/cg.out*"):
    text = open(f, errors="replace").read()
    # Only the dump taken after zeroing (its file names end with -NN.part or carry "Dump" reason).
    if "--zero" in text and "Trigger: Program termination" in text:
        continue
    m = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)", text, re.M)
    thread = re.search(r"^thread:\s+(\d+)", text, re.M)
    trig = re.search(r"^desc: Trigger: (.*)$", text, re.M)
    if m and trig and "dump" in trig.group(1).lower():
        per_thread[thread.group(1) if thread else f] = int(m.group(1))
total = sum(per_thread.values())
busiest = max(per_thread.values()) if per_thread else 0
print(f"answers: {answered}")
print(f"instructions, all threads: {total:,} = {total / max(answered, 1):,.0f} per answer")
print(f"instructions, busiest thread: {busiest:,} = {busiest / max(answered, 1):,.0f} per answer")
EOF
echo "dumps in $OUT (callgrind_annotate --inclusive=yes FILE shows the cost by function)"
