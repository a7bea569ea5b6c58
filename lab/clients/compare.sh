#!/usr/bin/env bash
# Drives both policies of `inferpick-lab demo --keep` with one benchmark client: starts the demo
# (a fresh fleet per policy) behind GATEWAY, runs lab/clients/CLIENT.sh on the round-robin base URL,
# then on the inferpick one, prints both summaries and stops the demo.
#
#   lab/clients/compare.sh aiperf nginx      # CLIENT: aiperf, guidellm, inference-perf
#                                            # GATEWAY: builtin (default), nginx, envoy
# Settings: see lab/clients/common.sh (RATE, DURATION, CLIENTS_VENV, ...).
source "$(dirname "$0")/common.sh"

client="${1:-}"
gateway="${2:-builtin}"
[ -x "$CLIENTS_DIR/$client.sh" ] || die "usage: compare.sh CLIENT [GATEWAY] (CLIENT: aiperf, guidellm or inference-perf)"
lab="$(lab_bin)"

demo_out="$OUT/demo.out"
"$lab" demo --keep --gateway "$gateway" --pods "${PODS:-4}" >"$demo_out" 2>"$OUT/demo.err" &
demo=$!
trap 'kill -INT "$demo" 2>/dev/null; wait "$demo" 2>/dev/null || true' EXIT

# The demo prints its base URLs once both fleets are ready.
for _ in $(seq 600); do
  grep -q '^  inferpick ' "$demo_out" 2>/dev/null && break
  kill -0 "$demo" 2>/dev/null || { cat "$OUT/demo.err" >&2; die "the demo exited before serving"; }
  sleep 0.1
done
url_of() { awk -v p="$1" '$1 == p && $2 ~ /^http/ { print $2; exit }' "$demo_out"; }
rr="$(url_of round-robin)"
ip="$(url_of inferpick)"
[ -n "$rr" ] && [ -n "$ip" ] || die "the demo printed no base URLs within 60 s ($demo_out)"

for policy in round-robin inferpick; do
  url="$rr"
  [ "$policy" = inferpick ] && url="$ip"
  printf '%-8s %-12s ' "$gateway" "$policy"
  OUT="$OUT/$policy" "$CLIENTS_DIR/$client.sh" "$url" | tail -1
done
