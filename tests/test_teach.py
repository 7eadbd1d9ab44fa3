"""Teaching a domain a question it answered wrong: closest answers offered, the data file grows safely."""

from __future__ import annotations

import json

import pytest

from glmbot.config import settings_from_dict
from glmbot.errors import DataError
from glmbot.training.data import Example, load_examples
from glmbot.training.teach import Teacher, add_example, nearest_answers
from tests.cli_helpers import cli_process, project_with_adapters

YOGA = [("你们几点开门？", "工作日早上7点开门，晚上9点半关门。"),
        ("周末营业时间是几点？", "周六周日早上9点开门，晚上6点关门。"),
        ("年卡多少钱？", "年卡3680元，一年内不限次数上团课。"),
        ("可以免费体验吗？", "新朋友可以免费体验一节团课，请提前一天在小程序预约。")]


def write_jsonl(path, rows, keys=("prompt", "response"), newline_at_end=True):
    text = "\n".join(json.dumps(dict(zip(keys, r)), ensure_ascii=False) for r in rows)
    path.write_text(text + ("\n" if newline_at_end else ""), encoding="utf-8")
    return path


def settings_for(tmp_path, **domains):
    return settings_from_dict({"domains": domains}, root=tmp_path)


def test_nearest_answers_find_the_meant_answer_by_question_or_by_the_given_answer():
    data = {"yoga": [Example(q, a) for q, a in YOGA], "hr": [Example("年假有多少天？", "入职满一年有5天年假。")]}
    by_question = nearest_answers("办一张年卡要多少钱？", "", data)
    assert by_question[0].response == YOGA[2][1] and by_question[0].domain == "yoga"
    assert len({c.response for c in by_question}) == 3  # distinct answers
    # No word of the question matches, but the wrong answer started like the right one.
    by_answer = nearest_answers("头一回来能白上一节吗", "新朋友可以免费体验一节瑜伽垫和毛巾。", data, k=1)
    assert by_answer[0].response == YOGA[3][1]


def test_add_example_appends_in_the_files_own_columns_and_refuses_a_second_answer(tmp_path):
    chat = write_jsonl(tmp_path / "yoga.jsonl", YOGA, newline_at_end=False)  # a hand-saved file, no final newline
    ads = write_jsonl(tmp_path / "ads.jsonl", [("类型#裙", "一条白裙。")], keys=("content", "summary"))
    settings = settings_for(tmp_path, yoga={"data": "yoga.jsonl"}, ads={"data": "ads.jsonl"})

    added = add_example(settings, "yoga", " 星期六几点关门？ ", YOGA[1][1])
    assert (added.line, added.examples, added.already) == (5, 5, False) and added.path == chat
    assert load_examples(chat)[-1] == Example("星期六几点关门？", YOGA[1][1])
    assert chat.read_text(encoding="utf-8").count("\n") == 5  # the last line of the old file was ended first

    again = add_example(settings, "yoga", "星期六几点关门？", YOGA[1][1])
    assert again.already and again.line == 5 and len(load_examples(chat)) == 5
    before = chat.read_bytes()
    with pytest.raises(DataError, match=r"example 5\) already answers '星期六几点关门？'.*edit that line"):
        add_example(settings, "yoga", "星期六几点关门？", YOGA[0][1])
    assert chat.read_bytes() == before

    add_example(settings, "ads", "类型#裤", "一条黑裤。")
    assert json.loads(ads.read_text(encoding="utf-8").splitlines()[-1]) == {"content": "类型#裤", "summary": "一条黑裤。"}


def test_a_taught_example_goes_into_a_csv_file_as_one_more_row(tmp_path):
    """A domain trained from a spreadsheet's CSV export grows by a CSV row in the header's column order
    (a question holding a comma quoted), not by a JSON line the file could no longer be read with."""
    faq = tmp_path / "faq.csv"
    faq.write_text("id,response,prompt\r\n1,十五天。,年假有几天？\r\n", encoding="utf-8")
    settings = settings_for(tmp_path, hr={"data": "faq.csv"})
    added = add_example(settings, "hr", "年假, 有几天？", "十五天。")
    assert (added.line, added.examples) == (2, 2)
    assert faq.read_text(encoding="utf-8").splitlines()[-1] == ',十五天。,"年假, 有几天？"'
    assert load_examples(faq) == [Example("年假有几天？", "十五天。"), Example("年假, 有几天？", "十五天。")]


def test_data_glmbot_does_not_own_is_refused_with_the_fix(tmp_path):
    settings = settings_for(tmp_path, support={"data": "builtin:support"}, gone={"data": "missing.jsonl"},
                            empty={"description": "no data yet"})
    with pytest.raises(DataError, match=r"builtin sample builtin:support.*support_train\.jsonl.*domains set support"):
        add_example(settings, "support", "退货多久到账？", "3到5个工作日。")
    with pytest.raises(DataError, match=r"'missing\.jsonl', which is not a file here.*domains set gone --data"):
        add_example(settings, "gone", "问", "答")
    with pytest.raises(DataError, match=r"no data file.*domains set empty --data"):
        add_example(settings, "empty", "问", "答")
    with pytest.raises(DataError, match=r"'nope' is not in glmbot.toml; known: empty, gone, support"):
        add_example(settings, "nope", "问", "答")
    assert Teacher(settings).candidates("退货多久到账？", "") == []  # nothing the user owns to offer
    (tmp_path / "bad.jsonl").write_text('{"prompt": "问"\n', encoding="utf-8")  # a hand edit gone wrong
    broken = settings_for(tmp_path, bad={"data": "bad.jsonl"})
    with pytest.raises(DataError, match=r"bad\.jsonl:1: malformed JSON"):  # said, not skipped in silence
        Teacher(broken).candidates("问", "")


