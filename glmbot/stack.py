"""The serving stack glmbot.toml describes, in one call: base model, registry, plugins, router, engine.

    import glmbot
    engine = glmbot.shared_engine()          # built on first use, then shared by the whole process
    engine = glmbot.engine_from_config()     # a private one: close it when done (or use `with`)

`shared_engine()` is what `ChatGlmbot()` uses when it is given no engine: every chat model, chain
and script of a process then shares one base model on the device and one prefix cache, and the
engine batches their requests together. It is closed when the interpreter exits.
"""

from __future__ import annotations

import atexit
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glmbot.config import load_settings

if TYPE_CHECKING:  # only for annotations: importing torch costs seconds
    from glmbot.serving.engine import Engine

_shared: dict[str, Engine] = {}  # config file (or "<defaults>") -> its engine
_lock = threading.Lock()


def engine_from_config(config: str | Path | None = None, **engine_kwargs: Any) -> Engine:
    """A new engine over the base model, registry, router and plugins of `config`.

    `config` is a glmbot.toml path; by default $GLMBOT_CONFIG or the nearest glmbot.toml (the
    built-in defaults if there is none). `engine_kwargs` go to `Engine` (e.g. max_len=512).
    """
    from glmbot.model import load_base
    from glmbot.plugins import get_manager
    from glmbot.registry import Registry
    from glmbot.serving.factory import build_engine

    settings = load_settings(config)
    m = settings.model
    model, tokenizer = load_base(m.base_model, dtype=m.dtype, device=m.device, quantization=m.quantization)
    return build_engine(settings, model, tokenizer, Registry.from_settings(settings), get_manager(settings),
                        **engine_kwargs)


def shared_engine(config: str | Path | None = None) -> Engine:
    """The process's engine for `config` (see engine_from_config), built on the first call.

    Later calls with the same config file return the same engine; do not close it yourself.
    """
    source = load_settings(config).source
    key = source if source == "<defaults>" else str(Path(source).resolve())
    with _lock:  # two threads asking at once must not load the base model twice
        if key not in _shared:
            _shared[key] = engine_from_config(config)
        return _shared[key]


@atexit.register
def _close_shared() -> None:
    with _lock:
        engines = list(_shared.values())
        _shared.clear()
    for engine in engines:
        engine.close()
