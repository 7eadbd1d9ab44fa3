"""A Rich progress bar for training: step, loss, learning rate, tokens/s and ETA."""

from __future__ import annotations

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from glmbot.cli import common
from glmbot.training.trainer import StepInfo


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
