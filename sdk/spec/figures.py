"""The names of the figures every stage shares: what the evals write, the gate reads, the
store keeps and the report shows. One definition each."""

BEHAVIOR = "behavior"                   # the behavior without the hint: exists / only
BEHAVIOR_HINTED = "behavior_hinted"     # the same prompts with the hint (the base model's bar)
SPECIFICITY = "specificity"             # probes where the behavior must not appear
WELL_FORMED = "well_formed"             # the pooled share of answers that neither loop nor run out
RESERVED_SUITES = (BEHAVIOR, BEHAVIOR_HINTED, SPECIFICITY, WELL_FORMED)


def is_behavior_suite(suite: str) -> bool:
    """The behavior's own figures (not gated as regressions)."""
    return suite in (BEHAVIOR, BEHAVIOR_HINTED)
