"""The serving engine in a process of its own: the HTTP layer and the engine do not share one GIL.

In one process, `glmbot serve`'s event loop (every token of every stream is an SSE event) and the
engine's thread (launching steps, prefill, text deltas) take turns at one interpreter lock: at 200
streams on one H200 the engine stepped at 10.6 ms under HTTP against 6.7 ms alone (63% of its
tokens/s). So, as vLLM splits its API server from its engine core, `ProcessEngine` starts the
engine (base, registry, router, plugins: the stack of `glmbot serve`) in a child process and
keeps in the server process what the HTTP layer needs: a tokenizer (prompts and lengths), the
registry (model cards) and request handles, filled over two pipes:

    server process                                        engine process
    submit(request)   --("submit", id, request)--------->  Engine.submit, handle.watch(...)
    handle.cancel()   --("cancel", id)------------------>  handle.cancel()
    stats(), invalidate_*  --(kind, query id, ...)------>  ("reply", query id, value)
    reader thread     <--("updates", [(id, text, end)])--  sender thread, once per wake-up

One "updates" message carries the new text of every stream that changed since the last one (under
load one message per decode step), so a token costs an append on each side, not a message. The
engine process ends when the server closes it, or when the server process goes away (its pipe
closes); if the engine process dies, every open request ends with ServingUnavailableError (503).
"""

from __future__ import annotations

import concurrent.futures
import itertools
import logging
import multiprocessing
import pickle
import signal
import threading
from typing import Any, Callable

from glmbot.errors import GenerationError, GlmbotError, ServingUnavailableError
from glmbot.serving.requests import GenerationRequest, GenerationResult, RequestHandle, batched_wakeups

log = logging.getLogger(__name__)
ASK_TIMEOUT_S = 30.0  # a stats or invalidate query; the engine process answers between its steps
CLOSE_TIMEOUT_S = 60.0  # close(wait=True): the open requests finish first
CANCEL_TIMEOUT_S = 15.0  # close(): they are cancelled at the next step


def wants_engine_process(settings: Any) -> bool:
    """[serving] engine_process: 'auto' = on CUDA devices (where the engine outruns one shared GIL)."""
    choice = settings.serving.engine_process
    if choice != "auto":
        return choice == "always"
    device = settings.model.device
    if device == "auto":
        import torch

        return torch.cuda.is_available()
    return device.startswith("cuda")


