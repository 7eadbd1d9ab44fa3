"""`glmbot train` as a library call: check everything, train, evaluate, probe, register, promote.

All checks that can fail on user input (domain, data files, columns, settings) run before the
first training step, so a bad input never costs a training run nor leaves anything registered.
The run's plan (plan.py) is written before the first step; after the last one the prefix is
compared with the plain base on its own training questions, and a prefix that learned nothing
is never promoted. Under torch.distributed only rank 0 evaluates, writes and registers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch.distributed as dist

from glmbot.config import Settings, TrainSettings
from glmbot.errors import UnknownDomainError, unknown_domain
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.model.prefix_io import encoder_state
from glmbot.training.coverage import CoverageReport, tokenizer_coverage
from glmbot.training.data import DataSummary, Example, encode_all, file_sha256
from glmbot.training.evaluate import Evaluation, LearningCheck, check_learning, evaluate_prefix, forgetting_probe
from glmbot.training.metrics import ProbeResult
from glmbot.training.plan import PLAN_FILE, DataSpec, ResumeError, RunPlan, data_source
from glmbot.training.rewrites import augmented_rows, history_rounds
from glmbot.training.trainer import PrefixTrainer, StepInfo, TrainResult, save_run_info

__all__ = ["DataSpec", "PreparedJob", "TrainOutcome", "ensure_registered_domain", "interrupted_run_dir", "prepare",
           "run_job"]
RUN_INFO_FILE = "run.json"  # written once a run has registered its adapter: the run is finished
NOT_LEARNED = "it learned nothing"  # the promote reason of a prefix that failed the learning check

log = logging.getLogger(__name__)
Promote = Literal["no", "better", "force"]


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
    plan: RunPlan
    coverage: CoverageReport
    reworded_rows: int = 0  # of `encoded`, after the data's own rows: rewordings of its questions
    history_rows: int = 0  # then rows behind an earlier round
    history_rounds: int = 0  # most earlier rounds any training row has (served so: [serving] prefix_history)
    data_history_rounds: int = 0  # most earlier rounds a row of the data itself has (its own follow-ups)


@dataclass
class TrainOutcome:
    result: TrainResult
    evaluation: Evaluation | None
    probe: ProbeResult | None
    adapter: object | None = None  # glmbot.registry.AdapterInfo (rank 0)
    promoted: bool = False
    promote_reason: str = ""
    learning: LearningCheck | None = None


def ensure_registered_domain(registry, settings: Settings, domain: str) -> None:
    """Domains declared in glmbot.toml are registered on first use; others must be added first."""
    try:
        registry.get_domain(domain)
    except UnknownDomainError:
        if domain not in settings.domains:
            known = sorted({d.name for d in registry.list_domains()} | set(settings.domains))
            raise unknown_domain(domain, known, listed=f"registered or in {settings.source}") from None
        cfg = settings.domains[domain]
        registry.ensure_domain(domain, cfg.description)


def prepare(tok, settings: Settings, domain: str, data: DataSpec, train: TrainSettings,
            run_dir: Path | None = None) -> PreparedJob:
    """Load and encode the data, measure its tokenizer coverage and fix the run folder and plan;
    raises before any training on bad input."""
    loaded = data.load_data("train")
    dev = data.load_data("dev") if data.dev else None
    encoded, summary = encode_all(tok, loaded.examples, train.max_source_length, train.max_target_length)
    coverage = tokenizer_coverage(tok, loaded.examples, encoded)
    reworded, behind = augmented_rows(tok, loaded.examples, train)
    encoded = encoded + reworded + behind
    summary.sha256 = file_sha256(loaded.path)
    summary.source = str(data.train)
    if run_dir is None:
        run_dir = settings.path(settings.train.runs_dir) / domain / time.strftime("%Y%m%d-%H%M%S")
    plan = RunPlan(domain, data_source(data.train), summary.sha256, loaded.columns, train,
                   dev_data=data_source(data.dev) if data.dev else "",
                   dev_sha256=file_sha256(dev.path) if dev else "", base_model=settings.model.base_model)
    return PreparedJob(domain, train, data, loaded.examples, dev.examples if dev else [], encoded, summary,
                       Path(run_dir), plan, coverage, len(reworded), len(behind),
                       history_rounds(loaded.examples, behind), history_rounds(loaded.examples, []))


def interrupted_run_dir(settings: Settings, domain: str) -> Path:
    """The newest run of `domain` that has a plan and has not finished; ResumeError saying why when none."""
    root = settings.path(settings.train.runs_dir) / domain
    runs = sorted((p.parent for p in root.glob(f"*/{PLAN_FILE}")), key=lambda p: (p / PLAN_FILE).stat().st_mtime)
    unfinished = [p for p in runs if not (p / RUN_INFO_FILE).exists()]
    if unfinished:
        return unfinished[-1]
    if runs:
        raise ResumeError(f"the latest run of {domain!r} ({runs[-1]}) finished and registered its adapter: nothing "
                          f"to resume; train a new one without --resume")
    older = [p for p in root.glob("*") if any(p.glob("checkpoint-*"))] if root.is_dir() else []
    if older:
        raise ResumeError(f"{max(older)} has checkpoints but no {PLAN_FILE} (an older glmbot made it): it cannot "
                          "be resumed safely; train a new run without --resume")
    raise ResumeError(f"no interrupted run of {domain!r} under {root}; train without --resume")


def run_job(model, tok, registry, job: PreparedJob, *, resume: bool = False, promote: Promote = "no",
            metric: str = "rouge-l", evaluate: bool = True, on_step: Callable[[StepInfo], None] | None = None,
            eval_limit: int = 200) -> TrainOutcome:
    """Train the prefix of `job`, then (rank 0) check it learned, evaluate, probe, register and maybe promote."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    run_id = None
    if rank == 0:
        if not resume:
            job.plan.write(job.run_dir)
        run_id = registry.start_run(job.domain, hyperparams=_hyperparams(job.settings), log_path=str(job.run_dir)).id
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
    outcome.learning = check_learning(model, tok, kv, job.train_examples, job.run_dir,
                                      max_new_tokens=job.settings.max_target_length)
    if evaluate and job.dev_examples:
        outcome.evaluation = evaluate_prefix(model, tok, kv, job.dev_examples[:eval_limit], job.run_dir,
                                             max_new_tokens=job.settings.max_target_length)
    outcome.probe = forgetting_probe(model, tok, kv)
    outcome.adapter = _register(model, registry, job, result, outcome)
    registry.finish_run(run_id, adapter=outcome.adapter.id, last_checkpoint=_last_checkpoint(job.run_dir))
    outcome.promoted, outcome.promote_reason = _maybe_promote(registry, outcome.adapter, promote, metric,
                                                              outcome.learning, job.settings)
    save_run_info(job.run_dir, {"domain": job.domain, "adapter": outcome.adapter.ref, "steps": result.steps,
                                "seconds": round(result.seconds, 2), "tokens_per_s": round(result.tokens_per_s, 1),
                                "metrics": outcome.adapter.metrics, "learned": outcome.learning.learned,
                                "promoted": outcome.promoted, "promote_reason": outcome.promote_reason,
                                # the adapter itself fits the same base at any quantization (same fingerprint)
                                "base_quantization": getattr(model.config, "glmbot_quantization", "none")})
    return outcome


