#!/usr/bin/env bash
# The exact-versus-approximate prefix routing table of lab/README.md: `sim` at load 0.85 and 0.95,
# 8 pods, seeds 1–3, on shared-prefix, multi-turn, rag and chat, every policy, with KV events on
# (the picker's exact path) and off (its approximate index). Prints a Markdown table of TTFT
# p50/p99 and the engines' prefix hit ratio, each the mean over the seeds.
#
# Usage: lab/scripts/prefix-table.sh [out-dir]   (DURATION=300s by default; release build)
set -euo pipefail
out=${1:-target/prefix-table}
duration=${DURATION:-300s}
mkdir -p "$out"
cargo build --release -p inferpick-lab
bin=${CARGO_TARGET_DIR:-target}/release/inferpick-lab
for workload in shared-prefix multi-turn rag chat; do
  for load in 0.85 0.95; do
    for seed in 1 2 3; do
      for kv in on off; do
        file="$out/$workload-$load-$seed-$kv.json"
        [ -s "$file" ] && continue
        "$bin" sim --workload "$workload" --pods 8 --load "$load" --seed "$seed" \
          --duration "$duration" --kv-events "$kv" --json "$file" >/dev/null
      done
    done
  done
done
python3 - "$out" <<'PY'
import json, sys, glob, collections
rows = collections.defaultdict(list)
for f in sorted(glob.glob(sys.argv[1] + "/*.json")):
    workload, load, seed, kv = f.rsplit("/", 1)[1][:-5].rsplit("-", 3)
    for r in json.load(open(f))["results"]:
        rows[(workload, load, r["policy"], kv)].append(r)
def ms(v):
    return f"{v:.0f} ms" if v < 1000 else f"{v / 1000:.1f} s"
print("| workload | load | policy | events | TTFT p50 | TTFT p99 | prefix hit % |")
print("|---|---|---|---|---|---|---|")
for (workload, load, policy, kv), rs in sorted(rows.items()):
    mean = lambda f: sum(f(r) for r in rs) / len(rs)
    print(f"| {workload} | {load} | {policy} | {'exact' if kv == 'on' else 'approximate'} "
          f"| {ms(mean(lambda r: r['ttft_ms']['p50']))} | {ms(mean(lambda r: r['ttft_ms']['p99']))} "
          f"| {100 * mean(lambda r: r.get('prefix_hit_ratio') or 0):.1f} |")
PY
