"""Checking a prefix before it is registered: its tensors fit the base, its files are built.

`Registry.register_adapter` and imports use this module; it is the part of the registry that
needs torch, so listing, promoting and the other metadata commands never import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch
from safetensors.torch import save

from glmbot.errors import PrefixCheckpointError, RegistryError
from glmbot.model.fingerprint import ARCH_FIELDS
from glmbot.model.prefix_io import EMBEDDING_KEY, PROJECTION_KEYS, PrefixSpec, check_prefix_fits, inspect_prefix, \
    prefix_state
from glmbot.registry import store
from glmbot.registry.card import json_bytes
from glmbot.registry.checks import (check_json_dict, check_metrics, check_sample_count, check_sha256, check_source,
                                    check_strings)
from glmbot.registry.refs import check_domain_name

# Flat prefix widths (num_layers x 2 x KV groups x head dim) of bases people train prefixes for.
KNOWN_WIDTHS = {
    28 * 2 * 2 * 128: "ChatGLM2-6B / ChatGLM3-6B (28 layers x 2 KV groups x 128)",
    28 * 2 * 4096: "ChatGLM-6B v1 (28 layers x 4096, full-width heads)",
}


def check_architecture(architecture: object) -> dict[str, int]:
    """The base's architecture dict (fingerprint.architecture(config)) with every field an int."""
    if not isinstance(architecture, Mapping):
        raise RegistryError(f"architecture must be a dict like fingerprint.architecture(config), got {architecture!r}")
    missing = [k for k in ARCH_FIELDS if k not in architecture]
    bad = [k for k in ARCH_FIELDS if k in architecture and (not isinstance(architecture[k], int)
                                                              or isinstance(architecture[k], bool))]
    if missing or bad:
        raise RegistryError(f"architecture {dict(architecture)!r} lacks {missing} or has non-integer {bad}; "
                            "pass glmbot.model.fingerprint.architecture(model.config)")
    return {k: int(architecture[k]) for k in ARCH_FIELDS}


def trained_for(width: int) -> str:
    """Which base a prefix of this flat width was trained for, as far as the width tells."""
    return KNOWN_WIDTHS.get(width, f"a base whose num_layers x 2 x KV groups x head dim = {width}")


def canonical_prefix(state: Mapping[str, torch.Tensor], architecture: dict[str, int],
                     source: str) -> tuple[dict[str, torch.Tensor], PrefixSpec]:
    """The prefix tensors (official keys, fp32, contiguous, CPU) after checking they fit the base."""
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PrefixCheckpointError(f"{source}: expected a dict of tensors keyed '{EMBEDDING_KEY}', ...")
    found = prefix_state(dict(state), source)
    allowed = {EMBEDDING_KEY, *PROJECTION_KEYS}
    extra = sorted(set(found) - allowed)
    if extra:
        raise PrefixCheckpointError(f"{source}: unexpected prefix tensors {extra}; only {sorted(allowed)} are stored")
    spec = inspect_prefix(found, source)
    config = _config_for(tuple(sorted(architecture.items())))
    try:
        check_prefix_fits(spec, found, config, source)
    except PrefixCheckpointError as exc:
        raise PrefixCheckpointError(
            f"{exc} (this prefix has width {spec.width}: trained for {trained_for(spec.width)}; the configured base "
            f"has width {config.prefix_width})") from None
    out = {}
    for key, tensor in found.items():
        tensor = tensor.detach().to("cpu", torch.float32).contiguous()
        if not torch.isfinite(tensor).all():
            raise PrefixCheckpointError(f"{source}: {key} holds NaN or inf values; the training diverged, "
                                        "register an earlier checkpoint")
        out[key] = tensor
    return out, spec


@cache
def _config_for(architecture: tuple[tuple[str, int], ...]):  # -> ChatGLMConfig
    """A config with these architecture fields (cached: building a PretrainedConfig is not free)."""
    from glmbot.model.configuration import ChatGLMConfig  # transformers: imported only when needed

    return ChatGLMConfig(**dict(architecture))


def weights_bytes(state: dict[str, torch.Tensor]) -> bytes:
    """adapter_model.safetensors bytes; deterministic for equal tensors (so re-imports keep the hash)."""
    return save(state, metadata={"format": "pt"})


@dataclass(frozen=True)
class Registration:
    """A checked registration: everything but the version number."""

    domain: str
    files: dict[str, bytes]  # written to the temp folder before the version number is known
    description: dict  # AdapterDescription fields but domain, version, created and weights_sha256


def check_registration(domain: str, prefix_state, *, base_model, base_fingerprint, architecture, source,  # noqa: ANN001
                       hyperparams, dataset_sha256, sample_count, metrics, provenance,
                       routing_prompts) -> Registration:
    """Check every argument of Registry.register_adapter and build the version-independent files."""
    check_domain_name(domain)
    if not isinstance(base_model, str) or not base_model:
        raise RegistryError(f"base_model must name the base (a path, Hub id or builtin:tiny), got {base_model!r}")
    if not isinstance(base_fingerprint, str) or not base_fingerprint:
        raise RegistryError(
            f"base_fingerprint must be fingerprint.base_fingerprint(model), got {base_fingerprint!r}")
    arch = check_architecture(architecture)
    state, spec = canonical_prefix(prefix_state, arch, f"prefix for domain {domain!r}")
    metrics = check_metrics(metrics)
    prompts = check_strings(routing_prompts, "routing_prompts")
    files = {store.WEIGHTS: weights_bytes(state), store.METRICS: json_bytes(metrics)}
    if routing_prompts is not None:
        files[store.ROUTING] = json_bytes(prompts)
    description = dict(
        base_model=base_model, base_fingerprint=base_fingerprint, architecture=arch, pre_seq_len=spec.pre_seq_len,
        prefix_projection=spec.prefix_projection, source=check_source(source),
        provenance=check_json_dict(provenance, "provenance"), hyperparams=check_json_dict(hyperparams, "hyperparams"),
        dataset_sha256=check_sha256(dataset_sha256, "dataset_sha256"), sample_count=check_sample_count(sample_count),
        metrics=metrics)
    return Registration(domain, files, description)
