#!/usr/bin/env bash
# What TLS costs, side by side in one run: redis-benchmark against Redis
# directly (plain port, then its TLS port: the same server listens on
# both) and through Rampart (plain, then TLS from the client to Rampart
# and from Rampart to the node), at -P 1 and -P 16, for GET and SET.
# Prints requests/s, p50/p99 and each row's ratio to plain direct Redis;
# `rampart-tls/rampart` and `direct-tls/direct` are the costs to compare.
#
#   tests/bench/tls.sh [requests-per-test] [rounds]
#
# Needs redis-server and redis-tools built with TLS (Debian's are) and
# openssl (for the certificates).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
ROUNDS=${2:-3}

source tests/bench/lib.sh
require redis-server redis-benchmark openssl python3
cargo build --release -q -p rampart

# A CA and one certificate for 127.0.0.1, for servers and clients alike.
(
  cd "$work"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -subj /CN=bench-ca -days 1 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout key.pem -out req.csr -subj /CN=localhost 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n' > ext.cnf
  openssl x509 -req -in req.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out cert.pem -days 1 -extfile ext.cnf 2>/dev/null
)
TLS_ARGS=(--tls --cacert "$work/ca.crt" --cert "$work/cert.pem" --key "$work/key.pem")

REDIS=$(free_port); REDIS_TLS=$(free_port); PLAIN=$(free_port); TLS=$(free_port)
mkdir -p "$work/redis"
redis-server --port "$REDIS" --tls-port "$REDIS_TLS" --bind 127.0.0.1 --save "" --appendonly no \
  --dir "$work/redis" --tls-cert-file "$work/cert.pem" --tls-key-file "$work/key.pem" \
  --tls-ca-cert-file "$work/ca.crt" >/dev/null &
pids+=($!)
wait_port "$REDIS"

cat > "$work/plain.toml" <<TOML
[proxy]
listen = "127.0.0.1:$PLAIN"
[log]
level = "warn"
[shards.main]
nodes = ["127.0.0.1:$REDIS"]
TOML
cat > "$work/tls.toml" <<TOML
[proxy]
listen = "127.0.0.1:$TLS"
[proxy.tls]
cert = "$work/cert.pem"
key = "$work/key.pem"
[backend.tls]
ca = "$work/ca.crt"
cert = "$work/cert.pem"
key = "$work/key.pem"
[log]
level = "warn"
[shards.main]
nodes = ["127.0.0.1:$REDIS_TLS"]
TOML
start_rampart plain "$PLAIN"
./target/release/rampart run --config "$work/tls.toml" &
pids+=($!)
for _ in $(seq 100); do redis-cli -p "$TLS" "${TLS_ARGS[@]}" PING >/dev/null 2>&1 && break; sleep 0.05; done

run() { # mode port pipeline test [tls]
  local extra=()
  [ -n "${5:-}" ] && extra=("${TLS_ARGS[@]}")
  redis-benchmark -p "$2" "${extra[@]}" -c 50 -n "$N" -P "$3" -t "$4" --csv -q 2>/dev/null \
    | sed "s/^/$1,$3,/" >> "$work/results.csv"
}
for test in get set; do
  rm -f "$work/results.csv"
  for _ in $(seq "$ROUNDS"); do
    for P in 1 16; do
      run direct "$REDIS" "$P" "$test"
      run direct-tls "$REDIS_TLS" "$P" "$test" tls
      run rampart "$PLAIN" "$P" "$test"
      run rampart-tls "$TLS" "$P" "$test" tls
    done
  done
  median_table "${test^^}, TLS against plain" direct "1 16" "direct direct-tls rampart rampart-tls"
  echo
done
