#!/usr/bin/env bash
# Routing-plugin overhead end to end: redis-benchmark GET (-c 50, -P 1 and
# -P 16) through three Rampart instances side by side in front of the same
# primary and two replicas, reads spread over the replicas by
#   native    the round robin compiled into Rampart (router = "native:round-robin")
#   plan      the built-in Wasm round robin, the default (its `update` returns a
#             plan the host carries out per read)
#   per-read  the built-in Wasm least-latency router, which is called for
#             every read (two choices on latency x in-flight)
# Prints requests/s, p50/p99 and the ratio to native. Interleaved rounds,
# medians.
#
#   tests/bench/routing.sh [requests-per-run] [rounds]
#
# `cargo bench -p rampart --bench route` measures the decision alone.
# Needs redis-server and redis-tools; the wasm32-wasip2 target.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
ROUNDS=${2:-3}

source tests/bench/lib.sh
shard_bench
redis-cli -p "$PRIMARY" SET key:__rand_int__ x >/dev/null

MODES="native plan per-read"
declare -A PORTS ROUTER=([native]="native:round-robin" [plan]="builtin:round-robin" [per-read]="builtin:least-latency")
for mode in $MODES; do
  shard_rampart "$mode" "read_from = \"replicas\"
router = \"${ROUTER[$mode]}\""
done
sleep 1

run() { # name port pipeline
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -t get --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
}
for round in $(seq "$ROUNDS"); do
  for P in 1 16; do
    for mode in $MODES; do
      run "$mode" "${PORTS[$mode]}" "$P"
    done
  done
done

median_table "GET over two replicas, 50 clients" native "1 16" "native plan per-read"