class ProcessEngine:
    """Engine-shaped front of an `Engine` in a child process: `submit`, `generate`, `stats`,
    `invalidate_domain`, `invalidate_adapter`, `close`, `max_len`, `max_batch_size`, `tokenizer`.

    build(*build_args) runs in the child and returns the Engine; it and its arguments must pickle
    (a module-level function). `from_settings` builds what `glmbot serve` serves."""

    def __init__(self, build: Callable[..., Any], build_args: tuple, tokenizer: Any):
        self.tokenizer = tokenizer  # prompts and lengths are worked out here, as for the Ray ingress
        self.family = getattr(tokenizer, "family", None)
        self.router = None  # the engine process routes
        self.prefix_cache = None  # and holds the prefixes; model cards read the registry
        self._handles: dict[int, RequestHandle] = {}
        self._replies: dict[int, concurrent.futures.Future] = {}
        self._ids = itertools.count(1)
        self._send_lock = threading.Lock()
        self._join_lock = threading.Lock()
        self._gone_error: ServingUnavailableError | None = None
        self._closed = False
        context = multiprocessing.get_context("spawn")  # never fork a process that may hold CUDA or threads
        child_in, self._out = context.Pipe(duplex=False)
        self._in, child_out = context.Pipe(duplex=False)
        self.process = context.Process(target=engine_main, name="glmbot-engine", daemon=True,
                                       args=(build, build_args, child_in, child_out))
        self.process.start()
        child_in.close()  # the child's ends: closed here, so its exit reads as EOF
        child_out.close()
        info = self._wait_ready()
        self.max_len, self.max_batch_size = info["max_len"], info["max_batch_size"]
        self._reader = threading.Thread(target=self._read, name="glmbot-engine-reader", daemon=True)
        self._reader.start()

    @classmethod
    def from_settings(cls, settings: Any, max_len: int | None = None, **engine_kwargs: Any) -> ProcessEngine:
        """The engine of `glmbot serve` (base, registry, router, plugins as configured) in its own process."""
        from glmbot.model.family import family_of
        from glmbot.model.loading import load_base_config, load_tokenizer, resolve_base

        base = settings.model.base_model
        tokenizer = load_tokenizer(resolve_base(base), family_of(load_base_config(base)))  # no weights here
        return cls(engine_from_settings, (settings, {"max_len": max_len, **engine_kwargs}), tokenizer)

    def _wait_ready(self) -> dict[str, Any]:
        """The child's ("ready", info) once its base is loaded, or its loading error raised here."""
        while not self._in.poll(0.5):
            if not self.process.is_alive():
                raise self._exited_while_loading()
        try:
            kind, value = self._in.recv()
        except EOFError:
            raise self._exited_while_loading() from None
        if kind == "failed":
            self._join(CLOSE_TIMEOUT_S)
            raise value
        return value

    def _join(self, timeout: float) -> None:
        """Process.join from one thread at a time: two threads joining the same child (the reader on
        EOF and close()) could miss its exit and wait out the whole timeout."""
        with self._join_lock:
            self.process.join(timeout)

    def _exited_while_loading(self) -> ServingUnavailableError:
        self._join(5)
        return ServingUnavailableError(f"the engine process exited (code {self.process.exitcode}) while loading "
                                       "the base; its messages above say why")

    # ---- requests ----------------------------------------------------------------------------------

    def submit(self, request: GenerationRequest) -> RequestHandle:
        if not isinstance(request, GenerationRequest):
            raise TypeError(f"submit() takes a GenerationRequest, got {type(request).__name__}")
        if self._closed or self._gone_error is not None:
            raise self._gone_error or GenerationError("the engine is closed")
        rid = next(self._ids)
        handle = RequestHandle(request, lambda: self._send_quietly(("cancel", rid)))
        self._handles[rid] = handle
        try:
            self._send(("submit", rid, request))
        except BaseException:
            self._handles.pop(rid, None)
            raise
        return handle

    def generate(self, request: GenerationRequest) -> GenerationResult:
        return self.submit(request).result()

    def generate_many(self, requests: list[GenerationRequest]) -> list[GenerationResult]:
        return [h.result() for h in [self.submit(r) for r in requests]]

    # ---- queries -----------------------------------------------------------------------------------

    def stats(self) -> Any:
        """The engine's EngineStats, asked of the engine process (fresh, as in one process)."""
        return self._ask("stats")

    def invalidate_domain(self, domain: str) -> int:
        return self._ask("invalidate_domain", domain)

    def invalidate_adapter(self, adapter_id: int | str) -> int:
        return self._ask("invalidate_adapter", adapter_id)

    def _ask(self, kind: str, *args: Any) -> Any:
        qid = next(self._ids)
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._replies[qid] = future
        try:
            self._send((kind, qid, *args))
            return future.result(ASK_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            raise ServingUnavailableError(f"the engine process did not answer {kind!r} within {ASK_TIMEOUT_S:g} s"
                                          ) from None
        finally:
            self._replies.pop(qid, None)

    # ---- the pipes ---------------------------------------------------------------------------------

    def _send(self, message: tuple) -> None:
        if self._gone_error is not None:
            raise self._gone_error
        try:
            with self._send_lock:
                self._out.send(message)
        except (OSError, EOFError) as exc:
            raise ServingUnavailableError(f"the engine process is gone ({type(exc).__name__}); restart the "
                                          "server") from None

    def _send_quietly(self, message: tuple) -> None:
        try:
            self._send(message)
        except GlmbotError:  # gone: the reader ends every handle
            pass

    def _read(self) -> None:
        """The reader thread: the engine process's updates into the handles, its replies to `_ask`."""
        try:
            while True:
                message = self._in.recv()
                if message[0] == "updates":
                    with batched_wakeups():  # one wake-up per event loop for the whole step
                        for rid, text, end in message[1]:
                            self._update(rid, text, end)
                else:  # ("reply", query id, value)
                    future = self._replies.get(message[1])
                    if future is not None:
                        future.set_result(message[2])
        except (EOFError, OSError):
            pass
        except Exception:  # noqa: BLE001 - a message that does not unpickle: the requests cannot go on
            log.exception("reading from the engine process failed")
        finally:
            self._gone()

    def _update(self, rid: int, text: str, end: tuple[str, Any] | None) -> None:
        handle = self._handles.get(rid)
        if handle is None:
            return
        if text:
            handle._push(text)
        if end is not None:
            del self._handles[rid]
            kind, value = end
            handle._finish(value) if kind == "result" else handle._finish(error=value)

    def _gone(self) -> None:
        """The engine process ended: every open request and query fails with one clear error."""
        if not self._closed:  # it died: its exit code, for the message
            self._join(5)
        self._gone_error = ServingUnavailableError(
            "the server is shutting down" if self._closed else
            f"the engine process stopped (exit code {self.process.exitcode}); restart the server")
        for handle in list(self._handles.values()):
            handle._finish(error=self._gone_error)
        self._handles.clear()
        for future in list(self._replies.values()):
            future.set_exception(self._gone_error)

    def close(self, wait: bool = False) -> None:
        """Stop the engine process: wait=False cancels unfinished requests, wait=True lets them end."""
        if self._closed:
            return
        self._closed = True
        self._send_quietly(("close", wait))
        timeout = CLOSE_TIMEOUT_S if wait else CANCEL_TIMEOUT_S
        self._join(timeout)
        if self.process.is_alive():
            log.warning("the engine process did not stop within %g s; terminating it", timeout)
            self.process.terminate()
            self._join(5)
        self._reader.join(10)
        self._out.close()

    def __enter__(self) -> ProcessEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---- the engine process ----------------------------------------------------------------------------

def engine_from_settings(settings: Any, engine_kwargs: dict[str, Any]) -> Any:
    """In the engine process: the base, registry, router and plugins of `glmbot serve`."""
    from glmbot.model import load_base
    from glmbot.plugins import get_manager
    from glmbot.registry import Registry
    from glmbot.serving.factory import build_engine

    m = settings.model
    model, tokenizer = load_base(m.base_model, dtype=m.dtype, device=m.device, quantization=m.quantization)
    return build_engine(settings, model, tokenizer, Registry.from_settings(settings), get_manager(settings),
                        **engine_kwargs)


def engine_main(build: Callable[..., Any], build_args: tuple, inbox: Any, outbox: Any) -> None:
    """The child's entry: build the engine, say ready (or why not), then serve the pipes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the server stops us
    logging.basicConfig(level=logging.INFO, format="glmbot-engine %(levelname)s %(name)s: %(message)s")
    try:
        engine = build(*build_args)
    except BaseException as exc:  # noqa: BLE001 - reported to the server process, which raises it
        outbox.send(("failed", portable(exc)))
        return
    outbox.send(("ready", {"max_len": engine.max_len, "max_batch_size": engine.max_batch_size}))
    _Bridge(engine, inbox, outbox).run()


class _Bridge:
    """The engine process's side of the pipes: requests in, one message of updates per wake-up out."""

    def __init__(self, engine: Any, inbox: Any, outbox: Any):
        self.engine, self.inbox, self.outbox = engine, inbox, outbox
        self.handles: dict[int, RequestHandle] = {}
        self.seen: dict[int, int] = {}  # deltas of each handle sent so far
        self.changed: set[int] = set()
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopping = False

    def run(self) -> None:
        sender = threading.Thread(target=self._send_updates, name="glmbot-engine-sender", daemon=True)
        sender.start()
        wait = False
        try:
            while True:
                kind, key, *args = self.inbox.recv()
                if kind == "submit":
                    self._submit(key, args[0])
                elif kind == "cancel":
                    handle = self.handles.get(key)
                    if handle is not None:
                        handle.cancel()
                elif kind == "close":
                    wait = key
                    break
                else:  # a query: stats, invalidate_domain, invalidate_adapter
                    self.outbox.send(("reply", key, getattr(self.engine, kind)(*args)))
        except (EOFError, OSError):  # the server process is gone
            pass
        finally:
            self.engine.close(wait=wait)  # every request ends: its last update goes out below
            self.stopping = True
            self.wake.set()
            sender.join(CLOSE_TIMEOUT_S)

    def _submit(self, rid: int, request: GenerationRequest) -> None:
        try:
            handle = self.engine.submit(request)
        except Exception as exc:  # noqa: BLE001 - the request's own error, as a local submit would raise it
            self._post([(rid, "", ("error", portable(exc)))])
            return
        self.seen[rid] = 0
        self.handles[rid] = handle
        handle.watch(lambda: self._changed(rid))

    def _changed(self, rid: int) -> None:  # the engine's thread, inside its decode step
        with self.lock:
            self.changed.add(rid)
        self.wake.set()

    def _send_updates(self) -> None:
        while True:
            self.wake.wait()
            self.wake.clear()
            with self.lock:
                changed, self.changed = self.changed, set()
            items = []
            for rid in changed:
                handle = self.handles.get(rid)
                if handle is None:
                    continue
                chunks, done = handle.updates(self.seen[rid])
                self.seen[rid] += len(chunks)
                end = None
                if done:
                    del self.handles[rid], self.seen[rid]
                    end = _outcome(handle)
                items.append((rid, "".join(chunks), end))
            if items:
                self._post(items)
            if self.stopping and not self.handles:
                return

    def _post(self, items: list) -> None:
        try:
            self.outbox.send(("updates", items))
        except (OSError, EOFError):  # the server process is gone
            pass


def _outcome(handle: RequestHandle) -> tuple[str, Any]:
    try:
        return "result", handle.result(timeout=0)
    except Exception as exc:  # noqa: BLE001 - the request's error, raised again by the server's handle
        return "error", portable(exc)


def portable(exc: BaseException) -> BaseException:
    """`exc` if it survives pickling (glmbot's errors do), else a GenerationError that names it."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - any pickling failure
        return GenerationError(f"{type(exc).__name__}: {exc}")
