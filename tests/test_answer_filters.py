"""Answer filters on a stream: the shipped sensitive-word plugin masks words (also split over
chunks) while the answer still streams, and with no words it leaves the stream exactly as it was."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from glmbot import hookspecs, load_base
from glmbot.config import settings_from_dict
from glmbot.errors import GenerationError
from glmbot.http import ServerThread, create_app
from glmbot.plugins import get_manager, reset_manager
from glmbot.serving.answer_filters import MaskWords, mask_words
from glmbot.serving.engine import Engine
from glmbot.serving.requests import GenerationRequest

REPO_PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
QUESTION = "你好"  # the tiny base answers 您好|，|欢迎光临|海盐|优选|！|请问|有什么|可以帮|您|？


@pytest.fixture(scope="module")
def base():
    return load_base("builtin:tiny", device="cpu")


def plugins_with(words: list[str]):
    """The repo's plugins (the default [plugins] paths) loaded for settings with these sensitive words."""
    reset_manager()
    settings = settings_from_dict({"plugins": {"paths": [str(REPO_PLUGINS)], "sensitive_words": words}})
    return settings, get_manager(settings, entry_points=False)


def request(max_new_tokens: int = 48) -> GenerationRequest:
    return GenerationRequest(query=QUESTION, domain="base", do_sample=False, max_new_tokens=max_new_tokens)


def chunks_of(base, settings=None, plugins=None) -> tuple[list[str], str]:
    model, tok = base
    with Engine(model, tok, settings=settings, plugins=plugins, max_len=128) as engine:
        handle = engine.submit(request())
        return list(handle.stream()), handle.result().text


@pytest.fixture(scope="module")
def plain(base) -> list[str]:
    chunks, text = chunks_of(base)
    assert len(chunks) >= 6 and "".join(chunks) == text
    return chunks


def words_across(chunks: list[str]) -> list[str]:
    """Sensitive words that the plain stream splits: over two chunks, over three, and one overlapping another."""
    two = chunks[2][-1] + chunks[3][0]  # 临海
    three = chunks[4][-1] + chunks[5] + chunks[6][0]  # 选！请
    return [chunks[3], two, three]  # 海盐 overlaps 临海


def test_mask_words_streamed_in_any_pieces_equals_the_whole_text():
    words = ["海盐", "临海", "选！请", "盐"]
    text = "您好，欢迎光临海盐优选！请问海盐有什么"
    whole = mask_words(text, words)
    assert whole == "您好，欢迎光***优***问**有什么"
    for size in (1, 2, 3, 5):
        masker, sent = MaskWords(words), ""
        assert masker.hold == 2
        for i in range(0, len(text), size):
            sent += masker.push(text[i:i + size])
            seen = len(text[:i + size])
            assert seen - len(sent) == min(seen, masker.hold)  # holds back the longest word - 1, no more
        assert sent + masker.finish() == whole


def test_filtered_stream_sends_chunks_before_the_end_and_never_a_masked_word(base, plain):
    words = words_across(plain)
    settings, manager = plugins_with(words)

    class Gate:
        """A second filter that stops the engine at its 4th piece until the reader has seen 3 chunks."""

        def __init__(self):
            self.reader_saw_three, self.pieces = threading.Event(), 0

        @hookspecs.hookimpl
        def register_answer_filters(self, register):
            register(lambda request: self)

        def push(self, text: str) -> str:
            self.pieces += 1
            if self.pieces == 4:
                assert self.reader_saw_three.wait(10)
            return text

        def finish(self) -> str:
            return ""

    gate = Gate()
    manager.register(gate, "gate")
    model, tok = base
    with Engine(model, tok, settings=settings, plugins=manager, max_len=128) as engine:
        assert [name for name, _ in engine.answer_filters] == ["sensitive_words", "gate"]
        handle = engine.submit(request())
        chunks, done_at_third = [], None
        for chunk in handle.stream():
            chunks.append(chunk)
            if len(chunks) == 3:
                done_at_third = handle.done
                gate.reader_saw_three.set()
        result = handle.result()
    assert done_at_third is False  # three chunks reached the reader while the answer was still being generated
    assert len(chunks) >= 6
    for word in words:
        assert all(word not in chunk for chunk in chunks) and word not in "".join(chunks)
    assert "".join(chunks) == result.text == mask_words("".join(plain), words)
    assert result.text.count("*") == 6  # 临海盐 and 选！请


def test_empty_word_list_registers_no_filter_and_streams_exactly_as_without_plugins(base, plain):
    settings, manager = plugins_with([])
    assert "sensitive_words" in manager.records and manager.records["sensitive_words"].ok
    assert manager.collect("register_answer_filters") == []
    chunks, text = chunks_of(base, settings, manager)
    assert chunks == plain and text == "".join(plain)


def test_a_failing_filter_stops_its_request_and_is_recorded(base):
    settings, manager = plugins_with([])

    class Broken:
        @hookspecs.hookimpl
        def register_answer_filters(self, register):
            register(lambda request: self)

        def push(self, text: str) -> str:
            raise RuntimeError("boom")

        def finish(self) -> str:
            return ""

    manager.register(Broken(), "broken")
    model, tok = base
    with Engine(model, tok, settings=settings, plugins=manager, max_len=128) as engine:
        handle = engine.submit(request())
        with pytest.raises(GenerationError, match="answer filter of plugin 'broken' failed in push"):
            list(handle.stream())
        assert handle.result.__self__.done and engine.stats().finished == {"error": 1}
    assert manager.records["broken"].error == "register_answer_filters: RuntimeError: boom"


def test_http_stream_with_the_default_plugins_is_chunked_and_masked(base, plain):
    words = words_across(plain)
    settings, manager = plugins_with(words)
    model, tok = base
    body = {"model": "base", "messages": [{"role": "user", "content": QUESTION}], "stream": True,
            "temperature": 0, "max_tokens": 48}
    with Engine(model, tok, settings=settings, plugins=manager, max_len=128) as engine:
        with ServerThread(create_app(engine, settings=settings)) as server:
            with httpx.stream("POST", server.url + "/v1/chat/completions", json=body, timeout=60) as response:
                events = [json.loads(line[6:]) for line in response.iter_lines()
                          if line.startswith("data: {")]
    pieces = [e["choices"][0]["delta"].get("content") for e in events if e["choices"]]
    pieces = [p for p in pieces if p]
    assert len(pieces) >= 6  # one event per piece, not one answer at the end
    assert "".join(pieces) == mask_words("".join(plain), words)
    assert not any(word in piece for word in words for piece in pieces)
