"""The run folder, ``adapters/<behavior>/<run-id>/``: ``run.json`` (the validated spec and
options, the base model's figures), atomic checkpoints, the ``best`` and final adapters.
One writer and one reader for each, used by ``cl fit``, its resume and ``cl eval``.

A crash never leaves a half-written folder that looks complete, and resume never picks one up.

Everything is written into a ``.tmp-*`` sibling, then a ``COMPLETE`` marker, then renamed
into place in one ``os.replace``. Readers only trust folders that have the marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from engrain.errors import EngrainError

MARKER = "COMPLETE"


class RunError(EngrainError, ValueError):
    """A run or adapter that cannot be used as asked (not found, not accepted, another base)."""


@dataclass(frozen=True)
class Adapter:
    """One saved adapter, as its run folder describes it (``describe``), read by
    ``engrain.load``, ``cl eval`` and ``cl fit --on``'s replay source (``cl adapters``,
    ``cl serve`` and ``cl export`` read the store's library entry of the same run)."""
    path: Path
    behavior: str                       # its name: the behavior, or "a+b" for a composition
    model: str | None                   # the base it was trained on (its run's spec.model); None if unknown
    lineage: tuple[Path, ...] = ()      # adapters merged into the base before it (--lineage merge), in order
    carries: tuple[str, ...] = ()       # the behaviors it carries (several for a composition)
    accepted: bool = False              # the run's gate passed (metrics.json)
    run_id: str | None = None
    qlora: bool = False                 # trained on the base in 4 bits

    @property
    def run_dir(self) -> Path | None:
        return self.path.parent if self.run_id else None


def describe(ref: str | Path, out_dir: str | Path = "adapters") -> Adapter:
    """An adapter folder or a run id (any unique prefix under ``out_dir``), with what its
    run.json and metrics.json say (a plain peft folder without them: its folder name, its base
    unknown)."""
    folder = Path(ref)
    if not (folder / "adapter_config.json").exists():
        run_dir = find_run_dir(Path(out_dir), str(ref))
        folder = saved_adapter(run_dir)
        if folder is None:
            raise RunError(f"run {ref} has no adapter (still training, or interrupted); "
                           "`cl runs` shows each run's status")
    folder = folder.resolve()
    if not (folder.parent / "run.json").exists():
        return Adapter(folder, folder.name, None)
    saved = read_run(folder.parent)
    accepted = folder.name == "adapter" and _accepted(folder.parent)
    if saved.get("kind") == "compose":       # one adapter that carries several behaviors
        return Adapter(folder, "+".join(saved["behaviors"]), saved["specs"][0]["model"], (),
                       tuple(saved["behaviors"]), accepted, saved["run_id"])
    model = saved["spec"]["model"]
    lineage, earlier = resolve_on(saved.get("on", []), Path(out_dir), model)
    name = saved["spec"]["name"]
    return Adapter(folder, name, model, tuple(Path(p).resolve() for p in lineage),
                   tuple(b.spec.name for b in earlier) + (name,), accepted, saved["run_id"],
                   bool(saved.get("qlora")))


def write_atomic(final: Path, write) -> Path:
    """Call ``write(tmp_dir)``, mark it complete, and move it to ``final``."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    try:
        write(tmp)
        (tmp / MARKER).write_text("ok\n")
        if final.exists():
            old = final.with_name(f".old-{final.name}-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def is_complete(folder: Path) -> bool:
    return (folder / MARKER).exists()


def save_checkpoint(run_dir: Path, step: int, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Adapter weights (every adapter: the student and a frozen teacher, if any),
    optimizer state and the loop's state (step, rng, teacher version)."""
    import torch

    def write(tmp: Path):
        model.save_pretrained(tmp / "adapter", selected_adapters=list(model.peft_config))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({"rng_torch": torch.get_rng_state()}, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=2))

    path = write_atomic(run_dir / "checkpoints" / f"step-{step:06d}", write)
    done = sorted(p for p in (run_dir / "checkpoints").glob("step-*") if is_complete(p))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def latest_checkpoint(run_dir: Path) -> Path | None:
    folder = run_dir / "checkpoints"
    done = sorted(p for p in folder.glob("step-*") if is_complete(p)) if folder.exists() else []
    return done[-1] if done else None


