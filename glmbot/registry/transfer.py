"""Importing prefixes from folders: official P-Tuning v2 `checkpoint-N` folders and glmbot adapter folders.

An official folder holds `pytorch_model.bin` (a pickle, read with weights_only=True by
prefix_io) and a `config.json` carrying `pre_seq_len` (the ChatGLM3 finetune_demo saves the whole
model, sharded: the shard holding the prefix is read). A PEFT PREFIX_TUNING folder (the GLM-4
finetune_demo) holds `prompt_embeddings`. A glmbot folder (what `export` writes, or
a PEFT-like folder) holds `adapter_config.json` (peft_type P_TUNING_V2) and
`adapter_model.safetensors`. Either way the prefix must fit the configured base; nothing is
written unless it does.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors

from glmbot.errors import AdapterIntegrityError, PrefixCheckpointError
from glmbot.model.fingerprint import architecture
from glmbot.model.prefix_io import (
    EMBEDDING_KEY,
    check_prefix_fits,
    inspect_prefix,
    load_prefix_checkpoint,
    prefix_state,
    read_state_file,
)
from glmbot.registry import store
from glmbot.registry.card import PEFT_TYPE
from glmbot.registry.registration import trained_for
from glmbot.registry.info import AdapterInfo
from glmbot.registry.refs import check_domain_name

if TYPE_CHECKING:  # only for annotations: importing transformers costs ~1 s
    from glmbot.model.configuration import ChatGLMConfig


@dataclass
class ImportSource:
    """A prefix read from a folder, with what the folder says about it."""

    state: dict[str, torch.Tensor]
    provenance: dict
    hyperparams: dict = field(default_factory=dict)
    dataset_sha256: str | None = None
    sample_count: int | None = None
    metrics: dict = field(default_factory=dict)
    routing_prompts: list[str] | None = None


def import_path(registry, path: str | Path, domain: str, *, config: ChatGLMConfig, base_model: str,  # noqa: ANN001
                base_fingerprint: str, create_domain: bool = False, allow_base_mismatch: bool = False,
                source: str = "imported", provenance: dict | None = None) -> AdapterInfo:
    """Read `path` (see the module doc), then register it as the next version of `domain`.

    `provenance` entries are merged over the ones read from the folder.
    """
    check_domain_name(domain)
    if not create_domain:
        registry.get_domain(domain)  # the unknown-domain error before reading any weights
    path = Path(path).expanduser()
    if (path / store.CONFIG).is_file() and _peft_type(path) == PEFT_PREFIX_TUNING:
        read = read_peft_prefix_folder(path, config)
    elif (path / store.CONFIG).is_file():
        read = read_adapter_folder(path, config, base_fingerprint, allow_base_mismatch)
    else:
        read = read_official_checkpoint(path, config)
    return registry.register_adapter(
        domain, read.state, base_model=base_model, base_fingerprint=base_fingerprint,
        architecture=architecture(config), source=source, hyperparams=read.hyperparams,
        dataset_sha256=read.dataset_sha256, sample_count=read.sample_count, metrics=read.metrics,
        provenance={**read.provenance, **(provenance or {})}, routing_prompts=read.routing_prompts,
        create_domain=create_domain)


def read_official_checkpoint(path: Path, config: ChatGLMConfig) -> ImportSource:
    """An official `checkpoint-N` folder (or its weights file), checked against `config`."""
    try:
        state, _spec = load_prefix_checkpoint(path, config)
    except PrefixCheckpointError as exc:
        raise PrefixCheckpointError(f"{exc}{_width_hint(path, config)}") from None
    except Exception as exc:  # noqa: BLE001 - torch's unpickler raises IndexError, UnpicklingError, ... on junk
        raise PrefixCheckpointError(f"{path} is not a readable prefix checkpoint ({type(exc).__name__}: {exc}); "
                                    "point at an official checkpoint-N folder or a glmbot adapter folder") from None
    file = _weights_file(path)
    provenance = {"format": "official-checkpoint", "path": str(path.resolve()), "file": file.name,
                  "file_sha256": store.sha256_file(file)}
    if match := re.fullmatch(r"checkpoint-(\d+)", path.resolve().name):
        provenance["step"] = int(match.group(1))
    return ImportSource(state, provenance)


def _weights_file(path: Path) -> Path:
    if path.is_file():
        return path
    names = ("adapter_model.safetensors", "pytorch_model.bin", "model.safetensors")  # prefix_io's order
    return next(path / n for n in names if (path / n).is_file())


def _width_hint(path: Path, config: ChatGLMConfig) -> str:
    """' (width W: trained for <base>)' when the file's prefix width does not fit `config`, else ''."""
    try:
        emb = prefix_state(read_state_file(_weights_file(path)), str(path))[EMBEDDING_KEY]
    except Exception:  # noqa: BLE001 - only a hint; the caller raises the real error
        return ""
    width = int(emb.shape[-1])
    if width == config.prefix_width:
        return ""
    return f" (this prefix has width {width}: trained for {trained_for(width)}; the configured base needs " \
           f"{config.prefix_width})"


def _read_json(file: Path) -> object:
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PrefixCheckpointError(f"{file} is not readable JSON ({exc}); re-export the adapter") from None


