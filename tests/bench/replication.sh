#!/usr/bin/env bash
# Write-durability benchmark: redis-benchmark SET (-c 50, -P 16 and -P 1)
# against one primary with two replicas, directly and through three
# Rampart instances side by side: asynchronous, synchronous with one
# replica ack, synchronous with all replica acks; and through two Rampart
# instances in fan-out mode in front of three independent nodes (Rampart
# sends every write to each): asynchronous (answered after the primary) and
# synchronous (after all three). Prints requests/s, p50/p99 and the ratio
# of each mode to native asynchronous.
#
#   tests/bench/replication.sh [requests-per-run] [rounds]
#
# Each configuration runs `rounds` times (default 3), interleaved, and the
# median is reported. All nodes share this machine's cores: fan-out keeps
# three redis-servers busy with every write where native mode keeps one
# (plus replication), so its ratios include that.
#
# Needs redis-server and redis-tools (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
ROUNDS=${2:-3}

source tests/bench/lib.sh
shard_bench
F0=$(free_port); F1=$(free_port); F2=$(free_port)
for port in $F0 $F1 $F2; do start_redis "$port"; done

declare -A PORTS
# rampart MODE ROLE REPLICATION-MODE QUORUM NODE-PORTS...: one instance.
rampart() {
  local mode=$1 role=$2 replication=$3 quorum=$4 port nodes
  shift 4
  port=$(free_port)
  PORTS[$mode]=$port
  nodes=$(printf '"127.0.0.1:%s", ' "$@")
  cat > "$work/$mode.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
[log]
level = "warn"
[failover]
role = "$role"
[shards.main]
nodes = [${nodes%, }]
[shards.main.replication]
mode = "$replication"
quorum = "$quorum"
timeout_ms = 1000
TOML
  start_rampart "$mode" "$port"
}
# Native mode: a follower (the nodes' replication is left as it is).
rampart async follower native none "$PRIMARY" "$R1" "$R2"
rampart sync-one follower native one "$PRIMARY" "$R1" "$R2"
rampart sync-all follower native all "$PRIMARY" "$R1" "$R2"
# Fan-out needs the single writer, a leader.
rampart fan-async leader fanout none "$F0" "$F1" "$F2"
rampart fan-sync leader fanout all "$F0" "$F1" "$F2"

run() { # name port pipeline
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -t set --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
}
for round in $(seq "$ROUNDS"); do
  for P in 16 1; do
    run direct "$PRIMARY" "$P"
    for mode in async sync-one sync-all fan-async fan-sync; do
      run "$mode" "${PORTS[$mode]}" "$P"
    done
  done
done

median_table "SET, 50 clients" async "16 1" "direct async sync-one sync-all fan-async fan-sync" sync-one 0.5
