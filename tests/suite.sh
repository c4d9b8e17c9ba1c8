#!/usr/bin/env bash
# Redis's own test suite (7.0.15, ../shared/redis-tests) through Rampart.
#
#   tests/suite.sh [primary|replicas|shards] [OUTDIR]
#
# Starts three fresh redis-server nodes (a primary and two replicas) and a
# Rampart in front of them (synchronous quorum of one replica, reads from
# the primary or from the replicas; `shards`: two such shards sharing the
# hash slots, reads from the primaries), runs the suite's default profile
# against Rampart and prints its score. Needs tcl, redis-server and
# redis-tools; builds the release binary unless RAMPART_BIN names one.
# UNITS="unit/type/list ..." runs only some units (the suite runner's knob).
# Takes about ten minutes: not part of `cargo test`.
set -euo pipefail
cd "$(dirname "$0")/.."
read_from=${1:-primary}
out=${2:-/tmp/rampart-suite-$read_from}
suite=${REDIS_TESTS:-../shared/redis-tests}
[ -x "$suite/run-suite.sh" ] || [ -f "$suite/run-suite.sh" ] || { echo "no suite at $suite (set REDIS_TESTS)" >&2; exit 2; }
source tests/bench/lib.sh
require redis-server redis-cli tclsh

bin=${RAMPART_BIN:-target/release/rampart}
if [ -z "${RAMPART_BIN:-}" ]; then
  cargo build --release -q -p rampart
fi

start_shard
port=$(free_port); admin=$(free_port)
slots=""
second=""
if [ "$read_from" = shards ]; then
  read_from=primary
  first=("$PRIMARY" "$R1" "$R2")
  start_shard
  slots='slots = "0-8191"'
  second="
[shards.second]
nodes = [\"127.0.0.1:$PRIMARY\", \"127.0.0.1:$R1\", \"127.0.0.1:$R2\"]
slots = \"8192-16383\"

[shards.second.replication]
quorum = \"one\""
  PRIMARY=${first[0]}; R1=${first[1]}; R2=${first[2]}
fi
cat > "$work/suite.toml" <<EOF
[proxy]
listen = "127.0.0.1:$port"

[admin]
listen = "127.0.0.1:$admin"

[failover]
state_dir = "$work/state"

[shards.main]
nodes = ["127.0.0.1:$PRIMARY", "127.0.0.1:$R1", "127.0.0.1:$R2"]
read_from = "$read_from"
$slots

[shards.main.replication]
quorum = "one"
$second
EOF
"$bin" run --config "$work/suite.toml" > "$work/rampart.log" 2>&1 &
pids+=($!)
wait_port "$port"

rm -rf "$out"
bash "$suite/run-suite.sh" 127.0.0.1 "$port" "$out" | tee "$work/suite.out"
epoch=$(curl -s "http://127.0.0.1:$admin/v1/topology" | python3 -c 'import json,sys; print(json.load(sys.stdin)["shards"][0]["epoch"])' || echo "?")
echo "rampart: read_from=$read_from epoch at the end=$epoch (1 = no failover happened)"
cp "$work/rampart.log" "$out/rampart.log"
