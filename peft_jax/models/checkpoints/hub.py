"""Hugging Face Hub ids ("google/mt5-small") resolved to a local snapshot through `huggingface_hub`,
when it is installed and the network allows; otherwise an error that says which of the two failed."""

from __future__ import annotations

import importlib
import os
import re

from peft_jax.models.errors import CheckpointError

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What a model snapshot needs: configs and weights in any format we read (no tf_model.h5, no ONNX).
PATTERNS = ["*.json", "*.safetensors", "pytorch_model*.bin", "flax_model.msgpack"]


def resolve(path: str) -> str:
    """`path` itself if it exists locally (or is not shaped like a Hub id), else a downloaded snapshot."""
    if os.path.exists(path) or not HUB_ID.fullmatch(path):
        return path
    try:
        hub = importlib.import_module("huggingface_hub")
    except ModuleNotFoundError:
        raise CheckpointError(f"{path}: not a local directory; loading it from the Hugging Face Hub needs "
                              '`huggingface_hub`, which is not installed: pip install "peft_jax[hf]"') from None
    try:
        return hub.snapshot_download(path, allow_patterns=PATTERNS)
    except Exception as e:  # offline, unknown repo, gated repo: huggingface_hub raises many types
        raise CheckpointError(f"{path}: not a local directory, and fetching it from the Hugging Face Hub failed "
                              f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); without network, "
                              "download it elsewhere and pass the local directory") from None
