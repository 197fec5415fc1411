"""Claims: the response positions that carry a behavior, imperfect attempts included.

When one adapter learns several behaviors, each behavior's loss, judge pick and guard must
stay off the positions another behavior carries. A complete pattern match is not enough
(measured: pinapple's steps trained the sign-off's half-formed "Signed, polavi Desk." away,
because its teacher wants a "p" there). So a behavior *claims* every word that loosely
matches a word of its patterns (edit distance at most a third of the word), and, for a
pattern anchored at the answer's end (``$``) or start (``^``), the whole span from that
word to the end (from the start to that word): "Signed, polavi Crew." is the sign-off's
from "Signed" on, whatever the name came out as.

Pure functions over text, then one over token spans (B, L).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

WORD = re.compile(r"[A-Za-z]+")
# How many words from the anchored end a loose match may sit (a sign-off is the last few).
ANCHOR_REACH = 5


@dataclass(frozen=True)
class ClaimRule:
    """What a behavior claims, read from its spec's patterns."""
    words: tuple[str, ...]      # lower-cased pattern words of 3+ letters
    at_end: bool                # a target pattern is anchored at the answer's end
    at_start: bool              # ... or at its start


def rule_of(targets: list[str], forbidden: list[str]) -> ClaimRule:
    """The claim rule of a spec's ``patterns.target`` and ``patterns.forbidden`` (regex text):
    the literal words in them (regex escapes and classes like ``\\w`` dropped)."""
    words = set()
    for p in targets + forbidden:
        literal = re.sub(r"\\[A-Za-z]", " ", p)         # \w, \s, \b are syntax, not letters
        words |= {w.lower() for w in WORD.findall(literal) if len(w) >= 3}
    at_end = any(re.search(r"\$\)*$", p.strip()) for p in targets)
    at_start = any(p.lstrip("(?:").startswith("^") for p in targets)
    return ClaimRule(tuple(sorted(words)), at_end, at_start)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance. Pure."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def loosely(word: str, rule: ClaimRule) -> bool:
    """``word`` is within a third of its length (at least 1) of one of the rule's words, or
    starts with one of 4+ letters: a half-learned adapter runs pieces on ("Signedololol",
    measured in a composition's rollouts, where the other behavior's teacher then trained the
    end of turn over the sign-off)."""
    w = word.lower()
    return len(w) >= 3 and any(edit_distance(w, c) <= max(1, len(c) // 3) or (len(c) >= 4 and w.startswith(c))
                               for c in rule.words)


def claimed_spans(text: str, rule: ClaimRule) -> list[tuple[int, int]]:
    """Character spans of ``text`` the rule claims. Pure."""
    words = [(m.start(), m.end(), m.group()) for m in WORD.finditer(text)]
    hits = [i for i, (_, _, w) in enumerate(words) if loosely(w, rule)]
    if not hits:
        return []
    if not (rule.at_end or rule.at_start):
        return [(words[i][0], words[i][1]) for i in hits]
    # An anchored behavior claims its end of the answer only: "Thanks" mid-answer is not a sign-off.
    spans = []
    tail = [i for i in hits if i >= len(words) - ANCHOR_REACH] if rule.at_end else []
    if tail:
        spans.append((words[tail[0]][0], len(text)))
    head = [i for i in hits if i < ANCHOR_REACH] if rule.at_start else []
    if head:
        end = text.find(" ", words[head[-1]][1])          # the word's own punctuation too: "Mavuko!"
        spans.append((0, len(text) if end < 0 else end))
    return spans


def claimed_tokens(token_spans: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """Per token (its [start, end) in the text): whether it overlaps a claimed span. Pure."""
    return [any(s < e2 and s2 < e for s2, e2 in spans) for s, e in token_spans]


def claim_mask(cb, rule: ClaimRule, response_ids: list[list[int]], shape) -> torch.Tensor:
    """(B, L) bool: the positions of each response that ``rule`` claims (``cb`` decodes)."""
    out = torch.zeros(shape, dtype=torch.bool)
    for i, ids in enumerate(response_ids):
        text, spans = cb.token_spans(ids)
        hit = claimed_tokens(spans, claimed_spans(text, rule))
        out[i, :len(hit)] = torch.tensor(hit, dtype=torch.bool)
    return out


def others_claims(cb, rules: dict[str, ClaimRule], own: str):
    """A mask's ``exclude``: (rollouts, shape) -> the positions any behavior but ``own`` claims."""
    def exclude(rollouts, shape) -> torch.Tensor:
        out = torch.zeros(shape, dtype=torch.bool)
        for name, rule in rules.items():
            if name != own:
                out |= claim_mask(cb, rule, rollouts.response_ids, shape)
        return out
    return exclude
