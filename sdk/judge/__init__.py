"""Judges for RMSD step 5: which pre-filtered positions carry the behavior.

``make_judge(model)``: None -> RuleJudge, "delta" -> DeltaJudge, "first" -> FirstJudge, "self" -> SelfJudge, else LiteLLMJudge.
Importing this package does not import litellm (it loads on the first LLM call).
"""

from engrain.judge.factory import make_judge
from engrain.judge.llm import LiteLLMJudge
from engrain.judge.rule import DeltaJudge, FirstJudge, RuleJudge, heuristic_fallback
from engrain.judge.self_judge import SelfJudge
from engrain.judge.types import Candidate, Judge, JudgeRequest, JudgeResult

__all__ = [
    "Candidate", "DeltaJudge", "FirstJudge", "Judge", "JudgeRequest", "JudgeResult", "LiteLLMJudge", "RuleJudge",
    "SelfJudge", "heuristic_fallback", "make_judge",
]
