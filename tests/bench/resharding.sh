#!/usr/bin/env bash
# Moving slots online: how fast keys move on this machine, and what a move
# costs the clients using Rampart meanwhile. Two shards of a primary and a
# replica each (writes synchronous to one replica on both); shard a holds
# every slot and KEYS keys, shard b none. Half the slots move to b while
# redis-benchmark (GET and SET of random keys, 20 clients) runs through
# Rampart; the same benchmark before the move is the baseline. Prints
# keys/s of the move and p50/p99 latency during vs before, as ratios.
#
#   tests/bench/resharding.sh [keys] [rate] [alone|coordination]
#
# rate: the walk's limit in keys/s (0: none, the default).
# coordination: Rampart with [coordination] on a one-member etcd, so keys
# move with MIGRATE as they do between several instances (alone: DUMP and
# RESTORE through Rampart, the default).
# Needs redis-server, redis-tools, python3 (and etcd for coordination).
set -euo pipefail
cd "$(dirname "$0")/../.."
KEYS=${1:-200000}
RATE=${2:-0}
MODE=${3:-alone}

source tests/bench/lib.sh
require redis-server redis-benchmark python3
build_rampart

# Where the map lives: the state directory alone, etcd with coordination.
if [ "$MODE" = coordination ]; then
  require etcd
  ETCD=$(free_port); ETCD_PEER=$(free_port)
  etcd --name e0 --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD" --advertise-client-urls "http://127.0.0.1:$ETCD" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER" \
    --initial-cluster "e0=http://127.0.0.1:$ETCD_PEER" >/dev/null 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$ETCD/health" | grep -q true && break; sleep 0.1; done
  HOME_OF_MAP="[coordination]
backend = \"etcd\"
endpoints = [\"127.0.0.1:$ETCD\"]
instance = \"bench\""
else
  HOME_OF_MAP="[failover]
state_dir = \"$work/state\""
fi

A=$(free_port); A2=$(free_port); B=$(free_port); B2=$(free_port)
start_redis "$A"; start_redis "$A2" "$A"; start_redis "$B"; start_redis "$B2" "$B"
PORT=$(free_port); ADMIN=$(free_port)
cat > "$work/r.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PORT"
[admin]
listen = "127.0.0.1:$ADMIN"
[log]
level = "warn"
$HOME_OF_MAP
[shards.a]
nodes = ["127.0.0.1:$A", "127.0.0.1:$A2"]
slots = "0-16383"
[shards.a.replication]
quorum = "one"
[shards.b]
nodes = ["127.0.0.1:$B", "127.0.0.1:$B2"]
slots = ""
[shards.b.replication]
quorum = "one"
TOML
start_rampart r "$PORT"
# KEYS keys of 100 bytes, straight into shard a's primary (Debian's
# redis-server refuses DEBUG POPULATE).
python3 - "$KEYS" <<'PY' | redis-cli -p "$A" --pipe >/dev/null
import sys
value = "x" * 100
out = sys.stdout
for i in range(int(sys.argv[1])):
    key = f"key:{i:012d}"
    out.write(f"*3\r\n$3\r\nSET\r\n${len(key)}\r\n{key}\r\n$100\r\n{value}\r\n")
PY
echo "loaded $(redis-cli -p "$A" DBSIZE) keys"
sleep 1

bench() { # label
  redis-benchmark -p "$PORT" -c 20 -n "$1" -r "$KEYS" -t get,set --csv -q 2>/dev/null \
    | sed "s/^/$2,/" >> "$work/results.csv"
}
bench 100000 before
started=$(date +%s.%N)
"$RAMPART" slots move 8192-16383 --to b --rate "$RATE" --admin "127.0.0.1:$ADMIN" >/dev/null
# The benchmark runs for as long as the move does (repeated until done).
moving() {
  curl -s "http://127.0.0.1:$ADMIN/v1/slots" \
    | python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["moving"] else 1)'
}
while moving; do
  bench 20000 during
done
finished=$(date +%s.%N)
bench 100000 after
moved=$(redis-cli -p "$B" DBSIZE)
left=$(redis-cli -p "$A" DBSIZE)

python3 - "$work/results.csv" "$started" "$finished" "$moved" "$left" "$RATE" "$MODE" <<'PY'
import csv, sys
path, started, finished, moved, left, rate, mode = sys.argv[1:]
seconds = float(finished) - float(started)
rows = {}
for r in csv.reader(open(path)):
    if len(r) < 8 or r[1] == "test":
        continue
    rows.setdefault((r[0], r[1]), []).append((float(r[2]), float(r[5]), float(r[7])))
def med(values):
    values = sorted(values)
    return values[len(values) // 2]
print(f"moved {moved} keys in {seconds:.1f} s: {int(moved) / seconds:.0f} keys/s "
      f"(walk limit {'none' if rate == '0' else rate}; {left} stayed on the source; {mode})")
print(f"{'test':<6}{'when':<8}{'req/s':>10}{'p50 ms':>8}{'p99 ms':>8}{'p50 x':>7}{'p99 x':>7}")
for test in ("SET", "GET"):
    base = rows.get(("before", test))
    if not base:
        continue
    b_rps, b50, b99 = (med([x[i] for x in base]) for i in range(3))
    for when in ("before", "during", "after"):
        runs = rows.get((when, test))
        if not runs:
            continue
        rps, p50, p99 = (med([x[i] for x in runs]) for i in range(3))
        print(f"{test:<6}{when:<8}{rps:>10.0f}{p50:>8.3f}{p99:>8.3f}{p50 / b50:>7.2f}{p99 / b99:>7.2f}")
PY
