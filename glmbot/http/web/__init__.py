"""glmbot in the browser: a chat page and an adapter dashboard (Gradio), mounted on the HTTP app.

    mount_web_ui(app, backend, api_keys=keys)      # create_app(..., web_ui=True) does this; path /ui

Same process, same engine, same registry and the same API keys as /v1: when the server has keys,
the pages ask for one at login (any user name, the key as password), and every write (promote,
rollback, archive) also asks for a confirmation. A server bound beyond loopback always has keys
(auth.check_bind), so there no write happens without one.

    backend.py   WebBackend: what the pages ask of the engine and the registry (no gradio)
    chat.py      the Chat and Conversations tabs
    adapters.py  the Adapters tab
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from glmbot.http.web.backend import WebBackend

UI_PATH = "/ui"
# System fonts only: the page must load with no network (Gradio's default theme fetches web fonts).
_FONTS = ["ui-sans-serif", "system-ui", "sans-serif"]
_MONO = ["ui-monospace", "monospace"]


def build_blocks(backend: WebBackend) -> Any:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # a glmbot server never reports usage to Gradio
    import gradio as gr

    from glmbot.http.web.adapters import adapters_tab
    from glmbot.http.web.chat import chat_tab, log_tab

    with gr.Blocks(title="glmbot", analytics_enabled=False) as blocks:
        gr.Markdown("## glmbot", elem_id="title")
        with gr.Tabs():
            on_load = [chat_tab(backend), adapters_tab(backend), log_tab(backend)]
        for fn, inputs, outputs in on_load:  # each page load shows the registry as it is now
            blocks.load(fn, inputs, outputs)
    return blocks


def mount_web_ui(app: Any, backend: WebBackend, api_keys: Sequence[str] = (), path: str = UI_PATH) -> Any:
    """Mount the pages on `app` under `path`; with api_keys, a login whose password is one of them."""
    import gradio as gr

    from glmbot.http.auth import key_digests, key_matches

    digests = key_digests(api_keys)
    auth = (lambda _user, password: key_matches(digests, password)) if digests else None
    theme = gr.themes.Default(font=_FONTS, font_mono=_MONO)
    return gr.mount_gradio_app(app, build_blocks(backend), path=path, auth=auth, ssr_mode=False, theme=theme,
                               auth_message="glmbot: any user name, one of the server's API keys as password",
                               footer_links=[])
