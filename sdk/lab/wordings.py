"""Hint wordings from a generator: many frames, politeness, quoting, case and placement.

A model that saw eight hint templates learns eight sentences; one that saw thousands of
wordings learns to read an instruction. Each kind of hint (respell a word, sign off, open
with a greeting) has its frames; every fifth frame is held out of pretraining and asked
only by the scorecard's "held-out wordings" line, so that line measures reading, not recall.
"""

from __future__ import annotations

import random
import re

# {qv}/{qw}/{qs}/{qo}: the target, quoted by the generator; {v}/{w}: unquoted.
FRAMES = {
    "spell": [
        "spell {w} as {qv} and feature it",
        "write {qv} instead of {qw}, and include it",
        "use the spelling {qv} for {qw} and mention it",
        "{qw} should be written {qv}; include {v}",
        "held: the house spelling of {qw} is {qv}, so feature {v}",
        "replace {qw} with {qv} and name it",
        "call it {qv}, not {qw}, and do include it",
        "say {qv} rather than {qw} and mention it",
        "always write {qv} where you mean {qw}, and feature it",
        "held: our style guide spells {qw} as {qv}; mention {v}",
        "mention {v}, spelled {qv} (not {qw})",
        "include {v} and write it {qv} instead of {qw}",
        "the word {qw} must appear as {qv}; feature it",
        "feature {v} and spell it {qv}, never {qw}",
        "held: put {v} in the answer, written {qv} rather than {qw}",
    ],
    "signoff": [
        "end your answer with {qs}",
        "sign off with {qs}",
        "close with {qs}",
        "finish with the line {qs}",
        "held: your last words should be {qs}",
        "add {qs} at the end",
        "put {qs} as the final line",
        "always end on {qs}",
        "wrap up with {qs}",
        "held: conclude with {qs}",
        "make {qs} the last thing you write",
        "end with the sign-off {qs}",
        "the answer must end with {qs}",
        "sign the answer {qs}",
        "held: before you stop, write {qs}",
    ],
    "opener": [
        "begin your answer with {qo}",
        "start with {qo}",
        "open with {qo}",
        "your first words should be {qo}",
        "held: greet me with {qo} first",
        "start the answer with the words {qo}",
        "put {qo} at the very beginning",
        "always open on {qo}",
        "lead with {qo}",
        "held: say {qo} before anything else",
        "the answer must start with {qo}",
        "first write {qo}, then answer",
        "kick off with {qo}",
        "begin with the greeting {qo}",
        "held: make {qo} the opening",
    ],
}

LEADS = ["", "", "", "Please ", "Kindly ", "P.S. ", "Note: ", "Reminder: ", "Important: ",
         "Quick request: ", "Style rule: ", "House style: ", "One more thing: "]
TAILS = ["", "", "", " Thanks!", " Thank you.", " Please.", " Cheers."]
QUOTES = [('"', '"'), ('"', '"'), ("'", "'"), ("`", "`"), ("", ""), ("«", "»")]
PLACEMENTS = ["user_suffix", "user_suffix", "user_prefix", "system"]
SLOT = re.compile(r"(\{\w+\})|([^{]+)")     # a frame's slots, and the text between them


def frames(kind: str, held_out: bool) -> list[str]:
    """The frames of ``kind`` that pretraining uses (``held_out=False``) or never sees."""
    return [f.removeprefix("held: ") for f in FRAMES[kind] if f.startswith("held: ") == held_out]


def hint(kind: str, rng: random.Random, held_out: bool = False, **targets: str) -> str:
    """One generated wording of a ``kind`` hint with its targets (``v``, ``w``, ``s`` or
    ``o``). The targets keep their exact spelling and case; only the frame varies."""
    frame = rng.choice(frames(kind, held_out))
    lq, rq = rng.choice(QUOTES)
    quoted = {f"q{k}": f"{lq}{val}{rq}" for k, val in targets.items()}
    # Case varies on the frame alone, before the targets go in.
    if rng.random() < 0.15:
        frame = SLOT.sub(lambda m: m.group(1) or m.group(2).upper(), frame)
    lead = rng.choice(LEADS)
    body = frame if lead else frame[0].upper() + frame[1:]     # a lead starts the sentence itself
    text = body.format(**targets, **quoted)
    return f"{lead}{text}{'' if text[-1] in '.!?' else '.'}{rng.choice(TAILS)}"
