# Shared by the benchmark-client recipes (sourced, not run): the lab binary, the offline
# tokenizer directory, the rate and the demo-shaped prompt file every client is driven with.
#
# Settings (environment):
#   INFERPICK_LAB   the inferpick-lab binary [default: on PATH, else target/release/inferpick-lab]
#   CLIENTS_VENV    a virtual environment holding the client [default: the client on PATH]
#   RATE            requests per second [default: `inferpick-lab capacity` at LOAD for PODS]
#   LOAD, PODS      [default: 0.8 and 4, the demo's]
#   DURATION        seconds of load [default: 60]
#   MODEL           [default: the demo's, meta-llama/Llama-3.1-8B-Instruct]
#   SEED            of the prompt file [default: 1]
#   OUT             where the client writes its results [default: a new temporary directory]

set -euo pipefail

CLIENTS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$CLIENTS_DIR/../.." && pwd)"

# Nothing may be fetched at run time: the tokenizer is local and the prompts are a file.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

# The base URL from the first argument: `http://host:port/v1`, as `demo --keep` prints it.
base_url() {
  local url="${1:-}"
  [ -n "$url" ] || die "usage: $(basename "$0") BASE_URL (an OpenAI base URL ending in /v1, as 'inferpick-lab demo --keep' prints)"
  url="${url%/}"
  case "$url" in
    http://*/v1 | https://*/v1) echo "$url" ;;
    *) die "$url: not an OpenAI base URL (expected http://HOST:PORT/v1)" ;;
  esac
}

lab_bin() {
  if [ -n "${INFERPICK_LAB:-}" ]; then
    echo "$INFERPICK_LAB"
  elif command -v inferpick-lab >/dev/null; then
    command -v inferpick-lab
  elif [ -x "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/inferpick-lab" ]; then
    echo "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/inferpick-lab"
  else
    die "inferpick-lab not found: cargo build --release -p inferpick-lab, or set INFERPICK_LAB"
  fi
}

# The client's program, from CLIENTS_VENV or PATH.
client_bin() {
  local name="$1" install="$2"
  if [ -n "${CLIENTS_VENV:-}" ] && [ -x "$CLIENTS_VENV/bin/$name" ]; then
    echo "$CLIENTS_VENV/bin/$name"
  elif command -v "$name" >/dev/null; then
    command -v "$name"
  else
    die "$name not found (install: $install; or set CLIENTS_VENV to the venv holding it)"
  fi
}

# A Hugging Face tokenizer directory holding the lab's tokenizer, which every client loads offline.
tokenizer_dir() {
  local dir="$1"
  mkdir -p "$dir"
  "$(lab_bin)" tokenizer --out "$dir/tokenizer.json" >/dev/null
  cat >"$dir/tokenizer_config.json" <<'EOF'
{"tokenizer_class": "PreTrainedTokenizerFast", "unk_token": "[UNK]", "model_max_length": 131072, "clean_up_tokenization_spaces": false}
EOF
}

# Requests per second: RATE, else LOAD of the demo fleet's capacity.
rate() {
  if [ -n "${RATE:-}" ]; then
    echo "$RATE"
  else
    "$(lab_bin)" capacity --rate-only --load "${LOAD:-0.8}" --pods "${PODS:-4}"
  fi
}

# Writes the demo-shaped prompt file for FORMAT with enough requests for RATE over DURATION.
prompt_file() {
  local format="$1" out="$2" rate="$3" duration="$4"
  local count
  count=$(python3 -c "import math; print(math.ceil($rate * $duration * 1.5) + 50)")
  python3 "$CLIENTS_DIR/demo_prompts.py" --format "$format" --count "$count" --seed "${SEED:-1}" --out "$out"
}

# Prints the recipe's one-line summary from "requests failed p50 p99" (milliseconds).
summary() {
  local client="$1" url="$2" requests="$3" failed="$4" p50="$5" p99="$6"
  printf '%s %s: requests %s, failed %s, TTFT p50 %.0f ms, p99 %.0f ms\n' \
    "$client" "$url" "$requests" "$failed" "$p50" "$p99"
}

MODEL="${MODEL:-meta-llama/Llama-3.1-8B-Instruct}"
DURATION="${DURATION:-60}"
OUT="${OUT:-$(mktemp -d -t inferpick-client.XXXXXX)}"
mkdir -p "$OUT"
