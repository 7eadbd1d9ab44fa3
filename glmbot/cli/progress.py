"""Training progress: a Rich bar on a terminal, plain lines when the output goes to a pipe or file.

Both show step, loss, learning rate, tokens/s and ETA. A bar redrawn into a log file is unreadable
(and Rich draws nothing until the end there), so a non-terminal gets one line every few seconds.
"""

from __future__ import annotations

import time

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glmbot.cli import common
from glmbot.training.trainer import StepInfo

PLAIN_EVERY_S = 5.0  # seconds between plain progress lines (the first and last step are always printed)


def training_progress(description: str, total: int) -> TrainingProgress | PlainProgress:
    """The progress display that suits where stdout goes."""
    cls = TrainingProgress if common.console.is_terminal else PlainProgress
    return cls(description, total)


class TrainingProgress:
    """Context manager whose `update` is the trainer's on_step callback."""

    def __init__(self, description: str, total: int):
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss [cyan]{task.fields[loss]}"), TextColumn("lr {task.fields[lr]}"),
            TextColumn("{task.fields[tps]} tok/s"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
            console=common.console, transient=False)
        self.task = self.progress.add_task(description, total=total, loss="-", lr="-", tps="-")

    def __enter__(self) -> TrainingProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, info: StepInfo) -> None:
        self.progress.update(self.task, completed=info.step, total=info.total_steps, loss=f"{info.loss:.3f}",
                             lr=f"{info.lr:.1e}", tps=f"{info.tokens_per_s:,.0f}")


class PlainProgress:
    """One line per PLAIN_EVERY_S seconds: `support step 20/200 loss 3.412 lr 6.0e-03 1,234 tokens/s ETA 0:01:23`."""

    def __init__(self, description: str, total: int, every_s: float = PLAIN_EVERY_S):
        self.description, self.total, self.every_s = description, total, every_s
        self.last_print = float("-inf")

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def update(self, info: StepInfo) -> None:
        now = time.monotonic()
        if now - self.last_print < self.every_s and info.step not in (1, info.total_steps):
            return
        self.last_print = now
        eta = "-" if info.eta_s is None else clock(info.eta_s)
        common.console.print(f"{self.description} step {info.step}/{info.total_steps} loss {info.loss:.3f} "
                             f"lr {info.lr:.1e} {info.tokens_per_s:,.0f} tokens/s ETA {eta}",
                             markup=False, highlight=False, soft_wrap=True)


def clock(seconds: float) -> str:
    """H:MM:SS of a duration."""
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
