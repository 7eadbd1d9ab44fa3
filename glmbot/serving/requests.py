"""What goes into and comes out of the engine: requests, results, handles and streamed text.

A `RequestHandle` is filled by the engine's thread and read by any thread or event loop:
`stream()` (sync), `astream()` (async), `result()`; `cancel()` ends the request at the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Iterator, Literal, Mapping, Sequence

from glmbot.errors import GenerationError

from glmbot.model.chat_format import ChatFormatError, ToolCall, as_message

if TYPE_CHECKING:
    from glmbot.model.family import GlmFamily
    from glmbot.serving.router import RouteDecision

FinishReason = Literal["stop", "loop", "length", "cancelled", "error"]  # loop: cut by [generation] loop_stop
_ids = itertools.count(1)


@dataclass
class GenerationRequest:
    """One chat turn to answer. Unset sampling fields take glmbot.toml's [generation] values.

    Give `messages` (OpenAI style: role user/assistant/system, content; on ChatGLM3/GLM-4 also
    assistant `tool_calls` and role 'tool' results) or `query` + `history` ([(query, response), ...],
    the official ChatGLM2 form), or `prompt_ids` to skip the chat
    template (benchmarks, raw completion; no text to route: only `domain`/`adapter` choose the
    prefix). `adapter` ('support@v3') or `domain` ('support', or 'base' for the plain model)
    bypass routing; otherwise the engine's router decides. `system`: a system text (native on
    ChatGLM3/GLM-4, put in front of the query on ChatGLM2). `tools`: OpenAI-style function tools the
    model may call (ChatGLM3/GLM-4 only); the result's `tool_calls` holds the parsed calls.
    """

    messages: Sequence[Mapping[str, str]] | None = None
    query: str | None = None
    history: Sequence[tuple[str, str]] = ()
    conversation_id: str | None = None
    domain: str | None = None
    adapter: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    stop: Sequence[str] = ()
    seed: int | None = None
    do_sample: bool | None = None
    prompt_ids: Sequence[int] | None = None
    ignore_eos: bool = False  # benchmarks: always generate max_new_tokens
    system: str | None = None
    tools: Sequence[Mapping[str, Any]] | None = None
    # Set by the engine once routed, for plugins' before_generate/after_generate to read; a request that
    # the Ray Serve ingress routed (routed_upstream) is served on that route, not routed again. A request
    # object sent a second time is routed afresh.
    route: RouteDecision | None = field(default=None, compare=False)
    routed_upstream: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int  # real tokens of the prompt (prefix slots not counted)
    completion_tokens: int  # tokens sampled, a final eos included

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class Timings:
    """Seconds since submit(): admitted to a batch row, first token, finished."""

    queued_s: float
    first_token_s: float | None
    total_s: float


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: FinishReason
    usage: Usage
    route: RouteDecision | None
    adapter: str | None  # 'support@v3', None for the plain base model
    adapter_version: int | None
    timings: Timings
    token_ids: tuple[int, ...] = field(default=(), repr=False)  # the completion (a stop id ends it, not in it)
    tool_calls: tuple[ToolCall, ...] = ()  # parsed from the reply when the request had tools (text: the rest)


def chat_turns(request: GenerationRequest, family: GlmFamily | None = None) -> tuple[str, list[tuple[str, str]]]:
    """(query, history) of a request: what routing and logging read.

    ChatGLM2 (or family None on a conversation without tools): a system message is put in front of
    the query, as the official ChatGLM2 openai_api.py does (ChatGLM2 has no system role). ChatGLM3/GLM-4
    (or any request with tools or tool messages): the last user message and the user/assistant pairs
    before it; the messages are checked by glmbot.model.chat_format.
    """
    if family is None and _uses_tools(request) or family is not None and family.chat_format == "roles":
        return _roles_turns(request)
    if _uses_tools(request):
        name = family.display if family is not None else "ChatGLM2"
        raise GenerationError(f"{name} has no tool calls (tools or tool messages were sent); serve a ChatGLM3 or "
                              "GLM-4 base (base_model = THUDM/chatglm3-6b or THUDM/glm-4-9b-chat) for tools")
    return _rounds_turns(request)


def without_system(request: GenerationRequest, query: str | None) -> str | None:
    """`query` as the user wrote it: what routing reads. On ChatGLM2 the system message is put in front
    of the query (see chat_turns), and a system prompt such as 你是租车客服 then matched the domain's
    keyword 租车 for every message, 你好 and a poem request included."""
    if query is None:
        return None
    system = _system_text(request)
    return query[len(system):] if system and query.startswith(system) else query


def _system_text(request: GenerationRequest) -> str:
    """The system text _rounds_turns puts in front of the query: a first system message, else `system`."""
    first = request.messages[0] if request.messages else None
    if isinstance(first, Mapping) and first.get("role") == "system" and isinstance(first.get("content"), str):
        return first["content"]
    return request.system or ""


def _uses_tools(request: GenerationRequest) -> bool:
    return bool(request.tools) or any(isinstance(m, Mapping) and (m.get("role") in ("tool", "observation")
                                                                   or m.get("tool_calls"))
                                      for m in request.messages or ())


def _roles_turns(request: GenerationRequest) -> tuple[str, list[tuple[str, str]]]:
    if request.messages is None:
        return _rounds_turns(request)
    if not request.messages:
        raise GenerationError("empty messages: send at least one {'role': 'user', 'content': ...} message")
    try:
        messages = [as_message(m, i) for i, m in enumerate(request.messages)]
    except ChatFormatError as exc:
        raise GenerationError(str(exc)) from None
    if messages[-1].role not in ("user", "observation"):
        raise GenerationError("the last message must come from the user (role 'user') or be a tool result "
                              f"(role 'tool'); got {messages[-1].role!r}")
    users = [i for i, m in enumerate(messages) if m.role == "user"]
    if not users:
        raise GenerationError("the messages hold no user message; send at least one {'role': 'user', ...}")
    if messages[-1].role == "user" and not messages[-1].content.strip():
        raise GenerationError("the last user message is empty")
    history = []
    for i in users[:-1]:
        if i + 1 < len(messages) and messages[i + 1].role == "assistant":
            history.append((messages[i].content, messages[i + 1].content))
    return messages[users[-1]].content, history


def _rounds_turns(request: GenerationRequest) -> tuple[str, list[tuple[str, str]]]:
    if request.messages is None:
        if request.query is None or not str(request.query).strip():
            raise GenerationError("empty request: give messages=[{'role': 'user', 'content': ...}] or a query")
        return (request.system or "") + str(request.query), [tuple(turn) for turn in request.history]
    messages = list(request.messages)
    if not messages:
        raise GenerationError("empty messages: send at least one {'role': 'user', 'content': ...} message")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or m.get("role") not in ("system", "user", "assistant") \
                or not isinstance(m.get("content"), str):
            raise GenerationError(f"messages[{i}] = {m!r:.80} is not a {{'role': 'system'|'user'|'assistant', "
                                  "'content': str}} message")
    system = _system_text(request)
    if messages[0]["role"] == "system":
        messages.pop(0)
    if not messages or messages[-1]["role"] != "user":
        raise GenerationError("the last message must come from the user (role 'user'); got "
                              f"{messages[-1]['role'] if messages else 'only a system message'!r}")
    history, pending = [], None
    for m in messages[:-1]:
        if m["role"] == "user" and pending is None:
            pending = m["content"]
        elif m["role"] == "assistant" and pending is not None:
            history.append((pending, m["content"]))
            pending = None
        else:
            raise GenerationError(f"messages must alternate user/assistant before the last user message; "
                                  f"found a {m['role']!r} message out of turn (only one system message, first)")
    if pending is not None:
        raise GenerationError("messages must alternate user/assistant: two user messages in a row")
    query = system + messages[-1]["content"]
    if not query.strip():
        raise GenerationError("the last user message is empty")
    return query, history


class TextStream:
    """Turns a growing list of completion ids into text deltas that never need taking back.

    Decoding uses a window of recent ids (the incremental scheme of vLLM/TGI), so a SentencePiece
    piece's leading space and byte-fallback sequences come out right. Held back until more text
    arrives: an incomplete UTF-8 sequence ('\\ufffd' at the end), trailing whitespace (the final
    text is stripped, as the official chat() does), and a tail that could begin a stop string.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self.decode = decode
        self.stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # decoded so far, leading whitespace removed
        self.emitted = 0  # len of text handed out
        self.stopped = False
        self._prefix_offset = self._read_offset = 0

    def push(self, token: int) -> str:
        """Add one token; returns the text that became final (maybe ''). Sets `stopped` on a stop string."""
        self.ids.append(token)
        self._append(self._new_text(final=False))
        return self._release()

    def finish(self) -> str:
        """The rest of the text once the request ends (incomplete bytes included)."""
        if not self.stopped:
            self._append(self._new_text(final=True))
        self.text = self.text.rstrip()
        delta = self.text[self.emitted:]
        self.emitted = len(self.text)
        return delta

    def _new_text(self, final: bool) -> str:
        prefix = self.decode(self.ids[self._prefix_offset:self._read_offset])
        new = self.decode(self.ids[self._prefix_offset:])
        if len(new) > len(prefix) and (final or not new.endswith("\ufffd")):
            self._prefix_offset, self._read_offset = self._read_offset, len(self.ids)
            return new[len(prefix):]
        return ""

    def _append(self, piece: str) -> None:
        if not piece or self.stopped:
            return
        start = max(0, len(self.text) - max((len(s) for s in self.stop), default=0))
        self.text = (self.text + piece) if self.text else piece.lstrip()
        for s in self.stop:
            cut = self.text.find(s, start)
            if cut >= 0:
                self.text, self.stopped = self.text[:cut], True
                start = 0  # an earlier-starting stop string of the same piece wins: keep cutting

    def _release(self) -> str:
        safe = len(self.text)
        if not self.stopped:
            for s in self.stop:  # a tail that may grow into a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if self.text.endswith(s[:k]):
                        safe = min(safe, len(self.text) - k)
                        break
        while safe > self.emitted and self.text[safe - 1].isspace():
            safe -= 1
        if safe <= self.emitted:
            return ""
        delta = self.text[self.emitted:safe]
        self.emitted = safe
        return delta


