"""Onboarding a domain in one flow: `glmbot domains add` stores it in glmbot.toml, then train, eval,
route, chat, info and `domains list` need no repeated flags and agree on what each domain can do."""

from __future__ import annotations

import json
import re

import pytest
import torch

from glmbot.config import load_settings
from glmbot.training.data import file_sha256
from tests.cli_helpers import cli, cli_process, make_project, registry_of

COMMENTED = "# the team's notes: keep this line\n"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def hr_project(tmp_path):
    config = make_project(tmp_path / "project")
    config.write_text(COMMENTED + config.read_text(encoding="utf-8").replace(
        "[domains.ads]", "[domains.ads]  # product copy\n"), encoding="utf-8")
    data = tmp_path / "project" / "data"
    data.mkdir()
    write_jsonl(data / "hr.jsonl", [{"prompt": "年假有几天？", "response": "每年十五天。"},
                                    {"prompt": "工资几号发？", "response": "每月十号。"}])
    write_jsonl(data / "hr_dev.jsonl", [{"prompt": "年假几天？", "response": "十五天。"}])
    return config, data


def register_candidates(config, domain: str, count: int) -> None:
    """`count` candidate versions of `domain` with random prefixes (fast: no training)."""
    from glmbot import load_base
    from glmbot.model.fingerprint import architecture, base_fingerprint
    from glmbot.model.prefix import PrefixEncoder
    from glmbot.model.prefix_io import encoder_state

    model, _ = load_base("builtin:tiny", device="cpu")
    with registry_of(config) as reg:
        for seed in range(count):
            torch.manual_seed(seed)
            reg.register_adapter(domain, encoder_state(PrefixEncoder(model.config, 4)), base_model="builtin:tiny",
                                 base_fingerprint=base_fingerprint(model), architecture=architecture(model.config))


def test_add_stores_the_domain_and_train_eval_need_no_flags(tmp_path, capsys):
    config, data = hr_project(tmp_path)
    before = config.read_text(encoding="utf-8")
    code, out, err = cli(config, "domains", "add", "hr", "--data", str(data / "hr.jsonl"), "--dev-data",
                         str(data / "hr_dev.jsonl"), "--keywords", "年假, 工资，加班", "-d", "人事", capsys=capsys)
    assert code == 0, err
    assert f"Added domain hr to {config} ([domains.hr])" in out
    assert "2 examples, chat: prompt -> response (+ history)" in out
    assert "Train its first adapter with: glmbot train --domain hr --promote\n" in out
    text = config.read_text(encoding="utf-8")
    assert text.startswith(before)  # comments and every other table kept as they were
    table = load_settings(config).domains["hr"]
    assert (table.data, table.dev_data) == ("data/hr.jsonl", "data/hr_dev.jsonl")  # relative to glmbot.toml
    assert table.keywords == ["年假", "工资", "加班"] and table.description == "人事" and table.format == "auto"
    with registry_of(config) as reg:
        assert reg.get_domain("hr").description == "人事"

    # train and eval find the data through glmbot.toml (paths relative to it, whatever the working folder).
    code, out, err = cli(config, "train", "-d", "hr", "--steps", "1", capsys=capsys)
    assert code == 0, err
    assert re.search(r"^\s*source\s+\S*data/hr\.jsonl", out, re.M) and re.search(r"^\s*dev samples\s+1\s*$", out, re.M)
    code, out, err = cli(config, "eval", "hr@v1", capsys=capsys)
    assert code == 0, err
    assert "stored in the registry for hr@v1" in out
    with registry_of(config) as reg:
        (evaluation,) = reg.evaluations("hr@v1")  # scored on the dev file named in glmbot.toml
        assert evaluation.kind == "hr_dev.jsonl" and evaluation.dataset_sha256 == file_sha256(data / "hr_dev.jsonl")

    code, _, err = cli(config, "domains", "add", "hr", "--data", str(data / "hr.jsonl"), capsys=capsys)
    assert code == 1 and "already has [domains.hr]" in err
    assert config.read_text(encoding="utf-8") == text


