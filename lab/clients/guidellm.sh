#!/usr/bin/env bash
# guidellm against an OpenAI base URL (`inferpick-lab demo --keep` prints one per policy): the
# demo's workload from a prompt file, evenly spaced arrivals at RATE for DURATION seconds (guidellm
# 0.8.1's Poisson profile dispatched every request at once here), streamed
# completions, the lab's tokenizer, nothing downloaded. Prints TTFT p50/p99 and failed requests.
#
#   pip install guidellm
#   lab/clients/guidellm.sh http://127.0.0.1:PORT/v1
#
# Settings: see lab/clients/common.sh.
source "$(dirname "$0")/common.sh"

url="$(base_url "${1:-}")"
guidellm="$(client_bin guidellm "pip install guidellm")"
rate="$(rate)"
tokenizer_dir "$OUT/tokenizer"
prompt_file guidellm "$OUT/prompts.jsonl" "$rate" "$DURATION"

"$guidellm" run \
  --backend "kind=openai_http,target=${url%/v1},model=$MODEL,request_format=/v1/completions" \
  --tokenizer "kind=hf_auto,model=$OUT/tokenizer" \
  --data "kind=json_file,path=$OUT/prompts.jsonl" \
  --profile "kind=constant,rate=$rate" \
  --constraint "kind=max_duration,seconds=$DURATION" \
  --output "kind=json,path=$OUT/guidellm.json" \
  --disable-console-interactive \
  >"$OUT/guidellm.log" 2>&1 || { tail -30 "$OUT/guidellm.log" >&2; die "guidellm failed (log: $OUT/guidellm.log)"; }

read -r requests failed p50 p99 < <(python3 - "$OUT/guidellm.json" <<'PY'
import json, sys
b = json.load(open(sys.argv[1]))["benchmarks"][0]
totals = b["metrics"]["request_totals"]
# "incomplete" requests were still in flight when the duration ran out: guidellm cancelled them.
ttft = b["metrics"]["time_to_first_token_ms"]["successful"]["percentiles"]
print(totals["successful"] + totals["errored"], totals["errored"], ttft["p50"], ttft["p99"])
PY
)
summary guidellm "$url" "$requests" "$failed" "$p50" "$p99"
