"""Shared fixtures: a small random ChatGLM2 and a tiny SentencePiece tokenizer, all offline."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.modeling import ChatGLMForConditionalGeneration

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["GLMBOT_ENTRY_POINTS"] = "0"  # tests never load installed plugins unless they ask

# ChatGLM3 / GLM-4 test tokenizers (chatglm3_sp, glm4_ranks, tok3, tok4)
pytest_plugins = ("tests.glm_family_fixtures",)


@pytest.fixture(autouse=True)
def fresh_plugin_manager():
    """Each test starts without loaded plugins; the first get_manager() loads the configured ones."""
    from glmbot.plugins import reset_manager

    reset_manager()
    yield
    reset_manager()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Each phase's report on its item (item.report_call...), for fixtures that act on a failure."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def screenshot_on_failure(request):
    """A function to call with a Playwright page before closing it: when the test failed, it saves a full-page
    screenshot as $GLMBOT_SCREENSHOT_DIR/<test>.png (default test-screenshots/) and names it in the report."""
    def save(page) -> None:  # noqa: ANN001 - playwright.sync_api.Page
        report = getattr(request.node, "report_call", None)
        if report is None or not report.failed:
            return
        folder = Path(os.environ.get("GLMBOT_SCREENSHOT_DIR", "test-screenshots"))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / ("".join(c if c.isalnum() or c in "-_" else "_" for c in request.node.name) + ".png")
        page.screenshot(path=str(path), full_page=True)
        report.sections.append(("screenshot", str(path.resolve())))

    return save


@pytest.fixture(scope="session")
def postgres_url():
    """The PostgreSQL of the registry tests: GLMBOT_TEST_PG_URL, else a private server for this session."""
    if os.environ.get("GLMBOT_TEST_PG_URL"):
        yield os.environ["GLMBOT_TEST_PG_URL"]
        return
    from postgres_server import start_postgres

    server = start_postgres()
    try:
        yield server.url
    finally:
        server.stop()


def small_config(**overrides) -> ChatGLMConfig:
    """Same architecture as ChatGLM2-6B, unit-test sized (4 query heads over 2 KV groups)."""
    values = dict(num_layers=2, padded_vocab_size=640, hidden_size=64, ffn_hidden_size=96, kv_channels=16,
                  num_attention_heads=4, multi_query_group_num=2, seq_length=512, initializer_range=0.1)
    values.update(overrides)
    return ChatGLMConfig(**values)


def small_model(seed: int = 0, **overrides) -> ChatGLMForConditionalGeneration:
    torch.manual_seed(seed)
    model = ChatGLMForConditionalGeneration(small_config(**overrides)).eval()
    # Norm weights and the QKV bias start at 1 and 0; randomise them so a mix-up would show.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("layernorm.weight"):
                p.uniform_(0.5, 1.5)
            elif name.endswith("query_key_value.bias"):
                p.normal_(0, 0.1)
    return model


@pytest.fixture
def model() -> ChatGLMForConditionalGeneration:
    return small_model()


@pytest.fixture(scope="session")
def sp_model_file(tmp_path_factory) -> Path:
    """A 600-piece SentencePiece model trained like the builtin one (identity normalisation)."""
    import sentencepiece as spm

    folder = tmp_path_factory.mktemp("sp")
    lines = ["[Round 1]", "问：你好", "答：你好！有什么可以帮您？", "请问订单什么时候发货？", "退货需要几天到账？",
             "谢谢，再见。", "Hello world 123"]
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(lines * 40), encoding="utf-8")
    spm.SentencePieceTrainer.Train(
        input=str(corpus), model_prefix=str(folder / "tokenizer"), vocab_size=400, character_coverage=1.0,
        byte_fallback=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, max_sentencepiece_length=4, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        minloglevel=2, hard_vocab_limit=False)
    return folder / "tokenizer.model"
