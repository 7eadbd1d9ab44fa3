"""Training data: official layout, per-batch padding, and one clear error per bad input."""

from __future__ import annotations

import json

import pytest

from glmbot.errors import DataError
from glmbot.training.data import (
    Columns,
    Example,
    collate,
    encode_all,
    encode_example,
    length_grouped_batches,
    load_data,
    load_examples,
)


@pytest.fixture
def tok(sp_model_file):
    from glmbot.model.tokenizer import ChatGLMTokenizer

    return ChatGLMTokenizer(sp_model_file)


def write_lines(path, lines):
    path.write_text("\n".join(l if isinstance(l, str) else json.dumps(l, ensure_ascii=False) for l in lines),
                    encoding="utf-8")
    return path


def test_official_layout(tok):
    enc = encode_example(tok, Example("你好", "你好！"), 64, 128)
    prompt = tok.encode("[Round 1]\n\n问：你好\n\n答：")
    answer = tok.encode("你好！", add_special_tokens=False)
    assert enc.input_ids == prompt + answer + [tok.eos_token_id]
    assert enc.labels == [-100] * len(prompt) + answer + [tok.eos_token_id]


def test_truncation_keeps_current_question_and_cuts_answers(tok):
    history = tuple((f"问题{i}再见再见", "回答谢谢谢谢") for i in range(6))
    enc = encode_example(tok, Example("请问订单什么时候发货？", "退货需要几天到账？" * 5, history), 40, 6)
    assert enc.prompt_truncated and enc.answer_truncated
    prompt = [t for t, l in zip(enc.input_ids, enc.labels) if l == -100]
    assert len(prompt) <= 40 and tok.decode(prompt).endswith("问：请问订单什么时候发货？\n\n答：")
    assert enc.answer_tokens == 7  # 6 answer tokens + eos


def test_batches_are_padded_per_batch_and_grouped_by_length(tok):
    texts = ["好", "你好你好你好你好你好你好你好你好", "谢谢", "请问订单什么时候发货？请问订单什么时候发货？"]
    encoded, summary = encode_all(tok, [Example(t, t) for t in texts], 64, 128)
    batches = length_grouped_batches([len(e.input_ids) for e in encoded], 2, seed=0)
    assert sorted(i for b in batches for i in b) == [0, 1, 2, 3]
    short = next(b for b in batches if 0 in b)
    assert 2 in short  # the two short rows share a batch
    batch = collate([encoded[i] for i in short], tok.pad_token_id)
    assert batch["input_ids"].shape[1] == max(len(encoded[i].input_ids) for i in short)
    assert summary.samples == 4 and summary.answer_tokens == sum(e.answer_tokens for e in encoded)


def test_chat_and_advertisegen_shapes(tmp_path):
    chat = write_lines(tmp_path / "chat.jsonl", [{"prompt": "a", "response": "b", "history": [["q", "r"]]}])
    assert load_examples(chat) == [Example("a", "b", (("q", "r"),))]
    ads = write_lines(tmp_path / "ads.jsonl", [{"content": "类型#裙", "summary": "好看"}])
    assert load_examples(ads, "advertisegen") == [Example("类型#裙", "好看")]
    assert len(load_examples("builtin:support")) >= 200


def test_format_is_read_from_the_columns_and_an_explicit_one_overrides(tmp_path):
    chat = write_lines(tmp_path / "chat.jsonl", [{"prompt": "a", "response": "b", "history": [["q", "r"]]}])
    ads = write_lines(tmp_path / "ads.jsonl", [{"content": "类型#裙", "summary": "好看"}])
    assert load_data(chat).columns == Columns("chat", "prompt", "response", "history")
    loaded = load_data(ads)
    assert loaded.columns == Columns("advertisegen", "content", "summary") and loaded.examples == [Example("类型#裙", "好看")]
    both = write_lines(tmp_path / "both.jsonl", [{"prompt": "p", "response": "r", "content": "c", "summary": "s"}])
    assert load_examples(both, "advertisegen") == [Example("c", "s")]
    assert load_examples(both, "chat") == [Example("p", "r")]
    named = write_lines(tmp_path / "named.jsonl", [{"question": "q", "answer": "a"}])
    assert load_data(named, prompt_column="question", response_column="answer").examples == [Example("q", "a")]


