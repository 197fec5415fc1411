"""Export a run's adapter for use outside engrain (``cl export``).

``merged``: the base model with the adapter's whole lineage (``cl fit --on``: the earlier
adapters, in the order the fit merged them) and then the adapter itself merged into its
weights (peft's ``merge_and_unload``), saved with the tokenizer: a plain transformers
folder that ``AutoModelForCausalLM`` (or ``vllm serve``) loads without peft.

``adapter_folder``: the PEFT adapter as it is, plus a README.md model card (the spec, the
gate's verdict and figures, the base model, how to load it); an adapter trained on others
brings them under ``on/`` (they must be applied first).
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

from engrain.errors import EngrainError
from engrain.library import AdapterEntry, entry as library_entry
from engrain.rundir import MARKER
from engrain.store import SUBJECTS, Store
from engrain.store.views import latest_scores, recorded_gate


class ExportError(EngrainError):
    """An export that cannot be written; the message says what to do."""


def _target(out: Path, overwrite: bool) -> Path:
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} exists and is not empty; pick another folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _source(db: Store, run_id: str) -> AdapterEntry:
    e = library_entry(db, run_id)
    missing = [p for p in (e.path, *e.on) if not (Path(p) / "adapter_config.json").exists()]
    if missing:
        raise ExportError(f"adapter folder missing: {missing[0]} (a relative path is read from the folder "
                          "`cl fit` ran in)")
    return e


def merged_model(entry: AdapterEntry, dtype=None):
    """(model, tokenizer): the base with the lineage and the adapter merged in, no peft left."""
    import torch
    from peft import PeftModel

    from engrain.engine.models import load_base, load_tokenizer, merge_adapters
    # On the CPU in fp32 unless asked: a merge is exact only in the dtype the weights are saved in.
    base, _ = load_base(entry.model, device="cpu", dtype=dtype or torch.float32)
    base = merge_adapters(base, list(entry.on))
    model = PeftModel.from_pretrained(base, str(entry.path)).merge_and_unload()
    return model.eval(), load_tokenizer(entry.model)


def merged(db: Store, run_id: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write the merged model of run ``run_id`` to ``out``; returns ``out``."""
    entry = _source(db, run_id)
    out = _target(Path(out), overwrite)
    model, tokenizer = merged_model(entry)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "engrain.json").write_text(json.dumps(_provenance(entry), indent=2))
    return out


def _provenance(entry: AdapterEntry) -> dict:
    return {"behavior": entry.behavior, "run_id": entry.run_id, "model": entry.model, "verdict": entry.verdict,
            "adapter": str(entry.path), "on": list(entry.on)}


def adapter_folder(db: Store, run_id: str, out: str | Path, *, overwrite: bool = False) -> Path:
    """Copy run ``run_id``'s PEFT adapter to ``out`` with a model card; returns ``out``."""
    entry = _source(db, run_id)
    out = _target(Path(out), overwrite)
    skip = shutil.ignore_patterns(MARKER)
    shutil.copytree(entry.path, out, dirs_exist_ok=True, ignore=skip)
    for k, earlier in enumerate(entry.on):
        shutil.copytree(earlier, out / "on" / f"{k}-{Path(earlier).parent.parent.name}", ignore=skip)
    run = db.run(entry.run_id)
    (out / "README.md").write_text(model_card(entry, run, db.evals(entry.run_id), db.adapters(entry.run_id)))
    return out


def model_card(entry: AdapterEntry, run: dict, evals: list[dict], adapter_rows: list[dict]) -> str:
    """The README.md of an exported adapter. Pure."""
    from engrain.engine.models import resolve_model_path
    try:
        base_path = resolve_model_path(entry.model)
    except EngrainError:
        base_path = entry.model
    gate = recorded_gate(adapter_rows[-1]["details"]) if adapter_rows else None
    lines = [f"# {entry.behavior}: a LoRA adapter trained with engrain", "",
             f"- run: `{entry.run_id}` ({entry.method}), saved {entry.created:%Y-%m-%d %H:%M} UTC",
             f"- base model: `{entry.model}`" + (f" (`{base_path}`)" if base_path != entry.model else ""),
             f"- the gate's verdict: **{entry.verdict}**" + (f": {gate.summary()}" if gate else "")]
    if entry.on:
        lines.append("- trained on top of (merge these into the base first, in this order): "
                     + ", ".join(f"`on/{k}-{Path(p).parent.parent.name}`" for k, p in enumerate(entry.on)))
    lines += ["", "## Figures (held-out prompts, temperature 1: what the gate reads)", "",
              "| suite | metric | base | adapter |", "|---|---|---|---|"]
    base, adapter = (latest_scores(evals, s) for s in SUBJECTS)
    for suite, metric in sorted(set(base) | set(adapter)):
        b, a = base.get((suite, metric)), adapter.get((suite, metric))
        lines.append(f"| {suite} | {metric} | {_fmt(b)} | {_fmt(a)} |")
    merge = "".join(f"model = PeftModel.from_pretrained(model, 'on/{k}-{Path(p).parent.parent.name}')"
                    ".merge_and_unload()\n" for k, p in enumerate(entry.on))
    lines += ["", "## Load it", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
              f"model = AutoModelForCausalLM.from_pretrained({base_path!r})",
              f"tokenizer = AutoTokenizer.from_pretrained({base_path!r})",
              f"{merge}model = PeftModel.from_pretrained(model, 'path/to/this/folder')", "```", "",
              "Or merged into full weights: `cl export " + entry.run_id[:8] + " --merged DIR`.", "",
              "## The spec", "", "```yaml", _yaml(run.get("spec")).rstrip(), "```", ""]
    return "\n".join(lines)


def _fmt(x) -> str:
    return "—" if x is None else f"{x:.3f}"


def _yaml(data) -> str:
    from ruamel.yaml import YAML
    if data is None:
        return "# the run stored no spec\n"
    buf = io.StringIO()
    YAML().dump(data, buf)
    return buf.getvalue()
