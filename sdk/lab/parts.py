"""The lab's parts: the model named ``lab``, its prompt sets (``lab/tropical``, ``lab/traffic``, ...) and its
capability suites (``lab/arithmetic``, ``lab/capitals``, ...), registered like any
plugin's (``engrain.registry``)."""

from __future__ import annotations

from functools import partial

from engrain.lab import model_path
from engrain.registry import MODELS, PROMPT_SETS, SUITES
from engrain.lab.prompt_sets import BUILTIN, builtin_prompts
from engrain.lab.suites import CAPABILITY_METRICS, HELD_OUT, capability_source, hint_source

for _name in BUILTIN:
    PROMPT_SETS.register(_name, partial(builtin_prompts, _name))
for _name in CAPABILITY_METRICS:
    SUITES.register(_name, capability_source(_name))
for _name in HELD_OUT:
    SUITES.register(f"lab/hint-{_name}", hint_source(_name))
MODELS.register("lab", model_path)
