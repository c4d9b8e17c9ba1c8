#!/usr/bin/env bash
# Write-durability benchmark: redis-benchmark SET (-c 50, -P 16 and -P 1)
# against one primary with two replicas, directly and through three
# Rampart instances side by side: asynchronous, synchronous with one
# replica ack, synchronous with all replica acks. Prints requests/s, p50/p99
# and the ratio of each synchronous mode to the asynchronous one.
#
#   tests/bench/replication.sh [requests-per-run] [rounds]
#
# Each configuration runs `rounds` times (default 3), interleaved, and the
# median is reported. Fan-out mode is not implemented yet (issue 4).
#
# Needs redis-server and redis-tools (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-200000}
ROUNDS=${2:-3}

source tests/bench/lib.sh
require redis-server redis-benchmark python3
cargo build --release -q -p rampart
start_shard

declare -A PORTS
for mode in async sync-one sync-all; do
  port=$(free_port)
  PORTS[$mode]=$port
  case $mode in
    async) quorum=none ;;
    sync-one) quorum=one ;;
    sync-all) quorum=all ;;
  esac
  cat > "$work/$mode.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
[log]
level = "warn"
[failover]
role = "follower"
[shards.main]
nodes = ["127.0.0.1:$PRIMARY", "127.0.0.1:$R1", "127.0.0.1:$R2"]
[shards.main.replication]
quorum = "$quorum"
timeout_ms = 1000
TOML
  start_rampart "$mode" "$port"
done

run() { # name port pipeline
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -t set --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
}
for round in $(seq "$ROUNDS"); do
  for P in 16 1; do
    run direct "$PRIMARY" "$P"
    for mode in async sync-one sync-all; do
      run "$mode" "${PORTS[$mode]}" "$P"
    done
  done
done

median_table "SET, 50 clients" async "16 1" "direct async sync-one sync-all" sync-one 0.5
