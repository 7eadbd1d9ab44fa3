"""The chat page and the conversation log: gradio components wired to WebBackend.

Each answer streams into the chat as the engine produces it; under it, the adapter that answered
and the route's reason and score. The history sent with each turn is the clean (question, answer)
pairs, never the notes shown under the answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import gradio as gr

from glmbot.errors import GlmbotError
from glmbot.http.schemas import AUTO
from glmbot.http.web.backend import WebBackend, route_note, supports_system_role
from glmbot.serving.router import small_talk_only
from glmbot.serving.turn_log import new_conversation_id

LOG_COLUMNS = ["id", "source", "turns", "started", "first question"]
TURN_COLUMNS = ["time", "question", "answer", "adapter", "route", "score"]
OnLoad = tuple[Callable, Any, Any]  # (fn, inputs, outputs) run when a page loads


def chat_tab(backend: WebBackend) -> OnLoad:
    """The Chat tab; returns what to refresh when a page loads (the picker's choices)."""
    with gr.Tab("Chat", id="chat", elem_id="tab-chat") as tab:
        target = gr.Dropdown(choices=backend.targets(), value=AUTO, label="Answer with", elem_id="chat-target",
                             info="auto-routed, the plain base, a domain's active version, or a named version")
        system = gr.Textbox(label="System prompt", lines=2, elem_id="chat-system",
                            visible=supports_system_role(backend.engine))
        chatbot = gr.Chatbot(elem_id="chat-log", height=420, label="Conversation", feedback_options=None)
        history = gr.State([])  # [(question, answer)] as the engine saw them
        conversation = gr.State(None)  # the conversation id of the log
        with gr.Row():
            message = gr.Textbox(placeholder="Ask a question…", show_label=False, elem_id="chat-input", scale=6)
            send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=1)
            new = gr.Button("New conversation", elem_id="chat-new", scale=1)
        answered_by = gr.State(None)  # the domain whose prefix gave the last answer (None: the plain base)
        teach_panel(backend, history, answered_by)

    async def respond(text: str, model: str, prompt: str, shown: list, pairs: list,
                      conversation_id: str | None, domain: str | None) -> AsyncIterator[tuple]:
        if not text.strip():
            yield shown, pairs, conversation_id, text, domain
            return
        conversation_id = conversation_id or new_conversation_id()
        shown = [*shown, {"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        try:
            async for reply in backend.stream_reply(text, pairs, model or AUTO, prompt or "", conversation_id):
                if reply.result is None:
                    shown[-1] = {"role": "assistant", "content": reply.text}
                else:
                    shown[-1] = {"role": "assistant", "content": f"{reply.text}\n\n*{route_note(reply.result)}*"}
                    pairs = [*pairs, (text, reply.text)]
                    route = reply.result.route
                    domain = route.domain if route is not None else None
                yield shown, pairs, conversation_id, "", domain
        except GlmbotError as exc:
            shown[-1] = {"role": "assistant", "content": f"**error:** {exc}"}
            yield shown, pairs, conversation_id, text, domain

    inputs = [message, target, system, chatbot, history, conversation, answered_by]
    outputs = [chatbot, history, conversation, message, answered_by]
    send.click(respond, inputs, outputs)
    message.submit(respond, inputs, outputs)
    new.click(lambda: ([], [], None, "", None), None, outputs)

    def refresh_targets() -> gr.Dropdown:
        # choices only: a value sent back here could undo a pick made while the page was loading
        return gr.Dropdown(choices=backend.targets())

    def back_to_chat(current: str | None) -> gr.Dropdown:
        """Coming back from the Adapters tab: the versions as they are now (after a promote there the
        list still said "yoga (active v2)"); a pick that no longer exists goes back to auto."""
        choices = backend.targets()
        kept = current if current in {value for _, value in choices} else AUTO
        return gr.Dropdown(choices=choices, value=kept)

    tab.select(back_to_chat, target, target)
    return refresh_targets, None, [target]


def teach_panel(backend: WebBackend, history: Any, answered_by: Any) -> None:
    """Under the chat: add the last question, with the right answer, to a domain's data file (/teach in
    `glmbot chat`). The builtin base answers rewordings only in part; a trained line comes back."""
    with gr.Accordion("Wrong answer? Add the question to a domain's data", open=False, elem_id="teach"):
        find = gr.Button("Show the closest answers of your data", elem_id="teach-find")
        offered = gr.State(None)  # (question, [(domain, answer)]) behind the radio's choices
        picked = gr.Radio(choices=[], label="The right answer", elem_id="teach-pick", type="index")
        with gr.Row():
            own = gr.Textbox(label="Or an answer of your own", elem_id="teach-own", scale=3)
            domain = gr.Dropdown(choices=backend.teach_domains(), label="for domain", elem_id="teach-domain", scale=1)
        add = gr.Button("Add to the data file", elem_id="teach-add")
        note = gr.Markdown(elem_id="teach-note")

    def show(pairs: list, last: str | None) -> tuple:
        if not pairs:
            return None, gr.Radio(choices=[]), gr.Dropdown(), "Ask a question first."
        question, given = pairs[-1]
        if small_talk_only(question):
            return (None, gr.Radio(choices=[]), gr.Dropdown(),
                    f"“{question}” is small talk, which the plain base answers.")
        found = backend.teach_candidates(question, given)
        domains = backend.teach_domains()
        if not domains:
            return None, gr.Radio(choices=[]), gr.Dropdown(choices=[]), (
                "No domain has a data file of its own to add to (builtin samples are not changed): "
                "`glmbot domains add NAME --data FILE.jsonl`")
        picker = gr.Dropdown(choices=domains, value=last if last in domains else None)
        radio = gr.Radio(choices=[f"[{d}] {a}" for d, a in found], value=None, label=f"The right answer to: {question}")
        return (question, found), radio, picker, ""

    def teach(pairs: list, offer: tuple | None, index: int | None, text: str, chosen: str | None) -> str:
        if not pairs:
            return "Ask a question first."
        # Answers listed for an earlier question must not be added to the one asked since.
        found = offer[1] if offer and offer[0] == pairs[-1][0] else []
        if small_talk_only(pairs[-1][0]):
            return f"“{pairs[-1][0]}” is small talk, which the plain base answers."
        if text.strip():
            if not chosen:
                return "Pick the domain whose data gets your answer."
            target, answer = chosen, text
        elif index is not None and 0 <= index < len(found):
            target, answer = found[index]
        else:
            return ("Pick one of the answers, or write your own." if found else
                    "Show the closest answers for this question first, or write your own.")
        try:
            return backend.teach(target, pairs[-1][0], answer)
        except GlmbotError as exc:
            return f"**error:** {exc}"

    find.click(show, [history, answered_by], [offered, picked, domain, note])
    add.click(teach, [history, offered, picked, own, domain], note)


def log_tab(backend: WebBackend) -> OnLoad:
    """The Conversations tab: the registry's conversation log, newest first, and one conversation's turns."""
    with gr.Tab("Conversations", id="log", elem_id="tab-log"):
        with gr.Row():
            picked = gr.Dropdown(choices=[], label="Conversation", elem_id="log-conversation", scale=4)
            refresh = gr.Button("Refresh", elem_id="log-refresh", scale=1)
        table = gr.Dataframe(headers=LOG_COLUMNS, interactive=False, elem_id="log-list", wrap=True)
        turns = gr.Dataframe(headers=TURN_COLUMNS, interactive=False, elem_id="log-turns", wrap=True)

    def reload() -> tuple:
        rows = backend.conversations()
        return gr.Dropdown(choices=[(f"{r[0]} · {r[4]}", r[0]) for r in rows]), rows or None

    def show(conversation_id: str | None) -> list | None:
        return backend.conversation(conversation_id) if conversation_id else None

    refresh.click(reload, None, [picked, table])
    picked.change(show, picked, turns)
    return reload, None, [picked, table]
