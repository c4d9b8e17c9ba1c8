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

python3 - "$work/results.csv" <<'PY'
import csv, sys
runs = {}
for r in csv.reader(open(sys.argv[1])):
    if len(r) < 5 or r[2] == "test":
        continue
    runs.setdefault((r[0], r[1]), []).append((float(r[3]), float(r[6]), float(r[8])))
rows = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
print(f"SET, 50 clients, median of {len(next(iter(runs.values())))} interleaved runs")
print(f"{'mode':<10}{'-P':>4}{'rps':>12}{'p50 ms':>9}{'p99 ms':>9}{'/async':>9}")
for p in ("16", "1"):
    base = rows.get(("async", p))
    for mode in ("direct", "async", "sync-one", "sync-all"):
        r = rows.get((mode, p))
        if not r:
            continue
        ratio = f"{r[0] / base[0]:.2f}" if base else "-"
        print(f"{mode:<10}{p:>4}{r[0]:>12.0f}{r[1]:>9.2f}{r[2]:>9.2f}{ratio:>9}")
one, asy = rows.get(("sync-one", "16")), rows.get(("async", "16"))
if one and asy:
    verdict = "meets" if one[0] >= 0.5 * asy[0] else "MISSES"
    print(f"floor: sync(1 ack) at -P 16 is {one[0] / asy[0]:.2f}x async ({verdict} the 0.5x floor)")
PY
