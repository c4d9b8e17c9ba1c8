# Shared by the benchmark scripts: tools, a work directory cleaned up on
# exit, free ports, and local redis-server nodes. Source it after `cd`ing
# to the repository root.

require() { # tool...
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y redis-server redis-tools nutcracker)" >&2; exit 1; }
  done
}

# RAMPART_BIN: a release binary built already (skips the build).
RAMPART=${RAMPART_BIN:-./target/release/rampart}
build_rampart() { [ -n "${RAMPART_BIN:-}" ] || cargo build --release -q -p rampart; }

work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do redis-cli -p "$1" PING >/dev/null 2>&1 && return 0; sleep 0.05; done; echo "port $1 did not come up" >&2; exit 1; }

# start_redis PORT [PRIMARY_PORT]: a node, a replica of PRIMARY_PORT if given.
start_redis() {
  mkdir -p "$work/$1"
  local extra=()
  [ -n "${2:-}" ] && extra=(--replicaof 127.0.0.1 "$2")
  redis-server --port "$1" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$1" "${extra[@]}" >/dev/null &
  pids+=($!)
  wait_port "$1"
}

# start_shard: PRIMARY, R1, R2 set to a primary and two replicas, online.
start_shard() {
  PRIMARY=$(free_port); R1=$(free_port); R2=$(free_port)
  start_redis "$PRIMARY"
  start_redis "$R1" "$PRIMARY"
  start_redis "$R2" "$PRIMARY"
  for _ in $(seq 100); do
    [ "$(redis-cli -p "$PRIMARY" INFO replication | grep -c 'state=online')" = 2 ] && break
    sleep 0.1
  done
}

# shard_bench: what a benchmark of one shard needs: the tools, a release
# build, and a primary with two replicas (start_shard).
shard_bench() {
  require redis-server redis-benchmark python3
  build_rampart
  start_shard
}

# start_twemproxy PORT NODE_PORT...: twemproxy (nutcracker) on PORT in front
# of the nodes, keys spread over them as twemproxy does (ketama), once it
# answers; its pid in TWEM_PID.
start_twemproxy() {
  local port=$1
  shift
  {
    printf 'bench:\n  listen: 127.0.0.1:%s\n  hash: fnv1a_64\n  distribution: ketama\n' "$port"
    printf '  redis: true\n  auto_eject_hosts: false\n  servers:\n'
    for node in "$@"; do printf '   - 127.0.0.1:%s:1\n' "$node"; done
  } > "$work/twemproxy.yml"
  nutcracker -c "$work/twemproxy.yml" -s "$(free_port)" -o "$work/twemproxy.log" &
  TWEM_PID=$!
  pids+=($TWEM_PID)
  wait_port "$port"
}

# start_haproxy PORT NODE_PORT: HAProxy in plain TCP mode on PORT in front
# of one node (it forwards bytes, nothing per command), once it answers;
# its pid in HAP_PID.
start_haproxy() {
  cat > "$work/haproxy.cfg" <<CFG
global
  maxconn 4000
defaults
  mode tcp
  timeout connect 1s
  timeout client 60s
  timeout server 60s
listen redis
  bind 127.0.0.1:$1
  server node 127.0.0.1:$2
CFG
  haproxy -db -f "$work/haproxy.cfg" > "$work/haproxy.log" 2>&1 &
  HAP_PID=$!
  pids+=($HAP_PID)
  wait_port "$1"
}

# start_rampart NAME PORT: Rampart with $work/NAME.toml, once it answers.
start_rampart() {
  "$RAMPART" run --config "$work/$1.toml" &
  pids+=($!)
  wait_port "$2"
}

# shard_rampart NAME SHARD-SETTINGS: a Rampart (a follower, so that it
# never reconfigures the nodes) in front of start_shard's primary and two
# replicas, SHARD-SETTINGS appended to its [shards.main] (further sections
# may follow them); its port in PORTS[NAME].
shard_rampart() {
  local port
  port=$(free_port)
  PORTS[$1]=$port
  cat > "$work/$1.toml" <<TOML
[proxy]
listen = "127.0.0.1:$port"
workers = ${RAMPART_WORKERS:-0}
[log]
level = "warn"
[failover]
role = "follower"
[shards.main]
nodes = ["127.0.0.1:$PRIMARY", "127.0.0.1:$R1", "127.0.0.1:$R2"]
$2
TOML
  start_rampart "$1" "$port"
}

# median_table TITLE BASE PIPELINES MODES [FLOOR-MODE FLOOR]: the medians of
# $work/results.csv (lines `mode,pipeline,<redis-benchmark --csv line>`) as
# a table, each row with its ratio to mode BASE at the same pipeline; with
# FLOOR-MODE, also whether it reaches FLOOR x BASE at the first pipeline.
median_table() {
  python3 - "$work/results.csv" "$@" <<'PY'
import csv, sys
path, title, base_mode, pipelines, modes = sys.argv[1:6]
pipelines, modes = pipelines.split(), modes.split()
floor_mode, floor = (sys.argv[6], float(sys.argv[7])) if len(sys.argv) > 7 else (None, None)
runs = {}
for r in csv.reader(open(path)):
    if len(r) < 5 or r[2] == "test":
        continue
    runs.setdefault((r[0], r[1]), []).append((float(r[3]), float(r[6]), float(r[8])))
rows = {k: sorted(v)[len(v) // 2] for k, v in runs.items()}
print(f"{title}, median of {len(next(iter(runs.values())))} interleaved runs")
print(f"{'mode':<10}{'-P':>4}{'rps':>12}{'p50 ms':>9}{'p99 ms':>9}{'/' + base_mode:>10}")
for p in pipelines:
    base = rows.get((base_mode, p))
    for mode in modes:
        r = rows.get((mode, p))
        if not r:
            continue
        ratio = f"{r[0] / base[0]:.2f}" if base else "-"
        print(f"{mode:<10}{p:>4}{r[0]:>12.0f}{r[1]:>9.2f}{r[2]:>9.2f}{ratio:>10}")
if floor_mode:
    got, base = rows.get((floor_mode, pipelines[0])), rows.get((base_mode, pipelines[0]))
    if got and base:
        verdict = "meets" if got[0] >= floor * base[0] else "MISSES"
        print(f"floor: {floor_mode} at -P {pipelines[0]} is {got[0] / base[0]:.2f}x {base_mode} ({verdict} the {floor}x floor)")
PY
}
