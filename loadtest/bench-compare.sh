#!/usr/bin/env bash
# Prerequisites: apt-get install -y dnsperf unbound knot-resolver dnsdist knot knot-dnsutils gcc python3
#
# nodedns next to its peers, measured with nodedns-load: builds release binaries, generates a cluster
# (pods on loopback), serves the same records from a knot backend, starts nodedns (authority + agent)
# and then each peer of ../shared/peerbench (unbound-1t, dnsdist-1l, kresd-1) one at a time, fresh,
# and runs the same workloads against each with `nodedns-load run`: cache hits (closed loop, and open
# loop at RATE), cluster misses, external misses, the pod search path. Writes per-run JSON to
# loadtest/results/compare-TAG/ and the tables to loadtest/results/compare-TAG.md.
#
# Pinning (peerbench's 2-core layout): the server under test (nodedns-agent, or the peer) on CPU 1;
# the load generator, the knot backend and nodedns-authority on CPU 0.
#
# Usage: loadtest/bench-compare.sh                         # DUR=10 REPS=3, all servers and workloads
#        DUR=2 REPS=1 loadtest/bench-compare.sh            # a smoke run
#        SERVERS=nodedns,unbound-1t WORKLOADS=hit-max,search-path loadtest/bench-compare.sh
# Knobs (environment): DUR REPS SERVERS WORKLOADS (hit-max,hit-rate,cluster-miss,external,search-path;
#   also hit-tcp) RATE OUTSTANDING ZIPF GEN_THREADS RETRIES GATE GATE_TOTAL QUIET_FOR LIMIT TAG RUNDIR
#   AGENT_ARGS (extra nodedns-agent flags, e.g. "--autopath false") NO_BUILD=1 (use target/release as is)
#   LOAD (binary used for `nodedns-load run`; default target/release/nodedns-load).
# Loopback only (127.0.0.2 knot, .11 unbound, .12 kresd, .13 dnsdist, .14 agent, .15 authority, pods
# 127.64.0.10+i); every load run is bounded by DUR, the whole measurement by LIMIT seconds; every
# process is stopped by its PID.
set -euo pipefail
cd "$(dirname "$0")/.."
PEERBENCH=$(cd "${PEERBENCH:-../shared/peerbench}" && pwd)
RUNDIR=${RUNDIR:-/dev/shm/nodedns-compare}
DUR=${DUR:-10}
REPS=${REPS:-3}
ZONE_TTL=${ZONE_TTL:-3600}
SERVERS=${SERVERS:-nodedns,unbound-1t,dnsdist-1l,kresd-1}
WORKLOADS=${WORKLOADS:-hit-max,hit-rate,cluster-miss,external,search-path}
RATE=${RATE:-20000}
OUTSTANDING=${OUTSTANDING:-100}
ZIPF=${ZIPF:-1.0}
GEN_THREADS=${GEN_THREADS:-1}
RETRIES=${RETRIES:-1}
GATE=${GATE:-10}
GATE_TOTAL=${GATE_TOTAL:-120}
QUIET_FOR=${QUIET_FOR:-0.5}
NODES=50
NODE=node0
n_srv=$(tr ',' '\n' <<<"$SERVERS" | grep -c .)
n_wl=$(tr ',' '\n' <<<"$WORKLOADS" | grep -c .)
# per run: DUR + ~4 s (generator start, warm-up of hit runs, idle gate); a retry per 4 runs; start-ups
LIMIT=${LIMIT:-$(( 60 + n_srv * 10 + n_srv * n_wl * REPS * (DUR + 4) * 5 / 4 + GATE_TOTAL ))}
TAG=${TAG:-$(date +%Y%m%d-%H%M%S)-d${DUR}}
OUT=loadtest/results/compare-$TAG
T=target/release
LOAD=${LOAD:-$T/nodedns-load}   # the binary whose `run` drives the load

for b in knotd knotc kdig unbound kresd dnsdist taskset nice python3 timeout cargo ss; do
  command -v "$b" >/dev/null || { echo "missing: $b (see the prerequisites at the top of $0)"; exit 1; }
