"""Where a domain's data is (`DataSpec`) and a run's whole plan (`RunPlan`), kept in its run folder.

A run folder's `plan.json` is written before the first step: the data file with its sha256, the
format and columns it was read with, the dev file, every training setting (steps, recipe, seed)
and the base. `--resume` takes all of it from there instead of glmbot.toml and the command line,
so an interrupted run finishes the run it started; a flag that differs from the plan, or a data
file that changed since, is refused with every difference named.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from glmbot.config import DomainSettings, TrainSettings
from glmbot.errors import DataError, GlmbotError
from glmbot.fileio import atomic_write_text
from glmbot.training.data import AUTO, Columns, Example, file_sha256, load_data, resolve_data_path

PLAN_FILE = "plan.json"
PLAN_VERSION = 1
# `glmbot train`'s flag for each setting, so that a refused resume names what the user typed.
TRAIN_FLAGS = {"max_steps": "--steps", "epochs": "--epochs", "learning_rate": "--lr", "pre_seq_len": "--pre-seq-len",
               "prefix_projection": "--projection", "batch_size": "--batch-size", "grad_accum": "--grad-accum",
               "gradient_checkpointing": "--gradient-checkpointing", "seed": "--seed",
               "checkpoint_every": "--checkpoint-every"}
DATA_FLAGS = {"train": "--data", "dev": "--dev-data", "fmt": "--format", "prompt_column": "--prompt-column",
              "response_column": "--response-column", "history_column": "--history-column"}


class ResumeError(GlmbotError):
    """A run cannot be resumed as asked (no plan, or the plan changed)."""


@dataclass
class DataSpec:
    """Where a domain's data is and how its columns are named (empty column = the format's default)."""

    train: str
    dev: str = ""
    fmt: str = AUTO
    prompt_column: str = ""
    response_column: str = ""
    history_column: str | None = None

    @classmethod
    def for_domain(cls, domain: DomainSettings | None, root: Path | None = None, **overrides) -> DataSpec:
        """The domain's table of glmbot.toml (its paths relative to `root`), then non-None `overrides`."""
        base = {} if domain is None else {
            "train": config_data_path(domain.data, root), "dev": config_data_path(domain.dev_data, root),
            "fmt": domain.format, "prompt_column": domain.prompt_column, "response_column": domain.response_column,
            "history_column": domain.history_column or None}
        base.update({k: v for k, v in overrides.items() if v is not None})
        if not base.get("train"):
            store = "domains set NAME" if domain is not None else "domains add NAME"
            raise DataError(f"no training data: pass --data FILE.jsonl or store it with the domain: glmbot {store} "
                            "--data FILE.jsonl")
        return cls(**base)

    def load(self, which: Literal["train", "dev"]) -> list[Example]:
        return self.load_data(which).examples

    def load_data(self, which: Literal["train", "dev"]):  # -> glmbot.training.data.LoadedData
        return load_data(getattr(self, which), self.fmt, self.prompt_column, self.response_column,
                         self.history_column)


def config_data_path(value: str, root: Path | None) -> str:
    """A data path of glmbot.toml, resolved against the file's folder (builtin: and plugin names stay)."""
    if not value or value.startswith("builtin:") or root is None or Path(value).expanduser().is_absolute():
        return value
    candidate = root / value
    return str(candidate) if candidate.exists() else value


def data_source(value: str) -> str:
    """How a plan names a data file: builtin:NAME as is, anything else as its absolute path."""
    return value if value.startswith("builtin:") else str(resolve_data_path(value).resolve())


# What a run planned before a setting existed did: its plan lacks the key, and resuming it must
# not switch the setting's later default on.
BEFORE_SETTING = {"question_rewrites": 0, "history_share": 0.0}


