# Shared by the benchmark scripts: tools, a work directory cleaned up on
# exit, free ports, and local redis-server nodes. Source it after `cd`ing
# to the repository root.

require() { # tool...
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool (apt-get install -y redis-server redis-tools nutcracker)" >&2; exit 1; }
  done
}

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

# start_rampart NAME PORT: Rampart with $work/NAME.toml, once it answers.
start_rampart() {
  ./target/release/rampart run --config "$work/$1.toml" &
  pids+=($!)
  wait_port "$2"
}
