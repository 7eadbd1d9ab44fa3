"""Finding and loading base models: `builtin:tiny`, a local ChatGLM2 folder, or a Hub id.

Weights are read shard by shard into a model allocated directly in the target dtype and device
(no fp32 copy of 6B parameters on the way), every tensor is checked against the config's shape,
and pickled `.bin` shards are read with `weights_only=True`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from glmbot.errors import CheckpointMismatchError, ModelLoadError
from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.family import GlmFamily, detect_family, family_of
from glmbot.model.modeling import ChatGLMForConditionalGeneration
from glmbot.model.prefix_io import PREFIX_KEY
from glmbot.model.tokenizer import TOKENIZER_FILE, ChatGLM3Tokenizer, ChatGLMTokenizer

log = logging.getLogger(__name__)

BUILTIN_SCHEME = "builtin:"
BUILTIN_DIR = Path(__file__).parent / "builtin"
HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
IGNORED_KEYS = re.compile(r"(^|\.)rotary_pos_emb\.inv_freq$")
HUB_PATTERNS = ["config.json", "*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin",
                "pytorch_model.bin.index.json", TOKENIZER_FILE, "tokenizer_config.json"]


def builtin_names() -> list[str]:
    return sorted(p.name for p in BUILTIN_DIR.iterdir() if (p / "config.json").is_file()) if BUILTIN_DIR.is_dir() else []


def resolve_base(name_or_path: str | Path) -> Path:
    """The local folder holding `name_or_path`: a builtin, a folder, or a Hub snapshot."""
    name = str(name_or_path)
    if name.startswith(BUILTIN_SCHEME):
        folder = BUILTIN_DIR / name[len(BUILTIN_SCHEME):]
        if not (folder / "config.json").is_file():
            known = ", ".join(BUILTIN_SCHEME + n for n in builtin_names()) or "none (run scripts/build_tiny_base.py)"
            raise ModelLoadError(f"unknown builtin base {name!r}; available: {known}")
        return folder
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} has no config.json: point base_model at a ChatGLM2-6B model folder")
        return path
    if path.exists():
        raise ModelLoadError(f"base_model {name!r} is a file: point it at the model folder that holds config.json")
    if HUB_ID_RE.match(name) and not name.startswith((".", "/", "~")):
        return _download(name)
    raise ModelLoadError(
        f"base_model {name!r} is neither a folder, a Hub id (org/name) nor builtin:tiny; "
        "set base_model in glmbot.toml to a local ChatGLM2-6B folder")


def _download(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except LocalEntryNotFoundError:
        raise ModelLoadError(
            f"{repo_id} is not in the local Hub cache and the Hub cannot be reached (HF_HUB_OFFLINE or no "
            "network); download it once with `hf download` or set base_model to a local folder") from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(f"could not download {repo_id} from the Hub: {exc}") from None


def load_base_config(name_or_path: str | Path) -> ChatGLMConfig:
    """The ChatGLMConfig of a base model, without reading its weights (`glm_family` set from its files)."""
    return _read_config(resolve_base(name_or_path), str(name_or_path))


def load_tokenizer(folder: str | Path, family: GlmFamily) -> ChatGLMTokenizer:
    """The tokenizer of `family` over the tokenizer.model in `folder` (SentencePiece or tiktoken ranks)."""
    if family.tokenizer == "tiktoken":
        from glmbot.model.tokenizer_glm4 import GLM4Tokenizer

        return GLM4Tokenizer.from_pretrained(folder)
    return (ChatGLM3Tokenizer if family.name == "chatglm3" else ChatGLMTokenizer).from_pretrained(folder)


def _read_config(folder: Path, name: str = "") -> ChatGLMConfig:
    file = folder / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{file} is not valid JSON: {exc}") from None
    if data.get("model_type") not in (None, "chatglm"):
        raise ModelLoadError(f"{file}: model_type is {data['model_type']!r}, glmbot serves ChatGLM2 ('chatglm') models")
    if "padded_vocab_size" not in data and "num_layers" not in data:
        raise ModelLoadError(f"{file} does not describe a ChatGLM2 model (no num_layers / padded_vocab_size)")
    # The family (ChatGLM2/3, GLM-4) is decided here, once, from the folder's files.
    data["glm_family"] = detect_family(folder, data, name or str(folder)).name
    for key in ("auto_map", "architectures", "_name_or_path", "transformers_version"):
        data.pop(key, None)
    dtype = data.pop("torch_dtype", None) or data.pop("dtype", None)
    config = ChatGLMConfig(**data)
    config.checkpoint_dtype = dtype
    try:
        config.check_supported()
    except ValueError as exc:
        raise ModelLoadError(f"{file}: {exc}") from None
    return config


def weight_files(folder: Path) -> list[Path]:
    """The weight shards of a folder: safetensors preferred, then official `.bin` shards."""
    for index_name in ("model.safetensors.index.json", "pytorch_model.bin.index.json"):
        index = folder / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
                raise ModelLoadError(f"{index} is not a valid shard index ({exc})") from None
            files = [folder / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise ModelLoadError(f"{index} lists {missing[0]} but it is not in {folder}: the download is incomplete")
            return files
    for single in ("model.safetensors", "pytorch_model.bin"):
        if (folder / single).is_file():
            return [folder / single]
    raise ModelLoadError(f"{folder} holds no weights (model.safetensors, pytorch_model.bin or a shard index)")


def iter_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of one shard; corrupt or truncated files raise ModelLoadError."""
    try:
        if file.suffix == ".safetensors":
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():
                    yield key, f.get_tensor(key)
        else:
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            if not isinstance(state, dict):
                raise ModelLoadError(f"{file} does not hold a state dict")
            yield from state.items()
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, IndexError, pickle.UnpicklingError) as exc:
        raise ModelLoadError(f"{file} is corrupt or truncated ({type(exc).__name__}: {exc}); download it again") from None


