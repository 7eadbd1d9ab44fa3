"""The web pages in a real browser: headless Chromium (the Debian package) driven by Playwright.

One server per module on the builtin tiny base: support@v1 and ads@v1 active, support@v2 a candidate
with a loss curve and metrics. The chat streams its answer in pieces and names its route; the
adapters page promotes support@v2 behind a confirmation and the chat then answers with it. A failed
test leaves a screenshot (conftest.py: GLMBOT_SCREENSHOT_DIR, default test-screenshots/).
"""

from __future__ import annotations

import re
import shutil

import httpx
import pytest
import torch
from playwright.sync_api import expect
from test_server import open_registry, serving_engine

from glmbot.config import settings_from_dict
from glmbot.http import ServerThread, create_app
from glmbot.model.fingerprint import architecture, base_fingerprint
from glmbot.model.prefix import PrefixEncoder
from glmbot.model.prefix_io import encoder_state
from glmbot.serving.requests import GenerationRequest
from glmbot.training.trainer import write_loss_curve

QUESTION = "退货多久到账？"  # its keyword routes it to support
GENERATION = {"do_sample": False, "max_new_tokens": 24}  # greedy: the page must show the engine's own answer
LOSSES = [4.5, 3.25, 2.5, 2.0]
TIMEOUT_MS = 20_000


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with open_registry(tmp_path_factory.mktemp("web")) as reg:
        yield reg


@pytest.fixture(scope="module")
def engine(registry, tmp_path_factory):
    with serving_engine(registry) as eng:
        eng.settings = settings_from_dict({"generation": GENERATION, "server": {"max_tokens_limit": 512}})
        run_dir = tmp_path_factory.mktemp("run")
        write_loss_curve(run_dir, LOSSES)
        torch.manual_seed(7)
        encoder = PrefixEncoder(eng.model.config, 8)
        with torch.no_grad():
            encoder.embedding.weight.normal_(0, 3.0)  # strong enough that v2 answers otherwise than v1
        registry.register_adapter("support", encoder_state(encoder), base_model="builtin:tiny",
                                  base_fingerprint=base_fingerprint(eng.model), architecture=architecture(eng.model.config),
                                  metrics={"rouge-l": 41.5, "bleu-4": 12.25, "probe_kept": 0.875},
                                  provenance={"run_dir": str(run_dir), "data": "support.jsonl"})
        yield eng


@pytest.fixture(scope="module")
def server(engine, registry):
    app = create_app(engine, settings=engine.settings, registry=registry, web_ui=True)
    with ServerThread(app) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: install the Debian package (apt-get install -y chromium), as .ci/run does"
    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser, server, screenshot_on_failure):
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    opened = context.new_page()
    opened.set_default_timeout(TIMEOUT_MS)
    opened.goto(server.url + "/ui/")
    opened.wait_for_selector("#chat-input textarea")
    yield opened
    screenshot_on_failure(opened)
    context.close()


def answer(engine, question: str, **target) -> str:
    request = GenerationRequest(messages=[{"role": "user", "content": question}], **target)
    return engine.generate(request).text


def pick(page, elem_id: str, label: str) -> None:
    """Choose `label` in a gradio dropdown: typing filters its options, Enter takes the first one left. A pick
    made while the dropdown's choices are still arriving can be dropped by it: then pick again."""
    for _ in range(3):
        page.fill(f"#{elem_id} input", label)
        page.keyboard.press("Enter")
        page.wait_for_timeout(300)  # the dropdown settles (an unknown text is cleared on blur)
        page.locator("#title").click()  # blur it: closes its list
        if page.input_value(f"#{elem_id} input") == label:
            return
    raise AssertionError(f"could not pick {label!r} in #{elem_id}: it shows {page.input_value(f'#{elem_id} input')!r}")


