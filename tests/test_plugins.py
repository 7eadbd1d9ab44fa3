"""Plugin discovery and safe hook calls through the real plugin manager."""

from __future__ import annotations


from glmbot import hookspecs
from glmbot.plugins import PluginManager, allowed_plugins, get_manager, reset_manager
from tests.cli_helpers import cli, make_project


class Recorder:
    """A plugin implementing every hook, recording the arguments it was called with."""

    def __init__(self):
        self.calls = []

    @hookspecs.hookimpl
    def after_generate(self, request, response):
        self.calls.append(("after_generate", request, response))
        return response.upper()

    @hookspecs.hookimpl
    def on_adapter_registered(self, adapter):
        self.calls.append(("on_adapter_registered", adapter))


class Broken:
    @hookspecs.hookimpl
    def after_generate(self, request, response):
        raise RuntimeError("boom")


def test_hook_results_and_a_raising_plugin_is_reported_and_skipped():
    pm = PluginManager()
    rec = Recorder()
    pm.register(rec, "recorder")
    pm.register(Broken(), "broken")
    assert pm.call("after_generate", request="req", response="ok") == ["OK"]
    assert rec.calls == [("after_generate", "req", "ok")]
    assert pm.records["broken"].error == "after_generate: RuntimeError: boom"
    assert pm.records["recorder"].ok and pm.records["recorder"].hooks == ["after_generate", "on_adapter_registered"]


def test_folder_plugins_load_and_failures_are_recorded(tmp_path, monkeypatch):
    monkeypatch.delenv("GLMBOT_LOAD_PLUGINS", raising=False)
    (tmp_path / "good.py").write_text(
        "from glmbot.hookspecs import hookimpl\n\n@hookimpl\ndef register_routers(register):\n    register(len)\n")
    (tmp_path / "bad.py").write_text("import does_not_exist\n")
    (tmp_path / "_private.py").write_text("raise SystemExit\n")
    pm = PluginManager()
    pm.load_path(tmp_path, None)
    assert pm.records["good"].ok and pm.records["good"].hooks == ["register_routers"]
    assert "ModuleNotFoundError" in pm.records["bad"].error and "_private" not in pm.records
    got = []
    pm.call("register_routers", register=got.append)
    assert got == [len]


def test_load_env_limits_plugins(tmp_path, monkeypatch):
    (tmp_path / "one.py").write_text("")
    (tmp_path / "two.py").write_text("")
    monkeypatch.setenv("GLMBOT_LOAD_PLUGINS", "two")
    pm = PluginManager()
    pm.load_path(tmp_path, allowed_plugins())
    assert set(pm.records) == {"two"}
    monkeypatch.setenv("GLMBOT_LOAD_PLUGINS", "")
    assert allowed_plugins() == set()


def test_plugins_list_shows_failed_plugins(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("GLMBOT_LOAD_PLUGINS", raising=False)
    config = make_project(tmp_path)
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "broken_import.py").write_text("raise ValueError('no config')\n")
    (folder / "fine.py").write_text("from glmbot.hookspecs import hookimpl\n\n@hookimpl\n"
                                    "def after_generate(request, response):\n    return None\n")
    reset_manager()
    try:
        code, out, _ = cli(config, "plugins", "list", capsys=capsys)
    finally:
        reset_manager()
    assert code == 0
    assert "broken_import" in out and "failed" in out and "ValueError: no config" in out
    assert "fine" in out and "after_generate" in out


def test_plugin_commands_are_added_to_the_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("GLMBOT_LOAD_PLUGINS", raising=False)
    config = make_project(tmp_path)
    folder = tmp_path / "plugins"
    folder.mkdir()
    (folder / "hello_cmd.py").write_text(
        "from glmbot.hookspecs import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command(name='hello-plugin')\n    def hello():\n        print('hello from a plugin')\n")
    reset_manager()
    try:
        code, out, _ = cli(config, "hello-plugin", capsys=capsys)
    finally:
        reset_manager()
        from glmbot.cli.main import app

        app.registered_commands[:] = [c for c in app.registered_commands if c.name != "hello-plugin"]
    assert code == 0 and "hello from a plugin" in out


def test_trainer_calls_register_datasets_and_on_adapter_registered(tmp_path, capsys):
    """`train --data NAME` takes a plugin's data set; the registered adapter is announced to plugins."""
    config = make_project(tmp_path, "max_steps = 2\nbatch_size = 4\ncheckpoint_every = 0")
    data = tmp_path / "faq.jsonl"
    data.write_text('{"prompt": "你好", "response": "你好！"}\n' * 4, encoding="utf-8")
    seen = []

    class DataPlugin:
        @hookspecs.hookimpl
        def register_datasets(self, register):
            register("faq", lambda: data)

        @hookspecs.hookimpl
        def on_adapter_registered(self, adapter):
            seen.append(adapter)

    get_manager().register(DataPlugin(), "faq-data")
    code, out, err = cli(config, "train", "-d", "support", "--data", "faq", "--no-eval", capsys=capsys)
    assert code == 0, err
    assert [a.ref for a in seen] == ["support@v1"] and seen[0].sample_count == 4
