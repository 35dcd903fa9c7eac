"""Loads a GGUF model into transformers once and keeps the converted copy.

transformers converts a GGUF file (dequantizing every tensor, rebuilding the tokenizer) on each
from_pretrained(..., gguf_file=...): minutes on two cores. The first load saves the converted
model and tokenizer under ~/.cache/squat/hf/<file name>-<size>/ (safetensors), and later loads
read that, which takes seconds. Everything is offline.
"""

from __future__ import annotations

import os
import pathlib


def load_gguf_model(path: str, cache_dir: str | None = None):
    """(model, tokenizer) of transformers for the GGUF file `path`, in float32, eval mode."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = pathlib.Path(os.path.expanduser(str(path)))
    root = pathlib.Path(cache_dir or os.path.expanduser("~/.cache/squat/hf"))
    converted = root / f"{path.name}-{path.stat().st_size}"
    if not (converted / "config.json").exists():
        tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name)
        # The tensors are already dequantized to float32; only the GGUF marker blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = converted.with_suffix(".tmp")
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        os.replace(tmp, converted)
    tok = AutoTokenizer.from_pretrained(str(converted))
    model = AutoModelForCausalLM.from_pretrained(str(converted), dtype="float32")
    model.eval()
    return model, tok
