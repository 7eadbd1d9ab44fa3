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


def cli_process(config: Path, *args: str, timeout: float = 300, env_extra: dict | None = None,
                **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "GLMBOT_CONFIG": str(config), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "glmbot", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=config.parent, **kwargs)