done
[ "$(nproc)" -ge 2 ] || { echo "needs 2 CPUs (server under test on CPU 1, everything else on CPU 0)"; exit 1; }
case "$RUNDIR" in /dev/shm/*|/tmp/*) ;; *) echo "RUNDIR must be under /dev/shm or /tmp (it is deleted first)"; exit 1 ;; esac
if ss -lnu | grep -qE '127\.0\.0\.(2|11|12|13|14|15):53 '; then
  echo "something is already bound on 127.0.0.{2,11,12,13,14,15}:53 (a peerbench run?) - stop it first:"
  ss -lnup | grep -E '127\.0\.0\.(2|11|12|13|14|15):53 '; exit 1
fi

cleanup() {   # leftovers of an interrupted driver: by PID, after checking the process name
  local f pid comm
  for f in "$RUNDIR"/pids/*; do
    [ -e "$f" ] || continue
    pid=$(cat "$f"); comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
    case "$comm" in
      knotd|unbound|kresd|dnsdist|nodedns-agent|nodedns-authori) kill "$pid" && echo "stopped leftover $comm pid $pid" ;;
    esac
    rm -f "$f"
  done
}
trap cleanup EXIT

t0=$(date +%s)
if [ -z "${NO_BUILD:-}" ]; then
  echo "== cargo build --release -p nodedns-agent -p nodedns-authority -p nodedns-load"
  cargo build --release -p nodedns-agent -p nodedns-authority -p nodedns-load
fi

echo "== data in $RUNDIR"
rm -rf "$RUNDIR"
mkdir -p "$RUNDIR"/knot/db "$RUNDIR"/unbound "$RUNDIR"/kresd "$RUNDIR"/logs "$RUNDIR"/pids "$RUNDIR"/conf
# the cluster: pods on loopback (pod i = 127.64.0.10 + i, on node i % NODES) so the generator can send from them
$T/nodedns-load gen-cluster --services 1000 --namespaces 10 --pods 5000 --nodes $NODES \
  --pod-base 127.64.0.10 --out "$RUNDIR/cluster.yaml"
# the same records for knot; the zone's NS target ns.dns.cluster.local has no address in the file
# (the authority answers it with its own listen address), and knot warns "missing glue record"
# without one: give it knot's
# ZONE_TTL (default 3600): the agent keeps cluster answers until a change notice, so the peers
# get records they may keep for the whole run too, and hit runs measure hits on every server
$T/nodedns-load zone-file "$RUNDIR/cluster.yaml" --out "$RUNDIR/knot/cluster.local.zone" --ttl "$ZONE_TTL"
grep -q '^ns\.dns\.cluster\.local\. [0-9]* IN A ' "$RUNDIR/knot/cluster.local.zone" \
  || echo "ns.dns.cluster.local. 5 IN A 127.0.0.2" >> "$RUNDIR/knot/cluster.local.zone"
# example.test (www0..99, *.rnd) from peerbench's generator; its cluster.local zone is not used
python3 "$PEERBENCH/gen.py" "$RUNDIR" 0 0
grep '\.example\.test A$' "$RUNDIR/q/hit.txt" | sort -V > "$RUNDIR/q/www.txt"
# peerbench's confs with this RUNDIR; knot reads the cluster zone written above
for c in knot.conf unbound-1t.conf dnsdist-1l.conf kresd.conf; do
  sed -e "s#/dev/shm/peerbench-run#$RUNDIR#g" \
      -e "s#file: cluster.local.zone#file: $RUNDIR/knot/cluster.local.zone#" "$PEERBENCH/conf/$c" > "$RUNDIR/conf/$c"
done
knotc -c "$RUNDIR/conf/knot.conf" conf-check >/dev/null
records=$(grep -c . "$RUNDIR/knot/cluster.local.zone")

host="$(nproc) CPUs ($(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)), Linux $(uname -r), $(( $(sed -n 's/^MemTotal: *\([0-9]*\).*/\1/p' /proc/meminfo) / 1048576 )) GiB"
versions="nodedns $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- node-agent authority common proto loadtest/src || echo '+uncommitted') | unbound $(unbound -V | sed -n 's/^Version //p') | dnsdist $(dnsdist --version | head -1 | awk '{print $2}') | kresd $(kresd -V | awk '{print $NF}') | knotd $(knotd -V | awk '{print $NF}')"
cluster="nodedns-load gen-cluster --services 1000 --namespaces 10 --pods 5000 --nodes $NODES --pod-base 127.64.0.10 ($records records in knot's cluster.local zone, TTL $ZONE_TTL s for the peers; the agent keeps cluster answers until they change) + example.test from peerbench's gen.py; search-path from $NODE's $(( 5000 / NODES )) pods"

echo "== measuring: SERVERS=$SERVERS WORKLOADS=$WORKLOADS DUR=${DUR}s REPS=$REPS RATE=$RATE (hard limit ${LIMIT}s)"
mkdir -p "$OUT"
rc=0
# shellcheck disable=SC2086
timeout --signal=TERM --kill-after=15 "$LIMIT" python3 loadtest/bench_compare.py run \
  --out "$OUT" --rundir "$RUNDIR" --conf "$RUNDIR/conf" --cluster "$RUNDIR/cluster.yaml" --names "$RUNDIR/q/www.txt" \
  --load "$LOAD" --agent $T/nodedns-agent --authority $T/nodedns-authority \
  $(for a in ${AGENT_ARGS:-}; do printf -- '--agent-arg=%s ' "$a"; done) \
  --servers "$SERVERS" --workloads "$WORKLOADS" --dur "$DUR" --reps "$REPS" --rate "$RATE" \
  --outstanding "$OUTSTANDING" --zipf "$ZIPF" --threads "$GEN_THREADS" --node "$NODE" \
  --retries "$RETRIES" --gate "$GATE" --gate-total "$GATE_TOTAL" --quiet-for "$QUIET_FOR" \
  --cluster-desc "$cluster" --versions "$versions" --host "$host" || rc=$?
[ "$rc" -eq 0 ] || echo "bench_compare.py exited $rc (124 = hit the ${LIMIT}s limit); the table has what was measured"
echo
if [ -f "$OUT/meta.json" ]; then
  python3 loadtest/bench_compare.py table "$OUT" > "$OUT.md"
  cat "$OUT.md"
fi
echo "== raw runs: $OUT/   table: $OUT.md   wall time: $(( $(date +%s) - t0 ))s"
exit "$rc"
