"""`glmbot train` as a library call: check everything, train, evaluate, probe, register, promote.

All checks that can fail on user input (domain, data files, columns, settings) run before the
first training step, so a bad input never costs a training run nor leaves anything registered.
Under torch.distributed only rank 0 evaluates, writes and registers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch.distributed as dist

from glmbot.config import DomainSettings, Settings, TrainSettings
from glmbot.errors import DataError, UnknownDomainError
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.model.prefix_io import encoder_state
from glmbot.training.data import DataSummary, Example, encode_all, file_sha256, load_examples, resolve_data_path
from glmbot.training.evaluate import Evaluation, evaluate_prefix, forgetting_probe
from glmbot.training.metrics import ProbeResult
from glmbot.training.trainer import PrefixTrainer, StepInfo, TrainResult, save_run_info

log = logging.getLogger(__name__)
Promote = Literal["no", "better", "force"]


@dataclass
class DataSpec:
    """Where a domain's data is and how its columns are named."""

    train: str
    dev: str = ""
    fmt: str = "chat"
    prompt_column: str = ""
    response_column: str = ""
    history_column: str | None = None

    @classmethod
    def for_domain(cls, domain: DomainSettings | None, **overrides) -> DataSpec:
        base = {} if domain is None else {
            "train": domain.data, "dev": domain.dev_data, "fmt": domain.format, "prompt_column": domain.prompt_column,
            "response_column": domain.response_column, "history_column": domain.history_column or None}
        base.update({k: v for k, v in overrides.items() if v is not None})
        if not base.get("train"):
            raise DataError("no training data: pass --data FILE.jsonl or set data in the domain's [domains.NAME] table")
        return cls(**base)

    def load(self, which: Literal["train", "dev"]) -> list[Example]:
        return load_examples(getattr(self, which), self.fmt, self.prompt_column, self.response_column,
                             self.history_column)


@dataclass
class PreparedJob:
    domain: str
    settings: TrainSettings
    data: DataSpec
    train_examples: list[Example]
    dev_examples: list[Example]
    encoded: list
    summary: DataSummary
    run_dir: Path


@dataclass
class TrainOutcome:
    result: TrainResult
    evaluation: Evaluation | None
    probe: ProbeResult | None
    adapter: object | None = None  # glmbot.registry.AdapterInfo (rank 0)
    promoted: bool = False
    promote_reason: str = ""


def ensure_registered_domain(registry, settings: Settings, domain: str) -> None:
    """Domains declared in glmbot.toml are registered on first use; others must be added first."""
    try:
        registry.get_domain(domain)
    except UnknownDomainError:
        if domain not in settings.domains:
            raise UnknownDomainError(
                f"domain {domain!r} is neither registered nor in {settings.source}; add it with "
                f"`glmbot domains add {domain}` (and a [domains.{domain}] table naming its data)") from None
        cfg = settings.domains[domain]
        registry.ensure_domain(domain, cfg.description)


def prepare(tok, settings: Settings, domain: str, data: DataSpec, train: TrainSettings,
            run_dir: Path | None = None) -> PreparedJob:
    """Load and encode the data and fix the run folder; raises before any training on bad input."""
    train_examples = data.load("train")
    dev_examples = data.load("dev") if data.dev else []
    encoded, summary = encode_all(tok, train_examples, train.max_source_length, train.max_target_length)
    summary.sha256 = file_sha256(resolve_data_path(data.train))
    summary.source = str(data.train)
    if run_dir is None:
        run_dir = settings.path(settings.train.runs_dir) / domain / time.strftime("%Y%m%d-%H%M%S")
    return PreparedJob(domain, train, data, train_examples, dev_examples, encoded, summary, Path(run_dir))


def latest_run_dir(settings: Settings, domain: str) -> Path | None:
    """The newest run of `domain` that has a checkpoint to resume from."""
    root = settings.path(settings.train.runs_dir) / domain
    runs = sorted((p for p in root.glob("*") if any(p.glob("checkpoint-*"))), key=lambda p: p.name) if root.is_dir() else []
    return runs[-1] if runs else None


