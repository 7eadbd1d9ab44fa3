"""Answer filters: plugins that change an answer's text while it streams.

A plugin registers a factory through the `register_answer_filters(register)` hook. For each
request the engine calls `factory(request)` (the request is routed: `request.route` is set) and
gets an `AnswerFilter`, or None when the filter has nothing to do for that request: then it is
not in that request's chain and costs nothing. A filter receives the text in pieces (`push`) and
returns the part that is final, holding back only the tail that a later piece could still
change (`MaskWords`: its longest word minus one character); `finish` returns the rest. What the
filters let out is what the client gets, chunk by chunk, and what the result and the
conversation log hold.

The `after_generate` hook is different: it rewrites the whole answer, so while any plugin
implements it every stream is held back and sent whole at the end (see glmbot/hookspecs.py).

A filter that raises fails its request (an `AnswerFilterError` naming the plugin) rather than
being skipped: skipping a filter half-way through an answer could let out what it exists to hold back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from glmbot.errors import GenerationError

if TYPE_CHECKING:
    from glmbot.serving.requests import GenerationRequest

HOOK = "register_answer_filters"


class AnswerFilter(Protocol):
    """One request's filter state: text in by pieces, final text out."""

    def push(self, text: str) -> str:
        """More answer text; returns the text that is final now (may be '' while holding back)."""

    def finish(self) -> str:
        """The answer ended: returns everything still held back (filtered)."""


AnswerFilterFactory = Callable[["GenerationRequest"], "AnswerFilter | None"]


class AnswerFilterError(GenerationError):
    """An answer filter of a plugin raised; the request is stopped rather than sent unfiltered."""


class FilterChain:
    """The answer filters of one request, applied in plugin load order; `text` is all they let out.

    on_error(plugin name, exception) is told of a failing filter (the plugin manager records it).
    """

    def __init__(self, filters: Sequence[tuple[str, AnswerFilter]],
                 on_error: Callable[[str, Exception], None] | None = None):
        self.filters = list(filters)
        self.on_error = on_error
        self.text = ""

    def push(self, delta: str) -> str:
        for name, f in self.filters:
            if not delta:
                break  # a filter only sees non-empty pieces
            delta = self._call(name, "push", f.push, delta)
        self.text += delta
        return delta

    def finish(self, tail: str) -> str:
        """The request ended with `tail` (the last text); flushes every filter in order."""
        for name, f in self.filters:
            out = self._call(name, "push", f.push, tail) if tail else ""
            tail = out + self._call(name, "finish", f.finish)
        self.text += tail
        return tail

    def _call(self, name: str, what: str, fn: Callable[..., Any], *args: Any) -> str:
        try:
            out = fn(*args)
        except Exception as exc:  # noqa: BLE001 - whatever a plugin raises stops only this request
            if self.on_error is not None:
                self.on_error(name, exc)
            raise AnswerFilterError(
                f"the answer filter of plugin {name!r} failed in {what}() ({type(exc).__name__}: {exc}); the "
                f"answer was stopped rather than sent unfiltered. Fix the plugin, or leave it out "
                f"([plugins] enabled in glmbot.toml, or GLMBOT_LOAD_PLUGINS)") from exc
        if not isinstance(out, str):
            raise AnswerFilterError(f"the answer filter of plugin {name!r} returned {type(out).__name__} from "
                                    f"{what}(); it must return a str (may be '')")
        return out


def build_chain(factories: Sequence[tuple[str, AnswerFilterFactory]], request: GenerationRequest,
                on_error: Callable[[str, Exception], None] | None = None) -> FilterChain | None:
    """The request's chain: one filter per factory that returned one; None when none did."""
    filters = []
    for name, factory in factories:
        try:
            made = factory(request)
        except Exception as exc:  # noqa: BLE001
            if on_error is not None:
                on_error(name, exc)
            raise AnswerFilterError(f"the answer filter factory of plugin {name!r} failed ({type(exc).__name__}: "
                                    f"{exc}); fix the plugin, or leave it out ([plugins] enabled in glmbot.toml, "
                                    "or GLMBOT_LOAD_PLUGINS)") from exc
        if made is not None:
            filters.append((name, made))
    return FilterChain(filters, on_error) if filters else None


class MaskWords:
    """Replaces each occurrence of any of `words` by as many `mask` characters, on a stream.

    Occurrences may overlap (all their characters are masked). A character is let out once every
    word that could cover it is known, so only the last len(longest word) - 1 characters are held
    back; those before them are kept as look-back, where an occurrence may begin.
    """

    def __init__(self, words: Iterable[str], mask: str = "*"):
        self.words = tuple(sorted({w for w in words if w}, key=len, reverse=True))
        if not self.words:
            raise ValueError("MaskWords needs at least one non-empty word (with none, register no filter)")
        if len(mask) != 1:
            raise ValueError(f"mask must be one character, got {mask!r}")
        self.mask = mask
        self.hold = len(self.words[0]) - 1
        self._window = ""  # look-back (already let out) + held text
        self._out = 0  # characters of _window already let out

    def push(self, text: str) -> str:
        self._window += text
        return self._release(len(self._window) - self.hold)

    def finish(self) -> str:
        return self._release(len(self._window))

    def _release(self, end: int) -> str:
        if end <= self._out:
            return ""
        window = self._window
        covered = bytearray(len(window))
        for word in self.words:
            at = window.find(word)
            while at >= 0:
                covered[at:at + len(word)] = b"\x01" * len(word)
                at = window.find(word, at + 1)
        out = "".join(self.mask if covered[i] else window[i] for i in range(self._out, end))
        keep = max(0, end - self.hold)
        self._window, self._out = window[keep:], end - keep
        return out


def mask_words(text: str, words: Iterable[str], mask: str = "*") -> str:
    """The whole-text form of MaskWords (the same result as streaming `text` through it)."""
    words = [w for w in words if w]
    if not words:
        return text
    masker = MaskWords(words, mask)
    return masker.push(text) + masker.finish()
