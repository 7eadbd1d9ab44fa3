"""The Rich terminal chat: streaming answers, the route of each turn, slash commands.

Talks to the engine only. Interactive use shows a header, streams answers and keeps history;
piped use (`echo 问题 | glmbot chat --domain support`) prints only the answers, one per line, and
stops at the first question it cannot answer, raising its error (the CLI: one line, exit code 1).
Ctrl-C while an answer streams stops that answer, not the program.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from glmbot.errors import GlmbotError, unknown_domain
from glmbot.fileio import atomic_write_text
from glmbot.serving.requests import GenerationRequest, GenerationResult
from glmbot.serving.router import BASE, CLOSEST_QUESTION_NOTE, FALLBACK_REPLY_NOTE, small_talk_only
from glmbot.serving.turn_log import new_conversation_id

HELP = """commands:
  /domain NAME   answer with NAME's active adapter (or 'base' for the plain model)
  /auto          let the router choose the domain again
  /adapters      list the domains and their active adapters
  /reset         start a new conversation
  /history       show this conversation
  /retry         answer the last question again
  /teach         wrong answer? list the closest answers of your domains' data
  /teach N       add the last question with answer N to that domain's data file
  /teach TEXT    add the last question with TEXT as its answer (to the domain that answered)
  /teach @D TEXT the same, to domain D's data
  /save FILE     write the conversation as JSON
  /help          this help
  /quit          leave (Ctrl-D works too)"""


@dataclass
class ChatOptions:
    domain: str | None = None
    adapter: str | None = None
    temperature: float | None = None
    max_new_tokens: int | None = None
    system: str = ""
    max_source_tokens: int = 0  # very long questions are cut to this many tokens (0: no limit)
    no_history: bool = False  # every question is a conversation of its own (a file of test questions)


@dataclass
class ChatSession:
    """The state of one terminal conversation; the I/O lives in ChatClient."""

    engine: object
    options: ChatOptions
    log: object | None = None  # TurnLogger
    conversation_id: str = field(default_factory=new_conversation_id)
    history: list[tuple[str, str]] = field(default_factory=list)
    last_result: GenerationResult | None = None

    def request(self, query: str) -> GenerationRequest:
        messages = ([{"role": "system", "content": self.options.system}] if self.options.system else [])
        for q, a in self.history:
            messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        messages.append({"role": "user", "content": query})
        o = self.options
        return GenerationRequest(messages=messages, conversation_id=self.conversation_id, domain=o.domain,
                                 adapter=o.adapter, temperature=o.temperature, max_new_tokens=o.max_new_tokens,
                                 do_sample=None if o.temperature is None else o.temperature > 0)

    def finish(self, request: GenerationRequest, query: str, result: GenerationResult) -> None:
        self.last_result = result
        if result.finish_reason != "cancelled":
            self.history.append((query, result.text))
        if self.log is not None:
            self.log.record_turn(request, result)
        if self.options.no_history:
            self.history.clear()
            self.conversation_id = new_conversation_id()

    def reset(self) -> None:
        self.history.clear()
        self.conversation_id = new_conversation_id()
        self.last_result = None


class ChatClient:
    """Reads lines, runs slash commands, streams answers to a Rich console."""

    def __init__(self, session: ChatSession, console: Console, err: Console, *, interactive: bool,
                 known_domains: Callable[[], list[str]], tokenizer=None, header: str = "",
                 active_adapters: Callable[[], list[tuple[str, str, str, str]]],
                 why_not_servable: Callable[[str], str] = lambda name: "", teacher=None):
        self.s = session
        self.console, self.err = console, err
        self.interactive = interactive
        self.known_domains = known_domains
        self.why_not_servable = why_not_servable  # domain -> why it cannot answer yet ("" = unknown to glmbot)
        self.active_adapters = active_adapters  # () -> (domain, adapter, metrics, age) per active adapter
        self.tokenizer = tokenizer
        self.header = header
        self.teacher = teacher  # glmbot.training.teach.Teacher, or None where /teach is not offered
        self._offered: tuple[str, list] | None = None  # (question, candidates) of the last bare /teach
        self._tipped = False  # the /teach tip was shown

    # -- the loop ------------------------------------------------------------------------------------
    def run(self, read_line: Callable[[], str]) -> None:
        if self.interactive:
            self.console.print(self.header)
            self.console.print("[dim]/help for commands, Ctrl-C stops an answer, /quit or Ctrl-D leaves[/]")
        while True:
            try:
                line = read_line()
            except EOFError:  # Ctrl-D or the end of piped input
                break
            except KeyboardInterrupt:
                self.console.print("\n[dim](/quit to leave)[/]")
                continue
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line) == "quit":
                    break
                continue
            self.answer(line)

    def answer(self, query: str) -> None:
        query = self._fit(query)
        request = self.s.request(query)
        handle = self.s.engine.submit(request)
        if self.interactive:
            self.console.print("[bold green]glmbot[/] ", end="")
        streamed = self.interactive  # the line holds something to end
        try:
            try:
                for delta in handle.stream():
                    self.console.print(delta, end="", markup=False, highlight=False, soft_wrap=True)
                    streamed = True
            except KeyboardInterrupt:
                handle.cancel()
                self.console.print(" [dim][stopped][/]")
            result = handle.result()
        except GlmbotError as exc:
            if streamed:
                self.console.print()
            if not self.interactive:  # piped: a failed answer is the command's failure (exit code 1)
                raise
            self.err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
            return
        self.console.print()
        self.s.finish(request, query, result)
        self._offered = None
        if self.interactive:
            self.console.print(f"[dim]{escape(route_line(result))}[/]")  # "[routing] ..." is text
            if not self._tipped and not small_talk_only(query) and self.teacher is not None \
                    and self.teacher.has_data() and not self.teacher.as_taught(query, result.text):
                self._tipped = True  # once: the newcomer who meets a wrong answer learns the way to fix it
                self.console.print("[dim]a wrong answer? /teach adds the question, with the right answer, to your "
                                   "domain's data[/]")

    def _fit(self, query: str) -> str:
        limit = self.s.options.max_source_tokens
        if not limit or self.tokenizer is None:
            return query
        ids = self.tokenizer.encode(query, add_special_tokens=False)
        if len(ids) <= limit:
            return query
        cut = self.tokenizer.decode(ids[:limit])
        self.err.print(f"[yellow]note:[/] your message had {len(ids)} tokens; kept the first {limit} "
                       "(max_source_length)")
        return cut

    # -- slash commands ------------------------------------------------------------------------------
    def command(self, line: str) -> str | None:
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        handler = {"domain": self._domain, "auto": self._auto, "adapters": self._adapters, "reset": self._reset,
                   "history": self._history, "retry": self._retry, "save": self._save, "teach": self._teach,
                   "help": self._help, "quit": lambda _: "quit", "exit": lambda _: "quit"}.get(name)
        if handler is None:
            self.err.print(f"unknown command /{name}", markup=False)
            self.console.print(HELP, markup=False)
            return None
        return handler(arg)

    def _domain(self, arg: str) -> None:
        known = self.known_domains()
        if not arg or (arg != BASE and arg not in known):
            reason = self.why_not_servable(arg) if arg else ""
            fallback = str(unknown_domain(arg, [BASE, *known], listed="known", add=False)) if arg else (
                f"usage: /domain NAME; known: {', '.join([BASE, *known])}")
            self.err.print(reason or fallback, markup=False, highlight=False)
            return
        self.s.options.domain, self.s.options.adapter = arg, None
        self.console.print(f"[dim]answering with {escape(arg)}[/]")

    def _auto(self, _: str) -> None:
        self.s.options.domain = self.s.options.adapter = None
        # The router remembers where /domain sent this conversation and would keep it there.
        router = getattr(self.s.engine, "router", None)
        if router is not None:
            router.forget(self.s.conversation_id)
        self.console.print("[dim]routing automatically[/]")

    def _adapters(self, _: str) -> None:
        table = Table("domain", "active adapter", "metrics", "trained", title="active adapters")
        for row in self.active_adapters():
            table.add_row(*row)
        table.add_row(BASE, "(the plain model)", "", "")
        self.console.print(table)
        options = self.s.options
        using = (f"domain {options.domain}" if options.domain else f"adapter {options.adapter}" if options.adapter
                 else "automatic routing")
        self.console.print(f"answering with: {using} (/domain NAME to pin one, /auto to route)", markup=False)

    def _reset(self, _: str) -> None:
        self.s.reset()
        self.console.print("[dim]new conversation[/]")

    def _history(self, _: str) -> None:
        if not self.s.history:
            self.console.print("[dim](empty)[/]")
        for i, (q, a) in enumerate(self.s.history, start=1):
            self.console.print(f"[bold]{i}. 问[/] {escape(q)}\n   [bold]答[/] {escape(a)}", highlight=False)

    def _retry(self, _: str) -> None:
        if not self.s.history:
            self.err.print("nothing to retry yet")
            return
        query, _answer = self.s.history.pop()
        self.answer(query)

    def _teach(self, arg: str) -> None:
        if self.teacher is None:
            self.err.print("/teach needs a glmbot.toml project (its domains' data files)", soft_wrap=True)
            return
        if not self.s.history:
            self.err.print("nothing to teach yet: ask a question, then /teach if the answer was wrong", soft_wrap=True)
            return
        question, given = self.s.history[-1]
        if small_talk_only(question):
            self.err.print(f"{question!r} is small talk, which the plain base answers; /teach adds questions of "
                           "your domains", markup=False, highlight=False, soft_wrap=True)
            return
        try:
            added, domain, answer = self._teach_pick(arg, question, given)
        except GlmbotError as exc:
            self.err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            return
        if added is None:
            return
        retrain = f"glmbot train --domain {domain} --promote"
        if added.already:
            self.console.print(f"already in {added.path} (example {added.line}) with that answer; if the active "
                               f"adapter was trained before it was added, retrain: {retrain}", markup=False,
                               highlight=False, soft_wrap=True)
        else:
            self.console.print(f"added {question!r} -> {answer!r} to {added.path} (example {added.line}, "
                               f"{added.examples} in all); the prefix learns it when you retrain: {retrain}",
                               markup=False, highlight=False, soft_wrap=True)

    def _teach_pick(self, arg: str, question: str, given: str) -> tuple:
        """(Added or None, domain, answer) for `/teach ARG`: none for a bare /teach (it lists the answers)."""
        if not arg:
            self._offer(question, given)
            return None, None, None
        offered = self._offered[1] if self._offered and self._offered[0] == question else []
        if arg.isdigit():  # a number picks an offered answer; it is never taken as the answer itself
            if not 1 <= int(arg) <= len(offered):
                which = f"1-{len(offered)} were offered" if offered else "none were offered yet: /teach lists them"
                raise GlmbotError(f"/teach {arg}: no answer {arg} to pick ({which}); to answer with a number, "
                                  f"write it with its unit, e.g. /teach {arg}元")
            pick = offered[int(arg) - 1]
            return self.teacher.add(pick.domain, question, pick.response), pick.domain, pick.response
        domain, _, text = arg[1:].partition(" ") if arg.startswith("@") else (self._teach_domain(), "", arg)
        if not domain:
            return None, None, None
        if not text.strip():
            raise GlmbotError(f"/teach @{domain} needs the answer after the domain: /teach @{domain} ANSWER")
        return self.teacher.add(domain, question, text), domain, text.strip()

    def _teach_domain(self) -> str | None:
        """The domain a `/teach TEXT` goes to: the one that answered, else the only one with a data file."""
        domain = self._answering_domain()
        if domain is not None:
            return domain
        owned = self.teacher.domains()
        if len(owned) == 1:
            return owned[0]
        self.err.print("the last answer came from the plain base: name the domain, /teach @DOMAIN ANSWER "
                       f"({', '.join(owned) or 'no domain has a data file of its own'}), or /teach alone to pick "
                       "one of the closest answers", markup=False, highlight=False, soft_wrap=True)
        return None

    def _offer(self, question: str, given: str) -> None:
        candidates = self.teacher.candidates(question, given)
        if not candidates:
            self.err.print("none of your domains has a data file of its own to add to (builtin samples are not "
                           "changed); add one: glmbot domains add NAME --data FILE.jsonl", markup=False, soft_wrap=True)
            return
        self._offered = (question, candidates)
        self.console.print(f"answers of your data closest to {question!r}:", markup=False, highlight=False)
        for i, c in enumerate(candidates, start=1):
            self.console.print(f"  {i}. [{c.domain}] {c.response}", markup=False, highlight=False, soft_wrap=True)
        self.console.print("[dim]/teach N adds the question with answer N; /teach TEXT with an answer of your own[/]")

    def _answering_domain(self) -> str | None:
        """The domain whose prefix gave the last answer (None: the plain base)."""
        result = self.s.last_result
        if result is not None and result.route is not None:
            return result.route.domain
        adapter = self.s.options.adapter
        domain = self.s.options.domain or (adapter.partition("@")[0] if adapter else None)
        return None if domain == BASE else domain

    def _save(self, arg: str) -> None:
        if not arg:
            self.err.print("usage: /save FILE")
            return
        path = Path(arg).expanduser()
        data = {"conversation_id": self.s.conversation_id,
                "turns": [{"query": q, "answer": a} for q, a in self.s.history]}
        try:
            atomic_write_text(path, json.dumps(data, ensure_ascii=False, indent=2))
        except OSError as exc:
            self.err.print(f"cannot write {path}: {exc.strerror}", markup=False)
            return
        turns = len(self.s.history)
        self.console.print(f"[dim]saved {turns} turn{'' if turns == 1 else 's'} to {escape(str(path))}[/]")

    def _help(self, _: str) -> None:
        self.console.print(HELP, markup=False)


def route_line(result: GenerationResult) -> str:
    """'support@v2 · keyword · 1.00 · matched 退货' for the status line under an answer."""
    route = result.route
    where = result.adapter or "base model"
    if route is None:
        return where
    detail = route.detail
    if route.reason == "sticky" and detail:
        # A sticky route's detail retells the first message's whole reason: shown under that message already,
        # repeated under every later answer it buried the answers (a newcomer's report). The engine's notes on
        # this message (asked as a training question, a fixed reply) stay.
        notes = [part for part in detail.split("; ") if part.startswith((CLOSEST_QUESTION_NOTE, FALLBACK_REPLY_NOTE))]
        detail = "; ".join(["kept from earlier in the conversation", *notes])
    return " · ".join(x for x in (where, route.reason, f"{route.score:.2f}", detail) if x)