@pytest.mark.parametrize("args,message", [
    (("--data", "{bad}"), "cannot tell the data format: columns found: question, answer"),
    (("--data", "{missing}"), "does not exist"),
    (("--format", "xml"), "domains.hr.format = 'xml' is not one of"),
])
def test_add_checks_the_data_before_writing_anything(tmp_path, capsys, args, message):
    config, data = hr_project(tmp_path)
    write_jsonl(data / "bad.jsonl", [{"question": "q", "answer": "a"}])
    before = config.read_text(encoding="utf-8")
    args = [a.format(bad=data / "bad.jsonl", missing=data / "nope.jsonl") for a in args]
    code, _, err = cli(config, "domains", "add", "hr", *args, capsys=capsys)
    assert code == 1 and message in " ".join(err.split())
    assert config.read_text(encoding="utf-8") == before
    with registry_of(config) as reg:
        assert "hr" not in [d.name for d in reg.list_domains()]


def test_add_takes_the_columns_its_format_error_names(tmp_path, capsys):
    # The format error names the columns to pass ("--prompt-column question --response-column answer"); a newcomer
    # who did so with `domains add` got "No such option". The columns are stored and train reads them.
    config, data = hr_project(tmp_path)
    write_jsonl(data / "qa.jsonl", [{"question": "年假有几天？", "answer": "每年十五天。"},
                                    {"question": "工资几号发？", "answer": "每月十号。"}])
    code, _, err = cli(config, "domains", "add", "hr", "--data", str(data / "qa.jsonl"), capsys=capsys)
    assert code == 1 and "--prompt-column question --response-column answer" in " ".join(err.split())
    code, out, err = cli(config, "domains", "add", "hr", "--data", str(data / "qa.jsonl"), "--prompt-column",
                         "question", "--response-column", "answer", capsys=capsys)
    assert code == 0, err
    assert "2 examples" in out and "question -> answer" in out
    table = load_settings(config).domains["hr"]
    assert (table.prompt_column, table.response_column, table.history_column) == ("question", "answer", "")
    code, out, err = cli(config, "train", "-d", "hr", "--steps", "1", capsys=capsys)
    assert code == 0, err
    assert re.search(r"^\s*format\s+chat: question -> answer", out, re.M), out
    assert re.search(r"^\s*samples\s+2 \+", out, re.M), out


def test_a_domain_with_candidates_only_is_not_unknown_anywhere(tmp_path, capsys):
    config, data = hr_project(tmp_path)
    assert cli(config, "domains", "add", "hr", "--data", str(data / "hr.jsonl"), "--keywords", "年假,工资",
               capsys=capsys)[0] == 0
    register_candidates(config, "hr", 3)
    reason = "hr has v1-v3, none active: glmbot adapters promote hr@v3"

    code, _, err = cli(config, "chat", "-d", "hr", capsys=capsys)
    assert code == 1 and reason in err and "unknown" not in err
    switched = cli_process(config, "chat", "--no-log", input="/domain hr\n/domain nope\n")
    assert switched.returncode == 0 and reason in switched.stderr and "unknown domain 'nope'" in switched.stderr
    code, _, err = cli(config, "route", "年假有几天", "-d", "hr", capsys=capsys)
    assert code == 1 and reason in err and "unknown" not in err
    code, out, err = cli(config, "route", "年假有几天", capsys=capsys)
    assert code == 0, err
    assert f"skipped: {reason}" in out
    assert "skipped: support has no adapter yet: glmbot train --domain support" in out
    assert "skipped: ads has no adapter yet: glmbot train --domain ads" in out

    code, listing, _ = cli(config, "domains", "list", capsys=capsys)
    assert code == 0
    rows = {line.split("│")[1].strip(): [c.strip() for c in line.split("│")[2:-1]]
            for line in listing.splitlines() if line.count("│") == 8}
    assert set(rows) == {"ads", "hr", "support"}
    assert rows["hr"][1:] == ["none", "v1-v3", "data/hr.jsonl", "年假, 工资", "-"]
    assert rows["ads"][4] == "文案, 广告" and reason in listing
    code, info, _ = cli(config, "info", capsys=capsys)
    assert code == 0
    domains = " ".join(line.strip() for line in info.splitlines()[
        next(i for i, l in enumerate(info.splitlines()) if l.strip().startswith("domains")):][:3])
    assert "ads (no adapter; keywords 文案, 广告)" in domains
    assert "hr (v1-v3, none active; keywords 年假, 工资)" in domains and "support (no adapter)" in domains

    assert cli(config, "adapters", "promote", "hr@v3", capsys=capsys)[0] == 0
    code, out, _ = cli(config, "route", "年假有几天", capsys=capsys)
    assert code == 0 and "skipped: hr" not in out and re.search(r"^domain:\s+hr$", out, re.M)
    code, info, _ = cli(config, "info", capsys=capsys)
    assert "hr (v3 active; keywords 年假, 工资)" in " ".join(info.split())


