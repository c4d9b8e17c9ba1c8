#!/usr/bin/env bash
# Data-path benchmark: redis-benchmark against Redis directly, through
# Rampart, through twemproxy (nutcracker) and through HAProxy (plain TCP
# forwarding), side by side in one run, at -P 1 and -P 16. Prints
# requests/s, p50/p99 and the ratios Rampart/direct, Rampart/twemproxy and
# Rampart/HAProxy, each proxy's CPU time per request; then, in front of a
# primary with two replicas (writes synchronous to one replica, the demo's
# set-up), GET -P 16 from the replicas against from the primary and
# synchronous SET -P 16 against asynchronous; then Rampart's idle memory
# and what 1,000 idle clients add. Each ratio is printed beside the target
# it is held to (`targets:` lines).
#
#   tests/bench/data_path.sh [requests-per-test] [rounds]
#
# The machines this runs on are noisy: each configuration runs `rounds`
# times (default 3), interleaved so that noise hits all three alike, and
# the median is reported. RAMPART_WORKERS sets Rampart's worker threads.
#
# Needs redis-server, redis-tools, nutcracker and haproxy (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
ROUNDS=${2:-3}
TESTS=set,get,incr,lpush,lrange_100

source tests/bench/lib.sh
require redis-server redis-benchmark nutcracker haproxy python3
[ -n "${RAMPART_BIN:-}" ] || cargo build --release -q -p rampart
RAMPART_BIN=${RAMPART_BIN:-./target/release/rampart}
RAMPART=$RAMPART_BIN

REDIS=$(free_port); RAMPART_PORT=$(free_port); TWEM=$(free_port); HAP=$(free_port)
start_redis "$REDIS"

cat > "$work/rampart.toml" <<TOML
[proxy]
listen = "127.0.0.1:$RAMPART_PORT"
workers = ${RAMPART_WORKERS:-0}
[log]
level = "warn"
[shards.main]
nodes = ["127.0.0.1:$REDIS"]
TOML
"$RAMPART_BIN" run --config "$work/rampart.toml" &
RAMPART_PID=$!
pids+=($RAMPART_PID)
wait_port "$RAMPART_PORT"

start_twemproxy "$TWEM" "$REDIS"
start_haproxy "$HAP" "$REDIS"

rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_rss=$(rss_kib "$RAMPART_PID")