def ask(page, question: str) -> list[str]:
    """Send `question`; returns every text the last answer showed while it grew (a MutationObserver's record)."""
    page.evaluate("""() => {
        window.seen = [];
        const log = document.querySelector('#chat-log');
        new MutationObserver(() => {
            const bots = log.querySelectorAll('.message.bot, [data-testid="bot"]');
            if (bots.length) window.seen.push(bots[bots.length - 1].innerText);
        }).observe(log, {subtree: true, childList: true, characterData: true});
    }""")
    count = page.locator("#chat-log [data-testid='bot']").count()
    page.fill("#chat-input textarea", question)
    page.click("#chat-send")
    page.wait_for_function(f"document.querySelectorAll('#chat-log [data-testid=\"bot\"]').length > {count} && "
                           "document.querySelector('#chat-log [data-testid=\"bot\"]:last-of-type') !== null && "
                           "[...document.querySelectorAll('#chat-log [data-testid=\"bot\"]')].pop().innerText"
                           ".includes('route')")
    return page.evaluate("window.seen")


def open_adapters(page) -> None:
    page.get_by_role("tab", name="Adapters").click()
    expect(page.locator("#adapters-versions")).to_contain_text("ads@v1")  # the page's load has run


def last_answer(page) -> str:
    return page.locator("#chat-log [data-testid='bot']").last.inner_text()


def test_chat_streams_the_answer_in_pieces_with_its_route_then_switches_domain(page, engine, registry):
    seen = ask(page, QUESTION)
    expected = answer(engine, QUESTION, domain="support")
    shown = last_answer(page)
    assert shown.startswith(expected) and "adapter support@v1 · route keyword (score 1.00)" in shown
    growing = [t for t in dict.fromkeys(seen) if t.strip() and "route" not in t and t != "Loading content"]
    assert len(growing) >= 2, f"the answer did not stream: the page showed {growing!r}"
    assert all(expected.startswith(t.strip()) for t in growing), (growing, expected)  # each a prefix of the answer

    pick(page, "chat-target", "ads (active v1)")
    ask(page, QUESTION)  # a second turn: the first one is its history
    history = [(QUESTION, expected)]
    second = engine.generate(GenerationRequest(query=QUESTION, history=history, domain="ads")).text
    shown = last_answer(page)
    assert shown.startswith(second) and "adapter ads@v1 · route explicit" in shown
    turns = [t for c in registry.list_conversations() if c.source == "web" for t in registry.conversation_turns(c.id)]
    assert [(t.adapter, t.answer) for t in turns[-2:]] == [("support@v1", expected), ("ads@v1", second)]

    page.get_by_role("tab", name="Conversations").click()  # the log, browsable
    page.click("#log-refresh")
    expect(page.locator("#log-list")).to_contain_text("web")
    conversation = turns[-1].conversation_id
    pick(page, "log-conversation", f"{conversation} · {QUESTION}")
    expect(page.locator("#log-turns")).to_contain_text("ads@v1")
    expect(page.locator("#log-turns")).to_contain_text(second)


def test_the_adapters_page_promotes_a_version_and_the_chat_answers_with_it(page, engine, registry):
    open_adapters(page)
    # A first visit shows a version with its details, not an empty Version box (a newcomer's first look).
    expect(page.locator("#adapters-ref input")).to_have_value(re.compile(r"^[a-z]+@v\d+$"))
    page.locator("#adapters-details").get_by_text("sha256").first.wait_for()
    pick(page, "adapters-domain", "support")
    expect(page.locator("#adapters-versions")).to_contain_text("support@v2")
    expect(page.locator("#adapters-ref input")).to_have_value("support@v2")  # the newest is picked
    details = page.locator("#adapters-details")
    details.get_by_text("rouge-l").wait_for()
    v2 = registry.resolve("support@v2")
    text = details.inner_text()
    assert "41.5" in text and "12.25" in text and "0.875" in text
    assert v2.files["adapter_model.safetensors"] in text and "support.jsonl" in text
    page.locator("#adapters-loss canvas, #adapters-loss svg").first.wait_for()  # the loss curve is drawn

    page.click("#adapters-promote")
    page.get_by_text("Promote support@v2? It replaces support@v1").wait_for()
    assert registry.resolve("support").version == 1  # nothing happens before the confirmation
    page.click("#adapters-confirm")
    page.get_by_text("support@v2 is now active").wait_for()
    assert registry.resolve("support").version == 2
    expect(page.locator("#adapters-details")).to_contain_text("support@v2 · active")  # not the stale status
    assert "active" in page.locator("#adapters-versions").inner_text()

    page.get_by_role("tab", name="Chat").click()
    pick(page, "chat-target", "support (active v2)")  # the picker follows the promotion (it said active v1)
    pick(page, "chat-target", "auto-routed")
    ask(page, QUESTION)  # auto-routed: the keyword picks support, which now means v2
    shown = last_answer(page)
    assert "adapter support@v2 · route keyword" in shown
    assert shown.startswith(answer(engine, QUESTION, adapter="support@v2"))


