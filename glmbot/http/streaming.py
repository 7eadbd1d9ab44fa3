"""Streams and disconnects: racing an answer against its client, and SSE with send timeouts.

A client that disconnects, or stops reading its stream for `send_timeout_s`, has its request
cancelled in the engine (through the response's `on_close`), which frees its batch row at the
next step.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request
from starlette.responses import StreamingResponse

log = logging.getLogger(__name__)
CLIENT_GONE = 499  # nginx's status for "client closed the request", used in metrics only


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


async def next_delta(deltas: AsyncIterator[str]) -> tuple[bool, str]:
    """(True, first delta) or (False, '') when the answer ended without text; raises its error."""
    try:
        return True, await deltas.__anext__()
    except StopAsyncIteration:
        return False, ""


async def until_disconnected(work: Awaitable[Any], request: Request) -> Any:
    """The result of `work`, unless the client disconnects first (then ClientGone)."""
    work_task = asyncio.ensure_future(work)
    gone_task = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({work_task, gone_task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone_task.cancel()
        if not work_task.done():
            work_task.cancel()
    if work_task.done() and not work_task.cancelled():
        return work_task.result()
    raise ClientGone()


async def _disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


class EventStreamResponse(StreamingResponse):
    """SSE whose `on_close` always runs (disconnect, stall, error or end), and whose sends time out:
    a client that reads nothing for `send_timeout_s` is dropped (uvicorn then closes the connection)."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], send_timeout_s: float,
                 headers: dict[str, str] | None = None):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})
        self.on_close, self.send_timeout_s = on_close, send_timeout_s

    async def stream_response(self, send: Callable) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        # One watchdog per stream rather than a timer per chunk (asyncio.wait_for around each send
        # was ~9% of the event loop's time at 200 streams): it cancels a send pending too long.
        loop, streaming = asyncio.get_running_loop(), asyncio.current_task()
        sending_since: float | None = None  # when the send in progress started; None between sends

        async def watchdog() -> None:  # returns only after cancelling a stalled send
            while True:
                await asyncio.sleep(self.send_timeout_s / 4)
                if sending_since is not None and loop.time() - sending_since >= self.send_timeout_s:
                    streaming.cancel()
                    return

        guard = asyncio.create_task(watchdog())
        try:
            async for chunk in self.body_iterator:
                sending_since = loop.time()
                await send({"type": "http.response.body", "body": chunk.encode(), "more_body": True})
                sending_since = None
        except asyncio.CancelledError:
            if not guard.done():  # cancelled from outside (the client left, shutdown): not ours
                raise
            if hasattr(streaming, "uncancel"):  # Python 3.11+: this cancellation is handled here
                streaming.uncancel()
            log.warning("a client read nothing of its stream for %.0f s: its request is cancelled",
                        self.send_timeout_s)
            return  # incomplete response: uvicorn closes the connection
        finally:
            guard.cancel()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Any, receive: Callable, send: Callable) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()
            await self.body_iterator.aclose()