@dataclass(frozen=True)
class RunPlan:
    """What a training run computes; everything `--resume` needs and checks."""

    domain: str
    data: str                 # training file: builtin:NAME or an absolute path
    data_sha256: str
    columns: Columns          # the format and columns the data was read with (after detection)
    train: TrainSettings      # every setting, seed and steps included
    dev_data: str = ""
    dev_sha256: str = ""
    base_model: str = ""

    def data_spec(self) -> DataSpec:
        c = self.columns
        return DataSpec(self.data, self.dev_data, c.fmt, c.prompt, c.response, c.history)

    # -- the file ------------------------------------------------------------------------------
    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / PLAN_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"version": PLAN_VERSION, **dataclasses.asdict(self)}
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def read(cls, run_dir: Path) -> RunPlan:
        path = Path(run_dir) / PLAN_FILE
        if not path.is_file():
            raise ResumeError(f"{run_dir} has no {PLAN_FILE} (an older glmbot made it, or it is no run folder): "
                              "it cannot be resumed safely; start a new run without --resume")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(TrainSettings)}
            raw["train"] = {**BEFORE_SETTING, **raw["train"]}
            return cls(domain=raw["domain"], data=raw["data"], data_sha256=raw["data_sha256"],
                       columns=Columns(**raw["columns"]),
                       train=TrainSettings(**{k: v for k, v in raw["train"].items() if k in known}),
                       dev_data=raw.get("dev_data", ""), dev_sha256=raw.get("dev_sha256", ""),
                       base_model=raw.get("base_model", ""))
        except (ValueError, KeyError, TypeError) as exc:
            raise ResumeError(f"{path} is damaged ({type(exc).__name__}: {exc}); start a new run without "
                              "--resume") from None

    # -- resume checks -------------------------------------------------------------------------
    def differences(self, data: dict[str, Any], train: dict[str, Any], base_model: str | None = None) -> list[str]:
        """What differs between the plan and the flags given (None = not given), the base or the data files now."""
        found = []
        if base_model is not None and self.base_model and base_model != self.base_model:
            found.append(f"[model] base_model is {base_model}, the run trained on {self.base_model}")
        c = self.columns
        planned_data = {"fmt": c.fmt, "prompt_column": c.prompt, "response_column": c.response,
                        "history_column": c.history}
        for key, value in data.items():
            if value is None:
                continue
            if key in ("train", "dev"):
                planned = self.data if key == "train" else self.dev_data
                if not planned or data_source(value) != planned:
                    found.append(f"{DATA_FLAGS[key]} {value} is not the run's {key} data ({planned or 'none'})")
            elif value != planned_data[key]:
                found.append(f"{DATA_FLAGS[key]} {value} differs from the run's plan ({planned_data[key] or 'none'})")
        for key, value in train.items():
            planned = getattr(self.train, key)
            if value is not None and value != planned:
                found.append(f"{_flag(key, value)} differs from the run's plan ({_flag(key, planned)})")
        for label, source, sha in (("data", self.data, self.data_sha256), ("dev data", self.dev_data, self.dev_sha256)):
            if source and sha:
                found += _changed_file(label, source, sha)
        return found

    def check_resume(self, run_dir: Path, data: dict[str, Any], train: dict[str, Any],
                     base_model: str | None = None) -> None:
        """Raise ResumeError naming every difference when the run cannot continue as planned."""
        found = self.differences(data, train, base_model)
        if found:
            raise ResumeError(f"cannot resume {run_dir}: {'; '.join(found)}. Resume with the run's own plan "
                              f"(drop those flags, restore the data), or start a new run without --resume")


def _flag(key: str, value: Any) -> str:
    flag = TRAIN_FLAGS.get(key, f"[train] {key}")
    if isinstance(value, bool) and flag.startswith("--"):
        return flag if value else f"--no-{flag[2:]}"
    return f"{flag} {value:g}" if isinstance(value, float) else f"{flag} {value}"


def _changed_file(label: str, source: str, sha256: str) -> list[str]:
    try:
        now = file_sha256(resolve_data_path(source))
    except DataError:
        return [f"the {label} file {source} no longer exists"]
    if now != sha256:
        return [f"the {label} file {source} changed since the run started (sha256 {sha256[:12]}, now {now[:12]})"]
    return []
