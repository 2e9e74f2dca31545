#!/usr/bin/env bash
# Scale runs with the API simulator: the Kubernetes API load of nodedns (one watch set per
# authority replica) next to a per-node CoreDNS with `pods verified` (one watch set per node) as
# nodes grow, then the authority's memory and notice fan-out at 1,000 and 5,000 subscribed agents.
# Everything runs against nodedns-kubesim in-process on loopback; each figure is the median of RUNS
# runs with [min–max]. Output goes to stdout and to $WORK.
#
# The watch-scale cluster is small (200 services, 1,000 endpoints, 1,000 pods) because every
# simulated node lists all of it at start; the steady-state watch bytes/s depend on the churn rate
# and the object sizes, not on the cluster's size, and list bytes grow linearly with it.
#
# Usage: loadtest/bench-scale.sh                         # about 15 minutes on 2 cores
#        RUNS=3 NODE_COUNTS=10,50 AGENTS=1000 WINDOW=5 loadtest/bench-scale.sh   # a quick look
# Bounded: watch-scale skips node counts it has not started within LIMIT seconds, and every
# command is killed after LIMIT seconds (plus a margin) in any case.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RUNS:-3}
NODE_COUNTS=${NODE_COUNTS:-10,50,100,250,500}
REPLICAS=${REPLICAS:-1,2}
WINDOW=${WINDOW:-10}
RATE=${RATE:-10}           # pod replacements per second (7 API events each)
SERVICES=${SERVICES:-200}
PODS=${PODS:-1000}
NAMESPACES=${NAMESPACES:-20}
AGENTS=${AGENTS:-1000,5000}
CHANGES=${CHANGES:-30}
LIMIT=${LIMIT:-900}
WORK=${WORK:-/tmp/nodedns-bench-scale}

mkdir -p "$WORK"
# Thousands of connections with both ends in one process; the binaries raise the soft limit to
# the hard one themselves, this covers anything else started here.
ulimit -n "$(ulimit -Hn)"
cargo build --release --quiet -p nodedns-load -p nodedns-authority
BIN=target/release

echo "# bench-scale $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, open-file limit $(ulimit -n)"
echo
echo "## API watch load as nodes grow"
echo "command: nodedns-load watch-scale --services $SERVICES --namespaces $NAMESPACES --pods $PODS" \
  "--node-counts $NODE_COUNTS --replicas $REPLICAS --replacements-per-s $RATE --window $WINDOW --runs $RUNS"
timeout --signal=INT --kill-after=30 $((LIMIT + 600)) \
  "$BIN/nodedns-load" watch-scale --services "$SERVICES" --namespaces "$NAMESPACES" --pods "$PODS" \
  --nodes 500 --node-counts "$NODE_COUNTS" --replicas "$REPLICAS" --replacements-per-s "$RATE" \
  --window "$WINDOW" --runs "$RUNS" --time-limit "$LIMIT" --authority "$BIN/nodedns-authority" \
  | tee "$WORK/watch-scale.txt"

for agents in ${AGENTS//,/ }; do
  echo
  echo "## Authority fan-out to $agents subscribed agents"
  echo "command: nodedns-load fanout-bench --nodes $agents --agents $agents --changes $CHANGES --runs $RUNS"
  timeout --signal=INT --kill-after=30 "$LIMIT" \
    "$BIN/nodedns-load" fanout-bench --nodes "$agents" --agents "$agents" --changes "$CHANGES" --runs "$RUNS" \
    --authority "$BIN/nodedns-authority" | tee "$WORK/fanout-$agents.txt"
done
