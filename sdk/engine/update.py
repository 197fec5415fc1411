"""Step 7: the optimizer step on the adapter, and the figures that say how far it moved.

AdamW normalises the gradient's scale away, so a tiny, noisy gradient still moves every
LoRA weight by about ``lr`` per step (measured on the lab: half of all LoRA weights moved
by more than lr/2 every step while the behavior rate was 0, and constant-lr runs kept
drifting after the behavior was learned). Hence a warmup, a cosine decay, β2 = 0.99, and
a drift figure every step: ``‖ΔW‖ / ‖W‖`` over every adapted weight matrix, where
``ΔW = scale · B A`` is what the adapter adds to the frozen ``W``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

BETAS = (0.9, 0.99)
CLIP_NORM = 1.0


def lr_at(step: int, steps: int, lr: float, warmup: int, min_ratio: float) -> float:
    """Linear warmup over ``warmup`` steps, then cosine from ``lr`` to ``lr × min_ratio``
    at the last step. ``step`` is 0-based: step 0 trains at ``lr / warmup``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - 1 - warmup))
    return lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def lora_delta_norm_sq(A: torch.Tensor, B: torch.Tensor, scale: float) -> torch.Tensor:
    """``‖scale · B A‖_F²`` without forming ``B A``: ``scale² · Σ (BᵀB) ⊙ (A Aᵀ)`` (r × r)."""
    A, B = A.detach().float(), B.detach().float()
    return scale ** 2 * ((B.T @ B) * (A @ A.T)).sum()


def _base_weight(module) -> torch.Tensor:
    weight = module.get_base_layer().weight
    if weight.dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        return weight.detach().float()
    from peft.utils.integrations import dequantize_module_weight   # 4-bit QLoRA base
    return dequantize_module_weight(module.get_base_layer()).detach().float()


class Drift:
    """``‖ΔW‖ / ‖W‖`` of one adapter, summed over every LoRA-adapted layer (Frobenius)."""

    def __init__(self, model, adapter: str):
        self.adapter = adapter
        self.layers = [m for m in model.modules()
                       if hasattr(m, "lora_A") and adapter in getattr(m, "lora_A", {})]
        self.base_norm = math.sqrt(sum(float(_base_weight(m).pow(2).sum()) for m in self.layers)) or 1.0

    @torch.no_grad()
    def __call__(self) -> float:
        a = self.adapter
        total = sum(lora_delta_norm_sq(m.lora_A[a].weight, m.lora_B[a].weight, m.scaling[a])
                    for m in self.layers)
        return math.sqrt(float(total)) / self.base_norm


@dataclass(frozen=True)
class UpdateStats:
    lr: float
    grad_norm: float      # before clipping
    drift: float          # ‖ΔW‖ / ‖W‖ after the step


class Updater:
    """AdamW (β = 0.9, 0.99, no weight decay) on the trainable parameters with the
    schedule above, gradient clipping at 1.0, and the drift figure after each step.
    ``on_update`` hears of every change to the weights (a vLLM sampler's ``adapter_changed``);
    ``sync`` sums the gradients over a data-parallel fit's processes before clipping."""

    def __init__(self, model, adapter: str, lr: float, steps: int, warmup: int, min_ratio: float,
                 on_update: Callable[[], None] | None = None, sync: Callable[[list], None] | None = None):
        self.on_update, self.sync = on_update, sync
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, betas=BETAS, weight_decay=0.0)
        self.schedule = dict(steps=steps, lr=lr, warmup=warmup, min_ratio=min_ratio)
        self.drift = Drift(model, adapter)

    def step(self, loss: torch.Tensor, step: int) -> UpdateStats:
        lr = lr_at(step, **self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss.backward()
        if self.sync:       # several processes: their gradients summed (engine/parallel.py)
            self.sync(self.params)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, CLIP_NORM))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.on_update:
            self.on_update()
        return UpdateStats(lr, grad_norm, self.drift())