def not_learned_hint(settings: TrainSettings) -> str:
    """What to try when a prefix learned nothing, with values to type."""
    steps = f"--steps {settings.max_steps * 2}" if settings.max_steps else f"--epochs {settings.epochs * 2:g}"
    return f"try more steps ({steps}) or a higher learning rate (--lr {min(settings.learning_rate * 2, 0.5):g})"


def _hyperparams(s: TrainSettings) -> dict:
    from dataclasses import asdict

    return {k: v for k, v in asdict(s).items() if k != "runs_dir"}


def _last_checkpoint(run_dir: Path) -> str | None:
    ckpts = sorted(run_dir.glob("checkpoint-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    return str(ckpts[-1]) if ckpts else None


def _register(model, registry, job: PreparedJob, result: TrainResult, outcome: TrainOutcome):
    metrics = dict(outcome.evaluation.metrics) if outcome.evaluation else {}
    if outcome.learning is not None:
        metrics["train_rouge-l"] = outcome.learning.prefix_rouge_l
        metrics["train_rouge-l_base"] = outcome.learning.base_rouge_l
        metrics["learned"] = float(outcome.learning.learned)
    if outcome.probe is not None:
        metrics["probe_kept"] = round(outcome.probe.kept, 4)
        metrics["probe_forgot"] = float(outcome.probe.forgot)
    metrics["train_loss"] = round(sum(result.losses[-10:]) / max(1, len(result.losses[-10:])), 4)
    adapter = registry.register_adapter(
        job.domain, encoder_state(result.encoder), base_model=str(model.config.name_or_path),
        base_fingerprint=base_fingerprint(model), architecture=architecture(model.config), source="trained",
        hyperparams={**_hyperparams(job.settings), "steps_run": result.steps, "history_rounds": job.history_rounds,
                     "data_history_rounds": job.data_history_rounds, "data_format": job.plan.columns.fmt},
        dataset_sha256=job.summary.sha256,
        sample_count=job.summary.samples, metrics=metrics,
        provenance={"run_dir": str(job.run_dir), "data": job.summary.source},
        routing_prompts=sorted({e.prompt for e in job.train_examples}))
    from glmbot.plugins import get_manager

    get_manager().call("on_adapter_registered", adapter=adapter)
    return adapter


def _maybe_promote(registry, adapter, promote: Promote, metric: str, learning: LearningCheck | None,
                   settings: TrainSettings) -> tuple[bool, str]:
    if promote == "no":
        return False, "not asked (--promote)"
    nothing = learning is not None and not learning.learned
    if nothing and promote != "force":
        return False, f"{NOT_LEARNED}; {not_learned_hint(settings)}"
    current = next(iter(registry.list_adapters(adapter.domain, "active")), None)
    why = "first adapter of the domain" if current is None else f"beats {current.ref} on {metric}"
    if promote == "better" and current is not None:
        new, old = adapter.metrics.get(metric), current.metrics.get(metric)
        if new is None and old is None:  # neither was scored on dev data: judge by the training questions
            judged = _judged_without_dev_data(adapter, current, learning)
            if judged is None:
                return False, f"{adapter.ref} has no {metric} (no dev data?); use --promote force"
            promoted, why = judged
            if not promoted:
                return False, why
        elif new is None:
            return False, (f"{adapter.ref} has no {metric} (no dev data?) and the active {current.ref} has; add the "
                           f"dev data again, or use --promote force")
        elif old is not None and new <= old:
            return False, f"{metric} {new:.2f} does not beat the active {current.ref} ({old:.2f})"
    registry.promote(adapter.ref)
    if promote == "force":
        return True, f"forced, although {NOT_LEARNED}" if nothing else "forced"
    return True, why


def _judged_without_dev_data(adapter, current, learning: LearningCheck | None) -> tuple[bool, str] | None:
    """--promote where neither adapter has a dev score: a retrain on other data (the user's fixed file)
    is promoted once it learned it; one on the same data must beat the active adapter's ROUGE-L on
    the training questions, where it has one. None when there is no learning check to judge by (--no-eval)."""
    if learning is None:
        return None
    if adapter.dataset_sha256 != current.dataset_sha256:
        return True, (f"no dev data: trained on other data than the active {current.ref} and learned it "
                      f"(ROUGE-L {learning.prefix_rouge_l:.1f} on its training questions)")
    old = current.metrics.get("train_rouge-l")
    if old is None:
        return True, (f"no dev data, and the active {current.ref} has no score on its training questions to compare "
                      f"with (imported, or trained with --no-eval); this one learned them")
    if learning.prefix_rouge_l <= old:
        return False, (f"no dev data, and on the same data as the active {current.ref} its ROUGE-L on the training "
                       f"questions ({learning.prefix_rouge_l:.1f}) does not beat {current.ref}'s ({old:.1f}); "
                       f"use --promote force")
    return True, f"no dev data: beats the active {current.ref} on the same training questions"