def run_job(model, tok, registry, job: PreparedJob, *, resume: bool = False, promote: Promote = "no",
            metric: str = "rouge-l", evaluate: bool = True, on_step: Callable[[StepInfo], None] | None = None,
            eval_limit: int = 200) -> TrainOutcome:
    """Train the prefix of `job`, then (rank 0) evaluate, probe, register and maybe promote."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    run_id = registry.start_run(job.domain, hyperparams=_hyperparams(job.settings),
                                log_path=str(job.run_dir)).id if rank == 0 else None
    try:
        trainer = PrefixTrainer(model, job.settings, job.run_dir, tok.pad_token_id, on_step=on_step)
        result = trainer.fit(job.encoded, resume=resume)
    except BaseException as exc:
        if run_id is not None:
            status = "cancelled" if isinstance(exc, KeyboardInterrupt) else "failed"
            registry.finish_run(run_id, status=status, error=str(exc) or type(exc).__name__,
                                last_checkpoint=_last_checkpoint(job.run_dir))
        raise
    outcome = TrainOutcome(result, None, None)
    if rank != 0:
        return outcome
    kv = result.encoder.kv().detach()
    if evaluate and job.dev_examples:
        outcome.evaluation = evaluate_prefix(model, tok, kv, job.dev_examples[:eval_limit], job.run_dir,
                                             max_new_tokens=job.settings.max_target_length)
    outcome.probe = forgetting_probe(model, tok, kv)
    outcome.adapter = _register(model, registry, job, result, outcome)
    registry.finish_run(run_id, adapter=outcome.adapter.id, last_checkpoint=_last_checkpoint(job.run_dir))
    outcome.promoted, outcome.promote_reason = _maybe_promote(registry, outcome.adapter, promote, metric)
    save_run_info(job.run_dir, {"domain": job.domain, "adapter": outcome.adapter.ref, "steps": result.steps,
                                "seconds": round(result.seconds, 2), "tokens_per_s": round(result.tokens_per_s, 1),
                                "metrics": outcome.adapter.metrics, "promoted": outcome.promoted})
    return outcome


def _hyperparams(s: TrainSettings) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(s).items() if k != "runs_dir"}


def _last_checkpoint(run_dir: Path) -> str | None:
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return str(ckpts[-1]) if ckpts else None


def _register(model, registry, job: PreparedJob, result: TrainResult, outcome: TrainOutcome):
    metrics = dict(outcome.evaluation.metrics) if outcome.evaluation else {}
    if outcome.probe is not None:
        metrics["probe_kept"] = round(outcome.probe.kept, 4)
        metrics["probe_forgot"] = float(outcome.probe.forgot)
    metrics["train_loss"] = round(sum(result.losses[-10:]) / max(1, len(result.losses[-10:])), 4)
    adapter = registry.register_adapter(
        job.domain, encoder_state(result.encoder), base_model=str(model.config.name_or_path),
        base_fingerprint=base_fingerprint(model), architecture=architecture(model.config), source="trained",
        hyperparams={**_hyperparams(job.settings), "steps_run": result.steps}, dataset_sha256=job.summary.sha256,
        sample_count=job.summary.samples, metrics=metrics,
        provenance={"run_dir": str(job.run_dir), "data": job.summary.source},
        routing_prompts=sorted({e.prompt for e in job.train_examples}))
    from glmbot.plugins import get_manager

    get_manager().call("on_adapter_registered", adapter=adapter)
    return adapter


def _maybe_promote(registry, adapter, promote: Promote, metric: str) -> tuple[bool, str]:
    if promote == "no":
        return False, "not asked (--promote)"
    current = next(iter(registry.list_adapters(adapter.domain, "active")), None)
    if promote == "better" and current is not None:
        new, old = adapter.metrics.get(metric), current.metrics.get(metric)
        if new is None:
            return False, f"{adapter.ref} has no {metric} (no dev data?); use --promote force"
        if old is not None and new <= old:
            return False, f"{metric} {new:.2f} does not beat the active {current.ref} ({old:.2f})"
    registry.promote(adapter.ref)
    return True, "forced" if promote == "force" else (
        "first adapter of the domain" if current is None else f"beats {current.ref} on {metric}")
