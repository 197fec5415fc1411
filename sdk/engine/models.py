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
    """A named model (``registry.MODELS``, e.g. the lab's), or a local folder or hub id:
    transformers resolves both of the latter."""
    from engrain.registry import MODELS
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


def load_model(source: str = "lab", lora=None, qlora: bool = False,
               adapter: str | Path | None = None, device: str | None = None,
               on: list[str | Path] = ()) -> LoadedModel:
    """Base model + tokenizer + a trainable LoRA adapter named "student".

    ``adapter``: a saved adapter folder to continue from (resume) instead of a fresh one.
    ``on``: earlier behaviors' adapter folders, merged into the base weights in order before
    the new adapter is attached: "adapter off" is then the model that already carries
    them (the teacher, the anchor's reference and the gate's "before").
    """
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(source)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kwargs = {}
    if qlora:
        if not torch.cuda.is_available():
            raise ModelError("QLoRA needs a CUDA GPU (bitsandbytes 4-bit); set train.qlora: false "
                             "to train a plain LoRA adapter on this machine")
        try:
            from transformers import BitsAndBytesConfig
            import bitsandbytes  # noqa: F401
        except ImportError as e:
            raise ModelError("QLoRA needs bitsandbytes: pip install 'engrain[qlora]'") from e
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16)
    else:
        kwargs["dtype"] = torch.bfloat16 if device == "cuda" else torch.float32
    try:
        base = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelError(f"could not load model {source!r}: {e}") from e
    if on and qlora:
        raise ModelError("--on merges the earlier adapters into the base weights, which 4-bit "
                         "weights cannot hold exactly; train with train.qlora: false")
    base = merge_adapters(base, on)
    if qlora:
        base = prepare_model_for_kbit_training(base)
    else:
        base.to(device)
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


def load_plain(source: str = "lab", adapter: str | Path | None = None):
    """Model (+ an optional saved adapter, for inference) and tokenizer, for evals."""
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(source))
    if adapter is not None:
        from peft import PeftModel
        model = PeftModel.from_pretrained(model, str(adapter))
    return model.eval(), load_tokenizer(source)
