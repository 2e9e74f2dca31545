#!/usr/bin/env bash
# Agent benchmark: nodedns-agent's cache hits (and misses) next to unbound, dnsdist and the C
# reflector (the kernel's floor), all through ../shared/peerbench's harness in one run: same knot
# backend, same query files, server on CPU 1, dnsperf/blast on CPU 0, medians of REPS runs.
#
# Prerequisites: apt-get install -y dnsperf unbound knot-resolver dnsdist knot knot-dnsutils gcc python3
# Usage: loadtest/bench-agent.sh                      # DUR=5 REPS=3, hit, 50k rate, miss and blast
#        DUR=10 REPS=5 PEERS=reflector,nodedns-agent loadtest/bench-agent.sh
# Loopback only; every run is bounded (dnsperf -l, blast DUR) and the whole run by LIMIT seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERBENCH=$(cd "${PEERBENCH:-../shared/peerbench}" && pwd)
RUNDIR=/dev/shm/peerbench-run
DUR=${DUR:-5}
REPS=${REPS:-3}
PEERS=${PEERS:-reflector,unbound-1t,dnsdist-1l,nodedns-agent}
WORKLOADS=${WORKLOADS:-hit,rate,miss,blast}
RATES=${RATES:-50000}
LIMIT=${LIMIT:-900}
TAG=${TAG:-agent-$(date +%Y%m%d-%H%M%S)-d${DUR}}
for b in dnsperf knotd unbound dnsdist gcc taskset python3 timeout; do
  command -v "$b" >/dev/null || { echo "missing: $b (see prerequisites above)"; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server on CPU 1, load on CPU 0)"; exit 1; }
cargo build --release -p nodedns-agent --quiet
export NODEDNS_AGENT=$PWD/target/release/nodedns-agent PEERBENCH
rm -rf "$RUNDIR"
mkdir -p "$RUNDIR"/knot/db "$RUNDIR"/unbound "$RUNDIR"/kresd "$RUNDIR"/logs "$RUNDIR"/pids
python3 "$PEERBENCH/gen.py" "$RUNDIR" $(( DUR * 150000 )) $(( REPS + 3 ))
gcc -O2 -o "$RUNDIR/reflector" "$PEERBENCH/reflector.c"
gcc -O2 -o "$RUNDIR/blast" "$PEERBENCH/blast.c"
mkdir -p loadtest/results
timeout --signal=TERM --kill-after=15 "$LIMIT" python3 loadtest/peerbench_agent.py --dur "$DUR" --reps "$REPS" \
  --rates "$RATES" --peers "$PEERS" --workloads "$WORKLOADS" --retries 1 --quiet-for 0.5 \
  --out loadtest/results --tag "$TAG"
python3 "$PEERBENCH/table.py" "loadtest/results/runs-$TAG.jsonl" | tee "loadtest/results/table-$TAG.md"
