"""Wires the command groups into one `glmbot` app and turns library errors into one-line messages."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from glmbot.cli import adapters, common, demo, domains, info, train
from glmbot.errors import GlmbotError

app = typer.Typer(name="glmbot", help="Many P-Tuning v2 prefixes of ChatGLM2 on one shared base model.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.command()(info.info)
app.command()(demo.demo)
app.command()(train.train)
app.command(name="eval")(train.evaluate)
app.add_typer(adapters.app, name="adapters")
app.add_typer(domains.app, name="domains")


@app.callback()
def main(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="glmbot.toml to use (default: nearest)",
                                                   show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log what happens")] = False,
) -> None:
    """glmbot: train, register, route and serve ChatGLM2 prefix adapters."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    common.set_config_path(config)


# Options whose value may be left out (`--promote` means `--promote=better`). Typer has no
# optional option values, so a bare flag is completed here, before parsing.
OPTIONAL_VALUES = {"--promote": "better"}


def complete_optional_values(argv: list[str]) -> list[str]:
    out = []
    for i, arg in enumerate(argv):
        following = argv[i + 1] if i + 1 < len(argv) else ""
        if arg in OPTIONAL_VALUES and (not following or following.startswith("-")):
            arg = f"{arg}={OPTIONAL_VALUES[arg]}"
        out.append(arg)
    return out


def run() -> None:
    """Console-script entry point: expected errors become one line on stderr and exit code 1."""
    try:
        app(args=complete_optional_values(sys.argv[1:]))
    except GlmbotError as exc:
        common.err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        common.err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
