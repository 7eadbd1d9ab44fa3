"""Wires the command groups into one `glmbot` app and turns library errors into one-line messages.

Help is plain text (Typer's `rich_markup_mode=None`): help strings name config tables such as
`[train]`, which Rich markup would swallow, and flags that take no value are shown without a type.
"""

from __future__ import annotations

import importlib
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
import typer.main
from rich.markup import escape
from typer.core import TyperCommand

from glmbot.cli import adapters, chat, common, demo, domains, evaluate, hub, info, logs, plugins, route, serve
from glmbot.errors import GlmbotError, UnknownAdapterError, UnknownDomainError

# Commands whose module imports torch when it is imported (seconds on a small machine): the help
# listing shows their summary from here, and the module is imported only when the command runs.
LAZY_COMMANDS = {
    "train": ("glmbot.cli.train:train",
              "Train a P-Tuning v2 prefix for DOMAIN, evaluate it, and register it as a candidate."),
}


class LazyCommand(TyperCommand):
    """Stands in for a command in the help listing; `load()` builds the real one."""

    def __init__(self, name: str, target: str, summary: str):
        super().__init__(name=name, help=summary)
        self.target = target

    def load(self) -> TyperCommand:
        module, function = self.target.split(":")
        single = typer.Typer(rich_markup_mode=None, add_completion=False)  # completion belongs to glmbot itself
        single.command(name=self.name)(getattr(importlib.import_module(module), function))
        return typer.main.get_command(single)


class CommandGroup(common.HelpGroup):
    """glmbot's top-level group: commands listed alphabetically, LAZY_COMMANDS loaded when they run."""

    def list_commands(self, ctx) -> list[str]:  # noqa: ANN001 - a click Context
        return sorted({*self.commands, *LAZY_COMMANDS})

    def get_command(self, ctx, name: str):  # noqa: ANN001
        if name not in self.commands and name in LAZY_COMMANDS:
            self.commands[name] = LazyCommand(name, *LAZY_COMMANDS[name])
        return super().get_command(ctx, name)

    def resolve_command(self, ctx, args: list[str]):  # noqa: ANN001
        name, command, rest = super().resolve_command(ctx, args)
        if isinstance(command, LazyCommand):
            command = self.commands[name] = common.examples_last(command.load())
        return name, command, rest

    def parse_args(self, ctx, args: list[str]) -> list[str]:  # noqa: ANN001
        ctx.meta["glmbot.args"] = list(args)
        return super().parse_args(ctx, args)

    def invoke(self, ctx):  # noqa: ANN001
        try:
            return super().invoke(ctx)
        except typer.BadParameter as exc:  # Typer names the flag and what it wants; add what it got
            value = given_value(ctx.meta.get("glmbot.args", []), exc.param.opts if exc.param else [])
            if value is not None and repr(value) not in exc.message:
                exc.message = f"got {value!r}: {exc.message}"
            raise


def given_value(args: list[str], opts: list[str]) -> str | None:
    """The value given to one of `opts` in `args` (`--n 3` or `--n=3`), the last one if repeated."""
    found = None
    for arg, following in zip(args, [*args[1:], None]):
        for opt in opts:
            if arg == opt:
                found = following
            elif opt.startswith("--") and arg.startswith(opt + "="):
                found = arg[len(opt) + 1:]
    return found


EXAMPLES = """Examples:

\b
  glmbot demo                           # train and serve a support prefix on the builtin base
  glmbot train --domain support --promote
  glmbot route "退货多久到账？"
  echo "退货多久到账？" | glmbot chat
  glmbot adapters list --json
  glmbot COMMAND --help                 # each command's options and examples
"""

app = typer.Typer(name="glmbot", help="Many P-Tuning v2 prefixes of ChatGLM2 on one shared base model.",
                  epilog=EXAMPLES, cls=CommandGroup, rich_markup_mode=None, no_args_is_help=True,
                  pretty_exceptions_enable=False)
app.command()(info.info)
app.command()(demo.demo)
app.command(name="eval")(evaluate.evaluate)
app.command()(hub.push)
app.command()(hub.pull)
app.command()(route.route)
app.command()(chat.chat)
app.command()(serve.serve)
app.add_typer(adapters.app, name="adapters")
app.add_typer(domains.app, name="domains")
app.add_typer(plugins.app, name="plugins")
app.add_typer(logs.app, name="logs")


def show_version(value: bool) -> None:
    if value:
        from glmbot import __version__

        common.console.print(f"glmbot {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def main(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="glmbot.toml to use (default: nearest)",
                                                   show_default=False)] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="log what happens")] = False,
    version: Annotated[bool, typer.Option("--version", is_eager=True, callback=show_version,
                                          help="print glmbot's version and exit")] = False,
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


def hoist_config(argv: list[str]) -> list[str]:
    """`--config PATH` (or -c, --config=PATH) given after the command, as the README's "elsewhere: --config"
    and the no-glmbot.toml hint read (`glmbot chat --config x.toml`), moved in front of it, where Typer
    takes it (a newcomer got "No such option: --config"). No command has an option of that name."""
    front, rest, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            rest += argv[i:]
            break
        if arg in ("--config", "-c") and i + 1 < len(argv):
            front += argv[i:i + 2]
            i += 2
            continue
        (front if arg.startswith("--config=") else rest).append(arg)
        i += 1
    return front + rest


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
        argv = complete_optional_values(hoist_config(sys.argv[1:]))
        load_plugin_commands(argv)
        app(args=argv)
    except GlmbotError as exc:  # messages name config tables like [server]: print them verbatim
        common.err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        hint = common.no_config_hint() if isinstance(exc, (UnknownDomainError, UnknownAdapterError)) else None
        if hint and hint not in str(exc):  # the engine's routing may have said it already
            common.err_console.print(f"[bold]hint:[/] {escape(hint)}", highlight=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        common.err_console.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    run()
