"""Checks of what callers hand the registry, done before anything is written.

Each check raises a typed error naming the bad value and the fix; on success it returns the
value in the form the registry stores (prefix tensors fp32 with the official keys, metrics as
floats, ...).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
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
from glmbot.registry.refs import check_domain_name
from glmbot.registry.tables import SOURCES

_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
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


def check_metrics(metrics: object, what: str = "metrics") -> dict[str, float]:
    """{name: finite number} -> {name: float}."""
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise RegistryError(f"{what} must be a dict of metric name -> number, got {metrics!r}")
    out = {}
    for name, value in metrics.items():
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"{what}: metric names must be non-empty strings, got {name!r}")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RegistryError(f"{what}: metric {name!r} = {value!r} is not a finite number")
        out[name] = float(value)
    return out


def check_sha256(value: object, what: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SHA256_RE.match(value):
        raise RegistryError(f"{what} must be 64 lowercase hex digits (a sha256), got {value!r}")
    return value


def check_source(source: object) -> str:
    if source not in SOURCES:
        raise RegistryError(f"source must be one of {', '.join(SOURCES)}, got {source!r}")
    return source


def check_sample_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RegistryError(f"sample_count must be an integer >= 0, got {value!r}")
    return value


def check_strings(values: object, what: str) -> list[str]:
    """A list of non-empty strings (routing prompts, keywords)."""
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise RegistryError(f"{what} must be a list of strings, got {values!r}")
    out = list(values)
    bad = [v for v in out if not isinstance(v, str) or not v.strip()]
    if bad:
        raise RegistryError(f"{what} must be non-empty strings; bad entries: {bad[:3]!r}")
    return out


def check_patterns(patterns: object) -> list[str]:
    out = check_strings(patterns, "patterns")
    for pattern in out:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise RegistryError(f"routing pattern {pattern!r} is not a valid regular expression ({exc}); "
                                "fix it, e.g. escape special characters with a backslash") from None
    return out


def check_json_dict(value: object, what: str) -> dict:
    """A dict that JSON can store (hyper-parameters, provenance)."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RegistryError(f"{what} must be a dict, got {value!r}")
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise RegistryError(f"{what} must hold only JSON values (str, number, bool, list, dict): {exc}") from None
    return dict(value)


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
