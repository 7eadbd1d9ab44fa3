"""`glmbot train --domain D` and `glmbot eval REF | --predictions FILE`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import torch
import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.errors import GlmbotError
from glmbot.training.metrics import METRIC_KEYS

Opt = typer.Option


def _launch_torchrun(nproc: int) -> None:
    """Re-run this command under torchrun (the standard launcher) with `nproc` processes."""
    args = sys.argv[1:]
    if "--nproc" in args:  # "--nproc N": drop the value too
        i = args.index("--nproc")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--nproc=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "glmbot",
           *args]
    common.console.print(f"launching: {' '.join(cmd[1:])}")
    os.execv(sys.executable, cmd)


def _init_distributed():
    """Join the process group torchrun set up; returns (rank, device)."""
    import torch.distributed as dist

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, local = dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, device


def train(
    domain: Annotated[str, Opt("--domain", "-d", help="business domain, e.g. support")],
    data: Annotated[Optional[str], Opt(help="training JSONL (default: the domain's data in glmbot.toml)")] = None,
    dev_data: Annotated[Optional[str], Opt(help="dev JSONL for ROUGE/BLEU")] = None,
    fmt: Annotated[Optional[str], Opt("--format", help="chat | advertisegen")] = None,
    prompt_column: Annotated[Optional[str], Opt(help="name of the prompt column")] = None,
    response_column: Annotated[Optional[str], Opt(help="name of the answer column")] = None,
    history_column: Annotated[Optional[str], Opt(help="name of the history column")] = None,
    steps: Annotated[Optional[int], Opt(help="optimizer steps ([train] max_steps)")] = None,
    epochs: Annotated[Optional[float], Opt(help="epochs, used when --steps 0")] = None,
    lr: Annotated[Optional[float], Opt("--lr", help="learning rate")] = None,
    pre_seq_len: Annotated[Optional[int], Opt(help="prefix length P")] = None,
    projection: Annotated[Optional[bool], Opt("--projection/--no-projection", help="prefix MLP")] = None,
    batch_size: Annotated[Optional[int], Opt(help="micro-batch size")] = None,
    grad_accum: Annotated[Optional[int], Opt(help="micro-batches per step")] = None,
    gradient_checkpointing: Annotated[Optional[bool], Opt("--gradient-checkpointing/--no-gradient-checkpointing")] = None,
    seed: Annotated[Optional[int], Opt(help="random seed")] = None,
    checkpoint_every: Annotated[Optional[int], Opt(help="steps between checkpoints")] = None,
    resume: Annotated[bool, Opt(help="continue the latest run of the domain from its last checkpoint")] = False,
    run_dir: Annotated[Optional[Path], Opt(help="run folder (default runs/DOMAIN/TIMESTAMP)")] = None,
    promote: Annotated[str, Opt(help="--promote: activate if it beats the active adapter on --metric; "
                                "--promote=force: always")] = "no",
    metric: Annotated[str, Opt(help=f"metric for --promote: {', '.join(METRIC_KEYS)}")] = "rouge-l",
    no_eval: Annotated[bool, Opt("--no-eval", help="skip the dev-set evaluation")] = False,
    nproc: Annotated[int, Opt(help="processes (GPUs) to train on, launched with torchrun")] = 1,
) -> None:
    """Train a P-Tuning v2 prefix for DOMAIN, evaluate it, and register it as a candidate."""
    from glmbot.training import pipeline

    if promote not in ("no", "better", "force"):
        raise GlmbotError(f"--promote={promote!r}: use --promote (if better) or --promote=force")
    if metric not in METRIC_KEYS:
        raise GlmbotError(f"--metric {metric!r} is not one of {', '.join(METRIC_KEYS)}")
    if nproc > 1 and "LOCAL_RANK" not in os.environ:
        _launch_torchrun(nproc)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank, device = _init_distributed() if distributed else (0, None)
    settings = common.get_settings()
    spec = pipeline.DataSpec.for_domain(settings.domains.get(domain), train=data, dev=dev_data, fmt=fmt,
                                        prompt_column=prompt_column, response_column=response_column,
                                        history_column=history_column)
    tsettings = settings.train_for(domain, max_steps=steps, epochs=epochs, learning_rate=lr, pre_seq_len=pre_seq_len,
                                   prefix_projection=projection, batch_size=batch_size, grad_accum=grad_accum,
                                   gradient_checkpointing=gradient_checkpointing, seed=seed,
                                   checkpoint_every=checkpoint_every)
    registry = common.get_registry()
    if rank == 0:
        pipeline.ensure_registered_domain(registry, settings, domain)
    if resume and run_dir is None:
        run_dir = pipeline.latest_run_dir(settings, domain)
        if run_dir is None:
            raise GlmbotError(f"no run of {domain!r} with a checkpoint to resume; start without --resume")
    model, tok = _model(device)
    job = pipeline.prepare(tok, settings, domain, spec, tsettings,
                           _shared_run_dir(settings, domain, run_dir, distributed))
    if rank == 0:
        _print_summary(job)
    outcome = _run(model, tok, registry, job, resume, promote, metric, not no_eval, quiet=rank != 0)
    if rank == 0:
        _print_outcome(outcome)


def _model(device):
    if device is None:
        return common.load_base_model()
    from glmbot.model import load_base

    m = common.get_settings().model
    return load_base(m.base_model, dtype=m.dtype, device=device)


def _shared_run_dir(settings, domain: str, run_dir: Path | None, distributed: bool) -> Path:
    """The run folder; under torchrun rank 0 picks it and every rank uses the same one."""
    import time

    if run_dir is None:
        run_dir = settings.path(settings.train.runs_dir) / domain / time.strftime("%Y%m%d-%H%M%S")
    if distributed:
        import torch.distributed as dist

        box = [str(run_dir)]
        dist.broadcast_object_list(box, src=0)
        run_dir = Path(box[0])
    return Path(run_dir)


def _run(model, tok, registry, job, resume, promote, metric, evaluate, quiet):
    from glmbot.cli.progress import TrainingProgress
    from glmbot.training import pipeline
    from glmbot.training.trainer import total_steps

    if quiet:
        return pipeline.run_job(model, tok, registry, job, resume=resume, promote=promote, metric=metric,
                                evaluate=evaluate)
    with TrainingProgress(job.domain, total_steps(job.settings, len(job.encoded))) as bar:
        return pipeline.run_job(model, tok, registry, job, resume=resume, promote=promote, metric=metric,
                                evaluate=evaluate, on_step=bar.update)


def _print_summary(job) -> None:
    s, t = job.summary, job.settings
    table = Table(title=f"Training data for '{job.domain}'", show_header=False, box=None)
    for key, value in [
        ("source", f"{s.source} (sha256 {s.sha256[:12]})"), ("samples", f"{s.samples:,}"),
        ("prompts truncated", f"{s.prompts_truncated} (max_source_length {t.max_source_length})"),
        ("answers truncated", f"{s.answers_truncated} (max_target_length {t.max_target_length})"),
        ("tokens", f"{s.prompt_tokens:,} prompt + {s.answer_tokens:,} answer; longest row {s.longest}"),
        ("dev samples", f"{len(job.dev_examples)}"),
        ("recipe", f"P={t.pre_seq_len}, projection={t.prefix_projection}, LR {t.learning_rate:g}, "
                   f"{t.max_steps or f'{t.epochs:g} epochs'} steps x batch {t.batch_size} x accum {t.grad_accum}"),
        ("run folder", str(job.run_dir)),
    ]:
        table.add_row(f"[bold]{key}[/]", value)
    common.console.print(table)


def _print_outcome(outcome) -> None:
    r, a = outcome.result, outcome.adapter
    common.console.print(f"trained {r.steps} steps in {r.seconds:.0f}s ({r.tokens_per_s:,.0f} tokens/s"
                         f"{f', resumed at step {r.resumed_from}' if r.resumed_from else ''}); "
                         f"loss curve: {r.run_dir / 'loss.png'}")
    if outcome.evaluation:
        e = outcome.evaluation
        common.console.print("dev: " + ", ".join(f"{k} {v:.2f}" for k, v in e.metrics.items())
                             + f" on {e.count} samples; predictions in {e.predictions_path}")
    p = outcome.probe
    if p is not None and p.forgot:
        common.err_console.print(f"[bold yellow]warning:[/] the prefix wrecks general chat (answers kept "
                                 f"{p.kept:.0%}, reference score {p.reference_score_base:.2f} -> "
                                 f"{p.reference_score_tuned:.2f}): {p.hint}")
    elif p is not None:
        common.console.print(f"forgetting probe: general answers kept {p.kept:.0%} (ok)")
    common.console.print(f"registered [bold]{a.ref}[/] (candidate, id {a.id})"
                         + (f"; promoted: {outcome.promote_reason}" if outcome.promoted
                            else f"; not promoted: {outcome.promote_reason}"))


def evaluate(
    ref: Annotated[Optional[str], typer.Argument(help="adapter (support, support@v3, id) or 'base' for no prefix")] = None,
    data: Annotated[Optional[str], Opt(help="JSONL to evaluate on (default: the domain's dev data)")] = None,
    fmt: Annotated[Optional[str], Opt("--format", help="chat | advertisegen")] = None,
    predictions: Annotated[Optional[Path], Opt(help="score an existing {labels, predict} JSONL instead")] = None,
    limit: Annotated[int, Opt(help="evaluate at most this many samples")] = 200,
    save: Annotated[bool, Opt("--save/--no-save", help="store the results in the registry")] = True,
) -> None:
    """Score an adapter (ROUGE-1/2/L, BLEU-4 + forgetting probe), or a predictions file."""
    from glmbot.training.metrics import score_predictions_file

    if predictions is not None:
        metrics, count = score_predictions_file(predictions)
        _print_metrics(f"{predictions} ({count} samples)", metrics)
        return
    if ref is None:
        raise GlmbotError("name an adapter to evaluate (glmbot eval support@v2) or pass --predictions FILE")
    _evaluate_ref(ref, data, fmt, limit, save)


def _evaluate_ref(ref: str, data: str | None, fmt: str | None, limit: int, save: bool) -> None:
    from glmbot.model.prefix_io import prefix_encoder_from_state
    from glmbot.training.data import file_sha256, resolve_data_path
    from glmbot.training.evaluate import evaluate_prefix, forgetting_probe
    from glmbot.training.pipeline import DataSpec

    settings, registry = common.get_settings(), common.get_registry()
    adapter = None if ref == "base" else registry.resolve(ref)
    domain = adapter.domain if adapter else None
    domain_cfg = settings.domains.get(domain) if domain else None
    spec = DataSpec.for_domain(domain_cfg, train=data or (domain_cfg.dev_data if domain_cfg else None), fmt=fmt)
    examples = spec.load("train")[:limit]
    model, tok = common.load_base_model()
    kv = None
    if adapter is not None:
        state, adapter = registry.load_prefix_state(adapter.id)
        kv = prefix_encoder_from_state(state, model.config, adapter.ref).to(model.device).kv(model.dtype).detach()
    result = evaluate_prefix(model, tok, kv, examples)
    _print_metrics(f"{ref} on {spec.train} ({result.count} samples)", result.metrics)
    if adapter is not None:
        probe = forgetting_probe(model, tok, kv)
        common.console.print(f"forgetting probe: general answers kept {probe.kept:.0%}"
                             + (f" [bold yellow]- forgot general chat: {probe.hint}[/]" if probe.forgot else ""))
        if save:
            registry.add_evaluation(adapter.id, {**result.metrics, "probe_kept": round(probe.kept, 4)},
                                    file_sha256(resolve_data_path(spec.train)), kind=str(spec.train))
            common.console.print(f"stored in the registry for {adapter.ref}")


def _print_metrics(title: str, metrics: dict[str, float]) -> None:
    table = Table(title=title)
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*(f"{v:.2f}" for v in metrics.values()))
    common.console.print(table)
