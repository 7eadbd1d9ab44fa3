"""LangChain chat model (and a thin string LLM) backed by glmbot's in-process engine.

    from glmbot.integrations.langchain import ChatGlmbot
    chat = ChatGlmbot(engine=engine)                    # routed automatically
    chat.bind(domain="support").invoke("退货多久到账？")   # or domain= / adapter= per call

History maps to the official ChatGLM2 rounds. ChatGLM2 has no system role: a system message is
put in front of the user's question (as the official openai_api.py does). The route decision
(domain, adapter, reason, score) comes back in `response_metadata`, token counts in
`usage_metadata`. `batch`/`abatch` run requests concurrently, so the engine batches them.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterator

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.language_models.llms import LLM
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from glmbot.errors import GenerationError
from glmbot.serving.requests import GenerationRequest, GenerationResult

_ROLES = {"human": "user", "ai": "assistant", "system": "system"}
REQUEST_FIELDS = ("domain", "adapter", "conversation_id", "max_new_tokens", "temperature", "top_p", "top_k",
                  "repetition_penalty", "seed", "do_sample")


def to_openai_messages(messages: list[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages -> [{'role', 'content'}]; refuses roles ChatGLM2 cannot take."""
    out = []
    for m in messages:
        role = _ROLES.get(m.type)
        if role is None:
            raise GenerationError(f"ChatGLM2 takes system, human and ai messages, not {m.type!r} ({m.content!r:.40})")
        out.append({"role": role, "content": m.text if hasattr(m, "text") else str(m.content)})
    return out


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
    }


def usage_metadata(result: GenerationResult) -> dict[str, int]:
    u = result.usage
    return {"input_tokens": u.prompt_tokens, "output_tokens": u.completion_tokens, "total_tokens": u.total_tokens}


class ChatGlmbot(BaseChatModel):
    """ChatGLM2 + glmbot's prefix adapters as a LangChain chat model."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(exclude=True, description="a glmbot.serving.engine.Engine")
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

    @property
    def _llm_type(self) -> str:
        return "glmbot"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in REQUEST_FIELDS}

    def _request(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict) -> GenerationRequest:
        unknown = set(kwargs) - set(REQUEST_FIELDS)
        if unknown:
            raise GenerationError(f"unknown option(s) {sorted(unknown)} for ChatGlmbot; use {', '.join(REQUEST_FIELDS)}")
        fields = {f: kwargs.get(f, getattr(self, f)) for f in REQUEST_FIELDS}
        return GenerationRequest(messages=to_openai_messages(messages), stop=tuple(stop or ()), **fields)

    def _log(self, request: GenerationRequest, result: GenerationResult) -> None:
        if self.turn_logger is not None:
            self.turn_logger.record_turn(request, result, source="langchain")

    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        request = self._request(messages, stop, kwargs)
        result = self.engine.generate(request)
        self._log(request, result)
        message = AIMessage(content=result.text, response_metadata=result_metadata(result),
                            usage_metadata=usage_metadata(result))
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _stream(self, messages: list[BaseMessage], stop: list[str] | None = None,
                run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> Iterator[ChatGenerationChunk]:
        request = self._request(messages, stop, kwargs)
        handle = self.engine.submit(request)
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
        handle = self.engine.submit(request)
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

    @staticmethod
    def _final_chunk(result: GenerationResult) -> ChatGenerationChunk:
        """An empty chunk carrying the route decision and token usage."""
        return ChatGenerationChunk(message=AIMessageChunk(
            content="", response_metadata=result_metadata(result), usage_metadata=usage_metadata(result),
            chunk_position="last"))


class GlmbotLLM(LLM):
    """The same engine as a plain string-in, string-out LLM for old-style chains."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    engine: Any = Field(exclude=True)
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
        return self.engine.generate(GenerationRequest(query=prompt, stop=tuple(stop or ()), **fields)).text
