#!/usr/bin/env bash
# Sharding benchmark: redis-benchmark with random keys (-r 100000) through
# Rampart over one shard, Rampart over two shards, and twemproxy over the
# same two servers, side by side in one run, at -P 1 and -P 16; and MGET of
# 10 keys over two shards against MGET of 10 keys on one shard. Prints
# requests/s and the ratios the sharding work is held to:
#   Rampart (2 shards) / twemproxy (2 servers)   at -P 1 and -P 16
#   MGET 10 keys, 2 shards / 1 shard             through Rampart
#
#   tests/bench/shards.sh [requests-per-test] [rounds]
#
# Each configuration runs `rounds` times (default 3), interleaved so the
# machine's noise hits all alike; the median is reported. Asynchronous
# shards of one node each, so the proxies are compared, not replication.
#
# Needs redis-server, redis-tools and nutcracker (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
ROUNDS=${2:-3}
TESTS=set,get,mset

source tests/bench/lib.sh
require redis-server redis-benchmark nutcracker python3
cargo build --release -q -p rampart

S1=$(free_port); S2=$(free_port); ONE=$(free_port); TWO=$(free_port); TWEM=$(free_port)
start_redis "$S1"
start_redis "$S2"

cat > "$work/one.toml" <<TOML
[proxy]
listen = "127.0.0.1:$ONE"
[log]
level = "warn"
[shards.main]
nodes = ["127.0.0.1:$S1"]
TOML
cat > "$work/two.toml" <<TOML
[proxy]
listen = "127.0.0.1:$TWO"
[log]
level = "warn"
[shards.a]
nodes = ["127.0.0.1:$S1"]
slots = "0-8191"
[shards.b]
nodes = ["127.0.0.1:$S2"]
slots = "8192-16383"
TOML
start_rampart one "$ONE"
start_rampart two "$TWO"

start_twemproxy "$TWEM" "$S1" "$S2"

MGET10=(MGET)
for i in $(seq 10); do MGET10+=("key:__rand_int__"); done
run() { # name port pipeline
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -r 100000 -t "$TESTS" --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -r 100000 --csv -q "${MGET10[@]}" 2>/dev/null \
    | sed 's/^"MGET[^"]*"/"mget10"/' | sed "s/^/$1,$3,/" >> "$work/results.csv"
}
for round in $(seq "$ROUNDS"); do
  for P in 1 16; do
    run one "$ONE" "$P"
    run two "$TWO" "$P"
    run twemproxy "$TWEM" "$P"
  done
done

python3 - "$work/results.csv" <<'PY'
import csv, sys
runs = {}
for r in csv.reader(open(sys.argv[1])):
    if len(r) < 5 or r[2] == "test":
        continue
    runs.setdefault((r[0], r[1], r[2].split()[0].lower()), []).append(float(r[3]))
rows = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
tests = sorted({t for (_, _, t) in rows}, key=["set", "get", "mset", "mget10"].index)
print(f"median of {len(next(iter(runs.values())))} interleaved runs; requests/s")
print(f"{'test':<8}{'-P':>4}{'rampart 1 shard':>17}{'rampart 2 shards':>18}{'twemproxy 2':>13}{'R2/twem':>9}{'R2/R1':>7}")
for p in ("1", "16"):
    for t in tests:
        one, two, tw = (rows.get((m, p, t)) for m in ("one", "two", "twemproxy"))
        if not (one and two and tw):
            continue
        print(f"{t:<8}{p:>4}{one:>17.0f}{two:>18.0f}{tw:>13.0f}{two / tw:>9.2f}{two / one:>7.2f}")
for p, floor in (("1", 1.0), ("16", 1.5)):
    ratios = [rows[("two", p, t)] / rows[("twemproxy", p, t)] for t in ("set", "get", "mset") if ("two", p, t) in rows]
    geo = 1.0
    for x in ratios:
        geo *= x
    geo **= 1 / len(ratios)
    print(f"-P {p}: Rampart (2 shards) / twemproxy geometric mean {geo:.2f} (floor {floor})")
for p in ("1", "16"):
    m1, m2 = rows.get(("one", p, "mget10")), rows.get(("two", p, "mget10"))
    if m1 and m2:
        print(f"-P {p}: MGET of 10 keys, 2 shards / 1 shard {m2 / m1:.2f} (floor 0.5)")
PY
