"""Cold start of glmbot's commands, beside a bare `python -c pass` measured in the same run.

Each command runs as a fresh process (the way a user starts it) against a throwaway project:
its own glmbot.toml, an empty SQLite registry, the repo's plugins. The table gives the median of
--runs starts, the same minus Python's own start, and the target of issue 18 where there is one.

    python bench/cli_startup.py [--runs 5] [--exe glmbot]

The machine's other work shows up in every figure: check `uptime` first and run it alone.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
# (arguments, target in seconds or None)
COMMANDS = [
    (["--help"], 0.5),
    (["adapters", "list"], 1.0),
    (["domains", "list"], 1.0),
    (["route", "--help"], 1.0),
    (["route", "退货多久到账？"], None),
    (["logs", "list"], None),
    (["plugins", "list"], None),
    (["train", "--help"], None),
    (["info"], None),
]
PROJECT_TOML = """
[registry]
adapters_dir = "adapters"
[plugins]
paths = ["{plugins}"]
[domains.support]
data = "builtin:support"
[domains.ads]
data = "builtin:ads"
format = "advertisegen"
"""


def cold_start(argv: list[str], env: dict[str, str], cwd: Path, runs: int) -> float:
    """Median wall time of `runs` fresh processes; the first (warming the file cache) is not counted."""
    times = []
    for i in range(runs + 1):
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            raise SystemExit(f"{shlex.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
        if i:
            times.append(elapsed)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="starts per command (median), after one warm-up")
    ap.add_argument("--exe", default=None, help="console script to time instead of `python -m glmbot`")
    args = ap.parse_args()
    glmbot = [args.exe] if args.exe else [sys.executable, "-m", "glmbot"]

    with tempfile.TemporaryDirectory() as tmp:
        project = Path(tmp)
        (project / "glmbot.toml").write_text(PROJECT_TOML.format(plugins=REPO / "plugins"), encoding="utf-8")
        env = {**os.environ, "GLMBOT_CONFIG": str(project / "glmbot.toml"), "COLUMNS": "120",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        env.pop("GLMBOT_DB_URL", None)
        baseline = cold_start([sys.executable, "-c", "pass"], env, project, args.runs)
        table = Table(title=f"Cold start, median of {args.runs} runs ({os.cpu_count()} CPUs, load "
                            f"{os.getloadavg()[0]:.2f})", header_style="bold")
        for column in ("command", "seconds", "minus python", "target", ""):
            table.add_column(column, justify="left" if column == "command" else "right")
        table.add_row("python -c pass", f"{baseline:.2f}", "0.00", "-", "baseline")
        for command, target in COMMANDS:
            seconds = cold_start([*glmbot, *command], env, project, args.runs)
            verdict = "" if target is None else ("ok" if seconds <= target else "[red]over[/]")
            table.add_row(shlex.join(["glmbot", *command]), f"{seconds:.2f}", f"{seconds - baseline:.2f}",
                          f"{target:.1f}" if target else "-", verdict)
    Console().print(table)


if __name__ == "__main__":
    main()
