"""LangChain chat model (and a thin string LLM) backed by glmbot's in-process engine.

    from glmbot.integrations.langchain import ChatGlmbot
    chat = ChatGlmbot()                                 # routed; the engine glmbot.toml describes
    chat.bind(domain="support").invoke("退货多久到账？")   # or domain= / adapter= per call

With no engine, the first call builds `glmbot.shared_engine()` (base model, registry, router and
plugins of glmbot.toml, or of `config=`) and every ChatGlmbot of the process shares it, so their
requests are batched together. `engine=` uses an engine of your own.

History maps to the base's chat format. On ChatGLM3 and GLM-4 a system message is a native system
turn, `bind_tools([...])` shows the model tools (any LangChain tool, function or schema, converted
with `convert_to_openai_tool`), the reply's calls come back in `AIMessage.tool_calls` and a
`ToolMessage` returns a result, so `langchain.agents.create_agent` runs on it. ChatGLM2 has no
system role: a system message is put in front of the user's question (as the official
openai_api.py does); it has no tools (bind_tools is refused there). The route decision
(domain, adapter, reason, score) comes back in `response_metadata`, token counts in
`usage_metadata`. `batch`/`abatch` run requests concurrently, so the engine batches them.

    chat = ChatGlmbot(base_url="http://127.0.0.1:8000", api_key=...)   # a `glmbot serve` instead

With `base_url` (and no engine) the same model talks to glmbot's HTTP API (httpx; streaming
through server-sent events) and returns the same metadata, read from the `glmbot` extension field.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.llms import LLM
from langchain_core.language_models.base import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field, SecretStr, model_validator

from glmbot.errors import GenerationError, UnknownDomainError
from glmbot.integrations.langchain_messages import TOOL_FIELDS, lc_tool_calls, offered_tools, to_openai_messages
from glmbot.serving.requests import GenerationRequest, GenerationResult

REQUEST_FIELDS = ("domain", "adapter", "conversation_id", "max_new_tokens", "temperature", "top_p", "top_k",
                  "repetition_penalty", "seed", "do_sample")


def result_metadata(result: GenerationResult) -> dict[str, Any]:
    route = result.route
    return {
        "model_name": result.adapter or "base",
        "finish_reason": result.finish_reason,
        "adapter": result.adapter,
        "adapter_version": result.adapter_version,
        "domain": route.domain if route else None,
        "route_reason": route.reason if route else None,
        "route_score": route.score if route else None,
        "route_detail": route.detail if route else None,
        "damaged_adapter": route.damaged if route else None,  # route_reason 'damaged_fallback': what it replaced
    }


def usage_metadata(result: GenerationResult) -> dict[str, int]:
    u = result.usage
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


class ChatGlmbot(BaseChatModel):
    """ChatGLM2 + glmbot's prefix adapters as a LangChain chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(None, exclude=True, description="a glmbot.serving.engine.Engine; default: the process's "
                                                        "shared engine of glmbot.toml (glmbot.shared_engine)")
    config: str | None = Field(None, description="glmbot.toml of the shared engine (default: $GLMBOT_CONFIG or "
                                                 "the nearest glmbot.toml)")
    base_url: str | None = Field(None, description="a glmbot HTTP server instead of an engine, e.g. "
                                                   "http://127.0.0.1:8000 (glmbot serve)")
    api_key: SecretStr | None = Field(None, exclude=True, description="Bearer key of that server")
    timeout: float = Field(300.0, description="seconds an HTTP call may take (base_url only)")
    domain: str | None = Field(None, description="domain to use ('base' = plain model); None = routed")
    adapter: str | None = Field(None, description="a specific adapter, e.g. support@v3")
    conversation_id: str | None = Field(None, description="keeps routing sticky across calls")
    max_new_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    do_sample: bool | None = None
    turn_logger: Any = Field(None, exclude=True, description="object with record_turn(...) (conversation log)")

    @model_validator(mode="after")
    def _one_backend(self) -> ChatGlmbot:
        if self.base_url is not None and (self.engine is not None or self.config is not None):
            given = "engine=" if self.engine is not None else f"config={self.config!r}"
            raise GenerationError(f"ChatGlmbot got base_url={self.base_url!r} and {given}: pass base_url for a "
                                  "glmbot server (glmbot serve), or engine=/config= (or nothing) for in-process "
                                  "serving")
        return self

    def _engine(self) -> Any:
        from glmbot.stack import shared_engine

        return self.engine if self.engine is not None else shared_engine(self.config)

    @property
    def _llm_type(self) -> str:
        return "glmbot"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in REQUEST_FIELDS}

    @property
    def _http(self) -> _HttpBackend:
        return _HttpBackend(self.base_url, self.api_key.get_secret_value() if self.api_key else None, self.timeout)

    def bind_tools(self, tools: Sequence[dict[str, Any] | type | Callable | Any], *, tool_choice: Any = None,
                   **kwargs: Any) -> Runnable[LanguageModelInput, BaseMessage]:
        """This model with `tools` offered on every call (ChatGLM3/GLM-4 bases; refused on ChatGLM2)."""
        if self.base_url is None:
            from glmbot.serving.prompts import engine_family, tools_refused

            family = engine_family(self._engine())
            if not family.native_tools:
                raise tools_refused(family)
        converted = [convert_to_openai_tool(t) for t in tools]
        offered_tools(converted, tool_choice)  # a choice naming no bound tool fails here, not on the first call
        return super().bind(tools=converted, tool_choice=tool_choice, **kwargs)

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> GenerationRequest:
        unknown = set(kwargs) - set(REQUEST_FIELDS) - set(TOOL_FIELDS)
        if unknown:
            raise GenerationError(f"unknown option(s) {sorted(unknown)} for ChatGlmbot; use {', '.join(REQUEST_FIELDS)} "
                                  "(tools through bind_tools)")
        fields = {f: kwargs.get(f, getattr(self, f)) for f in REQUEST_FIELDS}
        tools = offered_tools(kwargs.get("tools"), kwargs.get("tool_choice"))
        return GenerationRequest(messages=to_openai_messages(messages), stop=tuple(stop or ()), tools=tools, **fields)

    def _log(self, request: GenerationRequest, result: GenerationResult) -> None:
        if self.turn_logger is not None:
            self.turn_logger.record_turn(request, result, source="langchain")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        if self.base_url is not None:
            text, response_metadata, usage, calls = self._http.complete(request)
            message = AIMessage(content=text, response_metadata=response_metadata, usage_metadata=usage,
                                tool_calls=calls)
            return ChatResult(generations=[ChatGeneration(message=message)])
        result = self._engine().generate(request)
        self._log(request, result)
        message = AIMessage(content=result.text, response_metadata=result_metadata(result),
                            usage_metadata=usage_metadata(result), tool_calls=lc_tool_calls(result.tool_calls))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        if self.base_url is not None:
            yield from self._chunks(self._http.stream(request), run_manager)
            return
        handle = self._engine().submit(request)
        try:
            for delta in handle.stream():
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
        except GeneratorExit:  # the consumer stopped reading: free the engine row
            handle.cancel()
            raise
        result = handle.result()
        self._log(request, result)
        yield self._final_chunk(result)

    async def _astream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                       run_manager: AsyncCallbackManagerForLLMRun | None = None,
                       **kwargs: Any) -> AsyncIterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        if self.base_url is not None:
            async for item in self._http.astream(request):
                chunk = self._http_chunk(item)
                if run_manager and isinstance(item, str):
                    await run_manager.on_llm_new_token(item, chunk=chunk)
                yield chunk
            return
        handle = self._engine().submit(request)
        try:
            async for delta in handle.astream():
                chunk = ChatGenerationChunk(message=AIMessageChunk(content=delta))
                if run_manager:
                    await run_manager.on_llm_new_token(delta, chunk=chunk)
                yield chunk
        except BaseException:  # cancelled task or consumer gone: free the engine row
            if not handle.done:
                handle.cancel()
            raise
        result = handle.result()
        self._log(request, result)
        yield self._final_chunk(result)

    def _chunks(self, items: Iterator[str | tuple[dict, dict, list]],
                run_manager: CallbackManagerForLLMRun | None) -> Iterator[ChatGenerationChunk]:
        for item in items:
            chunk = self._http_chunk(item)
            if run_manager and isinstance(item, str):
                run_manager.on_llm_new_token(item, chunk=chunk)
            yield chunk

    @staticmethod
    def _http_chunk(item: str | tuple[dict, dict, list]) -> ChatGenerationChunk:
        """A text delta, or the closing (response_metadata, usage_metadata) of an HTTP stream."""
        if isinstance(item, str):
            return ChatGenerationChunk(message=AIMessageChunk(content=item))
        calls = [{"name": c["function"]["name"], "args": c["function"]["arguments"], "id": c.get("id"),
                  "index": c.get("index", i), "type": "tool_call_chunk"} for i, c in enumerate(item[2])]
        return ChatGenerationChunk(message=AIMessageChunk(content="", response_metadata=item[0], usage_metadata=item[1],
                                                          tool_call_chunks=calls, chunk_position="last"))

    @staticmethod
    def _final_chunk(result: GenerationResult) -> ChatGenerationChunk:
        """An empty chunk carrying the route decision, token usage and the tool calls (whole, as chunks)."""
        calls = [{"name": c["name"], "args": json.dumps(c["args"], ensure_ascii=False), "id": c["id"], "index": i,
                  "type": "tool_call_chunk"} for i, c in enumerate(lc_tool_calls(result.tool_calls))]
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata=result_metadata(result), usage_metadata=usage_metadata(result),
            tool_call_chunks=calls, chunk_position="last"))


