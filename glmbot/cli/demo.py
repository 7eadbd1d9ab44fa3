"""`glmbot demo`: the product in two minutes on the builtin base, offline, on a CPU.

Loads the base, lets it greet, trains a support prefix with the configured recipe, shows how
the trained prefix (and an untrained one) change the answers, and that greetings survive.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from glmbot.cli import common

GREETINGS = ["你好", "你是谁", "谢谢"]
SHOWN_QUESTIONS = 5


def demo(
    domain: Annotated[str, typer.Option(help="domain of glmbot.toml to train")] = "support",
    steps: Annotated[Optional[int], typer.Option(help="override [train] max_steps")] = None,
) -> None:
    """Load the base, train a prefix for DOMAIN, and compare answers before and after."""
    from glmbot.cli.progress import training_progress
    from glmbot.model import count_parameters
    from glmbot.model.generate import generate_answers
    from glmbot.training.data import encode_all, load_examples
    from glmbot.training.trainer import PrefixTrainer, total_steps

    console = common.console
    settings = common.get_settings()
    started = time.perf_counter()
    model, tok = common.load_base_model()
    console.print(f"[bold]Base[/] {settings.model.base_model}: {count_parameters(model):,} parameters on "
                  f"{model.device}, loaded in {time.perf_counter() - started:.1f}s")

    console.rule("The plain base model chats")
    for q, a in zip(GREETINGS, generate_answers(model, tok, GREETINGS)):
        console.print(f"[cyan]问[/] {q}  [green]答[/] {a}")

    domain_cfg = _domain(settings, domain)
    examples = load_examples(domain_cfg.data, domain_cfg.format, domain_cfg.prompt_column,
                             domain_cfg.response_column, domain_cfg.history_column or None)
    train = settings.train_for(domain, max_steps=steps)
    encoded, summary = encode_all(tok, examples, train.max_source_length, train.max_target_length)
    console.rule(f"Training a P-Tuning v2 prefix for '{domain}'")
    console.print(f"{summary.samples} examples, {summary.answer_tokens:,} answer tokens; P={train.pre_seq_len}, "
                  f"projection={train.prefix_projection}, LR {train.learning_rate:g}, {train.max_steps} steps")
    run_dir = settings.path(settings.train.runs_dir) / f"demo-{domain}-{time.strftime('%Y%m%d-%H%M%S')}"
    with training_progress(domain, total_steps(train, len(encoded))) as bar:
        result = PrefixTrainer(model, train, run_dir, tok.pad_token_id, on_step=bar.update).fit(encoded)
    console.print(f"trained in {result.seconds:.0f}s at {result.tokens_per_s:,.0f} tokens/s; loss "
                  f"{result.losses[0]:.2f} -> {sum(result.losses[-10:]) / len(result.losses[-10:]):.2f}; "
                  f"loss curve in {Path(run_dir) / 'loss.png'}")

    _compare(model, tok, examples, train, result.encoder)
    _register(model, domain, train, result, examples, summary)
    single = [e.prompt for e in examples if not e.history]
    _serve(settings, model, tok, ["你好", single[0], single[len(single) // 2], "订单 12345 到哪了？", "谢谢"])


def _register(model, domain: str, train, result, examples, summary):
    """Register the prefix and make it the domain's active adapter, as `glmbot train --promote` would."""
    from dataclasses import asdict

    from glmbot.model.fingerprint import architecture, base_fingerprint
    from glmbot.model.prefix_io import encoder_state

    registry = common.get_registry()
    registry.ensure_domain(domain, common.get_settings().domains[domain].description)
    adapter = registry.register_adapter(
        domain, encoder_state(result.encoder), base_model=str(model.config.name_or_path),
        base_fingerprint=base_fingerprint(model), architecture=architecture(model.config),
        hyperparams={k: v for k, v in asdict(train).items() if k != "runs_dir"}, sample_count=summary.samples,
        metrics={"train_loss": round(sum(result.losses[-10:]) / len(result.losses[-10:]), 4)},
        provenance={"run_dir": str(result.run_dir), "made_by": "glmbot demo"},
        routing_prompts=sorted({e.prompt for e in examples}))
    registry.promote(adapter.ref)
    common.console.rule(f"Registered {adapter.ref} (active); serving every domain from one base")
    return adapter


def _serve(settings, model, tok, messages: list[str]) -> None:
    """One engine, one batch: the router sends each message to its adapter, the plain base or a tool."""
    from glmbot.plugins import get_manager
    from glmbot.serving.factory import build_engine
    from glmbot.serving.requests import GenerationRequest

    with build_engine(settings, model, tok, common.get_registry(), get_manager(settings), max_len=512) as engine:
        results = engine.generate_many([GenerationRequest(query=m, do_sample=False) for m in messages])
    table = Table(title="Routed and answered in one batch", show_lines=True)
    for col in ("message", "route", "answered by", "answer"):
        table.add_column(col, overflow="fold")
    for m, r in zip(messages, results):
        route = r.route
        tool = r.usage.completion_tokens == 0
        table.add_row(m, f"{route.reason} {route.score:.2f}", "a plugin tool" if tool else (r.adapter or "plain base"),
                      r.text)
    common.console.print(table)
    common.console.print("Next: [bold]glmbot chat[/], [bold]glmbot adapters list[/], "
                         "[bold]glmbot train --domain ads[/], [bold]glmbot serve[/].")


def _domain(settings, name: str):
    from glmbot.errors import UnknownDomainError

    if name not in settings.domains:
        known = ", ".join(settings.domains) or "none"
        raise UnknownDomainError(f"domain {name!r} is not in {settings.source} (known: {known}); add a "
                                 f"[domains.{name}] table with its data file")
    return settings.domains[name]


def _compare(model, tok, examples, train, encoder) -> None:
    import torch

    from glmbot.model import PrefixEncoder
    from glmbot.model.generate import generate_answers

    console = common.console
    single = [e for e in examples if not e.history]
    questions = [e.prompt for e in single]
    trained_kv = encoder.kv().detach()
    torch.manual_seed(0)
    untrained_kv = PrefixEncoder(model.config, train.pre_seq_len, train.prefix_projection).kv().detach()
    trained = generate_answers(model, tok, questions, trained_kv)
    exact = sum(a == e.response.strip() for a, e in zip(trained, single))
    shown = questions[::max(1, len(questions) // SHOWN_QUESTIONS)][:SHOWN_QUESTIONS]
    plain = generate_answers(model, tok, shown)
    untrained = generate_answers(model, tok, shown, untrained_kv)
    table = Table(title="Training questions: answers before and after", show_lines=True)
    for col in ("question", "reference", "plain base", "untrained prefix", "trained prefix"):
        table.add_column(col, overflow="fold")
    for i, q in enumerate(shown):
        ref = single[questions.index(q)].response
        got = trained[questions.index(q)]
        table.add_row(q, ref, plain[i], untrained[i], f"[green]{got}[/]" if got == ref.strip() else got)
    console.print(table)
    console.print(f"[bold]{exact}/{len(single)}[/] single-turn training questions answered exactly as trained.")
    console.rule("General chat with and without the prefix")
    for q, base, tuned in zip(GREETINGS, generate_answers(model, tok, GREETINGS),
                              generate_answers(model, tok, GREETINGS, trained_kv)):
        console.print(f"[cyan]问[/] {q}  [green]base[/] {base}  [yellow]prefix[/] {tuned}")
    console.print("The router sends general chat like this to the plain base (`glmbot route`), so "
                  "a domain prefix never has to answer it.")