def load_checkpoint(ckpt: Path, model, optimizer) -> dict:
    """Restore adapters, optimizer and rng in place; returns the saved loop state."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for name in model.peft_config:
        sub = ckpt / "adapter" if name == "default" else ckpt / "adapter" / name
        f = sub / "adapter_model.safetensors"
        if f.exists():
            set_peft_model_state_dict(model, load_file(str(f)), adapter_name=name)
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt"))
    torch.set_rng_state(torch.load(ckpt / "rng.pt")["rng_torch"])
    return json.loads((ckpt / "state.json").read_text())


class RunNotFound(RunError, FileNotFoundError):
    """No run, or several, match the id given."""


def find_run_dir(out_dir: Path, run_id: str) -> Path:
    """The folder of run ``run_id`` (a unique prefix is enough) under ``out_dir``."""
    hits = [p for p in out_dir.glob(f"*/{run_id}*") if (p / "run.json").exists()]
    if len(hits) != 1:
        raise RunNotFound(f"no unique run {run_id!r} under {out_dir}/ "
                                f"({len(hits)} matches); `cl runs` lists run ids")
    return hits[0]


def new_run_dir(out_dir: Path, name: str, run_id: str, saved: dict) -> Path:
    """A fresh run folder holding ``run.json``."""
    run_dir = out_dir / name / run_id
    run_dir.mkdir(parents=True)
    write_json(run_dir / "run.json", saved)
    return run_dir


def read_run(run_dir: Path) -> dict:
    return json.loads((run_dir / "run.json").read_text())


def write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)


def stored_behavior(saved: dict, log=None):
    """The behavior as the run validated it when it started (the YAML on disk is not
    trusted: it may have changed); ``log`` hears a warning when the file changed."""
    from engrain.spec.behavior import Behavior, load_behavior
    from engrain.spec.schema import BehaviorSpec
    if "spec" not in saved:     # runs started before run.json kept the validated spec
        return load_behavior(saved["spec_path"]).with_overrides(saved["overrides"])
    stored = BehaviorSpec.model_validate(saved["spec"])
    path = Path(saved["spec_path"])
    if log is not None:
        try:
            on_disk = load_behavior(path).with_overrides(saved["overrides"]).spec
            if on_disk != stored:
                log(f"warning: {path} changed since the run started; resuming with the spec it stored")
        except Exception as e:      # noqa: BLE001 - the stored spec is what matters; say why
            log(f"warning: {path} no longer loads ({e}); resuming with the spec the run stored")
    return Behavior(stored, path)


def save_adapter(path: Path, model) -> Path:
    """The student adapter, written atomically to ``path`` (the final one, or ``best``)."""
    from engrain.engine.models import STUDENT
    return write_atomic(path, lambda tmp: model.save_pretrained(tmp, selected_adapters=[STUDENT]))


def load_adapter_weights(folder: Path, model) -> None:
    """Load a saved student adapter's weights into ``model``'s student adapter, in place."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from engrain.engine.models import STUDENT
    set_peft_model_state_dict(model, load_file(str(folder / "adapter_model.safetensors")), adapter_name=STUDENT)


def saved_adapter(run_dir: Path) -> Path | None:
    """The run's final adapter folder (accepted, or kept rejected), if it has one."""
    return next((run_dir / d for d in ("adapter", "adapter.rejected") if (run_dir / d).exists()), None)


def replay_source(refs, out_dir: Path, model: str) -> tuple[Path, list[dict], str]:
    """What ``cl fit --on`` replays (``lineage="replay"``): one accepted adapter (a run id or
    its folder), composed (``cl compose``) or a single behavior's trained on the bare base;
    returns its folder, the specs of the behaviors it carries, and its run id."""
    if len(refs) != 1:
        raise RunError("--on replays one adapter, and these are several: compose them first "
                       "(cl compose A.yaml B.yaml), or merge them with --lineage merge")
    adapter = describe(refs[0], out_dir)
    run_dir = adapter.run_dir
    if run_dir is None or not adapter.accepted:
        raise RunError(f"{run_dir or adapter.path} was not accepted by the gate (kept with --keep-rejected, or "
                       "its run never finished), or is not a run's adapter; only an accepted adapter can be "
                       "built on")
    saved = read_run(run_dir)
    specs = saved["specs"] if saved.get("kind") == "compose" else [saved["spec"]]
    if adapter.lineage:
        raise RunError(f"{run_dir} was trained on a merged lineage (--lineage merge); build on it with "
                       "--lineage merge too")
    if specs[0]["model"] != model:
        raise RunError(f"{run_dir} was trained on model {specs[0]['model']!r}, not {model!r}")
    return (run_dir / "adapter").resolve(), specs, saved["run_id"]