def read_adapter_folder(path: Path, config: ChatGLMConfig, base_fingerprint: str,
                        allow_base_mismatch: bool = False) -> ImportSource:
    """A glmbot/PEFT-style folder, checked against the configured base (`config`, `base_fingerprint`)."""
    cfg = _read_json(path / store.CONFIG)
    if not isinstance(cfg, dict) or cfg.get("peft_type") != PEFT_TYPE:
        found = cfg.get("peft_type") if isinstance(cfg, dict) else cfg
        raise PrefixCheckpointError(f"{path / store.CONFIG} has peft_type {found!r}, expected {PEFT_TYPE!r}: it is "
                                    "not a P-Tuning v2 adapter (glmbot imports only prefix adapters)")
    weights = path / store.WEIGHTS
    if not weights.is_file():
        raise PrefixCheckpointError(f"{path} has adapter_config.json but no {store.WEIGHTS}; copy the whole folder")
    data = weights.read_bytes()
    recorded, actual = cfg.get("weights_sha256"), store.sha256_bytes(data)
    if recorded and recorded != actual:
        raise AdapterIntegrityError(f"{weights} has sha256 {actual}, but its adapter_config.json records {recorded}: "
                                    "the copy is damaged; export or download it again")
    try:
        state = prefix_state(load_safetensors(data), str(weights))
    except SafetensorError as exc:
        raise PrefixCheckpointError(f"{weights} is not a valid safetensors file ({exc}); export it again") from None
    _check_fits(state, cfg, config, str(weights))
    trained_fp = cfg.get("base_fingerprint")
    if trained_fp and trained_fp != base_fingerprint and not allow_base_mismatch:
        raise PrefixCheckpointError(
            f"{path} was trained for base {cfg.get('base_model_name_or_path')!r} (fingerprint {trained_fp}), but the "
            f"configured base has fingerprint {base_fingerprint}: a prefix only works on its own base weights; "
            "configure that base, or import anyway with --allow-base-mismatch (allow_base_mismatch=True)")
    return _source_from_folder(path, cfg, state)


PEFT_PREFIX_TUNING = "PREFIX_TUNING"
PEFT_PREFIX_KEY = "prompt_embeddings"


def _peft_type(path: Path) -> object:
    cfg = _read_json(path / store.CONFIG)
    return cfg.get("peft_type") if isinstance(cfg, dict) else None


def read_peft_prefix_folder(path: Path, config: ChatGLMConfig) -> ImportSource:
    """A PEFT PREFIX_TUNING folder, as the official GLM-4 finetune_demo saves P-Tuning v2
    (configs/ptuning_v2.yaml: num_virtual_tokens, num_attention_heads = KV groups, token_dim =
    groups x kv_channels): adapter_model.safetensors holds `prompt_embeddings` (P, layers x 2 x token_dim),
    the prefix keys and values in the native PrefixEncoder's layout (layer, key/value, group, channel),
    already projected when PEFT's prefix_projection was on. Imported as the native encoder's embedding."""
    cfg = _read_json(path / store.CONFIG)
    weights = next((path / n for n in ("adapter_model.safetensors", "adapter_model.bin") if (path / n).is_file()), None)
    if weights is None:
        raise PrefixCheckpointError(f"{path} has a PEFT adapter_config.json but no adapter_model.safetensors; "
                                    "copy the whole folder")
    raw = read_state_file(weights)
    key = next((k for k in raw if k.endswith(PEFT_PREFIX_KEY)), None)
    if key is None:
        raise PrefixCheckpointError(f"{weights} holds no {PEFT_PREFIX_KEY!r} (found {', '.join(sorted(raw)[:5])}); "
                                    "it is not a PEFT prefix-tuning adapter")
    state = {EMBEDDING_KEY: raw[key].float().contiguous()}
    expected = {"pre_seq_len": cfg.get("num_virtual_tokens"), "prefix_projection": False}
    _check_fits(state, {**cfg, **expected, "base_model_name_or_path": cfg.get("base_model_name_or_path")},
                config, str(weights))
    provenance = {"format": "peft-prefix-tuning", "path": str(path.resolve()), "file": weights.name,
                  "file_sha256": store.sha256_file(weights),
                  "base_model_name_or_path": cfg.get("base_model_name_or_path")}
    return ImportSource(state, provenance)


def _check_fits(state: dict[str, torch.Tensor], cfg: dict, config: ChatGLMConfig, source: str) -> None:
    spec = inspect_prefix(state, source)
    expected = None
    if cfg.get("pre_seq_len"):
        expected = (int(cfg["pre_seq_len"]), bool(cfg.get("prefix_projection", False)))
    try:
        check_prefix_fits(spec, state, config, source, expected)
    except PrefixCheckpointError as exc:
        trained = cfg.get("base_model_name_or_path", "an unknown base")
        arch = cfg.get("architecture") or trained_for(spec.width)
        raise PrefixCheckpointError(f"{exc} (it was trained for base {trained!r}, architecture {arch})") from None


def _source_from_folder(path: Path, cfg: dict, state: dict[str, torch.Tensor]) -> ImportSource:
    training = cfg.get("training") if isinstance(cfg.get("training"), dict) else {}
    metrics = _read_json(path / store.METRICS) if (path / store.METRICS).is_file() else {}
    prompts = _read_json(path / store.ROUTING) if (path / store.ROUTING).is_file() else None
    original = {k: cfg.get(k) for k in ("domain", "version", "base_model_name_or_path", "base_fingerprint", "source",
                                        "created", "provenance") if cfg.get(k) is not None}
    provenance = {"format": "glmbot-adapter", "path": str(path.resolve()), "original": original}
    return ImportSource(state, provenance, hyperparams=training.get("hyperparams") or {},
                        dataset_sha256=training.get("dataset_sha256"), sample_count=training.get("sample_count"),
                        metrics=metrics if isinstance(metrics, dict) else {}, routing_prompts=prompts)