def _default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}[dtype]
    except KeyError:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16") from None


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_empty(config: ChatGLMConfig, dtype: torch.dtype, device: torch.device) -> ChatGLMForConditionalGeneration:
    """A model with uninitialised storage in `dtype` on `device`; the prefix encoder stays fp32."""
    with torch.device("meta"), _default_dtype(dtype):
        model = ChatGLMForConditionalGeneration(config)
    model.to_empty(device=device)
    if model.transformer.prefix_encoder is not None:
        model.transformer.prefix_encoder.float()
    return model


def load_weights(model: ChatGLMForConditionalGeneration, folder: Path, reader=None) -> None:
    """Copy every tensor of `folder` into `model`, checking names and shapes; all must be covered.

    reader: an `OfficialQuantizedReader` that takes an official int4/int8 checkpoint's quantized
    weights and scales as stored (float weights into quantized layers are quantized by copy_).
    """
    params = dict(model.named_parameters())
    pending = set(params)
    for file in weight_files(folder):
        for key, tensor in iter_tensors(file):
            if IGNORED_KEYS.search(key):
                continue
            if reader is not None:
                reader.file_name = file.name
                if reader.accept(key, tensor):
                    pending.discard(key)
                    continue
            if key.startswith(PREFIX_KEY) and model.transformer.prefix_encoder is None:
                log.info("ignoring %s: the config has no pre_seq_len", key)
                continue
            if key not in params:
                raise CheckpointMismatchError(
                    f"{file.name}: unexpected weight {key!r} {tuple(tensor.shape)}: this is not a ChatGLM2 "
                    "checkpoint, or its config.json describes another model")
            target = params[key]
            if tuple(tensor.shape) != tuple(target.shape):
                raise CheckpointMismatchError(
                    f"{file.name}: {key} has shape {tuple(tensor.shape)} but config.json implies "
                    f"{tuple(target.shape)}; the config does not match the weights")
            with torch.no_grad():
                target.copy_(tensor)
            pending.discard(key)
    prefix_missing = {k for k in pending if k.startswith(PREFIX_KEY)}
    if pending - prefix_missing:
        first = sorted(pending - prefix_missing)[0]
        raise CheckpointMismatchError(
            f"{folder}: weight {first!r} {tuple(params[first].shape)} is missing ({len(pending - prefix_missing)} "
            "missing in all); the checkpoint is incomplete or for another model")
    if reader is not None:
        reader.finish(folder)
    if prefix_missing:
        # As the official code does for a fresh P-tuning run: a new prefix starts from the init.
        model.transformer.prefix_encoder.apply(model._init_weights)


def load_model(folder: Path, dtype: torch.dtype, device: torch.device,
               name: str = "", quantization: str | None = None) -> ChatGLMForConditionalGeneration:
    config = _read_config(folder, name)
    model = build_empty(config, dtype, device)
    reader = None
    if (quantization not in (None, "none")) or config.quantization_bit:
        from glmbot.model import quantization as quant

        kind = quant.resolve_quantization(quantization, config.quantization_bit, device)
        quant.swap_weights(model, kind)
        if config.quantization_bit:
            reader = quant.OfficialQuantizedReader(dict(model.named_parameters()), config.quantization_bit)
    load_weights(model, folder, reader)
    model.config.name_or_path = str(folder)
    return model.eval()


def load_base(name_or_path: str | Path = "builtin:tiny", dtype: str | torch.dtype | None = None,
              device: str | torch.device | None = None,
              quantization: str | None = None) -> tuple[ChatGLMForConditionalGeneration, ChatGLMTokenizer]:
    """(model, tokenizer) for `builtin:tiny`, a local ChatGLM2/ChatGLM3/GLM-4 folder, or a Hub id.

    The base's family (model.config.glm_family, see glmbot.model.family) decides the tokenizer
    class (ChatGLMTokenizer, ChatGLM3Tokenizer, GLM4Tokenizer) and the rotary variant.

    dtype None/"auto" means bfloat16 on CUDA and float32 on CPU; device None means CUDA when
    available. The model is in eval mode with gradients off for the base weights. quantization
    "int8"/"int4" quantizes the blocks' linear products as they load (glmbot.model.quantization);
    an official int4/int8 checkpoint (quantization_bit) loads as stored (another quantization is refused).
    """
    folder = resolve_base(name_or_path)
    device = torch.device(device) if device is not None and device != "auto" else _default_device()
    model = load_model(folder, resolve_dtype(dtype, device), device, str(name_or_path), quantization)
    model.requires_grad_(False)
    tokenizer = load_tokenizer(folder, family_of(model.config))
    if tokenizer.vocab_size > model.config.padded_vocab_size:
        raise ModelLoadError(
            f"{folder}: tokenizer has {tokenizer.vocab_size} ids but the model only {model.config.padded_vocab_size}")
    model.config.name_or_path = str(name_or_path)
    return model, tokenizer
