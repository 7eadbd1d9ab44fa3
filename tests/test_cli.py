"""The command line as a user meets it: start-up cost, help text, bad values, --json, demo re-runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from glmbot.cli import main
from glmbot.registry import Registry
from tests.cli_helpers import cli, make_project, project_with_adapters, source_env

REPO = Path(__file__).resolve().parents[1]
# `train` and `domains` are documented by their own owners' tests.
OTHERS = {("train",), ("domains",)}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return project_with_adapters(tmp_path_factory.mktemp("cli"))


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def registry_of(config: Path) -> Registry:
    return Registry(f"sqlite:///{config.parent / 'adapters' / 'registry.db'}", config.parent / "adapters")


def imported_modules(config: Path, *args: str) -> set[str]:
    """Top-level packages a fresh `python -m glmbot ARGS` imports (from -X importtime)."""
    env = {"GLMBOT_CONFIG": str(config), "PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "glmbot", *args], capture_output=True,
                          text=True, env=env, cwd=config.parent, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line.split("|")[-1] for line in done.stderr.splitlines() if line.startswith("import time:")]
    return {name.strip().split(".")[0] for name in lines}


@pytest.mark.parametrize("args, absent", [
    (("--help",), {"torch", "transformers", "sqlalchemy", "sqlmodel", "jieba"}),
    (("route", "--help"), {"torch", "transformers", "sqlalchemy"}),
    (("adapters", "list"), {"torch", "transformers"}),
    (("domains", "list"), {"torch", "transformers"}),
    (("--version",), {"torch", "transformers", "sqlalchemy", "sqlmodel", "jieba"}),
])
def test_commands_that_need_no_model_do_not_import_torch(project, args, absent):
    modules = imported_modules(project, *args)
    assert "glmbot" in modules and "typer" in modules
    assert not absent & modules


def test_version_prints_the_packages_version(project, capsys):
    import glmbot

    assert cli(project, "--version", capsys=capsys) == (0, f"glmbot {glmbot.__version__}\n", "")


def all_commands(command, path=()):
    """(path, click command) of every command under `command`, groups included."""
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from all_commands(sub, (*path, name))


def help_of(*path: str) -> str:
    result = CliRunner().invoke(main.app, [*path, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_every_command_help_ends_with_examples_and_keeps_brackets():
    root = typer.main.get_command(main.app)
    paths = [path for path, _ in all_commands(root) if path[:1] not in {p[:1] for p in OTHERS}]
    assert {("adapters", "list"), ("route",), ("eval",), ("demo",), ("logs", "show")} <= set(paths)
    for path in paths:
        text = help_of(*path)
        examples = text.rindex("Examples:")
        assert examples > text.rindex("Options:"), path  # after the options, at the end
        assert f"glmbot {' '.join(path)}".strip() in text[examples:], path
        assert "<bool>" not in text, path
    assert "override [train] max_steps" in help_of("demo")
    assert "[generation] temperature" in help_of("chat")
    # A flag shows no value; an option that takes one shows what.
    assert "  --json  " in help_of("info") and "--limit <int range>" in help_of("logs", "list")


def test_lazily_listed_train_has_its_own_summary():
    from glmbot.cli.train import train

    target, summary = main.LAZY_COMMANDS["train"]
    assert target == "glmbot.cli.train:train"
    assert summary == train.__doc__.strip().splitlines()[0]
    assert "--domain" in help_of("train")
    assert "completion" not in help_of("train") and "--install-completion" in help_of()  # glmbot's own, not train's


@pytest.mark.parametrize("args, words", [
    (("logs", "list", "--limit", "many"), ["'--limit'", "'many'", "integer"]),
    (("adapters", "list", "--status", "live"), ["'--status'", "'live'", "'candidate', 'active', 'archived'"]),
    (("chat", "--temperature", "-1"), ["'--temperature'", "'-1'", "greater than or equal to 0"]),
    (("pull", "org/name", "--promote=maybe"), ["--promote", "'maybe'", "write just --promote"]),
    (("demo", "--domain", "hr"), ["--domain 'hr'", "known: support, ads", "[domains.hr]"]),
    (("eval",), ["glmbot eval support@v2", "--predictions FILE"]),
])
def test_bad_values_name_the_flag_the_value_and_the_fix(tmp_path, capsys, args, words):
    code, _, err = cli(make_project(tmp_path), *args, capsys=capsys)
    assert code in (1, 2)
    for word in words:
        assert word in err, (word, err)


def test_adapters_list_and_show_json(project, capsys):
    code, out, _ = cli(project, "adapters", "list", "--json", capsys=capsys)
    listed = json.loads(out)
    assert code == 0 and [(a["ref"], a["status"]) for a in listed] == [("ads@v1", "active"), ("support@v1", "active")]
    with registry_of(project) as reg:
        support = reg.resolve("support")
        reg.add_evaluation(support.id, {"rouge-l": 12.5}, None, kind="dev.jsonl")
    assert listed[1]["id"] == support.id and listed[1]["pre_seq_len"] == 8 and listed[1]["files"] == support.files
    code, out, _ = cli(project, "adapters", "show", "support", "--json", capsys=capsys)
    shown = json.loads(out)
    assert shown["ref"] == "support@v1" and shown["metrics"]["rouge-l"] == 12.5
    assert shown["evaluations"][0]["kind"] == "dev.jsonl" and shown["hub_pushes"] == []
    assert shown["created_at"].endswith("+00:00")
    code, out, _ = cli(project, "adapters", "list", "--status", "archived", "--json", capsys=capsys)
    assert json.loads(out) == []


def test_route_json_names_the_adapter_and_the_scores(project, capsys):
    code, out, _ = cli(project, "route", "退货多久到账？", "--json", capsys=capsys)
    decision = json.loads(out)
    assert code == 0 and decision["domain"] == "support" and decision["adapter"]["ref"] == "support@v1"
    assert decision["reason"] == "classifier" and decision["classifier_scores"]["support"] == pytest.approx(decision["score"])
    assert decision["second_look"] is True and decision["general_chat"] is True and decision["min_score"] == 0.25
    code, out, _ = cli(project, "route", "你好", "--domain", "base", "--json", capsys=capsys)
    assert json.loads(out)["domain"] is None and json.loads(out)["reason"] == "explicit"


def test_logs_plugins_and_info_json(project, capsys):
    with registry_of(project) as reg:
        reg.log_turn("c0ffee", source="cli", query="你好", answer="您好", route_reason="fallback", prompt_tokens=3,
                     completion_tokens=2)
    code, out, _ = cli(project, "logs", "list", "--json", capsys=capsys)
    assert [(c["id"], c["turns"], c["title"]) for c in json.loads(out)] == [("c0ffee", 1, "你好")]
    code, out, _ = cli(project, "logs", "show", "c0ffee", "--json", capsys=capsys)
    (turn,) = json.loads(out)
    assert (turn["query"], turn["answer"], turn["completion_tokens"]) == ("你好", "您好", 2)
    code, out, _ = cli(project, "plugins", "list", "--json", capsys=capsys)
    assert code == 0 and isinstance(json.loads(out), list)
    code, out, _ = cli(project, "info", "--json", capsys=capsys)
    info = json.loads(out)
    assert info["base_model"] == "builtin:tiny" and info["parameters"] > 0
    assert info["fingerprint"].startswith("sha256:") and info["domains"] == ["support", "ads"]


def test_eval_json_of_an_adapter_and_of_a_predictions_file(project, tmp_path, capsys):
    code, out, err = cli(project, "eval", "ads", "--data", "builtin:ads_dev", "--format", "advertisegen",
                         "--limit", "3", "--no-save", "--json", capsys=capsys)
    report = json.loads(out)
    assert code == 0, err
    assert report["ref"] == "ads@v1" and report["samples"] == 3 and report["saved"] is False
    assert set(report["metrics"]) == {"rouge-1", "rouge-2", "rouge-l", "bleu-4"}
    assert 0 <= report["probe"]["kept"] <= 1 and isinstance(report["probe"]["forgot"], bool)
    predictions = tmp_path / "generated_predictions.txt"
    row = {"labels": "七天无理由退货", "predict": "七天无理由退货"}
    predictions.write_text(json.dumps(row, ensure_ascii=False), encoding="utf-8")
    code, out, _ = cli(project, "eval", "--predictions", str(predictions), "--json", capsys=capsys)
    report = json.loads(out)
    assert report["ref"] is None and report["samples"] == 1 and report["metrics"]["rouge-l"] == 100


def test_demo_twice_reuses_its_adapter_and_a_new_recipe_says_what_it_replaced(tmp_path, capsys):
    from glmbot.training.data import resolve_data_path

    # The first 12 support samples keep each run to seconds; the data file is part of the recipe.
    lines = resolve_data_path("builtin:support").read_text(encoding="utf-8").splitlines()[:12]
    data = tmp_path / "support.jsonl"
    data.write_text("\n".join(lines) + "\n", encoding="utf-8")
    config = make_project(tmp_path)
    config.write_text(config.read_text(encoding="utf-8").replace('"builtin:support"', f'"{data}"'), encoding="utf-8")
    code, first, err = cli(config, "demo", "--steps", "2", capsys=capsys)
    assert code == 0, err
    assert "support@v1 is now the active adapter of support." in first
    code, second, err = cli(config, "demo", "--steps", "2", capsys=capsys)
    assert code == 0, err
    assert "Reusing support@v1" in second and "trained in" not in second
    assert "support@v1 is the active adapter of support." in second
    with registry_of(config) as reg:
        assert [(a.version, a.status) for a in reg.list_adapters("support")] == [(1, "active")]
    code, third, err = cli(config, "demo", "--steps", "3", capsys=capsys)
    assert code == 0, err
    assert "support@v2 is now the active adapter of support; it replaces support@v1" in third
    assert "glmbot adapters rollback support" in third
    with registry_of(config) as reg:
        assert [(a.version, a.status) for a in reg.list_adapters("support")] == [(1, "archived"), (2, "active")]
        assert reg.resolve("support@v2").dataset_sha256 == reg.resolve("support@v1").dataset_sha256


def test_outside_a_project_an_unknown_domain_says_no_glmbot_toml_was_found(tmp_path):
    """Found by a newcomer: in another folder `glmbot chat --domain yoga` said "unknown domain 'yoga'; add it"
    about the domain they had just trained, with nothing saying that no glmbot.toml had been found."""
    env = {k: v for k, v in source_env().items() if k != "GLMBOT_CONFIG"}
    env["COLUMNS"] = "300"
    done = subprocess.run([sys.executable, "-m", "glmbot", "chat", "--domain", "yoga"], input="年卡多少钱？\n",
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 1
    assert "unknown domain 'yoga'" in done.stderr
    assert f"hint: no glmbot.toml in {tmp_path} or a folder above it" in done.stderr and "--config" in done.stderr
    listed = subprocess.run([sys.executable, "-m", "glmbot", "domains", "list"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=300)
    assert "No domains yet" in listed.stdout and "no glmbot.toml" in listed.stdout
    (tmp_path / "glmbot.toml").write_text("", encoding="utf-8")  # in a project: the error alone
    done = subprocess.run([sys.executable, "-m", "glmbot", "chat", "--domain", "yoga"], input="年卡多少钱？\n",
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert "unknown domain 'yoga'" in done.stderr and "hint:" not in done.stderr


def test_demo_in_a_folder_without_glmbot_toml_trains_the_shipped_sample(tmp_path):
    """`pip install glmbot && glmbot demo` anywhere: no glmbot.toml, so the packaged support sample is
    trained and registered under ./adapters, where `glmbot chat` in that folder then finds it."""
    env = {k: v for k, v in source_env().items() if k != "GLMBOT_CONFIG"}
    env["COLUMNS"] = "200"
    run = lambda *args, **kw: subprocess.run([sys.executable, "-m", "glmbot", *args], cwd=tmp_path, env=env,  # noqa: E731
                                             capture_output=True, text=True, timeout=600, **kw)
    done = run("demo", "--steps", "2")
    assert done.returncode == 0, done.stderr
    assert "support@v1 is now the active adapter of support." in done.stdout
    assert not (tmp_path / "glmbot.toml").exists()
    with Registry(f"sqlite:///{tmp_path / 'adapters' / 'registry.db'}", tmp_path / "adapters") as reg:
        assert [(a.domain, a.version, a.status) for a in reg.list_adapters()] == [("support", 1, "active")]
    done = run("chat", "--domain", "support", input="你好\n")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr


def test_shipped_sample_domains_are_the_repository_glmbot_toml_ones():
    from glmbot.config import load_settings, sample_domains

    repo = load_settings(REPO / "glmbot.toml").domains
    assert sample_domains() == {name: repo[name] for name in ("support", "ads")}


def test_config_after_the_command_is_taken_as_the_global_option(project, capsys, monkeypatch, tmp_path):
    """Found by a newcomer: the README's "elsewhere: --config" read as `glmbot chat --config x.toml`
    gave "No such option: --config"; only `glmbot --config x.toml chat` worked."""
    from glmbot.cli.main import hoist_config

    assert hoist_config(["chat", "--config", "a.toml", "-d", "x"]) == ["--config", "a.toml", "chat", "-d", "x"]
    assert hoist_config(["route", "-c", "a.toml", "--config=b.toml", "--", "--config"]) == [
        "-c", "a.toml", "--config=b.toml", "route", "--", "--config"]
    monkeypatch.chdir(tmp_path)  # no glmbot.toml here: only the option can find the project
    monkeypatch.setattr(sys, "argv", ["glmbot", "adapters", "list", "--json", "--config", str(project)])
    with pytest.raises(SystemExit) as stop:
        main.run()
    assert (stop.value.code or 0) == 0
    listed = json.loads(capsys.readouterr().out)
    with registry_of(project) as reg:
        assert sorted(a["ref"] for a in listed) == sorted(a.ref for a in reg.list_adapters())


def test_route_names_the_fallback_reply_the_engine_would_give(tmp_path, capsys):
    config = project_with_adapters(tmp_path, '\n[routing]\nfallback_reply = "请联系工作人员。"\n')
    code, out, err = cli(config, "route", "量子力学难不难学？", "--json", capsys=capsys)
    assert code == 0, err
    assert json.loads(out)["fallback_reply"] == "请联系工作人员。"
    for text in ("你好", "退货多久到账？"):  # small talk keeps the plain base, a domain's question its prefix
        code, out, err = cli(config, "route", text, "--json", capsys=capsys)
        assert code == 0 and json.loads(out)["fallback_reply"] is None, err
    code, out, err = cli(config, "route", "量子力学难不难学？", capsys=capsys)
    assert "answer:  请联系工作人员。  (the fixed [routing] fallback_reply" in out
