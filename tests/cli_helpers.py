"""Run the real `glmbot` command line in-process or as a subprocess, against a tmp project."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PROJECT_TOML = """
[registry]
adapters_dir = "adapters"
[train]
runs_dir = "runs"
{train}
[domains.support]
data = "builtin:support"
dev_data = "builtin:support_dev"
[domains.support.train]
question_rewrites = 0
history_share = 0.0
[domains.ads]
data = "builtin:ads"
dev_data = "builtin:ads_dev"
format = "advertisegen"
keywords = ["文案", "广告"]
"""


def make_project(root: Path, train: str = "") -> Path:
    """A folder with its own glmbot.toml (registry, runs) so tests never touch the repo's."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "glmbot.toml").write_text(PROJECT_TOML.format(train=train), encoding="utf-8")
    return root / "glmbot.toml"


def cli(config: Path, *args: str, capsys) -> tuple[int, str, str]:
    """Call glmbot's console entry point in-process: (exit code, stdout, stderr)."""
    from glmbot.cli import main

    argv = sys.argv
    sys.argv = ["glmbot", "--config", str(config), *args]
    try:
        with pytest.raises(SystemExit) as stop:
            main.run()
    finally:
        sys.argv = argv
    out = capsys.readouterr()
    return stop.value.code or 0, out.out, out.err


def source_env() -> dict[str, str]:
    """os.environ with PYTHONPATH leading to the glmbot under test, so a subprocess run from another folder
    imports this checkout rather than whichever one is installed."""
    import glmbot

    root = str(Path(glmbot.__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def cli_process(config: Path, *args: str, timeout: float = 300, env_extra: dict | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    env = {**source_env(), "COLUMNS": "200", "GLMBOT_CONFIG": str(config), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "glmbot", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=config.parent, **kwargs)


def registry_of(config: Path):
    """The Registry of a project made by make_project (SQLite under its adapters/)."""
    from glmbot.registry import Registry

    return Registry(f"sqlite:///{config.parent / 'adapters' / 'registry.db'}", config.parent / "adapters")


def project_with_adapters(root: Path, extra_toml: str = "") -> Path:
    """A project whose support and ads domains have active adapters (random prefixes: fast)."""
    import torch

    from glmbot import load_base
    from glmbot.model.fingerprint import architecture, base_fingerprint
    from glmbot.model.prefix import PrefixEncoder
    from glmbot.model.prefix_io import encoder_state
    from glmbot.registry import Registry

    config = make_project(root)
    if extra_toml:
        config.write_text(config.read_text(encoding="utf-8") + extra_toml, encoding="utf-8")
    model, _ = load_base("builtin:tiny", device="cpu")
    with Registry(f"sqlite:///{root / 'adapters' / 'registry.db'}", root / "adapters") as reg:
        for i, domain in enumerate(("support", "ads")):
            torch.manual_seed(i)
            enc = PrefixEncoder(model.config, 8)
            with torch.no_grad():
                enc.embedding.weight.normal_(0, 0.5)
            info = reg.register_adapter(domain, encoder_state(enc), base_model="builtin:tiny",
                                        base_fingerprint=base_fingerprint(model),
                                        architecture=architecture(model.config), create_domain=True,
                                        routing_prompts=["退货多久到账？"] if i == 0 else ["类型#裙"])
            reg.promote(info.ref)
    return config
