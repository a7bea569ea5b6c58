#!/usr/bin/env bash
# NVIDIA's aiperf against an OpenAI base URL (`inferpick-lab demo --keep` prints one per policy):
# the demo's workload from a prompt file, Poisson arrivals at RATE for DURATION seconds, streamed
# completions, the lab's tokenizer, nothing downloaded. Prints TTFT p50/p99 and failed requests.
#
#   pip install aiperf
#   lab/clients/aiperf.sh http://127.0.0.1:PORT/v1
#
# Settings: see lab/clients/common.sh.
source "$(dirname "$0")/common.sh"

url="$(base_url "${1:-}")"
aiperf="$(client_bin aiperf "pip install aiperf")"
rate="$(rate)"
tokenizer_dir "$OUT/tokenizer"
prompt_file aiperf "$OUT/prompts.jsonl" "$rate" "$DURATION"

# aiperf's offline mode (HF_HUB_OFFLINE) looks tokenizers up in the Hugging Face cache only, so a
# local directory loads with it off; an absolute path is read from disk, never looked up online.
env -u HF_HUB_OFFLINE -u TRANSFORMERS_OFFLINE "$aiperf" profile \
  --url "${url%/v1}" --endpoint-type completions --streaming --model "$MODEL" \
  --tokenizer "$OUT/tokenizer" \
  --input-file "$OUT/prompts.jsonl" --custom-dataset-type single_turn \
  --dataset-sampling-strategy sequential \
  --request-rate "$rate" --arrival-pattern poisson --random-seed "${SEED:-1}" \
  --benchmark-duration "$DURATION" --benchmark-grace-period 60 \
  --artifact-dir "$OUT/aiperf" --ui-type none --no-server-metrics --no-gpu-telemetry \
  >"$OUT/aiperf.log" 2>&1 || { tail -30 "$OUT/aiperf.log" >&2; die "aiperf failed (log: $OUT/aiperf.log)"; }

read -r requests failed p50 p99 < <(python3 - "$OUT/aiperf" <<'PY'
import glob, json, sys
path = glob.glob(f"{sys.argv[1]}/**/profile_export_aiperf.json", recursive=True)[0]
r = json.load(open(path))
ttft = r["time_to_first_token"]
ok = r["request_count"]["avg"]
failed = r.get("error_request_count", {}).get("avg", 0)
print(int(ok + failed), int(failed), ttft["p50"], ttft["p99"])
PY
)
summary aiperf "$url" "$requests" "$failed" "$p50" "$p99"