def resolve_on(refs, out_dir: Path, model: str) -> tuple[list[Path], list]:
    """The adapters a fit builds on (``cl fit --on``), in the order they merge, and the
    behaviors they carry (their stored specs): each ref a run id (any unique prefix) under
    ``out_dir``, or an accepted adapter's folder. An adapter that was itself trained on
    others brings them first: the stack is the whole lineage."""
    stack: list[tuple[Path, dict]] = []
    for ref in refs:
        folder = Path(ref)
        if not (folder / "adapter_config.json").exists():
            run_dir = find_run_dir(out_dir, str(ref))
            folder = run_dir / "adapter"
            if not folder.exists():
                raise RunError(f"run {ref} has no accepted adapter in {run_dir}; only an accepted "
                                 "adapter can be built on (`cl runs` shows each run's verdict)")
        if folder.name != "adapter" or not (folder.parent / "run.json").exists():
            raise RunError(f"{folder} is not an accepted adapter of a run (adapters/<behavior>/<run>/adapter): "
                             "engrain needs the earlier behavior's stored spec to keep it")
        if not _accepted(folder.parent):
            raise RunError(f"{folder} was not accepted by the gate (kept with --keep-rejected, or its run "
                             "never finished); only an accepted adapter can be built on")
        saved = read_run(folder.parent)
        if saved["spec"]["model"] != model:
            raise RunError(f"{folder} was trained on model {saved['spec']['model']!r}, not {model!r}")
        for earlier in saved.get("on", []):
            if all(str(p) != earlier for p, _ in stack):
                stack.append((Path(earlier), read_run(Path(earlier).parent)))
        if all(p != folder.resolve() for p, _ in stack):
            stack.append((folder.resolve(), saved))
    return [p for p, _ in stack], [stored_behavior(s) for _, s in stack]


def recheck(run_dir: Path, n: int = 200):
    """Re-run the checks for a run's saved adapter: (spec, base rows, adapter rows, verdict)."""
    from engrain.checks.evals import evaluate
    from engrain.checks.gate import gated
    from engrain.engine.models import load_model
    saved = read_run(run_dir)
    if saved.get("kind") == "compose":
        return _recheck_composed(run_dir, saved, n)
    behavior = stored_behavior(saved)
    spec = behavior.spec
    adapter = saved_adapter(run_dir)
    if adapter is None:
        raise FileNotFoundError(f"{run_dir} has no adapter yet (still training, or interrupted: "
                                f"resume it with cl fit --resume {saved['run_id']})")
    # A run is checked as it was trained: on the model that has the --on behaviors, and
    # in 4 bits if it trained in 4 bits (the gate scored that model).
    on, earlier = resolve_on(saved.get("on", []), run_dir.parent.parent, spec.model)
    loaded = load_model(spec.model, adapter=adapter, on=on, qlora=spec.train.qlora)
    cb = behavior.compile(loaded.tokenizer)
    earlier_cbs = [b.compile(loaded.tokenizer) for b in earlier]
    base = evaluate(loaded.model, loaded.tokenizer, cb, spec, False, n, spec.train.seed, earlier=earlier_cbs)
    after = evaluate(loaded.model, loaded.tokenizer, cb, spec, True, n, spec.train.seed, earlier=earlier_cbs)
    verdict = gated(spec, base, after, [b.spec for b in earlier])
    return spec, base, after, _as_recorded(run_dir, verdict)


def _as_recorded(run_dir: Path, verdict):
    """``verdict``, told what only training saw (the val history): that every learner was
    held back, or that an earlier behavior was lost; those are read back from the fit's
    record, so `cl eval` and `cl fit` give one outcome and one exit code for a run."""
    from dataclasses import replace
    record = _recorded_gate(run_dir)
    if record.get("held_back") and verdict.outcome == "not learned":
        verdict = verdict.with_held_back(record["held_back"])
    if record.get("lost") and not verdict.lost:
        verdict = replace(verdict, passed=False, lost=tuple(record["lost"]))
    return verdict


def _recheck_composed(run_dir: Path, saved: dict, n: int):
    """``recheck`` for a composed run: every behavior's figures and the joint gate; a lineage's
    kept figures and the behaviors the fit found lost are read back from its record."""
    from engrain.checks.joint import joint_evaluate, joint_gated
    from engrain.engine.models import load_model
    from engrain.spec.behavior import as_behavior
    adapter = saved_adapter(run_dir)
    if adapter is None:
        raise FileNotFoundError(f"{run_dir} has no adapter yet")
    behaviors = [as_behavior(s) for s in saved["specs"]]
    specs = [b.spec for b in behaviors]
    loaded = load_model(specs[0].model, adapter=adapter)
    cbs = [b.compile(loaded.tokenizer) for b in behaviors]
    base = joint_evaluate(loaded.model, loaded.tokenizer, cbs, specs[0].train, False, n, saved["seed"])
    after = joint_evaluate(loaded.model, loaded.tokenizer, cbs, specs[0].train, True, n, saved["seed"])
    verdict = _as_recorded(run_dir, joint_gated(specs, base, after))
    name = "+".join(saved["behaviors"])
    return specs[0].model_copy(update={"name": name}), base, after, verdict


def _accepted(run_dir: Path) -> bool:
    """The run's gate passed, as its metrics.json records (none: a run that never finished)."""
    return bool(_recorded_gate(run_dir).get("passed"))


def _recorded_gate(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "metrics.json").read_text()).get("gate") or {}
    except (OSError, ValueError):
        return {}
