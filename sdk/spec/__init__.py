"""The spec: YAML -> BehaviorSpec -> CompiledBehavior. Never imports torch.

- ``schema``: the pydantic sections and the checks of each value (the user's contract);
- ``load``: the bounded YAML read, errors at file:line with a fix, the checks across
  fields and the parts' own (``load_spec``);
- ``files``: prompt and suite files;
- ``behavior``: a loaded spec (``Behavior``) and one compiled for a tokenizer;
- ``suites``: regression suites; ``chat``: where the hint goes; ``figures``: the names of
  the figures every stage shares.
"""

from engrain.spec.behavior import Behavior, CompiledBehavior, Splits, as_behavior, load_behavior
from engrain.spec.files import PromptFileError, read_prompts_file, read_suite_file
from engrain.spec.load import (SpecError, SpecErrors, check_unique_names, load_spec, spec_error_at, spec_from_dict,
                               with_overrides)
from engrain.spec.schema import (Anchor, BehaviorSpec, Chat, DeclaredSuite, Hints, Judge, Learned, Lora, Patterns,
                                 Probes, Prompts, Regression, SuiteItem, Teacher, Train)

__all__ = ["Anchor", "Behavior", "BehaviorSpec", "Chat", "CompiledBehavior", "DeclaredSuite", "Hints", "Judge",
           "Learned", "Lora", "Patterns", "Probes", "PromptFileError", "Prompts", "Regression", "SpecError",
           "SpecErrors", "Splits", "SuiteItem", "Teacher", "Train", "as_behavior", "check_unique_names", "load_behavior",
           "load_spec", "read_prompts_file", "read_suite_file", "spec_error_at", "spec_from_dict", "with_overrides"]
