"""The names of the figures every stage shares: what the evals write, the gate reads, the
store keeps and the report shows. One definition each."""

BEHAVIOR = "behavior"                   # the behavior without the hint: exists / only
BEHAVIOR_HINTED = "behavior_hinted"     # the same prompts with the hint (the base model's bar)
SPECIFICITY = "specificity"             # probes where the behavior must not appear
WELL_FORMED = "well_formed"             # the pooled share of answers that neither loop nor run out
RESERVED_SUITES = (BEHAVIOR, BEHAVIOR_HINTED, SPECIFICITY, WELL_FORMED)


def earlier(name: str, figure: str) -> str:
    """An earlier behavior's figure, for a model trained ``--on`` it: ``pinapple:behavior``."""
    return f"{name}:{figure}"


def lost_behaviors(failed_suites) -> list[str]:
    """The earlier behaviors among failed suites whose rate without the hint is what failed."""
    return sorted({s.split(":")[0] for s in failed_suites if s.endswith(f":{BEHAVIOR}")})


def is_behavior_suite(suite: str) -> bool:
    """The behavior's own figures (not gated as regressions)."""
    return suite in (BEHAVIOR, BEHAVIOR_HINTED)
