"""Judges for RMSD step 5: which pre-filtered positions carry the behavior.

``make_judge(model)``: None -> RuleJudge, "self" -> SelfJudge, else LiteLLMJudge.
Importing this package does not import litellm (it loads on the first LLM call).
"""

from .factory import make_judge
from .llm import LiteLLMJudge
from .rule import RuleJudge, heuristic_fallback
from .self_judge import SelfJudge
from .types import Candidate, Judge, JudgeRequest, JudgeResult

__all__ = [
    "Candidate", "Judge", "JudgeRequest", "JudgeResult", "LiteLLMJudge", "RuleJudge",
    "SelfJudge", "heuristic_fallback", "make_judge",
]