@pytest.mark.parametrize("row,message", [
    ({"prompt": "p", "response": "r", "content": "c", "summary": "s"},
     r"both.jsonl:1: columns found: prompt, response, content, summary, which fit both .*"
     r"pick one with --format chat or --format advertisegen"),
    ({"question": "q", "answer": "a"},
     r"both.jsonl:1: cannot tell the data format: columns found: question, answer, but it needs "
     r"prompt/response \(chat\) or content/summary \(advertisegen\); .*--prompt-column question --response-column answer"),
    ({"prompt": "q", "reponse": "a"},  # a newcomer's typo is named with the column it stands for
     r"columns found: prompt, reponse, but it needs .* \(a typo\? 'reponse' for 'response'\); rename"),
])
def test_ambiguous_or_unknown_columns_name_what_was_seen_and_the_fix(tmp_path, row, message):
    path = write_lines(tmp_path / "both.jsonl", [row])
    with pytest.raises(DataError, match=message):
        load_data(path)


@pytest.mark.parametrize("lines,fmt,message", [
    (['{"prompt": "a", "response": "b"}', '{"prompt": "a", "response": '], "chat", r"x.jsonl:2: malformed JSON"),
    (['{"question": "a", "answer": "b"}'], "chat", r"missing column 'prompt'; columns found: answer, question"),
    ([""], "chat", "holds no examples"),
    (['{"prompt": "a", "response": "b", "history": ["q", "r"]}'], "chat", "history must be a list of"),
    (['["a", "b"]'], "chat", "must be a JSON object"),
    (['{"content": "a"}'], "advertisegen", "missing column 'summary'"),
    (['{"prompt": "a", "response": "b"}', '{"prompt": "c"}'], "auto",
     r"x.jsonl:2: no 'response' on this line \(the lines use 'prompt' and 'response'\); every line needs both"),
    (['[', '{"prompt": "a", "response": "b"}', ']'], "chat", r"x.jsonl:1: malformed JSON .*one JSON object per line"),
    (['{"prompt": "a", "response": "b",}'], "chat", r"x.jsonl:1: malformed JSON .*fix that line.*stray comma"),
    (['{"prompt": "a", "response": "b"}', '{"prompt": "c", "response": " "}'], "chat",
     r"x.jsonl:2: the answer \('response'\) is empty"),
])
def test_bad_files_give_one_clear_error(tmp_path, lines, fmt, message):
    path = write_lines(tmp_path / "x.jsonl", lines)
    with pytest.raises(DataError, match=message):
        load_examples(path, fmt)


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "notepad.jsonl"  # Windows Notepad's "UTF-8 with BOM"
    path.write_bytes(b"\xef\xbb\xbf" + '{"prompt": "年假有几天？", "response": "十五天。"}\n'.encode())
    assert load_examples(path) == [Example("年假有几天？", "十五天。")]


