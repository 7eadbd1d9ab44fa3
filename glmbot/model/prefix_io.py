"""Reading and checking P-Tuning v2 prefix weights (official checkpoints and glmbot adapters).

Prefix state dicts use the official keys `transformer.prefix_encoder.embedding.weight` (P, width)
and, with projection, `transformer.prefix_encoder.trans.{0,2}.{weight,bias}`; glmbot adapter files
(`adapter_model.safetensors`) keep exactly these keys so they export back to the official layout.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from glmbot.errors import PrefixCheckpointError
from glmbot.model.prefix import V1_PREFIX_WIDTH, PrefixEncoder

if TYPE_CHECKING:  # only for annotations: importing transformers costs ~1 s
    from glmbot.model.configuration import ChatGLMConfig

PREFIX_KEY = "transformer.prefix_encoder."
EMBEDDING_KEY = PREFIX_KEY + "embedding.weight"
PROJECTION_KEYS = tuple(PREFIX_KEY + k for k in ("trans.0.weight", "trans.0.bias", "trans.2.weight", "trans.2.bias"))


@dataclass(frozen=True)
class PrefixSpec:
    """What a prefix checkpoint holds: its length, projection flag and flat width."""

    pre_seq_len: int
    prefix_projection: bool
    width: int


def read_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A .safetensors or pickled .bin state dict (pickles read with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        return torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, IndexError, pickle.UnpicklingError) as exc:
        raise PrefixCheckpointError(f"{path} is not a readable weights file ({type(exc).__name__}: {exc}); "
                                    "re-export it or point at the right file") from None


def prefix_state(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """The prefix-encoder tensors of a state dict, keyed as the official checkpoint keys them."""
    out = {}
    for key, tensor in state.items():
        # PEFT/DeepSpeed wrappers sometimes add "base_model.model." or "module." in front.
        idx = key.find(PREFIX_KEY)
        if idx >= 0:
            out[key[idx:]] = tensor
    if EMBEDDING_KEY not in out:
        found = ", ".join(sorted(state)[:5]) or "nothing"
        raise PrefixCheckpointError(
            f"{source} holds no P-Tuning v2 prefix (no '{EMBEDDING_KEY}'; found {found}); "
            "point at an official checkpoint-N folder or a glmbot adapter folder")
    return out


def inspect_prefix(state: dict[str, torch.Tensor], source: str) -> PrefixSpec:
    """Length, projection and width of a prefix state dict; refuses v1 and partial projections."""
    emb = state[EMBEDDING_KEY]
    if emb.ndim != 2:
        raise PrefixCheckpointError(f"{source}: {EMBEDDING_KEY} has shape {tuple(emb.shape)}, expected (P, width)")
    present = [k in state for k in PROJECTION_KEYS]
    if any(present) and not all(present):
        missing = [k for k, ok in zip(PROJECTION_KEYS, present) if not ok]
        raise PrefixCheckpointError(f"{source}: prefix projection is incomplete, missing {missing}")
    if emb.shape[1] == V1_PREFIX_WIDTH:
        raise PrefixCheckpointError(
            f"{source} is a ChatGLM-6B (v1) prefix (width {V1_PREFIX_WIDTH} = 28 x 2 x 4096): it does not fit "
            "ChatGLM2's multi-query attention; retrain it on ChatGLM2")
    return PrefixSpec(int(emb.shape[0]), all(present), int(emb.shape[1]))


def check_prefix_fits(spec: PrefixSpec, state: dict[str, torch.Tensor], config: ChatGLMConfig, source: str,
                      expected: tuple[int, bool] | None = None) -> None:
    """Refuse a prefix whose shapes do not fit `config` (or the expected pre_seq_len/projection)."""
    if spec.width != config.prefix_width:
        raise PrefixCheckpointError(
            f"{source}: prefix width {spec.width} does not fit this base (num_layers {config.num_layers} x 2 x "
            f"{config.kv_groups} groups x {config.kv_channels} = {config.prefix_width}); it was trained for "
            "another base model (adapters of the builtin base before 2026-12 included): retrain it on this one "
            "(glmbot train --domain DOMAIN) or set [model] base_model to the base it was trained for")
    if expected is not None and expected != (spec.pre_seq_len, spec.prefix_projection):
        raise PrefixCheckpointError(
            f"{source}: checkpoint has pre_seq_len={spec.pre_seq_len}, prefix_projection={spec.prefix_projection} "
            f"but its config says pre_seq_len={expected[0]}, prefix_projection={expected[1]}")
    want = PrefixEncoder(config, spec.pre_seq_len, spec.prefix_projection).state_dict() if spec.prefix_projection else {}
    for key, tensor in want.items():
        full = PREFIX_KEY + key
        if tuple(state[full].shape) != tuple(tensor.shape):
            raise PrefixCheckpointError(
                f"{source}: {full} has shape {tuple(state[full].shape)}, this base expects {tuple(tensor.shape)}")


def load_prefix_checkpoint(path: str | Path, config: ChatGLMConfig) -> tuple[dict[str, torch.Tensor], PrefixSpec]:
    """Load an official `checkpoint-N` folder (or its pytorch_model.bin / a .safetensors file).

    Returns the prefix state dict (official keys, fp32) and its spec, after checking it fits
    `config` and agrees with the folder's config.json (`pre_seq_len`, `prefix_projection`).
    """
    path = Path(path)
    if not path.exists():
        raise PrefixCheckpointError(f"prefix checkpoint {path} does not exist")
    expected = None
    if path.is_dir():
        candidates = [path / n for n in ("adapter_model.safetensors", "pytorch_model.bin", "model.safetensors")]
        file = next((c for c in candidates if c.is_file()), None) or prefix_shard(path)
        if file is None:
            raise PrefixCheckpointError(
                f"{path} is not a prefix checkpoint: it holds none of adapter_model.safetensors, "
                "pytorch_model.bin, model.safetensors (expected an official checkpoint-N folder)")
        cfg_file = path / "config.json"
        if cfg_file.is_file():
            try:
                cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise PrefixCheckpointError(f"{cfg_file} is not valid JSON: {exc}") from None
            if cfg.get("pre_seq_len"):
                expected = (int(cfg["pre_seq_len"]), bool(cfg.get("prefix_projection", False)))
    else:
        file = path
    state = prefix_state(read_state_file(file), str(file))
    spec = inspect_prefix(state, str(file))
    check_prefix_fits(spec, state, config, str(file), expected)
    return {k: v.float().contiguous() for k, v in state.items()}, spec


def prefix_shard(folder: Path) -> Path | None:
    """The shard holding the prefix in a sharded full-model checkpoint (what the HF Trainer of the
    official ChatGLM3 finetune_demo saves for P-Tuning v2: every weight, the prefix encoder included,
    under model.safetensors.index.json or pytorch_model.bin.index.json)."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError, TypeError) as exc:
                raise PrefixCheckpointError(f"{index} is not a valid shard index ({exc})") from None
            name = next((v for k, v in weight_map.items() if k.endswith(EMBEDDING_KEY)), None)
            if name is not None and (folder / name).is_file():
                return folder / name
    return None


def prefix_encoder_from_state(state: dict[str, torch.Tensor], config: ChatGLMConfig, source: str = "prefix") -> PrefixEncoder:
    """A PrefixEncoder holding `state` (official keys), checked against `config`."""
    spec = inspect_prefix(state, source)
    check_prefix_fits(spec, state, config, source)
    encoder = PrefixEncoder(config, spec.pre_seq_len, spec.prefix_projection)
    encoder.load_state_dict({k[len(PREFIX_KEY):]: v for k, v in state.items()})
    return encoder


def encoder_state(encoder: PrefixEncoder) -> dict[str, torch.Tensor]:
    """The encoder's tensors under the official keys, fp32 and contiguous (ready for safetensors)."""
    return {PREFIX_KEY + k: v.detach().float().contiguous().cpu() for k, v in encoder.state_dict().items()}
