"""Which items of a candidate suite the base model *knows*, not guesses: the items a
regression suite should hold.

    python benchmarks/robust_items.py smollm2-135m candidates.jsonl --out suite.jsonl
    python benchmarks/robust_items.py MODEL FILE [--samples 8 --temperature 0.7 --min-right 6]

Each candidate ({"prompt", "expect"} as a spec's suite file; ``expect`` a regex, matched
case-insensitively with ``--ignore-case``) is answered greedily and ``--samples`` times at
``--temperature``. An item is kept when the greedy answer is right *and* at least
``--min-right`` of the samples are: a greedy answer right by a narrow margin flips under any
change of the weights, so a suite of such items measures noise (RESULTS 25: of the sums
the base answered right greedily, 3 of 27 were right in 6 of 8 samples, and a random
change of an adapter's size cost 0-4 of them). Prints the histogram of right samples among
the greedy-right items, and writes the kept items in the candidates' order.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

from engrain.engine.models import load_plain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from suite_noise import answers  # noqa: E402 - the same greedy and sampled answers suite_noise grades


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("candidates")
    ap.add_argument("--out", required=True)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--min-right", type=int, default=6)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--ignore-case", action="store_true")
    a = ap.parse_args()
    torch.manual_seed(0)
    model, tok = load_plain(a.model)
    rows = [json.loads(line) for line in open(a.candidates) if line.strip()]
    flags = re.IGNORECASE if a.ignore_case else 0
    right = lambda row, text: re.search(row["expect"], text, flags) is not None  # noqa: E731
    messages = [[{"role": "user", "content": r["prompt"]}] for r in rows]
    greedy = answers(model, tok, messages, a.tokens, 0.0)
    sampled = answers(model, tok, messages, a.tokens, a.temperature, a.samples)
    k = [sum(right(r, t) for t in sampled[j * a.samples:(j + 1) * a.samples]) for j, r in enumerate(rows)]
    known = [j for j, r in enumerate(rows) if right(r, greedy[j])]
    keep = [j for j in known if k[j] >= a.min_right]
    hist = {n: sum(1 for j in known if k[j] == n) for n in range(a.samples + 1)}
    print(f"{a.candidates}: {len(known)} of {len(rows)} right greedily; right samples of {a.samples} at "
          f"T={a.temperature} among those: {hist}; kept (>= {a.min_right}): {len(keep)}")
    with open(a.out, "w") as f:
        f.writelines(json.dumps(rows[j]) + "\n" for j in keep)


if __name__ == "__main__":
    main()
