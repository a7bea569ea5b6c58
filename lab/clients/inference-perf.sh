#!/usr/bin/env bash
# inference-perf (the Gateway API Inference Extension's benchmark tool) against an OpenAI base URL
# (`inferpick-lab demo --keep` prints one per policy): the demo's workload from a prompt file
# (ShareGPT form), Poisson arrivals at RATE for DURATION seconds, streamed completions, the lab's
# tokenizer, nothing downloaded. Prints TTFT p50/p99 and failed requests. Needs Python 3.12.
#
#   pip install inference-perf
#   lab/clients/inference-perf.sh http://127.0.0.1:PORT/v1
#
# Settings: see lab/clients/common.sh.
source "$(dirname "$0")/common.sh"

url="$(base_url "${1:-}")"
inference_perf="$(client_bin inference-perf "pip install inference-perf (Python 3.12 or later)")"
rate="$(rate)"
tokenizer_dir "$OUT/tokenizer"
# inference-perf reads a local ShareGPT file only when its name ends in .json (JSON Lines inside).
prompt_file inference-perf "$OUT/prompts.json" "$rate" "$DURATION"

cat >"$OUT/config.yml" <<YAML
api: { type: completion, streaming: true }
data: { type: shareGPT, path: "$OUT/prompts.json" }
load:
  type: poisson
  stages: [ { rate: $rate, duration: $DURATION } ]
  request_timeout: 120
server: { type: vllm, model_name: "$MODEL", base_url: "${url%/v1}", ignore_eos: true }
tokenizer: { pretrained_model_name_or_path: "$OUT/tokenizer" }
storage: { local_storage: { path: "$OUT/reports" } }
report: { request_lifecycle: { summary: true, per_stage: false, per_request: false } }
YAML

"$inference_perf" --config_file "$OUT/config.yml" >"$OUT/inference-perf.log" 2>&1 ||
  { tail -30 "$OUT/inference-perf.log" >&2; die "inference-perf failed (log: $OUT/inference-perf.log)"; }

read -r requests failed p50 p99 < <(python3 - "$OUT/reports" <<'PY'
import glob, json, sys
r = json.load(open(glob.glob(f"{sys.argv[1]}/**/summary_lifecycle_metrics.json", recursive=True)[0]))
ok, failed = r["successes"]["count"], r["failures"]["count"]
ttft = r["successes"]["latency"]["time_to_first_token"]
print(ok + failed, failed, ttft["median"] * 1000, ttft["p99"] * 1000)
PY
)
summary inference-perf "$url" "$requests" "$failed" "$p50" "$p99"
