"""A run's plan.json: written whole, read back equal, and every kind of change named on resume."""

from __future__ import annotations

import json

import pytest

from glmbot.config import TrainSettings
from glmbot.training.data import Columns, file_sha256
from glmbot.training.plan import PLAN_FILE, DataSpec, ResumeError, RunPlan, data_source


def make_plan(tmp_path) -> RunPlan:
    data, dev = tmp_path / "hr.jsonl", tmp_path / "hr_dev.jsonl"
    data.write_text('{"prompt": "年假？", "response": "十五天。"}\n', encoding="utf-8")
    dev.write_text('{"prompt": "工资？", "response": "十号。"}\n', encoding="utf-8")
    return RunPlan("hr", str(data), file_sha256(data), Columns("chat", "prompt", "response", "history"),
                   TrainSettings(max_steps=200, learning_rate=0.01, seed=7), str(dev), file_sha256(dev),
                   "builtin:tiny")


def test_plan_round_trips_through_its_file(tmp_path):
    plan = make_plan(tmp_path)
    plan.write(tmp_path / "run")
    assert RunPlan.read(tmp_path / "run") == plan
    assert plan.data_spec() == DataSpec(str(tmp_path / "hr.jsonl"), str(tmp_path / "hr_dev.jsonl"), "chat", "prompt",
                                        "response", "history")
    assert plan.differences({"train": str(tmp_path / "hr.jsonl"), "fmt": "chat"}, {"max_steps": 200}) == []


def test_every_difference_is_named(tmp_path, monkeypatch):
    plan = make_plan(tmp_path)
    other = tmp_path / "other.jsonl"
    other.write_text('{"prompt": "a", "response": "b"}\n', encoding="utf-8")
    (tmp_path / "hr_dev.jsonl").write_text('{"prompt": "工资？", "response": "五号。"}\n', encoding="utf-8")
    found = plan.differences(
        {"train": str(other), "dev": None, "fmt": "advertisegen", "prompt_column": "question"},
        {"max_steps": 300, "learning_rate": 0.01, "prefix_projection": True, "seed": None}, base_model="THUDM/chatglm2-6b")
    assert found == [
        "[model] base_model is THUDM/chatglm2-6b, the run trained on builtin:tiny",
        f"--data {other} is not the run's train data ({tmp_path / 'hr.jsonl'})",
        "--format advertisegen differs from the run's plan (chat)",
        "--prompt-column question differs from the run's plan (prompt)",
        "--steps 300 differs from the run's plan (--steps 200)",
        "--projection differs from the run's plan (--no-projection)",
        f"the dev data file {tmp_path / 'hr_dev.jsonl'} changed since the run started (sha256 "
        f"{plan.dev_sha256[:12]}, now {file_sha256(tmp_path / 'hr_dev.jsonl')[:12]})",
    ]
    (tmp_path / "hr.jsonl").unlink()
    with pytest.raises(ResumeError, match=r"cannot resume .*the data file .*hr.jsonl no longer exists.*start a new run"):
        plan.check_resume(tmp_path / "run", {}, {})
    # A relative --data naming the same file is the same data.
    monkeypatch.chdir(tmp_path)
    assert data_source("other.jsonl") == str(other) and data_source("builtin:support") == "builtin:support"


def test_missing_or_damaged_plan_refuses_to_resume(tmp_path):
    with pytest.raises(ResumeError, match=f"has no {PLAN_FILE} .*start a new run without --resume"):
        RunPlan.read(tmp_path)
    (tmp_path / PLAN_FILE).write_text(json.dumps({"domain": "hr"}), encoding="utf-8")
    with pytest.raises(ResumeError, match="is damaged .*KeyError"):
        RunPlan.read(tmp_path)


def test_a_plan_written_before_a_setting_existed_resumes_without_it(tmp_path):
    """Runs planned before question rewrites and history rows trained the data alone: resuming
    one must not switch on today's defaults (other rows than its checkpoints were trained on)."""
    plan = make_plan(tmp_path)
    path = plan.write(tmp_path / "run")
    raw = json.loads(path.read_text(encoding="utf-8"))
    for key in ("question_rewrites", "history_share"):
        del raw["train"][key]
    path.write_text(json.dumps(raw), encoding="utf-8")
    old = RunPlan.read(tmp_path / "run").train
    assert (old.question_rewrites, old.history_share) == (0, 0.0)
    assert (plan.train.question_rewrites, plan.train.history_share) == (4, 1.0)
