"""`glmbot info`: the configuration in use and the base model it points at."""

from __future__ import annotations

import platform

from rich.markup import escape
from rich.table import Table

from glmbot import __version__
from glmbot.cli import common
from glmbot.cli.common import JsonOpt


def info(as_json: JsonOpt = False) -> None:
    """Show the config file, base model, device, dtype and parameter count.

    Examples:

    \b
      glmbot info
      glmbot --config team/glmbot.toml info
      glmbot info --json
    """
    import torch

    from glmbot.model import count_parameters
    from glmbot.model.fingerprint import base_fingerprint

    settings = common.get_settings()
    model, tok = common.load_base_model()
    cfg = model.config
    if as_json:
        common.print_json({
            "glmbot": __version__, "config": str(settings.source), "base_model": settings.model.base_model,
            "fingerprint": base_fingerprint(model), "device": str(model.device),
            "dtype": str(model.dtype).removeprefix("torch."), "quantization": _quantization(model),
            "weight_bytes": _weight_bytes(model), "parameters": count_parameters(model),
            "layers": cfg.num_layers, "hidden_size": cfg.hidden_size, "attention_heads": cfg.num_attention_heads,
            "kv_groups": cfg.kv_groups, "vocab_size": tok.vocab_size, "padded_vocab_size": cfg.padded_vocab_size,
            "registry": _safe_url(settings.db_url), "domains": list(settings.domains), "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "python": platform.python_version()})
        return
    table = Table(show_header=False, box=None)
    rows = [
        ("glmbot", __version__),
        ("config", settings.source),
        ("base model", settings.model.base_model),
        ("fingerprint", base_fingerprint(model)),
        ("device", str(model.device)),
        ("dtype", str(model.dtype).removeprefix("torch.")),
        ("quantization", f"{_quantization(model)} ({_weight_bytes(model) / 1e9:.2f} GB of weights)"),
        ("parameters", f"{count_parameters(model):,}"),
        ("layers x hidden", f"{cfg.num_layers} x {cfg.hidden_size} ({cfg.num_attention_heads} heads, "
                            f"{cfg.kv_groups} KV groups)"),
        ("vocabulary", f"{tok.vocab_size:,} (padded {cfg.padded_vocab_size:,})"),
        ("registry", _safe_url(settings.db_url)),
        ("domains", _domains_text(settings)),
        ("torch", f"{torch.__version__} (CUDA available: {torch.cuda.is_available()})"),
        ("python", platform.python_version()),
    ]
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    common.console.print(table)


def _domains_text(settings) -> str:  # noqa: ANN001 - glmbot.config.Settings
    """Every domain as `glmbot domains list` shows it: name, active version or state, keywords."""
    from glmbot.registry.catalog import domain_states

    parts = []
    for d in domain_states(settings, common.get_registry()):
        state = f"v{d.active_version} active" if d.servable else (
            f"{d.versions_text()}, none active" if d.versions else "no adapter")
        parts.append(f"{d.name} ({state}{'; keywords ' + ', '.join(d.keywords) if d.keywords else ''})")
    return escape("; ".join(parts)) or "none yet (glmbot domains add NAME --data FILE.jsonl)"


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _quantization(model) -> str:  # noqa: ANN001 - a ChatGLMForConditionalGeneration
    return getattr(model.config, "glmbot_quantization", "none")


def _weight_bytes(model) -> int:  # noqa: ANN001
    """Bytes of the base's weights as stored (quantized layers as int8/int4 plus their scales)."""
    return sum(getattr(p, "nbytes_stored", p.numel() * p.element_size())
               for name, p in model.named_parameters() if "prefix_encoder" not in name)
