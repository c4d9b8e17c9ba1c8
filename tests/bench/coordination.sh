#!/usr/bin/env bash
# Failover with three Rampart instances coordinated through a three-member
# etcd: SIGKILL of the primary alone, then of the primary and the lease
# holder at the same moment, each time until the first successful write
# through a surviving instance (median, p90, max). Real etcd, redis-server
# and Rampart processes, as tests/tests/coordination.rs starts them.
# Needs: redis-server, etcd-server (etcd), etcd-client (etcdctl).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo test -p rampart-tests --test coordination -- --ignored --nocapture \
  measure_primary_and_holder_killed_together 2>&1 | grep -E "round|SIGKILL|rounds:"