class GlmbotLLM(LLM):
    """The same engine as a plain string-in, string-out LLM for old-style chains."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(None, exclude=True, description="default: the process's shared engine (glmbot.shared_engine)")
    config: str | None = Field(None, description="glmbot.toml of the shared engine")
    domain: str | None = None
    adapter: str | None = None
    max_new_tokens: int | None = None
    temperature: float | None = None
    seed: int | None = None
    do_sample: bool | None = None

    @property
    def _llm_type(self) -> str:
        return "glmbot"

    def _call(self, prompt: str, stop: list[str] | None = None, run_manager: CallbackManagerForLLMRun | None = None,
              **kwargs: Any) -> str:
        fields = {f: kwargs.get(f, getattr(self, f)) for f in
                  ("domain", "adapter", "max_new_tokens", "temperature", "seed", "do_sample")}
        engine = self.engine
        if engine is None:
            from glmbot.stack import shared_engine

            engine = shared_engine(self.config)
        return engine.generate(GenerationRequest(query=prompt, stop=tuple(stop or ()), **fields)).text


class _HttpBackend:
    """ChatGlmbot's requests sent to a glmbot server's /v1/chat/completions (docs/HTTP_API.md)."""

    def __init__(self, base_url: str, api_key: str | None, timeout: float):
        self.url = base_url.rstrip("/").removesuffix("/v1") + "/v1/chat/completions"
        self.api_key, self.timeout = api_key, timeout

    def payload(self, request: GenerationRequest, stream: bool) -> tuple[dict[str, Any], dict[str, str]]:
        """The OpenAI body and headers of `request`: do_sample=False is temperature 0 (greedy)."""
        body: dict[str, Any] = {"model": request.adapter or request.domain or "auto",
                                "messages": list(request.messages), "stream": stream}
        temperature = 0 if request.do_sample is False else request.temperature
        optional = {"max_tokens": request.max_new_tokens, "temperature": temperature, "top_p": request.top_p,
                    "top_k": request.top_k, "repetition_penalty": request.repetition_penalty, "seed": request.seed,
                    "stop": list(request.stop) or None}
        body.update({k: v for k, v in optional.items() if v is not None})
        if request.tools:
            body["tools"] = list(request.tools)
        if stream:
            body["stream_options"] = {"include_usage": True}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        if request.conversation_id:
            headers["X-Glmbot-Conversation"] = request.conversation_id
        return body, headers

    def complete(self, request: GenerationRequest) -> tuple[str, dict[str, Any], dict[str, int], list[dict]]:
        import httpx

        body, headers = self.payload(request, stream=False)
        with self.reaching(), httpx.Client(timeout=self.timeout) as client:
            response = client.post(self.url, json=body, headers=headers)
        if response.status_code != 200:
            raise self.error(response.status_code, response.content)
        data = response.json()
        message = data["choices"][0]["message"]
        calls = [{"name": c["function"]["name"], "args": json.loads(c["function"]["arguments"] or "{}"),
                  "id": c["id"], "type": "tool_call"} for c in message.get("tool_calls") or ()]
        return message["content"] or "", http_metadata(data["glmbot"]), http_usage(data["usage"]), calls

    def stream(self, request: GenerationRequest) -> Iterator[str | tuple[dict, dict, list]]:
        """Text deltas, then (response_metadata, usage_metadata); leaving early closes the connection,
        which cancels the request on the server."""
        import httpx

        body, headers = self.payload(request, stream=True)
        events = _StreamEvents()
        with self.reaching(), httpx.Client(timeout=self.timeout) as client, \
                client.stream("POST", self.url, json=body, headers=headers) as response:
            if response.status_code != 200:
                raise self.error(response.status_code, response.read())
            for line in response.iter_lines():
                yield from events.feed(line)
        yield events.closing()

    async def astream(self, request: GenerationRequest) -> AsyncIterator[str | tuple[dict, dict, list]]:
        import httpx

        body, headers = self.payload(request, stream=True)
        events = _StreamEvents()
        with self.reaching():
            async with httpx.AsyncClient(timeout=self.timeout) as client, \
                    client.stream("POST", self.url, json=body, headers=headers) as response:
                if response.status_code != 200:
                    raise self.error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    for item in events.feed(line):
                        yield item
        yield events.closing()

    @contextlib.contextmanager
    def reaching(self) -> Iterator[None]:
        """A server that cannot be reached is named, with the fix: httpx said only "[Errno 111] Connection refused"."""
        import httpx

        try:
            yield
        except httpx.ConnectError as exc:
            raise GenerationError(f"cannot reach a glmbot server at {self.url} ({exc}): start one with `glmbot serve`, "
                                  "or give ChatGlmbot the base_url it listens on") from None

    def error(self, status: int, content: bytes) -> GenerationError:
        try:
            message = json.loads(content)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = content[:200].decode("utf-8", "replace")
        text = f"glmbot server {self.url} answered {status}: {message}"
        return UnknownDomainError(text) if status == 404 else GenerationError(text)


class _StreamEvents:
    """Reads the server-sent events of one streamed completion."""

    def __init__(self) -> None:
        self.extension: dict[str, Any] | None = None
        self.usage: dict[str, int] | None = None
        self.tool_calls: list[dict[str, Any]] = []  # glmbot sends each call whole, in one delta

    def feed(self, line: str) -> list[str]:
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            return []
        event = json.loads(line[5:])
        if "error" in event:
            raise GenerationError(f"glmbot server stopped the stream: {event['error'].get('message')}")
        self.extension = event.get("glmbot", self.extension)
        self.usage = event.get("usage") or self.usage
        for c in event.get("choices", ()):
            self.tool_calls += c["delta"].get("tool_calls") or []
        return [c["delta"]["content"] for c in event.get("choices", ()) if c["delta"].get("content")]

    def closing(self) -> tuple[dict[str, Any], dict[str, int], list[dict[str, Any]]]:
        if self.extension is None or self.usage is None:
            raise GenerationError("the glmbot server's stream ended before its last chunk (route and usage)")
        return http_metadata(self.extension), http_usage(self.usage), self.tool_calls


def http_metadata(extension: dict[str, Any]) -> dict[str, Any]:
    """The server's `glmbot` field -> the same response_metadata as result_metadata() gives."""
    return {"model_name": extension["adapter"] or "base", "finish_reason": extension["finish_reason"],
            "adapter": extension["adapter"], "adapter_version": extension["adapter_version"],
            "domain": extension["domain"], "route_reason": extension["reason"], "route_score": extension["score"],
            "route_detail": extension["detail"], "damaged_adapter": extension.get("damaged_adapter")}


def http_usage(usage: dict[str, int]) -> dict[str, int]:
    return {"input_tokens": usage["prompt_tokens"], "output_tokens": usage["completion_tokens"],
            "total_tokens": usage["total_tokens"]}
