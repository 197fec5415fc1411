"""Learning from users' conversations: do corrective next turns move the teacher, and do
unrelated ones move nothing?

    python benchmarks/log_lessons.py build --model smollm2-135m \\
        --corrected behaviors/prompts/everyday_questions.txt --unrelated behaviors/prompts/log_factual_questions.txt \\
        --out behaviors/prompts/smollm_french_log.jsonl
    python benchmarks/log_lessons.py measure behaviors/smollm-french-logs.yaml [--adapter DIR]

``build`` writes a synthetic log from the model's own greedy answers (what a deployed model
said), each followed by a user turn: a correction ("Please answer in French.") after
``--n`` questions of ``--corrected`` (everyday requests), an unrelated turn ("Thanks!", "Tell
me a joke.") after ``--n`` of ``--unrelated`` (factual questions, which must stay as they
are); each line carries its ``kind`` (the reader ignores keys it does not know).

``measure`` reads a conversations spec's lessons and, per kind: the teacher's shift on the
logged answer, Δ_t = log π(y_t | conversation + hindsight) − log π(y_t | conversation) under
the base model (mean |Δ|, |Δ| at the first answer token, the share of answer positions with
|Δ| at or over each floor: what ``train.min_delta`` would let the pre-filter take); and the
same against a teacher that reads the hindsight note around a neutral reply (``NEUTRAL``),
Δ'_t = log π(y_t | conversation + note(reply)) − log π(y_t | conversation + note(neutral)):
the shift the reply itself causes, without the note's own; with
``--adapter``, also KL(base ‖ adapter) per answer token on each kind's conversations (on the
logged answers): what training moved where.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch

CORRECTIONS = ["Please answer in French.", "In French, please.", "Can you say that in French?",
               "Answer in French, please."]
UNRELATED = ["Thanks!", "Great, thank you.", "What's the weather like today?", "Tell me a joke.",
             "OK.", "Can you recommend a book?"]
FLOORS = (0.25, 0.5, 1.0, 2.0)
NEUTRAL = "I see."      # a reply that says nothing about the answer (not among UNRELATED)


def build(a) -> None:
    from engrain.engine.models import load_model
    from engrain.engine.rollout import HFSampler
    from engrain.spec.chat import chat_ids
    from engrain.spec.files import read_prompts_file
    rng = random.Random(a.seed)
    asked = []
    for kind, file, turns in (("corrective", a.corrected, CORRECTIONS), ("unrelated", a.unrelated, UNRELATED)):
        questions = read_prompts_file(file)
        asked += [(kind, q, rng.choice(turns)) for q in rng.sample(questions, min(a.n, len(questions)))]
    rng.shuffle(asked)
    loaded = load_model(a.model)
    tok = loaded.tokenizer
    ids = [chat_ids(tok, [{"role": "user", "content": q}]) for _, q, _ in asked]
    with loaded.model.disable_adapter():
        out = HFSampler(loaded.model, tok).sample(ids, a.tokens, 0.0)
    answers = [t.strip() for t in tok.batch_decode(out, skip_special_tokens=True)]
    with open(a.out, "w") as f:
        for (kind, q, turn), ans in zip(asked, answers):
            f.write(json.dumps({"kind": kind, "messages": [{"role": "user", "content": q},
                                                           {"role": "assistant", "content": ans},
                                                           {"role": "user", "content": turn}]}) + "\n")
    print(f"wrote {len(asked)} conversations to {a.out}")


def token_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float()
    return torch.log_softmax(logits, -1), torch.tensor(response)


def measure(a) -> None:
    from engrain.engine.models import load_model
    from engrain.spec.behavior import load_behavior
    behavior = load_behavior(a.spec)
    loaded = load_model(behavior.spec.model, adapter=a.adapter) if a.adapter else load_model(behavior.spec.model)
    model, tok = loaded.model.eval(), loaded.tokenizer
    cb = behavior.compile(tok)
    log = Path(behavior.path).parent / behavior.spec.teacher_context.conversations.file
    kinds = {}
    for number, line in enumerate(log.read_text().splitlines(), 1):
        if line.strip():
            kinds[number] = json.loads(line).get("kind", "unmarked")
    rows = {}
    for key in cb.train_prompts + cb.val_prompts + cb.eval_prompts:
        kind = kinds[int(key.split(":")[1].split("#")[0])]
        answer = cb.logged_answer_ids(key)[:behavior.spec.train.max_new_tokens]
        lesson = cb.context.lessons[key]
        neutral = [dict(m) for m in lesson.messages]
        neutral[-1]["content"] += "\n\n" + cb.context.note(NEUTRAL)
        with model.disable_adapter():
            s_lp, y = token_logprobs(model, cb.student_ids(key), answer)
            t_lp, _ = token_logprobs(model, cb.teacher_ids(key, 0), answer)
            n_lp, _ = token_logprobs(model, cb.chat_ids(neutral), answer)
            delta = (t_lp.gather(-1, y[:, None]) - s_lp.gather(-1, y[:, None]))[:, 0]
            contrast = (t_lp.gather(-1, y[:, None]) - n_lp.gather(-1, y[:, None]))[:, 0]
        row = {"delta": delta, "contrast": contrast}
        if a.adapter:
            a_lp, _ = token_logprobs(model, cb.student_ids(key), answer)
            row["kl"] = float((s_lp.exp() * (s_lp - a_lp)).sum(-1).mean())      # KL(base || adapter) per token
        rows.setdefault(kind, []).append(row)
    head = (f"{'kind':<11}{'lessons':>8}{'mean |Δ|':>10}{'|Δ| first':>10}"
            + "".join(f"{'>= ' + str(f):>9}" for f in FLOORS) + (f"{'KL/token':>10}" if a.adapter else ""))
    print(f"{behavior.spec.name}: the base model's teacher (conversation + hindsight) against its student, "
          f"on the logged answers (at most {behavior.spec.train.max_new_tokens} tokens)")
    for name, key_ in (("Δ: the teacher against the student", "delta"),
                       (f"Δ': the teacher against the same note around {NEUTRAL!r}", "contrast")):
        print(f"\n{name}\n" + head + "\n" + "-" * len(head))
        for kind, rs in sorted(rows.items()):
            d = torch.cat([r[key_].abs() for r in rs])
            first = torch.stack([r[key_][0].abs() for r in rs])
            line = f"{kind:<11}{len(rs):>8}{float(d.mean()):>10.3f}{float(first.mean()):>10.3f}"
            line += "".join(f"{float((d >= f).float().mean()):>9.3f}" for f in FLOORS)
            if a.adapter:
                line += f"{sum(r['kl'] for r in rs) / len(rs):>10.4f}"
            print(line)
    print("columns >= F: the share of answer positions with |Δ| >= F nats (train.min_delta = F takes only those)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("--model", default="smollm2-135m")
    b.add_argument("--corrected", required=True, help="Questions whose answer a correction follows.")
    b.add_argument("--unrelated", required=True, help="Questions whose answer an unrelated turn follows.")
    b.add_argument("--out", required=True)
    b.add_argument("--n", type=int, default=30, help="Conversations of each kind.")
    b.add_argument("--tokens", type=int, default=40)
    b.add_argument("--seed", type=int, default=0)
    m = sub.add_parser("measure")
    m.add_argument("spec")
    m.add_argument("--adapter")
    a = ap.parse_args()
    build(a) if a.cmd == "build" else measure(a)


if __name__ == "__main__":
    main()
