"""A short, stable identity of a base model: architecture plus a sample of its weights.

Hashing all 12.5 GB of ChatGLM2-6B weights at every start would be slow; the architecture fields
and the first rows of the embedding and output matrices tell bases apart just as well in practice
(two different trainings never share them) and cost microseconds.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # only for annotations: importing transformers costs ~1 s
    from glmbot.model.configuration import ChatGLMConfig


ARCH_FIELDS = ("num_layers", "hidden_size", "ffn_hidden_size", "kv_channels", "num_attention_heads",
               "multi_query_group_num", "padded_vocab_size")
SAMPLE_ROWS = 8


def architecture(config: ChatGLMConfig) -> dict[str, int]:
    """The config fields that decide whether a prefix fits a base."""
    return {name: int(getattr(config, name)) for name in ARCH_FIELDS}


def base_fingerprint(model: torch.nn.Module) -> str:
    """'sha256:<16 hex>' of the architecture and the first rows of the input/output embeddings."""
    digest = hashlib.sha256(json.dumps(architecture(model.config), sort_keys=True).encode())
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        sample = weight.detach()[:SAMPLE_ROWS].to("cpu", torch.float32).contiguous()
        digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]
