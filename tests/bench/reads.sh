#!/usr/bin/env bash
# What read consistency costs (docs/reads.md): redis-benchmark GET (-c 50,
# -P 1 and -P 16) through three Rampart instances side by side in front of
# the same primary and two replicas:
#   primary   read_from = "primary"
#   eventual  reads over the replicas, read_consistency = "eventual"
#   session   reads over the replicas, read_consistency = "session" (default)
# then a mix: 45 clients GET while 5 others SET, at once, through eventual
# and session, with the share of GETs the replicas served. Interleaved
# rounds, medians, ratios to primary.
#
#   tests/bench/reads.sh [requests-per-run] [rounds]
#
# Needs redis-server and redis-tools.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
ROUNDS=${2:-3}

source tests/bench/lib.sh
shard_bench
redis-cli -p "$PRIMARY" SET key:__rand_int__ x >/dev/null

MODES="primary eventual session"
declare -A PORTS
for mode in $MODES; do
  case $mode in
    primary) reads='read_from = "primary"' ;;
    *) reads="read_from = \"replicas\"
read_consistency = \"$mode\"" ;;
  esac
  shard_rampart "$mode" "$reads"
done
sleep 1

gets() { # port
  local n=0
  for node in "$PRIMARY" "$R1" "$R2"; do
    n=$((n + $(redis-cli -p "$node" INFO commandstats | sed -n 's/^cmdstat_get:calls=\([0-9]*\),.*/\1/p' | tr -d '\r' || echo 0)))
  done
  echo "$n"
}
replica_gets() {
  local n=0
  for node in "$R1" "$R2"; do
    n=$((n + $(redis-cli -p "$node" INFO commandstats | sed -n 's/^cmdstat_get:calls=\([0-9]*\),.*/\1/p' | tr -d '\r' || echo 0)))
  done
  echo "$n"
}

run() { # name port pipeline
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -t get --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
}
mix() { # name port
  local before_all before_replicas
  before_all=$(gets); before_replicas=$(replica_gets)
  redis-benchmark -p "$2" -c 5 -n $((N / 9)) -t set -r 100000 --csv -q >/dev/null 2>&1 &
  local writer=$!
  redis-benchmark -p "$2" -c 45 -n "$N" -t get -r 100000 --csv -q 2>/dev/null \
    | sed "s/^/$1,mix,/" >> "$work/results.csv"
  wait "$writer"
  echo "$1 $(( $(replica_gets) - before_replicas )) $(( $(gets) - before_all ))" >> "$work/shares.txt"
}
for round in $(seq "$ROUNDS"); do
  for P in 1 16; do
    for mode in $MODES; do
      run "$mode" "${PORTS[$mode]}" "$P"
    done
  done
  for mode in eventual session; do
    mix "$mode" "${PORTS[$mode]}"
  done
done

median_table "GET, 50 clients" primary "1 16" "$MODES"
median_table "GET by 45 clients while 5 others SET" eventual "mix" "eventual session"
python3 - "$work/shares.txt" <<'PY'
import sys
shares = {}
for line in open(sys.argv[1]):
    mode, replicas, total = line.split()
    r, t = shares.get(mode, (0, 0))
    shares[mode] = (r + int(replicas), t + int(total))
for mode, (r, t) in shares.items():
    print(f"{mode}: {100 * r / max(t, 1):.1f}% of GETs in the mix served by replicas")
PY
