"""Load a causal LM and its tokenizer, and attach the behavior's LoRA (or QLoRA) adapter.

One set of base weights serves as student (the adapter named "default" on) and teacher
(adapter off, or a frozen "teacher" adapter): never a second copy of the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from engrain.errors import EngrainError

# "default" so a saved adapter sits at the folder root, loadable with PeftModel.from_pretrained.
STUDENT = "default"


class ModelError(EngrainError):
    """A model could not be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    model: object          # a peft.PeftModel with the "default" (student) adapter active
    tokenizer: object
    source: str            # what the user asked for: "lab", a folder, a hub id
    path: str              # where it was loaded from

    @property
    def lm_head_weight(self):
        return self.model.get_base_model().get_output_embeddings().weight

    def backbone(self):
        """The decoder stack without the LM head: hidden states, never full logits."""
        base = self.model.get_base_model()
        return getattr(base, base.base_model_prefix)


def resolve_model_path(source: str) -> str:
    """A named model (``registry.MODELS``, e.g. the lab's), a GGUF file (converted once to a
    cached folder, engine/gguf.py), or a local folder or hub id: transformers resolves both
    of the latter."""
    from engrain.engine.gguf import hf_folder, is_gguf
    from engrain.registry import MODELS
    if is_gguf(source):
        return str(hf_folder(source))
    if source not in MODELS:
        return source
    path = Path(MODELS.get(source)())
    if not (path / "config.json").exists():
        raise ModelError(f"the model {source!r} is missing at {path}; "
                         + ("build it with `cl lab build` or reinstall engrain" if source == "lab" else
                            "reinstall the package that registers it"))
    return str(path)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer
    try:
        tok = AutoTokenizer.from_pretrained(resolve_model_path(source))
    except OSError as e:
        raise ModelError(f"could not load the tokenizer of {source!r}: {e}") from e
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not tok.chat_template:
        raise ModelError(f"{source}: the tokenizer has no chat template; engrain places hints "
                         "in the model's own chat template, so use an instruction-tuned model")
    return tok


def pick_device(device: str | None = None) -> str:
    """The device every loader uses: the one asked for, else CUDA where there is one."""
    import torch
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(device: str):
    """bf16 where the GPU computes it natively; fp32 on the CPU, where bf16 matmuls are
    emulated on most chips (slower) and the lab's figures were all measured in fp32."""
    import torch
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_base(source: str = "lab", *, device: str | None = None, qlora: bool = False, dtype=None):
    """The base model, on ``device`` in its dtype (``pick_dtype``, or ``dtype``), in 4 bits
    with ``qlora``: the one loader behind training, ``engrain.load``, export and evals.
    Returns (model, device)."""
    from transformers import AutoModelForCausalLM
    device = pick_device(device)
    dtype = dtype or pick_dtype(device)
    kwargs = {"dtype": dtype}
    if qlora:
        kwargs.update(quantization_config=four_bit_config(dtype, device), device_map={"": device})
    try:
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(source), **kwargs)
    except OSError as e:
        raise ModelError(f"could not load model {source!r}: {e}") from e
    except (ImportError, RuntimeError) as e:    # transformers' own bitsandbytes/accelerate checks
        if not qlora:
            raise
        raise ModelError(f"QLoRA could not load {source!r} in 4 bits on {device}: {' '.join(str(e).split())}; "
                         f"{QLORA_FIX}") from e
    return (base if qlora else base.to(device)), device


