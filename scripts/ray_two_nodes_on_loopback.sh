#!/usr/bin/env bash
# A two-node Ray cluster (a head and a second node) on one machine, on loopback only, running a sweep across both.
#
#   sudo unshare -n bash scripts/ray_two_nodes_on_loopback.sh SPEC OUT     # as root
#   unshare -rn bash scripts/ray_two_nodes_on_loopback.sh SPEC OUT         # as a user (user namespaces)
#
# Inside a fresh network namespace the only interface is lo, so neither Ray nor anything else can reach another
# address (docs/ray.md "Running on loopback"). Without unshare the script still binds 127.0.0.1, but a Ray head
# then also contacts other addresses on its own. Both nodes get their own ports; the sweep driver connects to the
# head; `ray stop` ends both nodes when the script exits, however it exits.
set -euo pipefail
SPEC=${1:?usage: ray_two_nodes_on_loopback.sh SPEC OUT}
OUT=${2:?usage: ray_two_nodes_on_loopback.sh SPEC OUT}
cd "$(dirname "$0")/.."
RAY=${RAY:-.venv/bin/ray}
RANKROBUST=${RANKROBUST:-.venv/bin/rankrobust}
ip link set lo up 2>/dev/null || true        # a new namespace starts with lo down
export RAY_USAGE_STATS_ENABLED=0
# Token authentication: Ray turns it on for a head when ~/.ray/auth_token exists, and a node or driver started
# without it is then refused (InvalidAuthToken). Nothing outside this namespace can reach these nodes, so the
# script turns it off for every process it starts; on a real cluster keep it on and give every node the same
# token (docs/ray.md "Token authentication").
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
trap '"$RAY" stop --force >/dev/null 2>&1 || true' EXIT
"$RAY" start --head --node-ip-address=127.0.0.1 --port=6390 --num-cpus=1 --include-dashboard=false \
  --node-manager-port=6391 --object-manager-port=6392 --min-worker-port=10100 --max-worker-port=10199 \
  --dashboard-agent-listen-port=6393 --metrics-export-port=6394 --runtime-env-agent-port=6395 --disable-usage-stats
"$RAY" start --address=127.0.0.1:6390 --node-ip-address=127.0.0.1 --num-cpus=1 \
  --node-manager-port=6401 --object-manager-port=6402 --min-worker-port=10200 --max-worker-port=10299 \
  --dashboard-agent-listen-port=6403 --metrics-export-port=6404 --runtime-env-agent-port=6405 --disable-usage-stats
"$RAY" status --address=127.0.0.1:6390 | sed -n '1,12p'
"$RANKROBUST" sweep "$SPEC" --out "$OUT" --executor ray --address 127.0.0.1:6390 --quiet
"$RANKROBUST" results "$OUT"
