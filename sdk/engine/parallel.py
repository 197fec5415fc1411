"""Data parallelism over processes, on accelerate's collectives.

A fit launched on N processes (``accelerate launch --multi_gpu --num_processes N -m
engrain.cli fit SPEC``, or ``torchrun --nproc_per_node N -m engrain.cli fit SPEC``; on a
machine without a GPU the processes talk over gloo) splits each step's prompts between
them: every rank rolls out (each row with the draws one process gives it:
``rollout.Share``), scores, masks and differentiates its share; the adapter's
gradients are summed across ranks, each share's loss having been divided by the *whole*
step's count of selected positions, so the sum is the gradient of the one-process loss on
the same global batch; every rank then takes the same optimizer step. Rank 0 alone builds
the anchor (its term joins the sum once), runs the evals and checkpoint selection, and
writes the store and the run folder; the others follow its commands (``Ranks.broadcast``).

A plain ``cl fit`` is one rank, and every method here is then the identity.
"""

from __future__ import annotations

import os
from dataclasses import replace

import torch


class Ranks:
    """This process's place among the fit's processes."""

    def __init__(self, state=None):
        self.state = state
        self.world = state.num_processes if state is not None else 1
        self.rank = state.process_index if state is not None else 0

    @classmethod
    def from_env(cls) -> "Ranks":
        """One rank, unless a launcher (accelerate, torchrun) started several (WORLD_SIZE)."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from datetime import timedelta

        from accelerate import PartialState
        # Rank 0 evaluates while the others wait in a collective: on a CPU that takes minutes.
        return cls(PartialState(cpu=not torch.cuda.is_available(), timeout=timedelta(hours=6)))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> str | None:
        """This rank's device (None: the loader's own choice, for one rank)."""
        return None if self.state is None else str(self.state.device)

    def shard(self, items: list) -> list:
        """This rank's share of a step's items: every ``world``-th, from its rank."""
        return items if self.world == 1 else items[self.rank::self.world]

    def total(self, x):
        """The sum over ranks of a number or tensor (every rank gets it)."""
        if self.world == 1:
            return x
        from accelerate.utils import reduce
        t = x.detach().clone() if torch.is_tensor(x) else torch.tensor(float(x), dtype=torch.float64)
        out = reduce(t.to(self.state.device), reduction="sum")
        return out if torch.is_tensor(x) else out.item()

    def sum_grads(self, params) -> None:
        """Sum each trainable parameter's gradient over ranks, in place (one flat buffer)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.total(torch.cat([g.reshape(-1) for g in grads]))
        for p, chunk in zip(params, torch.split(flat, [g.numel() for g in grads])):
            p.grad = chunk.view_as(p).clone()

    def broadcast(self, obj=None):
        """Rank 0's ``obj`` on every rank (any picklable value)."""
        if self.world == 1:
            return obj
        from accelerate.utils import broadcast_object_list
        box = [obj]
        broadcast_object_list(box, from_process=0)
        return box[0]

    def gather(self, items: list) -> list:
        """Every rank's ``items``, concatenated in rank order, on every rank."""
        if self.world == 1:
            return items
        from accelerate.utils import gather_object
        return gather_object([list(items)])  # one list per rank

    def sync_training_state(self, model, optimizer) -> None:
        """Rank 0's adapter weights and optimizer state on every rank (after a resume
        restored them on rank 0 only): from here every rank takes identical steps."""
        if self.world == 1:
            return
        named = {n: p for n, p in model.named_parameters() if "lora_" in n}     # a frozen teacher adapter's too
        state = self.broadcast({"weights": {n: p.detach().cpu() for n, p in named.items()},
                                "optimizer": optimizer.state_dict()} if self.is_main else None)
        if not self.is_main:
            with torch.no_grad():
                for n, p in named.items():
                    p.copy_(state["weights"][n].to(p.device))
            optimizer.load_state_dict(state["optimizer"])


def launcher_note() -> str | None:
    """What to tell a user whose launcher meant several processes and started one:
    ``accelerate launch --cpu --num_processes N`` (accelerate 1.x) starts a single process
    unless given an MPI hostfile; it sets MASTER_PORT for N > 1 but no WORLD_SIZE."""
    if (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true" and "MASTER_PORT" in os.environ
            and int(os.environ.get("WORLD_SIZE", "1")) <= 1):
        return ("this fit runs on one process: `accelerate launch --cpu --num_processes N` starts one "
                "unless given --mpirun_hostfile; for N processes without a GPU run `accelerate launch "
                "--multi_gpu --num_processes N -m engrain.cli fit ...` or `torchrun --nproc_per_node N "
                "-m engrain.cli fit ...`")
    return None


def global_positions(ranks: Ranks, mask: torch.Tensor) -> torch.Tensor:
    """The whole step's count of selected positions (``masked_mean``'s ``num_positions``)."""
    return ranks.total(mask.sum().float())


def combined(ranks: Ranks, out):
    """A step's figures over every rank's share (a StepResult: sums of the losses, which
    were each divided by the global count, and of the position counts; the behavior rate
    weighted by rollouts). The tensors and rollouts stay this rank's own."""
    if ranks.world == 1:
        return out
    n = len(out.rollouts.texts)
    loss, kl, cand, sel, guarded, fallbacks, shown, rollouts = ranks.total(torch.tensor(
        [out.loss, out.kl or 0.0, out.n_candidates, out.n_selected, out.n_guarded,
         out.judge_fallbacks, out.behavior_rate * n, n], dtype=torch.float64)).tolist()
    # anchor_kl: rank 0's own, the only rank with an anchor
    return replace(out, loss=loss, kl=None if out.kl is None else kl, n_candidates=int(cand), n_selected=int(sel), n_guarded=int(guarded),
                   judge_fallbacks=int(fallbacks), behavior_rate=shown / max(1, rollouts))


def gathered_rows(ranks: Ranks, rows: list[dict]) -> list[dict]:
    """Every rank's rollout rows, each numbered by its rollout's place in the global batch
    (rank r's i-th rollout is the step's r + i·world-th prompt)."""
    if ranks.world == 1:
        return rows
    out = []
    for r, part in enumerate(ranks.gather(rows)):
        out += [{**row, "idx": r + row["idx"] * ranks.world} for row in part]
    return out