cpu_ticks() { [ -n "${1:-}" ] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
run() { # target-name port pipeline [pid whose CPU time to count]
  local before after
  before=$(cpu_ticks "${4:-}")
  redis-benchmark -p "$2" -c 50 -n "$N" -P "$3" -t "$TESTS" --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
  after=$(cpu_ticks "${4:-}")
  echo "$1,$3,$((after - before))" >> "$work/cpu.csv"
}
for round in $(seq "$ROUNDS"); do
  for P in 1 16; do
    run direct "$REDIS" "$P"
    run rampart "$RAMPART_PORT" "$P" "$RAMPART_PID"
    run twemproxy "$TWEM" "$P" "$TWEM_PID"
    run haproxy "$HAP" "$P" "$HAP_PID"
  done
done

python3 - "$work/results.csv" "$work/cpu.csv" "$N" "$(getconf CLK_TCK)" <<'PY'
import csv, statistics, sys
runs = {}
for r in csv.reader(open(sys.argv[1])):
    if len(r) < 5 or r[2] == "test":
        continue
    target, p, test = r[0], r[1], r[2].split()[0]
    runs.setdefault((target, p, test), []).append((float(r[3]), float(r[6]), float(r[8])))
# The median run by requests/s, with its latencies.
rows = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
tests = []
for (_, _, t) in rows:
    if t not in tests:
        tests.append(t)
print(f"median of {len(next(iter(runs.values())))} interleaved runs each")
print(f"{'test':<12}{'-P':>4}{'direct rps':>12}{'rampart':>10}{'twemproxy':>11}{'haproxy':>10}"
      f"{'R/direct':>10}{'R/twem':>8}{'R/hap':>7}   p50/p99 ms (direct | rampart | twemproxy | haproxy)")
ratios = {}
for p in ("1", "16"):
    for t in tests:
        d, r, w, h = (rows.get((x, p, t)) for x in ("direct", "rampart", "twemproxy", "haproxy"))
        if not (d and r and w and h):
            continue
        rd, rw, rh = r[0] / d[0], r[0] / w[0], r[0] / h[0]
        ratios.setdefault((p, "twemproxy"), []).append(rw)
        ratios.setdefault((p, "HAProxy"), []).append(rh)
        print(f"{t:<12}{p:>4}{d[0]:>12.0f}{r[0]:>10.0f}{w[0]:>11.0f}{h[0]:>10.0f}{rd:>10.2f}{rw:>8.2f}{rh:>7.2f}"
              f"   {d[1]:.2f}/{d[2]:.2f} | {r[1]:.2f}/{r[2]:.2f} | {w[1]:.2f}/{w[2]:.2f} | {h[1]:.2f}/{h[2]:.2f}")
for (p, peer), rs in ratios.items():
    geo = 1.0
    for x in rs:
        geo *= x
    geo **= 1 / len(rs)
    print(f"-P {p}: Rampart/{peer} geometric mean {geo:.2f}")
def verdict(got, target, below=False):
    ok = got <= target if below else got >= target
    return f"{got:.2f} ({'meets' if ok else 'MISSES'} {'<=' if below else '>='} {target})"
for p, peer, i, target in (("1", "twemproxy", 2, 1.05), ("16", "HAProxy", 3, 1.0)):
    got = []
    for t in tests:
        r, other = rows.get(("rampart", p, t)), rows.get((peer.lower(), p, t))
        if r and other:
            got.append(f"{t} {verdict(r[0] / other[0], target)}")
    print(f"targets: -P {p} Rampart/{peer}: " + ", ".join(got))
# CPU time the proxy process itself spent per request (user + system),
# summed over all tests and rounds: less noisy than throughput on a shared
# machine, where every proxy competes with redis-server and the benchmark.
cpu = {}
for target, p, ticks in csv.reader(open(sys.argv[2])):
    cpu.setdefault((target, p), 0)
    cpu[(target, p)] += int(ticks)
requests = int(sys.argv[3]) * len(tests) * len(runs.get(("direct", "1", tests[0]), [1]))
tick_us = 1e6 / int(sys.argv[4])
for p in ("1", "16"):
    r, w, h = (cpu.get((x, p), 0) for x in ("rampart", "twemproxy", "haproxy"))
    if r and w and h:
        print(f"-P {p}: proxy CPU per request: Rampart {r * tick_us / requests:.2f} us, "
              f"twemproxy {w * tick_us / requests:.2f} us, HAProxy {h * tick_us / requests:.2f} us "
              f"(Rampart/twemproxy {r / w:.2f}, Rampart/HAProxy {r / h:.2f})")
        if p == "1":
            print(f"targets: -P 1 CPU per request Rampart/twemproxy {verdict(r / w, 0.85, below=True)}")
PY

# Replicas and durability: one shard of a primary and two replicas, writes
# synchronous to one replica (quorum one) unless said otherwise.
start_shard
redis-cli -p "$PRIMARY" SET key:__rand_int__ x >/dev/null
declare -A PORTS
shard_rampart primary 'read_from = "primary"
[shards.main.replication]
quorum = "one"'
shard_rampart replicas 'read_from = "replicas"
[shards.main.replication]
quorum = "one"'
shard_rampart async 'read_from = "primary"'
: > "$work/shard.csv"
shard_run() { # mode test
  redis-benchmark -p "${PORTS[$1]}" -c 50 -n "$N" -P 16 -t "$2" --csv -q 2>/dev/null \
    | sed "s/^/$1,16,/" >> "$work/shard.csv"
}
for round in $(seq "$ROUNDS"); do
  shard_run primary get
  shard_run replicas get
  shard_run primary set
  shard_run async set
done
python3 - "$work/shard.csv" <<'PY'
import csv, sys
runs = {}
for r in csv.reader(open(sys.argv[1])):
    if len(r) < 5 or r[2] == "test":
        continue
    runs.setdefault((r[0], r[2]), []).append(float(r[3]))
rps = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
def line(what, got, base, target):
    ratio = got / base
    print(f"targets: {what}: {got:.0f} / {base:.0f} = {ratio:.2f} "
          f"({'meets' if ratio >= target else 'MISSES'} >= {target})")
print(f"one shard, a primary and two replicas, -c 50 -P 16, median of {len(runs[('primary', 'GET')])} interleaved runs")
line("GET from two replicas / from the primary (quorum one)", rps[("replicas", "GET")], rps[("primary", "GET")], 0.9)
line("SET synchronous to one replica / asynchronous", rps[("primary", "SET")], rps[("async", "SET")], 0.8)
PY

# Memory: 1,000 idle clients, each having sent one PING.
python3 - "$RAMPART_PORT" <<'PY' &
import socket, sys, time
socks = []
for _ in range(1000):
    s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
    s.sendall(b"PING\r\n")
    socks.append(s)
for s in socks:
    s.recv(16)
open("/tmp/rampart-bench-clients-ready", "w").close()
time.sleep(5)
PY
holder=$!
for _ in $(seq 100); do [ -f /tmp/rampart-bench-clients-ready ] && break; sleep 0.1; done
busy_rss=$(rss_kib "$RAMPART_PID")
rm -f /tmp/rampart-bench-clients-ready
wait "$holder" || true
echo "Rampart RSS: idle $((idle_rss / 1024)) MiB (before the benchmark); with 1,000 idle clients after it $((busy_rss / 1024)) MiB"
