"""Wires the command groups into one `glmbot` app and turns library errors into one-line messages."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape

from glmbot.cli import adapters, chat, common, demo, domains, hub, info, logs, plugins, route, serve, train
from glmbot.errors import GlmbotError

app = typer.Typer(name="glmbot", help="Many P-Tuning v2 prefixes of ChatGLM2 on one shared base model.",
                  no_args_is_help=True, pretty_exceptions_enable=False)
app.command()(info.info)
app.command()(demo.demo)
app.command()(train.train)
app.command(name="eval")(train.evaluate)
app.command()(hub.push)
app.command()(hub.pull)
app.command()(route.route)
app.command()(chat.chat)
app.command()(serve.serve)
app.add_typer(adapters.app, name="adapters")
app.add_typer(domains.app, name="domains")
app.add_typer(plugins.app, name="plugins")
app.add_typer(logs.app, name="logs")


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


def load_plugin_commands(argv: list[str]) -> None:
    """Let plugins add commands (register_commands) before the command line is parsed."""
    from glmbot.config import load_settings
    from glmbot.plugins import get_manager

    config = None
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            config = argv[i + 1]
        elif arg.startswith("--config="):
            config = arg.split("=", 1)[1]
    try:
        settings = load_settings(config)
    except GlmbotError:
        return  # the command itself reports the bad config
    get_manager(settings).call("register_commands", cli=app)


def run() -> None:
    """Console-script entry point: expected errors become one line on stderr and exit code 1."""
    try:
        argv = complete_optional_values(sys.argv[1:])
        load_plugin_commands(argv)
        app(args=argv)
    except GlmbotError as exc:  # messages name config tables like [server]: print them verbatim
        common.err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        common.err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