class _Wakeups(threading.local):
    pending: dict[asyncio.AbstractEventLoop, list[_AsyncWaiter]] | None = None


_wakeups = _Wakeups()


@contextlib.contextmanager
def batched_wakeups() -> Iterator[None]:
    """Inside, async consumers woken from this thread are collected and woken at the end with one
    cross-thread call per event loop: a decode step that advances 200 streams makes one self-pipe
    write and one callback on the server's loop, not 200 of each."""
    if _wakeups.pending is not None:  # nested: the outer block wakes them
        yield
        return
    _wakeups.pending = {}
    try:
        yield
    finally:
        pending, _wakeups.pending = _wakeups.pending, None
        for loop, waiters in pending.items():
            try:
                loop.call_soon_threadsafe(_set_all, waiters)
            except RuntimeError:  # that loop is closed: its consumers are gone
                for waiter in waiters:
                    waiter.queued = False


def _set_all(waiters: list[_AsyncWaiter]) -> None:
    for waiter in waiters:
        waiter.set()


class _AsyncWaiter:
    """An astream() consumer's event, set from the engine thread. At most one wake-up is queued on
    its loop at a time: tokens pushed before the queued one runs are read with it, so a loop that
    falls behind 200 streams is not also sent a cross-thread call (and a self-pipe write) per token."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.event = loop, asyncio.Event()
        self.queued = False

    def wake(self) -> None:  # engine thread; the flag is a plain attribute: the GIL orders it
        if self.queued:
            return
        self.queued = True
        if _wakeups.pending is not None:  # inside batched_wakeups(): woken with the others at its end
            _wakeups.pending.setdefault(self.loop, []).append(self)
            return
        try:
            self.loop.call_soon_threadsafe(self.set)
        except RuntimeError:  # that loop is closed: its consumer is gone
            self.queued = False

    def set(self) -> None:  # the loop's thread: cleared before the consumer reads, so no push is missed
        self.queued = False
        self.event.set()


class RequestHandle:
    """The caller's side of a submitted request; thread-safe, usable from async code."""

    def __init__(self, request: GenerationRequest, wake_engine: Callable[[], None] = lambda: None):
        self.request = request
        self.id = next(_ids)
        self.submitted_at = time.perf_counter()
        self._wake_engine = wake_engine
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # stream() readers: woken by every pushed delta
        self._finished = threading.Condition(lock)  # result() callers: woken once, at the end (a thread
        # per request blocked in result() is not woken by each of its tokens: 200 such threads cost the
        # engine thread GIL time every step)
        self._chunks: list[str] = []
        self._done = False
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None
        self._cancelled = threading.Event()
        self._waiters: list[Callable[[], None]] = []  # called after each delta and at the end (astream, watch)

    @property
    def done(self) -> bool:
        return self._done

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Stop generating at the next step; result() then has finish_reason 'cancelled'."""
        self._cancelled.set()
        self._wake_engine()

    def result(self, timeout: float | None = None) -> GenerationResult:
        """Wait for the end; raises the request's error (GenerationError, UnknownDomainError, ...)."""
        with self._finished:
            if not self._finished.wait_for(lambda: self._done, timeout):
                raise TimeoutError(f"request {self.id} did not finish within {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def stream(self) -> Iterator[str]:
        """Text deltas as they are generated; their concatenation is result().text."""
        seen = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: len(self._chunks) > seen or self._done)
                chunks, done = self._chunks[seen:], self._done  # every chunk is pushed before the finish
            seen += len(chunks)
            yield from chunks
            if done:
                break
        if self._error is not None:
            raise self._error

    async def astream(self) -> AsyncIterator[str]:
        """Async form of stream(), woken from the engine thread through the running loop. Deltas
        that arrived while the consumer was busy come as one (fewer events when a loop serving
        many streams falls behind the engine; one per token when it keeps up)."""
        waiter = _AsyncWaiter(asyncio.get_running_loop())
        with self._cond:
            self._waiters.append(waiter.wake)
        try:
            seen = 0
            while True:
                waiter.event.clear()
                chunks, done = self.updates(seen)
                seen += len(chunks)
                if chunks:
                    yield chunks[0] if len(chunks) == 1 else "".join(chunks)
                if done and not chunks:
                    break
                if not chunks:
                    await waiter.event.wait()
        finally:
            with self._cond:
                self._waiters.remove(waiter.wake)
        if self._error is not None:
            raise self._error

    def updates(self, seen: int) -> tuple[list[str], bool]:
        """The deltas after the first `seen`, and whether the request had ended when they were read
        (every delta is pushed before the end, so a reader that gets done=True has them all)."""
        with self._cond:
            return self._chunks[seen:], self._done

    def watch(self, wake: Callable[[], None]) -> None:
        """Call `wake()` from the engine's thread after each delta and at the end (keep it short:
        it runs inside the decode step); read what changed with `updates`."""
        with self._cond:
            self._waiters.append(wake)
        if self.done:
            wake()

    async def aresult(self) -> GenerationResult:
        async for _ in self.astream():
            pass
        return self.result()

    # ---- engine side ------------------------------------------------------------------------------

    def _push(self, delta: str) -> None:
        if delta:
            with self._cond:
                self._chunks.append(delta)
                self._cond.notify_all()
            self._wake_async()

    def _finish(self, result: GenerationResult | None = None, error: BaseException | None = None) -> None:
        with self._cond:
            if self._done:
                return
            self._result, self._error, self._done = result, error, True
            self._cond.notify_all()
            self._finished.notify_all()
        self._wake_async()

    def _wake_async(self) -> None:
        with self._cond:
            waiters = list(self._waiters)
        for wake in waiters:
            wake()
