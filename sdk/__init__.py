"""engrain: teach a language model a behavior into its weights, one LoRA adapter per spec.

Names are imported on first use, so ``import engrain`` (and ``cl --help``) stays instant.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "EngrainError": "engrain.errors",
    "ModelError": "engrain.engine.models",
    "StoreError": "engrain.store",
    "FitInterrupted": "engrain.fit",
    "load_spec": "engrain.spec",
    "BehaviorSpec": "engrain.spec",
    "SpecError": "engrain.spec",
    "load_behavior": "engrain.spec",
    "Behavior": "engrain.spec",
    "CompiledBehavior": "engrain.spec",
    "adapters": "engrain.library",
    "AdapterEntry": "engrain.library",
    "LibraryError": "engrain.library",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'engrain' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__():
    return sorted(list(globals()) + __all__)