def test_two_versions_answer_side_by_side(page, engine):
    open_adapters(page)
    page.get_by_text("Compare two versions on one question").click()
    pick(page, "compare-a", "support@v1")
    pick(page, "compare-b", "support@v2")
    page.fill("#compare-question textarea", QUESTION)
    page.click("#compare-run")
    first, second = (answer(engine, QUESTION, adapter=ref, do_sample=False) for ref in ("support@v1", "support@v2"))
    assert first != second
    page.wait_for_function("document.querySelector('#compare-answer-b textarea').value.length > 0")
    assert page.input_value("#compare-answer-a textarea") == first
    assert page.input_value("#compare-answer-b textarea") == second


def test_with_api_keys_the_pages_want_a_key_to_log_in(engine, registry):
    app = create_app(engine, settings=engine.settings, registry=registry, web_ui=True, api_keys=["s3cret"])
    with ServerThread(app) as running, httpx.Client(base_url=running.url + "/ui") as http:
        assert http.get("/config").status_code == 401
        assert http.post("/login", data={"username": "lead", "password": "wrong"}).status_code == 400
        assert http.post("/login", data={"username": "lead", "password": "s3cret"}).status_code == 200
        assert http.get("/config").status_code == 200  # the session cookie now opens the pages
    with ServerThread(app) as running:  # the server's own address leads a browser to the pages
        root = httpx.get(running.url + "/")
        assert root.status_code == 307 and root.headers["location"] == "/ui/"
        missing = httpx.get(running.url + "/chat")
        assert missing.status_code == 404
        assert "chat page and adapter dashboard at /ui/" in missing.json()["error"]["message"]


def test_a_wrongly_answered_question_is_added_to_the_domains_data(browser, engine, registry, tmp_path,
                                                                  screenshot_on_failure):
    """The chat's "Wrong answer?" panel offers the closest answers of the domain's own file and appends
    the question with the picked one (`/teach` in the terminal chat)."""
    import json

    from glmbot.training.data import Example, load_examples

    rows = [("退货多久到账？", "退款3到5个工作日原路到账。"), ("几点发货？", "下午4点前付款当天发货。")]
    data = tmp_path / "support.jsonl"
    data.write_text("".join(json.dumps({"prompt": q, "response": a}, ensure_ascii=False) + "\n" for q, a in rows),
                    encoding="utf-8")
    settings = settings_from_dict({"generation": GENERATION, "domains": {"support": {"data": "support.jsonl"}}},
                                  root=tmp_path)
    app = create_app(engine, settings=settings, registry=registry, web_ui=True)
    with ServerThread(app) as running:
        context = browser.new_context(viewport={"width": 1280, "height": 1400})
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(running.url + "/ui/")
        page.wait_for_selector("#chat-input textarea")
        try:
            ask(page, "退款要几天才能到账？")
            page.get_by_text("Wrong answer? Add the question to a domain's data").click()
            page.click("#teach-find")
            right = f"[support] {rows[0][1]}"
            expect(page.locator("#teach-pick")).to_contain_text(right)
            page.get_by_label(right).check()
            page.click("#teach-add")
            expect(page.locator("#teach-note")).to_contain_text("Added to support.jsonl (example 3, 3 in all)")
            assert load_examples(data)[-1] == Example("退款要几天才能到账？", rows[0][1])
            page.click("#teach-add")  # the same pick again writes nothing
            expect(page.locator("#teach-note")).to_contain_text("has it already (example 3)")
            ask(page, "几点能发货？")  # the answers listed were for the question before: not added to this one
            page.click("#teach-add")
            expect(page.locator("#teach-note")).to_contain_text("Show the closest answers for this question first")
            assert len(load_examples(data)) == 3
        finally:
            screenshot_on_failure(page)
            context.close()
