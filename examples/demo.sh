#!/usr/bin/env bash
# Starts three local redis-server nodes (7001 primary, 7002 and 7003 its
# replicas) and Rampart in front of them on 6380, admin HTTP on 6381.
# Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "redis-server not found: apt-get install -y redis-server redis-tools" >&2; exit 1; }
work=$(mktemp -d)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT INT TERM

for port in 7001 7002 7003; do
  mkdir -p "$work/$port"
  args=(--port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work/$port" --logfile "$work/$port/redis.log")
  [ "$port" != 7001 ] && args+=(--replicaof 127.0.0.1 7001)
  redis-server "${args[@]}" &
  pids+=($!)
done

cargo build --release -p rampart
./target/release/rampart run --config examples/configs/local.toml &
pids+=($!)

cat <<MSG

Rampart is up.
  redis-cli -p 6380                      # talk to Redis through Rampart
  redis-cli -p 6380 RAMPART TOPOLOGY     # what Rampart sees
  curl -s localhost:6381/v1/topology     # the same over HTTP
  redis-cli -p 6380 RAMPART SWITCHOVER main 127.0.0.1:7002   # move the primary, no errors, no loss
  kill -9 \$(redis-cli -p 7001 INFO server | awk -F: '/process_id/ {print \$2}' | tr -d '\r')
                                         # kill the primary: Rampart fails over in about a second
  curl -s localhost:6381/v1/events       # what Rampart did, step by step
Ctrl-C stops the nodes and Rampart.
MSG
wait
