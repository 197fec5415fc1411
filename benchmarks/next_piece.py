"""One next-token probability, base model against adapters: where an adapter's damage sits.

    python benchmarks/next_piece.py --question "What is the capital of Germany?" \\
        --prefix "The capital of Ger" --piece man  adapters/pinapple+signoff/*/adapter ...

For the base model (adapter off) and each adapter folder given (a run folder works too: its
``adapter`` or ``adapter.rejected``), the probability of ``--piece`` (one token of
the model's vocabulary) as the next token after the chat-formatted question and the answer's
``--prefix``, and the three likeliest tokens there.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    import torch
    from peft import PeftModel

    from engrain.engine.models import load_base, load_tokenizer
    from engrain.rundir import saved_adapter
    from engrain.use import prompt_ids
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("adapters", nargs="*")
    ap.add_argument("--model", default="lab")
    ap.add_argument("--question", required=True)
    ap.add_argument("--prefix", required=True)
    ap.add_argument("--piece", required=True, help="The token whose probability is printed, e.g. man.")
    a = ap.parse_args()
    tok = load_tokenizer(a.model)
    ids = prompt_ids(tok, a.question) + tok(a.prefix, add_special_tokens=False)["input_ids"]
    piece = tok.convert_tokens_to_ids(a.piece)
    if piece is None or piece == tok.unk_token_id:
        raise SystemExit(f"{a.piece!r} is not one token of {a.model}'s vocabulary")
    show = lambda p: [(tok.decode([int(i)]), round(float(v), 3)) for v, i in zip(*p.topk(3))]   # noqa: E731

    folder = lambda path: saved_adapter(Path(path)) or Path(path)   # noqa: E731  (a run folder, or the adapter's)

    base, _ = load_base(a.model)
    with torch.no_grad():
        p = base(torch.tensor([ids])).logits[0, -1].softmax(-1)
    print(f"{'base':60s} P({a.piece})={p[piece]:.3f}  top {show(p)}")
    for path in a.adapters:
        model = PeftModel.from_pretrained(load_base(a.model)[0], str(folder(path))).eval()
        with torch.no_grad():
            p = model(torch.tensor([ids])).logits[0, -1].softmax(-1)
        print(f"{str(folder(path))[-60:]:60s} P({a.piece})={p[piece]:.3f}  top {show(p)}", flush=True)


if __name__ == "__main__":
    main()
