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
DEFAULT_FAMILY = "chatglm2"  # fingerprints without a family tag


def architecture(config: ChatGLMConfig) -> dict[str, int]:
    """The config fields that decide whether a prefix fits a base."""
    return {name: int(getattr(config, name)) for name in ARCH_FIELDS}


def base_fingerprint(model: torch.nn.Module) -> str:
    """'sha256:<16 hex>' of the architecture and the first rows of the input/output embeddings.

    Bases of the later GLM families carry their family in front ('chatglm3/sha256:...',
    'glm4/sha256:...'; ChatGLM2's stay as they were), so every adapter records the family it was
    trained on, and a ChatGLM2 prefix (same width as a ChatGLM3 one) is refused on ChatGLM3.
    Quantizing the blocks (int8/int4) leaves the embeddings, and so the fingerprint, as they are.
    The sample is rounded to bf16 first, so one base loaded in float32, float16 or bfloat16 has one
    fingerprint (ChatGLM2-6B's fp16 files trained on in bf16 and served in fp32 still match).
    """
    return _fingerprint(model, torch.bfloat16)


def base_fingerprints(model: torch.nn.Module) -> tuple[str, str]:
    """The fingerprints an adapter of this base may carry: base_fingerprint's first, then the one
    adapters registered before 2026-12-05 recorded (the sample unrounded, as the base was loaded)."""
    return base_fingerprint(model), _fingerprint(model, torch.float32)


def _fingerprint(model: torch.nn.Module, rounded_to: torch.dtype) -> str:
    digest = hashlib.sha256(json.dumps(architecture(model.config), sort_keys=True).encode())
    for weight in (model.get_input_embeddings().weight, model.get_output_embeddings().weight):
        sample = weight.detach()[:SAMPLE_ROWS].to("cpu", rounded_to).to(torch.float32).contiguous()
        digest.update(sample.numpy().tobytes())
    family = getattr(model.config, "glm_family", None) or DEFAULT_FAMILY
    tag = "" if family == DEFAULT_FAMILY else family + "/"
    return f"{tag}sha256:" + digest.hexdigest()[:16]


def fingerprint_family(fingerprint: str) -> str:
    """The GLM family recorded in a base fingerprint ('chatglm2' for untagged ones)."""
    family, slash, _ = (fingerprint or "").partition("/")
    return family if slash else DEFAULT_FAMILY


def check_same_family(adapter_fingerprint: str, config: ChatGLMConfig, adapter: str) -> None:
    """Refuse an adapter trained on a base of another GLM family than `config`'s."""
    from glmbot.errors import PrefixCheckpointError

    trained = fingerprint_family(adapter_fingerprint)
    serving = getattr(config, "glm_family", None) or DEFAULT_FAMILY
    if trained != serving:
        raise PrefixCheckpointError(
            f"adapter {adapter} was trained on a {trained} base but this base is {serving}: a prefix only works "
            f"on the base it was trained on; retrain it on this base (glmbot train --domain DOMAIN) or set "
            f"[model] base_model to its {trained} base")


def check_same_base(adapter_fingerprint: str, base: tuple[str, ...], adapter: str, domain: str) -> None:
    """Refuse an adapter trained on other base weights than the served base (`base_fingerprints`)."""
    from glmbot.errors import PrefixCheckpointError

    if adapter_fingerprint and base and adapter_fingerprint not in base:
        raise PrefixCheckpointError(
            f"adapter {adapter} was trained on a base with fingerprint {adapter_fingerprint}, but the served base "
            f"has fingerprint {base[0]}: a prefix only works on the base weights it was trained on (the "
            f"builtin base changed on 2026-12-05); retrain it on this base (glmbot train --domain {domain}) or set "
            "[model] base_model to the base it was trained on")
