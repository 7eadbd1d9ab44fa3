"""`glmbot train` / `glmbot eval` end to end on the builtin base, through the real command line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest
import torch

from glmbot.config import TrainSettings
from glmbot.training.metrics import LEARNED_MIN_GAIN
from tests.cli_helpers import cli, cli_process, make_project, registry_of, source_env

# Invented HR answers: no base can know them, so a prefix that learned nothing answers them no better.
HR_ROWS = [("年假有几天？", "入职满一年后每年十五天带薪年假。"), ("工资几号发？", "每月十号发上个月的工资。"),
           ("病假怎么请？", "在系统里提交病假单并上传医院证明。"), ("可以远程办公吗？", "每周可以远程办公两天。"),
           ("试用期多久？", "试用期三个月，表现好可以提前转正。"), ("加班有补贴吗？", "工作日加班按一点五倍算。"),
           ("体检什么时候？", "每年五月统一安排体检。"), ("公积金比例是多少？", "公司和个人各交百分之十二。"),
           ("婚假几天？", "婚假十天，需要提前两周申请。"), ("迟到怎么处理？", "每月三次以内不扣钱。"),
           ("怎么申请调岗？", "先和主管谈，再在系统里提交调岗申请。"), ("离职要提前多久？", "正式员工提前三十天书面通知。")]


def write_hr(folder, name="hr.jsonl"):
    path = folder / name
    path.write_text("\n".join(json.dumps({"prompt": q, "response": a}, ensure_ascii=False) for q, a in HR_ROWS) + "\n",
                    encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def test_default_train_registers_evaluated_adapter_that_learned_the_domain(tmp_path, capsys):
    config = make_project(tmp_path)
    # support's steps as the shipped glmbot.toml sets them ([domains.support.train] max_steps = 300)
    code, out, err = cli(config, "train", "--domain", "support", "--steps", "300", "--promote", capsys=capsys)
    assert code == 0, err
    assert re.search(r"^\s*samples\s+225\s*$", out, re.M) and re.search(r"^\s*dev samples\s+40\s*$", out, re.M)
    with registry_of(config) as reg:
        (adapter,) = reg.list_adapters("support")
        assert adapter.status == "active" and adapter.source == "trained" and adapter.sample_count == 225
        assert {"rouge-1", "rouge-2", "rouge-l", "bleu-4", "probe_kept"} <= set(adapter.metrics)
        assert adapter.hyperparams["pre_seq_len"] == TrainSettings().pre_seq_len and adapter.dataset_sha256
        # It learned its data: clearly above the plain base on its own training questions.
        assert adapter.metrics["learned"] == 1.0
        assert adapter.metrics["train_rouge-l"] >= adapter.metrics["train_rouge-l_base"] + LEARNED_MIN_GAIN
    assert re.search(r"^learned: ROUGE-L on 32 of 225 training questions: prefix [\d.]+, plain base [\d.]+", out, re.M)
    run = next((tmp_path / "runs" / "support").iterdir())
    plan = json.loads((run / "plan.json").read_text())
    assert plan["train"]["max_steps"] == 300 and plan["data"] == "builtin:support"
    assert plan["columns"] == {"fmt": "chat", "prompt": "prompt", "response": "response", "history": "history"}
    assert json.loads((run / "run.json").read_text())["learned"] is True
    losses = [float(l.split(",")[1]) for l in (run / "loss.csv").read_text().splitlines()[1:]]
    assert len(losses) == 300 and sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    assert (run / "loss.png").is_file() and (run / "generated_predictions.jsonl").is_file()
    # Training questions move toward the trained answers: the adapter beats the plain base on them.
    code, tuned, _ = cli(config, "eval", "support", "--data", "builtin:support", "--limit", "80", capsys=capsys)
    code2, plain, _ = cli(config, "eval", "base", "--data", "builtin:support", "--limit", "80", capsys=capsys)
    assert code == code2 == 0
    rouge_tuned, rouge_plain = (float(t.split("│")[3]) for t in (
        next(l for l in tuned.splitlines() if l.count("│") == 5), next(l for l in plain.splitlines() if l.count("│") == 5)))
    assert rouge_tuned > rouge_plain + 25
    with registry_of(config) as reg:
        assert len(reg.evaluations("support")) == 1
    # The README's example question (not a training phrasing) gets the refund-timing answer.
    done = cli_process(config, "chat", "--domain", "support", "--temperature", "0", "--no-log", input="退货多久到账？\n")
    assert done.stdout.strip() == "退款会原路退回，审核通过后1-3个工作日到账。", done.stdout


def test_high_lr_reports_forgetting_and_low_lr_does_not(tmp_path, capsys):
    config = make_project(tmp_path)
    code, out, err = cli(config, "train", "-d", "support", "--steps", "120", "--lr", "0.9", "--no-eval", capsys=capsys)
    said = " ".join(out.split())
    # With general chat routed to the plain base (the default), a note rather than an alarm.
    assert code == 0 and "this prefix keeps" in said and "general chat: routed to the plain base" in said
    assert "lower the learning rate" in said and "wrecks general chat" not in err
    # The advice is relative to this run, no fixed range, and only where the run went above the recipe's
    # rate (after a run of the default recipe a newcomer read it as a warning).
    assert "this run's --lr was 0.9, the recipe's 0.1" in said
    code, out, err = cli(config, "train", "-d", "support", "--steps", "120", "--lr", "0.001", "--no-eval", capsys=capsys)
    assert code == 0 and "this prefix keeps" not in out and "general answers kept" in out
    with registry_of(config) as reg:
        high, low = reg.list_adapters("support")
        assert high.metrics["probe_forgot"] == 1.0 and low.metrics["probe_forgot"] == 0.0
    # When general chat falls back to a domain instead of the plain base, forgetting is a warning.
    with open(config, "a", encoding="utf-8") as f:
        f.write('[routing]\nfallback = "support"\n')
    code, out, err = cli(config, "train", "-d", "support", "--steps", "120", "--lr", "0.9", "--no-eval", capsys=capsys)
    said = " ".join(err.split())
    assert code == 0 and "warning: the prefix wrecks general chat" in said and "lower the learning rate" in said
    assert "routing.fallback is 'support', not the plain base" in said and "the prefix keeps" not in out


def test_promote_refuses_a_prefix_that_learned_nothing(tmp_path, capsys):
    config = make_project(tmp_path)
    data = write_hr(tmp_path)
    assert cli(config, "domains", "add", "hr", capsys=capsys)[0] == 0
    code, out, err = cli(config, "train", "-d", "hr", "--data", str(data), "--steps", "2", "--promote", capsys=capsys)
    assert code == 0, err
    assert "the prefix learned nothing: ROUGE-L on 12 training questions" in err  # the data's, not the rewordings
    assert re.search(r"^\s*samples\s+12 \+ 48 rewordings of their questions \(question_rewrites 4\) \+ 12 behind an "
                     r"earlier round \(history_share 1\)\s*$", out, re.M)
    assert re.search(r"not promoted: it learned nothing; try more steps \(--steps 4\) or a higher learning rate "
                     r"\(--lr 0\.2\)", out)  # twice the default 0.1
    with registry_of(config) as reg:  # trained behind one earlier round: served with that many (prefix_history)
        assert reg.list_adapters("hr")[0].hyperparams["history_rounds"] == 1
        assert reg.list_adapters("hr")[0].hyperparams["data_history_rounds"] == 0  # none of the data's own
    code, out, err = cli(config, "train", "-d", "hr", "--data", str(data), "--steps", "2", "--promote=force",
                         capsys=capsys)
    assert code == 0 and "promoted: forced, although it learned nothing" in out
    # A wrecked prefix (far too high LR) must not replace the active one either.
    code, out, _ = cli(config, "train", "-d", "hr", "--data", str(data), "--steps", "20", "--lr", "0.3", "--promote",
                       capsys=capsys)
    assert code == 0 and "not promoted: " in out
    with registry_of(config) as reg:
        adapters = reg.list_adapters("hr")
        assert [a.status for a in adapters] == ["candidate", "active", "candidate"]
        assert adapters[0].metrics["learned"] == 0.0
        assert adapters[0].metrics["train_rouge-l"] < adapters[0].metrics["train_rouge-l_base"] + LEARNED_MIN_GAIN
    runs = sorted((tmp_path / "runs" / "hr").iterdir())
    first = json.loads((runs[0] / "run.json").read_text())
    assert first["learned"] is False and first["promoted"] is False
    checked = [json.loads(line) for line in (runs[0] / "learning_check.jsonl").read_text().splitlines()]
    assert len(checked) == 12 and set(checked[0]) == {"prompt", "labels", "base", "prefix"}


def test_resume_continues_with_the_same_optimizer_state(tmp_path):
    """30 steps interrupted after 20 and resumed give bit-identical results to 30 straight steps."""
    from glmbot import load_base
    from glmbot.config import TrainSettings
    from glmbot.training.data import encode_all, load_examples
    from glmbot.training.trainer import PrefixTrainer, TrainingInterrupted

    model, tok = load_base("builtin:tiny", device="cpu")
    encoded, _ = encode_all(tok, load_examples("builtin:support")[:64], 64, 128)
    settings = TrainSettings(max_steps=30, checkpoint_every=10, batch_size=8)
    straight = PrefixTrainer(model, settings, tmp_path / "a").fit(encoded)
    steps = iter(range(100))
    stopper = PrefixTrainer(model, settings, tmp_path / "b", should_stop=lambda: next(steps) >= 20)
    with pytest.raises(TrainingInterrupted):
        stopper.fit(encoded)
    assert (tmp_path / "b" / "checkpoint-20").is_dir()
    resumed = PrefixTrainer(model, settings, tmp_path / "b").fit(encoded, resume=True)
    assert resumed.resumed_from == 20 and resumed.losses == straight.losses
    a, b = straight.encoder.state_dict(), resumed.encoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


# Runs glmbot and kills itself (SIGKILL, as `kill -9`) right after writing checkpoint-KILL_AT.
KILLED_AFTER_CHECKPOINT = """
import os, signal, sys
from glmbot.training import trainer
save = trainer.PrefixTrainer._save_checkpoint
def save_then_die(self, encoder, opt, sched, step, losses):
    save(self, encoder, opt, sched, step, losses)
    if step == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)
