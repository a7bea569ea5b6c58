#!/usr/bin/env python3
"""Writes the demo's workload (lab/workloads/demo.yaml) as a prompt file a benchmark client reads.

The prompts are words of the lab's vocabulary (`inferpick-lab tokenizer`), so the client's
tokenizer, the picker and the emulated engines all count exactly the tokens drawn here, and the
shared-prefix class really shares its 3000-token prefixes (English text would read as `[UNK]`
tokens to the emulator, every prompt alike). The classes, weights and lengths are the demo's:

- 55%: prompts log-normal around 300 tokens (sigma 0.9, at most 6000);
- 30%: one of 12 shared 3000-token prefixes, prompts log-normal around 3600 (sigma 0.15, at most 8000);
- 15%: prompts log-normal around 400 (sigma 0.7, at most 4000) for one of 6 LoRA adapters
  (`adapter-1` to `adapter-6`, Zipf 1.0), named in the request where the format can carry a
  model per request (aiperf's `extra`), else sent to the base model;

every answer uniform over 16 to 96 tokens. Only the standard library is used.

    demo_prompts.py --format guidellm --count 2000 --out prompts.jsonl
"""

import argparse
import json
import math
import random
import sys

VOCAB_WORDS = 32_000
PREFIX_GROUPS = 12
PREFIX_TOKENS = 3000
ADAPTERS = 6
# (weight, lognormal median, sigma, max, shared prefix, adapters)
CLASSES = [
    (55, 300.0, 0.9, 6000, False, False),
    (30, 3600.0, 0.15, 8000, True, False),
    (15, 400.0, 0.7, 4000, False, True),
]
OUTPUT_TOKENS = (16, 96)


def word(token_id):
    """The lab tokenizer's word for token `token_id` (1 to 32000): bijective base 26."""
    letters = []
    n = token_id
    while n > 0:
        n -= 1
        letters.append(chr(ord("a") + n % 26))
        n //= 26
    return "".join(reversed(letters))


def words(rng, count):
    """`count` random words of the vocabulary, one token each."""
    return [word(rng.randint(1, VOCAB_WORDS)) for _ in range(count)]


def lognormal(rng, median, sigma, most):
    """The lab's log-normal draw: median * e^(sigma N(0,1)), rounded, between 1 and `most`."""
    return max(1, min(most, round(median * math.exp(sigma * rng.gauss(0.0, 1.0)))))


def zipf_pick(rng, count, s):
    """An adapter number from 1 to `count`, with probability proportional to 1/k^s."""
    weights = [1.0 / k**s for k in range(1, count + 1)]
    return rng.choices(range(1, count + 1), weights=weights)[0]


def requests(count, seed):
    """`count` requests of the demo's mix: (prompt text, output tokens, adapter or None)."""
    rng = random.Random(seed)
    prefixes = [words(random.Random(seed * 1000 + g), PREFIX_TOKENS) for g in range(PREFIX_GROUPS)]
    weights = [c[0] for c in CLASSES]
    for _ in range(count):
        _, median, sigma, most, shared, adapters = rng.choices(CLASSES, weights=weights)[0]
        tokens = lognormal(rng, median, sigma, most)
        prompt = prefixes[rng.randrange(PREFIX_GROUPS)] if shared else []
        prompt = prompt + words(rng, max(0, tokens - len(prompt)))
        adapter = f"adapter-{zipf_pick(rng, ADAPTERS, 1.0)}" if adapters else None
        yield " ".join(prompt), rng.randint(*OUTPUT_TOKENS), adapter


def record(fmt, prompt, output, adapter, rng):
    """One line of the prompt file in the format the client reads."""
    if fmt == "guidellm":
        return {"prompt": prompt, "output_tokens_count": output}
    if fmt == "aiperf":
        line = {"text": prompt, "output_length": output}
        if adapter:
            line["extra"] = {"model": adapter}
        return line
    # inference-perf reads ShareGPT conversations and asks for as many tokens as the answer has.
    return {
        "conversations": [
            {"from": "human", "value": prompt},
            {"from": "gpt", "value": " ".join(words(rng, output))},
        ]
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--format", required=True, choices=["guidellm", "aiperf", "inference-perf"])
    parser.add_argument("--count", type=int, required=True, help="requests to write")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", required=True, help="the JSON Lines file to write")
    args = parser.parse_args()
    if args.count < 1:
        sys.exit(f"--count {args.count}: must be at least 1")
    answers = random.Random(args.seed ^ 0xA5)
    with open(args.out, "w", encoding="utf-8") as out:
        for prompt, output, adapter in requests(args.count, args.seed):
            out.write(json.dumps(record(args.format, prompt, output, adapter, answers)) + "\n")


if __name__ == "__main__":
    main()
