"""Who the teacher is: the same base weights, with the adapter off or a frozen snapshot.

Four policies, each a small class with the same two methods (no inheritance):
``scoring(model)`` is a context manager under which a forward pass is the teacher's, and
``after_step(model, step)`` lets the policy refresh itself. ``version`` counts refreshes
(it lands in the run store, so curves can be read against teacher changes).
"""

from __future__ import annotations

from contextlib import AbstractContextManager, contextmanager
from typing import Protocol

import torch

from engrain.engine.models import STUDENT

TEACHER = "teacher"


class TeacherPolicy(Protocol):
    """What the step needs of a teacher (made by ``registry.TEACHERS``' parts, engine/parts.py)."""
    version: int
    adapter_off: bool       # scoring is the bare base model (so its pass can share one with the base's)

    def scoring(self, model) -> AbstractContextManager: ...

    def after_step(self, model, step: int) -> None: ...

    def state(self) -> dict: ...


class FixedTeacher:
    """Adapter off: exactly the base model (for QLoRA, the 4-bit base)."""
    version = 0
    adapter_off = True

    @contextmanager
    def scoring(self, model):
        with model.disable_adapter():
            yield

    def after_step(self, model, step: int) -> None:
        pass

    def state(self) -> dict:
        return {"version": self.version}


def snapshot_student(model) -> None:
    """Copy the student adapter into a frozen "teacher" adapter (peft has no copy API)."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    if TEACHER not in model.peft_config:
        model.add_adapter(TEACHER, model.peft_config[STUDENT])
    weights = get_peft_model_state_dict(model, adapter_name=STUDENT)
    set_peft_model_state_dict(model, weights, adapter_name=TEACHER)
    for name, p in model.named_parameters():
        if f".{TEACHER}." in name:
            p.requires_grad_(False)


def _scoring(version: int, model):
    """The base model until the first snapshot, then the frozen teacher adapter."""
    return model.disable_adapter() if version == 0 else _as_adapter(model, TEACHER)


@contextmanager
def _as_adapter(model, name: str):
    model.set_adapter(name)
    try:
        yield
    finally:
        # set_adapter may flip requires_grad; the student must stay trainable.
        model.set_adapter(STUDENT)
        for name, p in model.named_parameters():
            if f".{STUDENT}." in name:
                p.requires_grad_(True)


class ContinuationTeacher:
    """Base model until ``refresh_after`` steps, then the student's adapter at that
    moment, frozen: the write-up's continuation phase. ``refresh_after`` repeats."""

    def __init__(self, refresh_after: int | None):
        if not refresh_after:
            raise ValueError("teacher.kind continuation needs teacher.refresh_after (steps)")
        self.refresh_after = refresh_after
        self.version = 0

    @property
    def adapter_off(self) -> bool:
        return self.version == 0

    def scoring(self, model):
        return _scoring(self.version, model)

    def after_step(self, model, step: int) -> None:
        if step > 0 and step % self.refresh_after == 0:
            snapshot_student(model)
            self.version += 1

    def state(self) -> dict:
        return {"version": self.version}


class EMATeacher:
    """An exponential moving average of the student adapter (starts equal to it)."""

    def __init__(self, decay: float):
        self.decay = decay
        self.version = 0

    @property
    def adapter_off(self) -> bool:
        return self.version == 0

    def scoring(self, model):
        return _scoring(self.version, model)

    @torch.no_grad()
    def after_step(self, model, step: int) -> None:
        if self.version == 0:
            snapshot_student(model)
        else:
            params = dict(model.named_parameters())
            for name, p in params.items():
                if f".{STUDENT}." in name:
                    t = params[name.replace(f".{STUDENT}.", f".{TEACHER}.")]
                    t.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        self.version += 1

    def state(self) -> dict:
        return {"version": self.version}


class CarriedTeacher:
    """An adapter trained apart that already carries the behavior, frozen: it teaches on the
    student's own prompt, without the hint (one adapter consolidated from several:
    ``engrain.compose(..., design="consolidate")``)."""
    version = 0
    adapter_off = False

    def __init__(self, model, folder, name: str):
        model.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        for n, p in model.named_parameters():
            if f".{name}." in n:
                p.requires_grad_(False)
        self.name, self.folder = name, str(folder)

    def scoring(self, model):
        return _as_adapter(model, self.name)

    def after_step(self, model, step: int) -> None:
        pass

    def state(self) -> dict:
        return {"version": self.version, "adapter": self.folder}