def test_missing_file_and_non_utf8(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_examples(tmp_path / "nope.jsonl")
    bad = tmp_path / "gbk.jsonl"
    bad.write_bytes('{"prompt": "a", "response": "b"}\n'.encode() + '{"prompt": "你好"}'.encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.jsonl:2: not UTF-8"):
        load_examples(bad)
    # The decoder drops a byte order mark; the line named is still the file's own.
    bad.write_bytes(b"\xef\xbb\xbf" + '{"prompt": "a", "response": "b"}\n'.encode() * 2 + "你好".encode("gbk"))
    with pytest.raises(DataError, match=r"gbk.jsonl:3: not UTF-8 text \(byte 0xc4\)"):
        load_examples(bad)
    with pytest.raises(DataError, match="builtin:support"):
        load_examples("builtin:nothing")


def test_all_answers_truncated_away(tok):
    with pytest.raises(DataError, match="every answer is empty"):
        encode_all(tok, [Example("你好", "")], 64, 128)


def test_coverage_counts_characters_the_tokenizer_spells_in_bytes(tok):
    from glmbot.training.coverage import COVERAGE_WARN_SHARE, fallback_ids, tokenizer_coverage

    # The test tokenizer knows 你好/谢谢 (its corpus); Egyptian hieroglyphs (4 UTF-8 bytes each) no tokenizer has.
    examples = [Example("你好\n", "谢谢𓀀𓀁"), Example("𓀂你好", "你好"), Example("谢谢", "再见𓀀", (("𓀃", "好"),))]
    encoded, _ = encode_all(tok, examples, 64, 128)
    report = tokenizer_coverage(tok, examples, encoded)
    assert report.uncovered_chars == 4 and report.first_uncovered == "𓀀𓀁𓀂𓀃"  # newline is not counted
    answers = [tok.encode(e.response, add_special_tokens=False) for e in examples]
    assert report.answer_tokens == sum(map(len, answers))
    assert report.byte_answer_tokens == 3 * 4  # 𓀀𓀁 and 𓀀: four byte pieces each
    assert report.byte_share == 12 / report.answer_tokens and report.too_low
    assert tok.encode("\n", add_special_tokens=False)[0] not in fallback_ids(tok)
    clean = [Example("你好", "谢谢")]
    clean_report = tokenizer_coverage(tok, clean, encode_all(tok, clean, 64, 128)[0])
    assert clean_report.uncovered_chars == 0 and clean_report.byte_share == 0 < COVERAGE_WARN_SHARE


def test_a_spreadsheets_csv_or_tsv_export_is_read_by_its_header_row(tmp_path):
    """A newcomer's FAQ often lives in a spreadsheet: its CSV export (Excel's UTF-8 with a byte order
    mark, a quoted cell holding a comma, a cell over two lines, blank rows) and TSV are read as they
    are; the columns are detected as for JSONL."""
    csv_file = tmp_path / "faq.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + ('prompt,response\r\n年假有几天？,十五天。\r\n\r\n'
                                            '"能报销吗, 怎么报？","可以，月底提交发票。\n财务审核后打款。"\r\n').encode())
    assert load_examples(csv_file) == [Example("年假有几天？", "十五天。"),
                                       Example("能报销吗, 怎么报？", "可以，月底提交发票。\n财务审核后打款。")]
    tsv = tmp_path / "ads.tsv"
    tsv.write_text("content\tsummary\n类型#裙\t一条白裙。\n", encoding="utf-8")
    loaded = load_data(tsv)
    assert loaded.columns.fmt == "advertisegen" and loaded.examples == [Example("类型#裙", "一条白裙。")]
    with_history = tmp_path / "chat.csv"
    with_history.write_text('prompt,response,history\n那周末呢？,周末也开。,"[[""几点开门？"", ""九点。""]]"\n',
                            encoding="utf-8")
    assert load_examples(with_history) == [Example("那周末呢？", "周末也开。", (("几点开门？", "九点。"),))]


@pytest.mark.parametrize("name,text,message", [
    ("one.csv", "年假有几天？,十五天。\n", r"one.csv has one row \(年假有几天？, 十五天。\), read as its header.*prompt,response"),
    ("two.csv", "年假有几天？,十五天。\n工资几号发？,十号。\n",
     r"two.csv, header row: cannot tell the data format: columns found: 年假有几天？, 十五天。.*first row of a .csv file "
     r"is its header"),
    # Found by newcomers: Chinese column names (the flags to name them, in the header's order), a Chinese
    # keyboard's comma in the header or in a row, an Excel workbook.
    ("zh.csv", "问题,答案\n年假有几天？,十五天。\n",
     r"columns found: 问题, 答案, .*name them with --prompt-column 问题 --response-column 答案"),
    ("wide.csv", "prompt，response\n年假有几天？，十五天。\n",
     r"'prompt，response' is one column: cells are split at an ASCII comma ',', not at '，'"),
    ("wide_row.csv", "prompt,response\n年假有几天？，十五天。\n",
     r"wide_row.csv:2: the answer \('response'\) is empty.*the question cell is '年假有几天？，十五天。': cells are split"),
    ("faq.xlsx", "PK", r"faq.xlsx is a workbook \(Excel\), which glmbot does not read: save the sheet as CSV UTF-8"),
    ("extra.csv", "prompt,response\n年假,十五天,另算\n",
     r"extra.csv:2: 3 cells but the header row has 2 \(prompt, response\); put a cell that holds a comma in double quotes"),
    ("quote.csv", 'prompt,response\n"年假,十五天\n', r"quote.csv:\d+: malformed CSV"),
    ("empty.tsv", "\n", r"holds no examples; add rows under a header row"),
    ("short.csv", "prompt,response\n年假有几天？\n", r"short.csv:2: the answer \('response'\) is empty"),
    ("sheet.jsonl", "prompt,response\n", r"sheet.jsonl:1: malformed JSON .*name the file .csv"),
    ("sheet.txt", "月卡多少钱？\t299元\n", r"sheet.txt:1: malformed JSON .*name the file .tsv"),
    ("blank.csv", 'prompt,response,history\n问,答,not json\n', r"blank.csv:2: the history cell must be a JSON list"),
])
def test_a_bad_csv_gets_one_clear_error(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_examples(path)