def load_model(source: str = "lab", lora=None, qlora: bool = False,
               adapter: str | Path | None = None, device: str | None = None,
               on: list[str | Path] = ()) -> LoadedModel:
    """Base model + tokenizer + a trainable LoRA adapter named "student".

    ``adapter``: a saved adapter folder to continue from (resume) instead of a fresh one.
    ``on``: earlier behaviors' adapter folders, merged into the base weights in order before
    the new adapter is attached: "adapter off" is then the model that already carries
    them (the teacher, the anchor's reference and the gate's "before").
    """
    from peft import LoraConfig, PeftModel, get_peft_model

    if on and qlora:
        raise ModelError("--on merges the earlier adapters into the base weights, which 4-bit "
                         "weights cannot hold exactly; train with train.qlora: false")
    path = resolve_model_path(source)
    base, device = load_base(source, device=device, qlora=qlora)
    if qlora:
        keep_training_layout(base)
        # Not peft's prepare_model_for_kbit_training. It turns on input gradients, so every
        # backward runs on down to the embeddings (1.26x the seconds per step on the lab:
        # 0.733 against 0.584, benchmarks/RESULTS.md), and gradient checkpointing, which the
        # fit's passes (in eval mode) never use; on a GPU it also upcasts the bf16
        # embeddings, norms and LM head to fp32 (twice the memory of the largest matrix at a
        # 150k vocabulary, numerics unlike the bf16 LoRA fit's). Its one needed job, freezing
        # the base, get_peft_model does.
    else:
        base = merge_adapters(base, on).to(device)
    tokenizer = load_tokenizer(source)
    if adapter is not None:
        model = PeftModel.from_pretrained(base, str(adapter), adapter_name=STUDENT, is_trainable=True)
    else:
        from engrain.spec.schema import Lora
        lora = lora or Lora()      # the spec's train.lora section; its defaults are the only ones
        cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                         target_modules=lora.target_modules, task_type="CAUSAL_LM")
        model = get_peft_model(base, cfg, adapter_name=STUDENT)
    return LoadedModel(model, tokenizer, source, path)


QLORA_FIX = "install bitsandbytes and accelerate (pip install 'engrain[qlora]') or set train.qlora: false"


def four_bit_config(compute_dtype, device: str):
    """transformers' 4-bit NF4 settings, after checking that bitsandbytes can quantise on
    ``device`` here: a tiny round trip, so a missing or broken install is one clear line
    rather than an error from deep inside ``from_pretrained``."""
    import torch
    from transformers import BitsAndBytesConfig
    try:
        import bitsandbytes.functional as bnbf
        probe = torch.linspace(-1, 1, 64, device=device)
        packed, state = bnbf.quantize_4bit(probe, quant_type="nf4")
        # NF4 levels are at most 0.28 apart (0.72 to 1): a right round trip errs under 0.15
        ok = torch.allclose(bnbf.dequantize_4bit(packed, state), probe, atol=0.2)
    except Exception as e:      # noqa: BLE001 - missing, no native library, device not supported
        raise ModelError(f"QLoRA needs bitsandbytes working on {device} ({type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}); {QLORA_FIX}") from e
    if not ok:
        raise ModelError(f"bitsandbytes' 4-bit round trip is wrong on {device}; {QLORA_FIX}")
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)


def keep_training_layout(model) -> None:
    """Keep every 4-bit layer in the layout that has a backward pass.

    On CPUs with AVX512-BF16, bitsandbytes (0.50's ``Linear4bit.forward``) repacks a
    Linear4bit's weights in place, on its first forward in eval mode on an input without
    grad (the teacher, base and eval passes; the fit runs in eval mode), into an
    inference layout whose matmul has no gradient and whose scales are rounded to bf16:
    the student's next training pass would get no gradient through the base layers and
    slightly different weights than before. Turning the repack off keeps one layout for
    student, teacher and base alike."""
    import bitsandbytes as bnb
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def merge_adapters(base, adapters):
    """``base`` with each saved LoRA adapter merged into its weights, in order (exact up to
    float rounding: W + (α/r)·B·A per adapted matrix)."""
    from peft import PeftModel
    for folder in adapters:
        try:
            base = PeftModel.from_pretrained(base, str(folder)).merge_and_unload()
        except (OSError, ValueError) as e:
            raise ModelError(f"could not load the adapter {folder} to build on: {e}") from e
    return base


def load_plain(source: str = "lab", adapter: str | Path | None = None, device: str | None = None):
    """Model (+ an optional saved adapter, for inference) and tokenizer, for evals."""
    model, _ = load_base(source, device=device)
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), load_tokenizer(source)
