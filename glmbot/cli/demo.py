"""`glmbot demo`: the product in two minutes on the builtin base, offline, on a CPU.

Loads the base, lets it greet, trains a support prefix with the configured recipe, shows how
the trained prefix (and an untrained one) change the answers, and that greetings survive.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from glmbot.cli import common
from glmbot.errors import UnknownAdapterError, UnknownDomainError

GREETINGS = ["你好", "你是谁", "谢谢"]
SHOWN_QUESTIONS = 5


def demo(
    domain: Annotated[str, typer.Option(metavar="DOMAIN", help="domain of glmbot.toml to train")] = "support",
    steps: Annotated[Optional[int], typer.Option(min=1, help="override [train] max_steps")] = None,
    retrain: Annotated[bool, typer.Option("--retrain", help="train a new version even if an adapter trained "
                                                            "from the same data, recipe and base exists")] = False,
) -> None:
    """Train a prefix for DOMAIN on the base and compare answers before and after.

    The adapter is registered and made DOMAIN's active one. Run again with the
    same data, [train] recipe and base, the demo reuses that adapter instead of
    training another version (--retrain trains one anyway). In a folder without
    a glmbot.toml it trains the shipped sample (support or ads) into ./adapters,
    where glmbot chat then finds it.

    Examples:

    \b
      glmbot demo
      glmbot demo --steps 50              # a quick look (answers stay rough)
      glmbot demo --domain ads --retrain
    """
    from glmbot.model import count_parameters
    from glmbot.model.generate import generate_answers
    from glmbot.training.data import file_sha256, load_examples, resolve_data_path
    from glmbot.training.plan import config_data_path
    from glmbot.training.rewrites import history_rounds, with_history

    console = common.console
    settings = common.get_settings()
    domain_cfg = _domain(settings, domain)
    started = time.perf_counter()
    model, tok = common.load_base_model()
    console.print(f"[bold]Base[/] {settings.model.base_model}: {count_parameters(model):,} parameters on "
                  f"{model.device}, loaded in {time.perf_counter() - started:.1f}s")

    console.rule("The plain base model chats")
    for q, a in zip(GREETINGS, generate_answers(model, tok, GREETINGS)):
        console.print(f"[cyan]问[/] {q}  [green]答[/] {a}")

    data = config_data_path(domain_cfg.data, settings.root)  # relative to glmbot.toml, as train reads it
    examples = load_examples(data, domain_cfg.format, domain_cfg.prompt_column,
                             domain_cfg.response_column, domain_cfg.history_column or None)
    train = settings.train_for(domain, max_steps=steps)
    rounds = history_rounds(examples, with_history(examples, train.history_share, train.seed))
    recipe = DemoRecipe(domain, file_sha256(resolve_data_path(data)), {**recipe_params(train), "history_rounds": rounds},
                        _fingerprint(model))
    adapter = None if retrain else recipe.find(common.get_registry())
    if adapter is not None:
        console.rule(f"Reusing {adapter.ref}")
        console.print(f"{adapter.ref} was trained from the same data, \\[train] recipe and base; it is used as it is "
                      "(glmbot demo --retrain trains a new version).", highlight=False)
        encoder = _load_encoder(model, adapter)
    else:
        encoder, adapter = _train_and_register(settings, model, tok, recipe, train, examples)

    _compare(model, tok, examples, train, encoder)
    _activate(adapter)
    single = [e.prompt for e in examples if not e.history]
    _serve(settings, model, tok, ["你好", single[0], single[len(single) // 2], "订单 12345 到哪了？", "谢谢"])


def _train_and_register(settings, model, tok, recipe: DemoRecipe, train, examples):  # noqa: ANN001, ANN202
    """Train the prefix with a progress bar and register it as a new candidate: (encoder, AdapterInfo)."""
    from glmbot.cli.progress import training_progress
    from glmbot.training.data import encode_all
    from glmbot.training.rewrites import augmented_rows
    from glmbot.training.trainer import PrefixTrainer, total_steps

    console = common.console
    encoded, summary = encode_all(tok, examples, train.max_source_length, train.max_target_length)
    reworded, behind = augmented_rows(tok, examples, train)  # as `glmbot train` adds them ([train] settings)
    extra = (f" + {len(reworded)} rewordings" if reworded else "") + (f" + {len(behind)} behind an earlier round"
                                                                       if behind else "")
    encoded += reworded + behind
    console.rule(f"Training a P-Tuning v2 prefix for '{recipe.domain}'")
    console.print(f"{summary.samples} examples{extra}, {summary.answer_tokens:,} answer tokens; P={train.pre_seq_len}, "
                  f"projection={train.prefix_projection}, LR {train.learning_rate:g}, {train.max_steps} steps")
    run_dir = settings.path(settings.train.runs_dir) / f"demo-{recipe.domain}-{time.strftime('%Y%m%d-%H%M%S')}"
    with training_progress(recipe.domain, total_steps(train, len(encoded))) as bar:
        result = PrefixTrainer(model, train, run_dir, tok.pad_token_id, on_step=bar.update).fit(encoded)
    console.print(f"trained in {result.seconds:.0f}s at {result.tokens_per_s:,.0f} tokens/s; loss "
                  f"{result.losses[0]:.2f} -> {sum(result.losses[-10:]) / len(result.losses[-10:]):.2f}")
    # a path of its own line: wrapped inside the sentence it broke in the middle of a folder name
    console.print(f"loss curve: {Path(run_dir) / 'loss.png'}", soft_wrap=True, highlight=False)
    return result.encoder, _register(model, recipe, result, examples, summary)


def recipe_params(train) -> dict:  # noqa: ANN001 - glmbot.config.TrainSettings
    """The [train] settings that shape the prefix, as the registry stores them (JSON values)."""
    return json.loads(json.dumps({k: v for k, v in asdict(train).items() if k != "runs_dir"}))


@dataclass(frozen=True)
class DemoRecipe:
    """What decides the prefix a demo run trains: domain, data file, [train] recipe and base weights."""

    domain: str
    dataset_sha256: str
    hyperparams: dict
    base_fingerprint: str

    def find(self, registry):  # noqa: ANN001, ANN201 - Registry -> AdapterInfo | None
        """The newest adapter of the domain trained from this recipe, or None."""
        try:
            adapters = registry.list_adapters(self.domain)
        except UnknownDomainError:
            return None
        same = [a for a in adapters if (a.dataset_sha256, a.hyperparams, a.base_fingerprint)
                == (self.dataset_sha256, self.hyperparams, self.base_fingerprint)]
        return same[-1] if same else None


def _fingerprint(model) -> str:  # noqa: ANN001
    from glmbot.model.fingerprint import base_fingerprint

    return base_fingerprint(model)


def _load_encoder(model, adapter):  # noqa: ANN001, ANN202
    from glmbot.model.prefix_io import prefix_encoder_from_state

    state, _ = common.get_registry().load_prefix_state(adapter.id)
    return prefix_encoder_from_state(state, model.config, adapter.ref).to(model.device)


def _register(model, recipe: DemoRecipe, result, examples, summary):  # noqa: ANN001, ANN202
    """Register the trained prefix as a new candidate version of the domain."""
    from glmbot.model.fingerprint import architecture
    from glmbot.model.prefix_io import encoder_state

    registry = common.get_registry()
    registry.ensure_domain(recipe.domain, common.get_settings().domains[recipe.domain].description)
    return registry.register_adapter(
        recipe.domain, encoder_state(result.encoder), base_model=str(model.config.name_or_path),
        base_fingerprint=recipe.base_fingerprint, architecture=architecture(model.config),
        hyperparams=recipe.hyperparams, dataset_sha256=recipe.dataset_sha256, sample_count=summary.samples,
        metrics={"train_loss": round(sum(result.losses[-10:]) / len(result.losses[-10:]), 4)},
        provenance={"run_dir": str(result.run_dir), "made_by": "glmbot demo"},
        routing_prompts=sorted({e.prompt for e in examples}))


def _activate(adapter) -> None:  # noqa: ANN001 - AdapterInfo
    """Make the demo's adapter its domain's active one, saying what changed."""
    registry = common.get_registry()
    common.console.rule("Serving every domain from one base")
    if adapter.is_active:
        common.console.print(f"{adapter.ref} is the active adapter of {adapter.domain}.", highlight=False)
        return
    try:
        replaced = registry.resolve(adapter.domain).ref
    except UnknownAdapterError:
        replaced = None
    registry.promote(adapter.ref)
    change = f"; it replaces {replaced} (undo with: glmbot adapters rollback {adapter.domain})" if replaced else ""
    common.console.print(f"{adapter.ref} is now the active adapter of {adapter.domain}{change}.", highlight=False)


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
    common.console.print("Next: [bold]glmbot chat[/], [bold]glmbot adapters list[/], [bold]glmbot serve[/]; your own "
                         "data, in a folder of your own: [bold]glmbot domains add NAME --data FILE.jsonl[/] (or .csv), "
                         "then [bold]glmbot train --domain NAME --promote[/].", highlight=False)


def _domain(settings, name: str):  # noqa: ANN001
    """DOMAIN's table of glmbot.toml; with no glmbot.toml (a demo run in any folder), the shipped sample's,
    its adapters then going to ./adapters as every command there finds them."""
    from glmbot.config import sample_domains

    if name not in settings.domains and settings.source == "<defaults>":
        samples = sample_domains()
        if name in samples:
            settings.domains[name] = samples[name]
    if name not in settings.domains:
        known = ", ".join(settings.domains) or "none"
        raise UnknownDomainError(f"--domain {name!r} is not a domain of {settings.source} (known: {known}); use "
                                 f"one of those, or add a [domains.{name}] table with its data file")
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