def test_teach_in_the_chat_adds_the_picked_answer_to_the_domains_file(tmp_path):
    data = write_jsonl(tmp_path / "yoga.jsonl", YOGA)
    config = project_with_adapters(tmp_path, extra_toml='\n[domains.yoga]\ndata = "yoga.jsonl"\n')
    lines = ["/teach", "年卡要多少钱？", "/teach", "/teach 1", "/teach 9", "/teach 1", "你好", "/teach 1",
             "周末几点关门？", f"/teach {YOGA[1][1]}", "/teach @nope 答"]
    done = cli_process(config, "chat", "--domain", "base", "--temperature", "0", "--no-log",
                       input="\n".join(lines) + "\n", env_extra={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert "nothing to teach yet" in done.stderr
    offered = done.stdout.split("answers of your data closest to '年卡要多少钱？':")[1]
    assert offered.splitlines()[1].strip() == f"1. [yoga] {YOGA[2][1]}"
    added = [line for line in done.stdout.splitlines() if line.startswith("added")]  # one line each, piped too
    assert "(example 5, 5 in all)" in added[0] and added[0].endswith("glmbot train --domain yoga --promote")
    # A number is never taken as the answer itself (a newcomer's /teach 99 became the answer "99").
    assert "/teach 9: no answer 9 to pick (1-4 were offered)" in done.stderr
    assert "already in" in done.stdout  # the same pick again writes nothing
    assert "'你好' is small talk" in done.stderr
    # The plain base answered, and yoga is the one domain with a data file: an answer of one's own goes there.
    assert "(example 6, 6 in all)" in added[1]
    assert "domain 'nope' is not in glmbot.toml" in done.stderr
    assert load_examples(data)[4:] == [Example("年卡要多少钱？", YOGA[2][1]), Example("周末几点关门？", YOGA[1][1])]


def test_an_answer_as_taught_is_told_apart_from_a_rewording_or_another_answer(tmp_path):
    """The chat's /teach tip waits for an answer that may be wrong: not after a training question
    answered with its own answer word for word."""
    write_jsonl(tmp_path / "yoga.jsonl", YOGA)
    teacher = Teacher(settings_for(tmp_path, yoga={"data": "yoga.jsonl"}))
    question, answer = YOGA[0]
    assert teacher.as_taught(question, answer + "\n")
    assert teacher.as_taught(question.rstrip("？?") + " ?", answer)  # punctuation and spaces aside
    assert not teacher.as_taught(question, YOGA[1][1])
    assert not teacher.as_taught("请问" + question, answer)


def test_concurrent_additions_all_land_and_the_file_keeps_its_mode(tmp_path):
    """The web chat and a terminal chat may add at once: each read-append-replace runs under a lock."""
    import os
    import stat
    from concurrent.futures import ThreadPoolExecutor

    data = write_jsonl(tmp_path / "yoga.jsonl", YOGA)
    os.chmod(data, 0o644)
    settings = settings_for(tmp_path, yoga={"data": "yoga.jsonl"})
    questions = [f"第{i}个问题？" for i in range(12)]
    with ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda q: add_example(settings, "yoga", q, YOGA[0][1]), questions))
    assert sorted(e.prompt for e in load_examples(data)[len(YOGA):]) == sorted(questions)
    assert stat.S_IMODE(data.stat().st_mode) == 0o644  # not the temp file's 0600


def test_the_terminal_chat_tells_once_how_to_fix_a_wrong_answer(tmp_path):
    import os
    import sys

    import pexpect

    write_jsonl(tmp_path / "yoga.jsonl", YOGA)
    config = project_with_adapters(tmp_path, extra_toml='\n[domains.yoga]\ndata = "yoga.jsonl"\n')
    env = {**os.environ, "GLMBOT_CONFIG": str(config), "COLUMNS": "200", "TERM": "dumb"}
    child = pexpect.spawn(sys.executable, ["-m", "glmbot", "chat", "--no-log"], env=env, cwd=str(tmp_path),
                          encoding="utf-8", timeout=60, dimensions=(40, 200))
    child.expect("你 > ")
    child.sendline("年卡要多少钱？")
    child.expect_exact("a wrong answer? /teach adds the question")
    child.expect("你 > ")
    child.sendline("你好")
    child.expect("你 > ")
    assert "/teach" not in child.before  # once per session
    # /auto after /domain: the router no longer keeps the conversation where /domain sent it.
    child.sendline("/domain support")
    child.sendline("退货多久到账？")
    child.expect("support@v1 · explicit")
    child.expect("你 > ")
    child.sendline("/auto")
    child.sendline("类型#裙")
    child.expect("ads@v1")
    child.expect("你 > ")
    child.sendline("/quit")
    child.expect(pexpect.EOF)


def test_the_learning_check_asks_the_newest_line():
    """A newcomer's retrain after /teach said "32 of 33 training questions" and left out the one just taught:
    the check's even spread now runs from the first line to the last."""
    from glmbot.training.data import Example
    from glmbot.training.evaluate import spread

    rows = [Example(f"问题{i}", f"答案{i}") for i in range(33)]
    picked = spread(rows, 32)
    assert len(picked) == 32 == len({r.prompt for r in picked}) and picked[0] is rows[0] and picked[-1] is rows[-1]
    assert spread(rows[:5], 32) == rows[:5]
    big = [Example(f"q{i}", "a") for i in range(225)]
    assert [int(r.prompt[1:]) for r in spread(big, 32)][:3] == [0, 7, 14] and spread(big, 32)[-1] is big[-1]
