"""The embedded lab model: a tiny Llama pretrained on a synthetic world (see world.py)."""

from pathlib import Path


def model_path() -> Path:
    """The committed lab model folder (loadable with transformers' Auto* classes)."""
    return Path(__file__).parent / "model"