def test_rm_takes_back_a_misspelled_domain_and_keeps_one_with_adapters(tmp_path, capsys):
    # Found by a newcomer: following `adapters show dentl`'s hint made a junk domain no command removed.
    config, data = hr_project(tmp_path)
    before = config.read_text(encoding="utf-8")
    assert cli(config, "domains", "add", "hrr", "--data", str(data / "hr.jsonl"), capsys=capsys)[0] == 0
    code, out, err = cli(config, "domains", "rm", "hrrr", capsys=capsys)
    assert code == 1 and "did you mean 'hrr'?" in " ".join(err.split())
    code, out, err = cli(config, "domains", "rm", "hrr", capsys=capsys)
    assert code == 0 and "Removed domain hrr from" in " ".join(out.split()) and "the registry" in out
    assert config.read_text(encoding="utf-8") == before  # the table gone, every other line (comments too) kept
    with registry_of(config) as reg:
        assert "hrr" not in {d.name for d in reg.list_domains()}
    # A domain with adapters: refused before glmbot.toml is touched, naming the versions and the fix.
    assert cli(config, "domains", "add", "hr", "--data", str(data / "hr.jsonl"), capsys=capsys)[0] == 0
    register_candidates(config, "hr", 2)
    with_hr = config.read_text(encoding="utf-8")
    code, out, err = cli(config, "domains", "rm", "hr", capsys=capsys)
    assert code == 1 and "still has adapters (hr@v1, hr@v2)" in " ".join(err.split()) and "glmbot adapters rm" in err
    assert config.read_text(encoding="utf-8") == with_hr
    with registry_of(config) as reg:
        assert len(reg.list_adapters("hr")) == 2


