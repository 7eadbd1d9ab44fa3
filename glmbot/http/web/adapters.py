"""The adapters page: per domain its versions, one version's details and loss curve, two versions
side by side, and promote / rollback / archive behind a confirmation.

Writes go through the registry API (one transaction each); the engine resolves a domain to its
active version at every request, so the chat answers with a promoted version at the next turn.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gradio as gr
import pandas as pd

from glmbot.errors import GlmbotError
from glmbot.http.web.backend import ACTIONS, VERSION_COLUMNS, WebBackend

OnLoad = tuple[Callable, Any, Any]


def adapters_tab(backend: WebBackend) -> OnLoad:
    with gr.Tab("Adapters", id="adapters", elem_id="tab-adapters"):
        with gr.Row():
            names = backend.domains()
            domain = gr.Dropdown(choices=names, value=names[0] if names else None, label="Domain",
                                 elem_id="adapters-domain", scale=2)
            ref = gr.Dropdown(choices=[], label="Version", elem_id="adapters-ref", scale=2)
            refresh = gr.Button("Refresh", elem_id="adapters-refresh", scale=1)
        versions = gr.Dataframe(headers=list(VERSION_COLUMNS), interactive=False, elem_id="adapters-versions")
        with gr.Row():
            buttons = {a: gr.Button(a.capitalize(), elem_id=f"adapters-{a}", variant="secondary") for a in ACTIONS}
        with gr.Row(visible=False, elem_id="adapters-confirm-row") as confirm_row:
            question = gr.Markdown(elem_id="adapters-confirm-text")
            confirm = gr.Button("Confirm", variant="stop", elem_id="adapters-confirm")
            cancel = gr.Button("Cancel", elem_id="adapters-cancel")
        status = gr.Markdown(elem_id="adapters-status")
        pending = gr.State(None)  # (action, ref) waiting for its confirmation
        with gr.Row():
            details = gr.Markdown(elem_id="adapters-details")
            curve = gr.LinePlot(x="step", y="loss", title="training loss", elem_id="adapters-loss", height=260)
        with gr.Accordion("Compare two versions on one question", open=False, elem_id="adapters-compare"):
            with gr.Row():
                left = gr.Dropdown(choices=[], label="Version A", elem_id="compare-a")
                right = gr.Dropdown(choices=[], label="Version B", elem_id="compare-b")
            question_in = gr.Textbox(label="Question", elem_id="compare-question")
            compare = gr.Button("Answer with both", elem_id="compare-run")
            with gr.Row():
                answer_left = gr.Textbox(label="A", interactive=False, elem_id="compare-answer-a")
                answer_right = gr.Textbox(label="B", interactive=False, elem_id="compare-answer-b")

    def load_domain(name: str | None, current: str | None = None) -> tuple:
        names = backend.domains()
        name = name if name in names else (names[0] if names else None)
        refs = backend.refs(name) if name else []
        picked = current if current in refs else (refs[0] if refs else None)
        return gr.Dropdown(choices=names, value=name), backend.versions(name) if name else None, \
            gr.Dropdown(choices=refs, value=picked)

    def load_all(name: str | None, current: str | None, a: str | None, b: str | None) -> tuple:
        """load_domain, and every version for the comparison (its choices kept where still there)."""
        every = backend.refs()
        return (*load_domain(name, current), gr.Dropdown(choices=every, value=a if a in every else None),
                gr.Dropdown(choices=every, value=b if b in every else None))

    def load_version(name: str | None) -> tuple:
        if not name:
            return "", None
        points = backend.loss_curve(name)
        return backend.details(name), pd.DataFrame(points, columns=["step", "loss"]) if points else None

    def ask(action: str, name: str | None) -> tuple:
        if not name:
            return gr.Row(visible=False), "", None, "pick a version first"
        return gr.Row(visible=True), backend.action_question(action, name), (action, name), ""

    def run(job: tuple[str, str] | None, name: str | None) -> tuple:
        """The action, then the domain's versions and the picked version's details again: the picked
        version stays picked, so its details (which said "active" after a rollback) are reloaded here."""
        if job is None:
            return gr.Row(visible=False), None, "nothing to confirm", *load_domain(None), *load_version(name)
        try:
            said = "**done:** " + backend.act(*job)
        except GlmbotError as exc:
            said = f"**refused:** {exc}"
        domain_name = job[1].partition("@")[0]
        refs = backend.refs(domain_name)
        picked = name if name in refs else (refs[0] if refs else None)  # as load_domain picks it
        return gr.Row(visible=False), None, said, *load_domain(domain_name, name), *load_version(picked)

    async def side_by_side(a: str | None, b: str | None, text: str) -> tuple[str, str]:
        if not (a and b and text.strip()):
            return "pick two versions and write a question", ""
        try:
            first, second = await backend.compare([a, b], text)
        except GlmbotError as exc:
            return f"error: {exc}", ""
        return first, second

    def load_page(name: str | None, current: str | None) -> tuple:
        """On a page load: choices and the shown domain's versions, and its newest version picked where
        none is (the details were blank on a first visit); a value picked already is left alone."""
        names, every = backend.domains(), backend.refs()
        shown = name if name in names else None
        refs = backend.refs(shown) if shown else []
        picked = current if current in refs else (refs[0] if refs else None)
        return (gr.Dropdown(choices=names), backend.versions(shown) if shown else None,
                gr.Dropdown(choices=refs, value=picked), gr.Dropdown(choices=every), gr.Dropdown(choices=every))

    domain_outputs = [domain, versions, ref]
    all_inputs, all_outputs = [domain, ref, left, right], [*domain_outputs, left, right]
    # a domain picked: its versions, the newest picked (the domain itself is not sent back: a late answer
    # would undo the user's next pick)
    domain.change(lambda name, current: load_domain(name, current)[1:], [domain, ref], [versions, ref])
    refresh.click(load_all, all_inputs, all_outputs)
    ref.change(load_version, ref, [details, curve])
    for action, button in buttons.items():
        button.click(lambda name, action=action: ask(action, name), ref, [confirm_row, question, pending, status])
    confirm.click(run, [pending, ref], [confirm_row, pending, status, *domain_outputs, details, curve])
    cancel.click(lambda: (gr.Row(visible=False), None, "cancelled"), None, [confirm_row, pending, status])
    compare.click(side_by_side, [left, right, question_in], [answer_left, answer_right])
    return load_page, [domain, ref], all_outputs
