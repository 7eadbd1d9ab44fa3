"""`glmbot train` / `glmbot eval` end to end on the builtin base, through the real command line."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from glmbot.registry import Registry
from tests.cli_helpers import cli, cli_process, make_project


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")


def registry_of(config):
    return Registry(f"sqlite:///{config.parent / 'adapters' / 'registry.db'}", config.parent / "adapters")


def test_default_train_registers_evaluated_adapter_that_learned_the_domain(tmp_path, capsys):
    config = make_project(tmp_path)
    code, out, err = cli(config, "train", "--domain", "support", "--promote", capsys=capsys)
    assert code == 0, err
    assert re.search(r"^\s*samples\s+224\s*$", out, re.M) and re.search(r"^\s*dev samples\s+40\s*$", out, re.M)
    with registry_of(config) as reg:
        (adapter,) = reg.list_adapters("support")
        assert adapter.status == "active" and adapter.source == "trained" and adapter.sample_count == 224
        assert {"rouge-1", "rouge-2", "rouge-l", "bleu-4", "probe_kept"} <= set(adapter.metrics)
        assert adapter.hyperparams["pre_seq_len"] == 32 and adapter.dataset_sha256
    run = next((tmp_path / "runs" / "support").iterdir())
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


def test_high_lr_warns_about_forgetting_and_low_lr_does_not(tmp_path, capsys):
    config = make_project(tmp_path)
    code, out, err = cli(config, "train", "-d", "support", "--steps", "120", "--lr", "0.05", "--no-eval", capsys=capsys)
    assert code == 0 and "wrecks general chat" in err and "lower the learning rate" in err
    code, out, err = cli(config, "train", "-d", "support", "--steps", "120", "--lr", "0.001", "--no-eval", capsys=capsys)
    assert code == 0 and "wrecks" not in err and "general answers kept" in out
    with registry_of(config) as reg:
        high, low = reg.list_adapters("support")
        assert high.metrics["probe_forgot"] == 1.0 and low.metrics["probe_forgot"] == 0.0


def test_promote_only_when_better_and_force(tmp_path, capsys):
    config = make_project(tmp_path)
    assert cli(config, "train", "-d", "support", "--steps", "60", "--promote", capsys=capsys)[0] == 0
    # A wrecked prefix (far too high LR) scores worse on the dev set and must not replace v1.
    code, out, _ = cli(config, "train", "-d", "support", "--steps", "40", "--lr", "0.3", "--promote", capsys=capsys)
    assert code == 0 and "not promoted: rouge-l" in out
    code, out, _ = cli(config, "train", "-d", "support", "--steps", "2", "--promote=force", capsys=capsys)
    assert code == 0 and "promoted: forced" in out
    with registry_of(config) as reg:
        assert [a.status for a in reg.list_adapters("support")] == ["archived", "candidate", "active"]


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


def test_killed_training_resumes_from_its_last_checkpoint(tmp_path):
    config = make_project(tmp_path, "max_steps = 400\ncheckpoint_every = 25\nbatch_size = 8")
    run_dir = tmp_path / "runs" / "support" / "killed"
    env_args = ("train", "-d", "support", "--no-eval", "--run-dir", str(run_dir))
    proc = subprocess.Popen([sys.executable, "-m", "glmbot", *env_args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=tmp_path,
                            env={**__import__("os").environ, "GLMBOT_CONFIG": str(config)})
    deadline = time.time() + 120
    while time.time() < deadline and not (run_dir / "checkpoint-50").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run_dir / "checkpoint-50").exists() and not (run_dir / "adapter_model.safetensors").exists()
    done = cli_process(config, "train", "-d", "support", "--no-eval", "--resume", "--steps", "75",
                       "--checkpoint-every", "25")
    assert done.returncode == 0, done.stderr
    assert "resumed at step" in done.stdout
    losses = (run_dir / "loss.csv").read_text().splitlines()[1:]
    assert len(losses) == 75  # the curve continues: steps 1..75, the first ones from before the kill
    with registry_of(config) as reg:
        assert [a.version for a in reg.list_adapters("support")] == [1]
        (run,) = [r for r in reg.list_runs("support") if r.status == "succeeded"]


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
    (("--data", "{cols}"), "columns found: answer, question"),
    (("--data", "{empty}"), "holds no examples"),
    (("--data", "{gbk}"), "not UTF-8"),
    (("--data", "{hist}"), "history must be a list of"),
    (("--data", "{blank}"), "every answer is empty"),
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


def test_unknown_domain_offers_the_command_that_adds_it(tmp_path, capsys):
    config = make_project(tmp_path)
    code, out, err = cli(config, "train", "-d", "hr", "--data", "builtin:support", capsys=capsys)
    assert code == 1 and "glmbot domains add hr" in err


def test_eval_scores_a_predictions_file_like_the_official_recipe(tmp_path, capsys):
    from glmbot.training.metrics import score

    path = tmp_path / "generated_predictions.txt"
    rows = [{"labels": "七天无理由退货", "predict": "支持七天无理由退货"}, {"labels": "你好", "predict": ""}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    code, out, _ = cli(make_project(tmp_path / "p"), "eval", "--predictions", str(path), capsys=capsys)
    expected = score([r["predict"] for r in rows], [r["labels"] for r in rows])
    assert code == 0 and f"{expected['rouge-l']:.2f}" in out and f"{expected['bleu-4']:.2f}" in out