def test_set_changes_a_domains_table_and_a_bad_file_changes_nothing(tmp_path, capsys):
    # Found by a newcomer: `domains add dental --data ...` on an existing domain only said "edit that
    # table", and train's no-data hint pointed at that same command.
    config, data = hr_project(tmp_path)
    assert cli(config, "domains", "add", "hr", capsys=capsys)[0] == 0
    code, out, err = cli(config, "train", "-d", "hr", "--steps", "1", capsys=capsys)
    assert code == 1 and "glmbot domains set NAME --data FILE.jsonl" in " ".join(err.split())
    code, out, err = cli(config, "domains", "add", "hr", "--data", str(data / "hr.jsonl"), capsys=capsys)
    assert code == 1 and "change it with: glmbot domains set hr --data" in " ".join(err.split())
    code, out, err = cli(config, "domains", "set", "hr", "--data", str(data / "hr.jsonl"), "--keywords", "年假，工资",
                         "-d", "人事", capsys=capsys)
    assert code == 0, err
    assert "2 examples" in out and "glmbot train --domain hr --promote" in out
    hr = load_settings(config).domains["hr"]
    assert (hr.data, hr.keywords, hr.description) == ("data/hr.jsonl", ["年假", "工资"], "人事")
    assert config.read_text(encoding="utf-8").startswith(COMMENTED)  # the rest of the file as it was
    before = config.read_text(encoding="utf-8")
    missing = cli(config, "domains", "set", "hr", "--data", str(data / "nope.jsonl"), capsys=capsys)
    assert missing[0] == 1 and "nope.jsonl does not exist" in missing[2]
    assert config.read_text(encoding="utf-8") == before
    code, out, err = cli(config, "domains", "set", "hr", "--keywords", "", "--dev-data", str(data / "hr_dev.jsonl"),
                         capsys=capsys)
    hr = load_settings(config).domains["hr"]
    assert code == 0 and hr.keywords == [] and hr.dev_data == "data/hr_dev.jsonl" and hr.data == "data/hr.jsonl"
    code, out, err = cli(config, "domains", "set", "hrr", "--data", str(data / "hr.jsonl"), capsys=capsys)
    assert code == 1 and "did you mean 'hr'?" in " ".join(err.split())
    before = config.read_text(encoding="utf-8")
    assert "nothing to change for 'hr'" in " ".join(cli(config, "domains", "set", "hr", capsys=capsys)[2].split())
    assert "training data cannot be removed" in " ".join(cli(config, "domains", "set", "hr", "--data", "",
                                                             capsys=capsys)[2].split())
    assert config.read_text(encoding="utf-8") == before


def test_a_project_without_generation_settings_answers_greedy_on_the_builtin_base(tmp_path, monkeypatch):
    """`domains add` in an empty folder writes a glmbot.toml of one [domains.X] table: its answers must
    not be sampled at 0.8 (a newcomer got one question answered three ways, once as 可以 x 250)."""
    config = tmp_path / "glmbot.toml"
    config.write_text('[domains.hr]\ndata = "hr.jsonl"\n', encoding="utf-8")
    assert load_settings(config).generation.do_sample is False
    config.write_text('[generation]\ndo_sample = true\n', encoding="utf-8")  # the user's choice wins
    assert load_settings(config).generation.do_sample is True
    config.write_text('[model]\nbase_model = "THUDM/chatglm2-6b"\n', encoding="utf-8")  # official default there
    assert load_settings(config).generation.do_sample is True
    config.unlink()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GLMBOT_CONFIG", raising=False)
    settings = load_settings()  # no glmbot.toml at all: the builtin default base
    assert settings.source == "<defaults>" and settings.generation.do_sample is False


def test_a_moved_data_file_names_the_glmbot_toml_entry_and_domains_set(tmp_path, capsys):
    """Found by a newcomer: after moving the file `domains add` stored, train said only "data file moved.tsv
    does not exist; pass the path of a JSONL file"."""
    config, data = hr_project(tmp_path)
    assert cli(config, "domains", "add", "hr", "--data", str(data / "hr.jsonl"), capsys=capsys)[0] == 0
    (data / "hr.jsonl").rename(data / "hr_old.jsonl")
    code, out, err = cli(config, "train", "--domain", "hr", "--steps", "1", capsys=capsys)
    message = " ".join(err.split())
    assert code == 1 and "Traceback" not in err
    stored = load_settings(config).domains["hr"].data
    assert f"data file {data / 'hr.jsonl'} does not exist (data = {stored!r} of [domains.hr] in {config})" in message
    assert "glmbot domains set hr --data FILE" in message
    # Given on the command line instead, the file is the user's own word: no glmbot.toml hint.
    code, out, err = cli(config, "train", "--domain", "hr", "--steps", "1", "--data", str(data / "gone.jsonl"),
                         capsys=capsys)
    assert code == 1 and "[domains.hr]" not in err and "gone.jsonl does not exist" in " ".join(err.split())