trainer.PrefixTrainer._save_checkpoint = save_then_die
from glmbot.cli.main import run
sys.argv = ["glmbot", *sys.argv[1:]]
run()
"""


def test_killed_training_resumes_with_its_own_plan(tmp_path, capsys):
    config = make_project(tmp_path, "batch_size = 4")  # [train] max_steps stays the default: the plan must win
    data = write_hr(tmp_path)
    assert cli(config, "domains", "add", "hr", capsys=capsys)[0] == 0  # no data stored: only the run knows it
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_CHECKPOINT, "train", "-d", "hr", "--data", str(data), "--max-steps", "6",
         "--checkpoint-every", "2", "--learning-rate", "0.01", "--no-eval"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
        env={**source_env(), "GLMBOT_CONFIG": str(config), "KILL_AT": "4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (run_dir,) = (tmp_path / "runs" / "hr").iterdir()
    assert (run_dir / "checkpoint-4").is_dir() and not (run_dir / "adapter_model.safetensors").exists()
    plan = json.loads((run_dir / "plan.json").read_text())
    assert plan["data"] == str(data.resolve()) and plan["train"]["max_steps"] == 6
    assert plan["train"]["learning_rate"] == 0.01 and plan["train"]["batch_size"] == 4

    # A flag that differs from the plan, or a changed data file, is refused by name.
    code, _, err = cli(config, "train", "-d", "hr", "--resume", "--steps", "8", "--lr", "0.01", capsys=capsys)
    assert code == 1 and "--steps 8 differs from the run's plan (--steps 6)" in err and "--lr" not in err
    original = data.read_text(encoding="utf-8")
    data.write_text(original + json.dumps({"prompt": "加班费怎么算？", "response": "按国家规定。"}, ensure_ascii=False),
                    encoding="utf-8")
    code, _, err = cli(config, "train", "-d", "hr", "--resume", capsys=capsys)
    assert code == 1 and f"the data file {data.resolve()} changed since the run started" in err
    data.write_text(original, encoding="utf-8")
    assert not (run_dir / "adapter_model.safetensors").exists()

    code, out, err = cli(config, "train", "-d", "hr", "--resume", "--steps", "6", capsys=capsys)
    assert code == 0, err
    assert "resumed at step 4" in out and "--data" not in err
    losses = (run_dir / "loss.csv").read_text().splitlines()[1:]
    assert len(losses) == 6  # the plan's 6 steps, not [train] max_steps
    assert json.loads((run_dir / "run.json").read_text())["steps"] == 6
    with registry_of(config) as reg:
        (adapter,) = reg.list_adapters("hr")
        assert adapter.hyperparams["max_steps"] == 6 and adapter.hyperparams["steps_run"] == 6
        assert adapter.hyperparams["learning_rate"] == 0.01 and adapter.sample_count == 12
    code, _, err = cli(config, "train", "-d", "hr", "--resume", capsys=capsys)
    assert code == 1 and "finished and registered its adapter: nothing to resume" in err


def test_two_process_gloo_training_registers_once(tmp_path):
    config = make_project(tmp_path, "max_steps = 6\nbatch_size = 4\ncheckpoint_every = 0")
    result = cli_process(config, "train", "-d", "support", "--no-eval", "--nproc", "2", timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    run = next((tmp_path / "runs" / "support").iterdir())
    ranks = [json.loads((run / f"data-rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    seen0, seen1 = set(ranks[0]["examples"]), set(ranks[1]["examples"])
    assert seen0 and seen1 and not seen0 & seen1
    with registry_of(config) as reg:
        assert len(reg.list_adapters("support")) == 1


@pytest.mark.parametrize("args,message", [
    (("--data", "nope.jsonl"), "does not exist"),
    (("--data", "{bad}"), ":2: malformed JSON"),
    (("--data", "{cols}"), "columns found: question, answer"),
    (("--data", "{empty}"), "holds no examples"),
    (("--data", "{gbk}"), "not UTF-8"),
    (("--data", "{hist}"), "history must be a list of"),
    (("--data", "{blank}"), "blank.jsonl:1: the answer ('response') is empty"),
])
def test_bad_training_input_fails_before_training(tmp_path, capsys, args, message):
    config = make_project(tmp_path)
    files = {"bad": '{"prompt": "a", "response": "b"}\n{"prompt": ', "cols": '{"question": "a", "answer": "b"}',
             "empty": "\n", "hist": '{"prompt": "a", "response": "b", "history": [["q"]]}',
             "blank": '{"prompt": "a", "response": ""}'}
    for name, text in files.items():
        (tmp_path / f"{name}.jsonl").write_text(text, encoding="utf-8")
    (tmp_path / "gbk.jsonl").write_bytes('{"prompt": "你好", "response": "好"}'.encode("gbk"))
    args = tuple(a.format(**{n: str(tmp_path / f"{n}.jsonl") for n in [*files, "gbk"]}) for a in args)
    code, out, err = cli(config, "train", "-d", "support", *args, capsys=capsys)
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
    with registry_of(config) as reg:
        assert reg.list_adapters() == []


def test_format_from_columns_uncovered_characters_and_plain_progress(tmp_path, capsys):
    config = make_project(tmp_path)
    # AdvertiseGen columns, and answers full of characters no tokenizer has (Egyptian hieroglyphs).
    rows = [{"content": "𓀀𓀁𓀂 类型#裙", "summary": "𓀀𓀁𓀂𓀃𓀄 好看"}, {"content": "类型#上衣", "summary": "𓀅𓀆 百搭"}]
    data = tmp_path / "ads.jsonl"
    data.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    code, out, err = cli(config, "train", "-d", "support", "--data", str(data), "--steps", "2", "--no-eval",
                         capsys=capsys)
    assert code == 0, err
    assert re.search(r"^\s*format\s+advertisegen: content -> summary, read from the columns\s*$", out, re.M)
    found = re.search(r"^\s*not in vocabulary\s+(\d+) characters \(first: (\S+)\); ([\d.]+)% of", out, re.M)
    assert found and int(found[1]) >= 7 and found[2].startswith("𓀀𓀁𓀂") and float(found[3]) > 2
    assert "fall back to byte tokens the base never learned, so the builtin base cannot learn them" in err
    assert 'in glmbot.toml set [model] base_model = "THUDM/chatglm2-6b"' in err
    # Not a terminal: plain progress lines (the first and last step at least), no Rich bar.
    steps = re.findall(r"^support step (\d)/2 loss [\d.]+ lr \S+ [\d,]+ tokens/s ETA (-|\d:\d\d:\d\d)$", out, re.M)
    # No ETA after the first step alone: it pays for start-up too (a newcomer's 81 s run said 0:12:08).
    assert steps == [("1", "-"), ("2", "0:00:00")] and "━" not in out
    plan = json.loads(next((tmp_path / "runs" / "support").glob("*/plan.json")).read_text())
    assert plan["columns"] == {"fmt": "advertisegen", "prompt": "content", "response": "summary", "history": ""}


def test_a_question_with_two_answers_is_pointed_out_before_training(tmp_path, capsys):
    """Found by a newcomer: an edit left 有淋浴吗？ with two answers, and training blended them silently."""
    config = make_project(tmp_path)
    rows = [("有淋浴吗？", "有，更衣室有淋浴。"), ("年卡多少钱？", "年卡3680元。"), ("有淋浴吗？", "没有淋浴。"),
            ("年卡多少钱？", "年卡3680元。")]  # the same answer twice is fine
    data = tmp_path / "yoga.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "response": r}, ensure_ascii=False) for p, r in rows),
                    encoding="utf-8")
    code, _, err = cli(config, "train", "-d", "support", "--data", str(data), "--steps", "1", "--no-eval",
                       capsys=capsys)
    assert code == 0, err
    assert "warning: 1 question(s) of the data have more than one answer (有淋浴吗？)" in err
    # A file of a few lines is learned by heart: said before training (a newcomer's 3 lines trained silently).
    assert "warning: only 4 example(s): the prefix learns these questions and little else" in " ".join(err.split())
    assert "keep one answer per question" in err and "年卡" not in err


@pytest.mark.parametrize("args,message", [
    (("--lr", "abc"), "--lr 'abc' is not a number: give a learning rate between 0 and 1, e.g. --lr 1e-1"),
    (("--learning-rate", "2"), "--learning-rate 2: must be a learning rate between 0 and 1, e.g. --learning-rate 1e-1"),
    (("--steps", "-1"), "--steps -1: must be a whole number of optimizer steps >= 0 (0 = train by --epochs), "
                        "e.g. --steps 200"),
    (("--max-steps", "1.5"), "--max-steps '1.5' is not a whole number"),  # the alias the user typed
    (("--max-steps=x",), "--max-steps 'x' is not a whole number"),
    (("--batch-size", "0"), "--batch-size 0: must be a micro-batch size > 0, e.g. --batch-size 16"),
    (("--epochs", "-2"), "--epochs -2: must be a number of passes over the data >= 0"),
    (("--steps", "0"), "--steps 0 trains by epochs, but no epochs are set: add --epochs N"),
    (("--format", "xml"), "unknown data format 'xml': use one of auto, chat, advertisegen"),
])
def test_bad_flag_values_name_the_flag_the_value_and_the_fix(tmp_path, capsys, args, message):
    config = make_project(tmp_path)
    code, out, err = cli(config, "train", "-d", "support", *args, capsys=capsys)
    assert code == 1 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_unknown_domain_offers_the_command_that_adds_it(tmp_path, capsys):
    config = make_project(tmp_path)
    code, out, err = cli(config, "train", "-d", "hr", "--data", "builtin:support", capsys=capsys)
    assert code == 1 and "glmbot domains add hr" in err
    said = " ".join(err.split())
    assert "glmbot.toml: ads, support; add it with" in said and "did you mean" not in said


def test_a_misspelled_domain_gets_the_close_one(tmp_path, capsys):
    code, out, err = cli(make_project(tmp_path), "train", "-d", "suport", capsys=capsys)
    assert code == 1 and "did you mean 'support'?" in " ".join(err.split())
    assert not (tmp_path / "runs").exists()
    # Every command that takes a domain says it (a newcomer's `domains show dentl` only offered to add it).
    for args in (("domains", "show", "suport"), ("adapters", "list", "--domain", "suport"), ("adapters", "show", "suport")):
        code, out, err = cli(make_project(tmp_path / args[0]), *args, capsys=capsys)
        assert code == 1 and "did you mean 'support'?" in " ".join(err.split()), (args, err)


def test_eval_scores_a_predictions_file_like_the_official_recipe(tmp_path, capsys):
    from glmbot.training.metrics import score

    path = tmp_path / "generated_predictions.txt"
    rows = [{"labels": "七天无理由退货", "predict": "支持七天无理由退货"}, {"labels": "你好", "predict": ""}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    code, out, _ = cli(make_project(tmp_path / "p"), "eval", "--predictions", str(path), capsys=capsys)
    expected = score([r["predict"] for r in rows], [r["labels"] for r in rows])
    assert code == 0 and f"{expected['rouge-l']:.2f}" in out and f"{expected['bleu-4']:.2f}" in out


def test_promote_without_dev_data_judges_a_retrain_by_its_training_questions(tmp_path):
    # Found by a newcomer: with no dev data, `train --promote` of a fixed data file never replaced v1
    # ("has no rouge-l (no dev data?)"), so chat kept answering from the old prefix.
    from glmbot.registry import Registry
    from glmbot.training.evaluate import LearningCheck
    from glmbot.training.pipeline import _maybe_promote
    from registry_fixtures import register

    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "adapters")
    registry.add_domain("hr")
    settings = TrainSettings()

    def trained(seed: int, sha: str, rouge_l: float):
        adapter = register(registry, "hr", seed=seed, dataset_sha256=sha, metrics={"train_rouge-l": rouge_l})
        return adapter, LearningCheck(rouge_l, 20.0, 12, learned=True)

    first, check = trained(0, "a" * 64, 90.0)
    assert _maybe_promote(registry, first, "better", "rouge-l", check, settings) == (True, "first adapter of the domain")
    same, check = trained(1, "a" * 64, 88.0)  # the same data, no better: v1 stays
    promoted, why = _maybe_promote(registry, same, "better", "rouge-l", check, settings)
    assert not promoted and "same data as the active hr@v1" in why and "88.0" in why and "90.0" in why
    better, check = trained(2, "a" * 64, 97.0)
    assert _maybe_promote(registry, better, "better", "rouge-l", check, settings)[0]
    fixed, check = trained(3, "b" * 64, 80.0)  # the user's corrected file: other data, learned it
    promoted, why = _maybe_promote(registry, fixed, "better", "rouge-l", check, settings)
    assert promoted and "other data than the active hr@v3" in why
    assert registry.resolve("hr").version == 4
    # Without a learning check (--no-eval) there is nothing to judge by: refused, naming the fix.
    blind = register(registry, "hr", seed=5, dataset_sha256="c" * 64)
    promoted, why = _maybe_promote(registry, blind, "better", "rouge-l", None, settings)
    assert not promoted and "use --promote force" in why
    # The active one unscored on its training questions (trained with --no-eval): the learned one goes in.
    registry.promote(blind.ref)
    again, check = trained(6, "c" * 64, 95.0)
    promoted, why = _maybe_promote(registry, again, "better", "rouge-l", check, settings)
    assert promoted and "has no score on its training questions" in why
    # An active adapter scored on dev data is not replaced by one that has no dev score.
    scored = register(registry, "hr", seed=7, dataset_sha256="c" * 64, metrics={"rouge-l": 40.0})
    registry.promote(scored.ref)
    unscored, check = trained(8, "d" * 64, 99.0)
    promoted, why = _maybe_promote(registry, unscored, "better", "rouge-l", check, settings)
    assert not promoted and f"the active {scored.ref} has" in why
    registry.close()


def test_eta_leaves_out_the_first_step_and_waits_for_a_few_more():
    from glmbot.training.trainer import ETA_STEPS, StepInfo

    # 2.4 s of start-up in step 1: no time left shown; nor at step 2, which took 5.4 s on a newcomer's
    # machine and made a 2-minute run say 27 minutes.
    assert StepInfo(1, 300, 1.0, 0.1, 0.0, 2.4).eta_s is None
    assert StepInfo(2, 300, 1.0, 0.1, 0.0, 7.8, recent_step_s=(5.4,)).eta_s is None
    # Then the median of the latest steps: one slow step does not move it.
    steps = (5.4,) + (0.3,) * (ETA_STEPS - 1)
    assert StepInfo(1 + len(steps), 300, 1.0, 0.1, 0.0, 8.4, recent_step_s=steps).eta_s == pytest.approx(
        0.3 * (300 - 1 - len(steps)))
