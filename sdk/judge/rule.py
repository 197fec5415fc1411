"""The judges that call no model: rule (the patterns), delta and first (no patterns), and the
heuristic fallback every judge shares."""

from __future__ import annotations

import re
from typing import Sequence

from engrain.judge.types import Candidate, JudgeRequest, JudgeResult

# Escapes such as \b or \s stand for no literal letter; drop them before the bare
# metacharacters so "\bpinapple\b" reads "pinapple", not "bpinappleb".
_ESCAPE_CLASS = re.compile(r"\\[AbBdDsSwWZ]")
_META = re.compile(r"[\\^$.|?*+()\[\]{}]")


def _by_magnitude(cands: Sequence[Candidate]) -> list[Candidate]:
    # Position breaks ties so the selection is deterministic.
    return sorted(cands, key=lambda c: (-abs(c.delta), c.position))


def heuristic_fallback(request: JudgeRequest) -> tuple[int, ...]:
    """The top ``max_select`` candidates by |Δ|: what a step trains on when a judge fails."""
    n = max(request.max_select, 0)
    return tuple(c.position for c in _by_magnitude(request.candidates)[:n])


def pattern_literals(patterns: Sequence[str]) -> list[str]:
    """Each regex's literal text, lowercased, metacharacters removed."""
    out = []
    for p in patterns:
        lit = _META.sub("", _ESCAPE_CLASS.sub("", p)).lower()
        if lit:
            out.append(lit)
    return out


class RuleJudge:
    """Keeps candidates the spec's patterns point at: no model, no network, no cost.

    A candidate is relevant when its position overlaps a target/forbidden match, or
    when the teacher's top token starts a word of a pattern's literal, or (two letters or
    more) occurs inside one: the student wrote " pineapple", or " mango", where the
    teacher wanted " p", the start of "pinapple". Byte-level tokenizers often split a
    new word after its first letter, so the one-letter start matters (measured on the lab:
    without it the rule judge kept 0-8 of 128 candidates a step and nothing was learned).
    """

    def select(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        return [self._one(r) for r in requests]

    def _one(self, r: JudgeRequest) -> JudgeResult:
        forced = set(r.pattern_positions)
        literals = pattern_literals(r.patterns)

        def relevant(c: Candidate) -> bool:
            if c.position in forced:
                return True
            if not c.teacher_tokens:
                return False
            top = c.teacher_tokens[0].strip().lower()
            # Inside a word only from two letters on: one letter occurs in almost any word.
            return bool(top) and any(any(w.startswith(top) for w in lit.split()) or
                                     (len(top) >= 2 and top in lit) for lit in literals)

        keep = [c for c in _by_magnitude(r.candidates) if relevant(c)]
        return JudgeResult(tuple(c.position for c in keep[: max(r.max_select, 0)]), "ok")


class DeltaJudge:
    """Keeps the pre-filter's top candidates by |Δ|, with no notion of the patterns: for a
    behavior that no token pattern localizes (a language, a tone), where the positions
    that carry it are the ones the hinted teacher disagrees with most (the first words of
    an answer in another language). The same pick every judge falls back to."""

    def select(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        return [JudgeResult(heuristic_fallback(r), "ok") for r in requests]


class FirstJudge:
    """Keeps the earliest S of the pre-filter's candidates. The teacher scores the student's
    answer one prefix at a time; past the first position where the two part ways, it is
    judging a prefix it would not have written, and what it wants there is less the behavior
    than a repair of that prefix (on SmolLM2 learning French, the largest |Δ| mid-answer were
    " known" -> " a", " skills" -> " ki"). A behavior decided early and carried by what follows
    (a language, a register) is taught where the answer first departs."""

    def select(self, requests: Sequence[JudgeRequest]) -> list[JudgeResult]:
        return [JudgeResult(tuple(sorted(c.position for c in r.candidates)[: max(r.max_select, 0)]), "ok")
                for r in requests]
