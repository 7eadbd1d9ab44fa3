"""[serving] blas: which CUDA BLAS library the decode step's products run on, timed or named."""

from __future__ import annotations

import pytest
import torch
from conftest import small_model

from glmbot.config import load_settings
from glmbot.errors import ConfigError
from glmbot.model.quantization import quantize_model
from glmbot.model.tokenizer import ChatGLMTokenizer
from glmbot.serving import blas


@pytest.fixture(scope="module")
def tok(sp_model_file) -> ChatGLMTokenizer:
    return ChatGLMTokenizer(sp_model_file)


def test_cublaslt_is_kept_only_when_it_is_clearly_faster():
    assert blas.pick_library({"cublas": 4.00, "cublaslt": 3.90}) == "cublaslt"  # 2.5% faster
    assert blas.pick_library({"cublas": 4.00, "cublaslt": 3.98}) == "cublas"  # 0.5%: a tie keeps the default
    assert blas.pick_library({"cublas": 4.00, "cublaslt": 4.20}) == "cublas"


def test_libraries_are_timed_alternately_after_a_warm_up_and_the_fastest_pass_counts():
    calls = []
    times = {"cublas": iter([50.0, 4.1, 4.0, 4.3]), "cublaslt": iter([90.0, 3.9, 4.4, 3.8])}

    def measure(library):
        calls.append(library)
        return next(times[library])

    best = blas.fastest_passes(measure, passes=3)
    assert best == {"cublas": 4.0, "cublaslt": 3.8}  # the warm-up passes (50, 90 ms) are not counted
    assert calls == ["cublas", "cublaslt"] * 4  # drift falls on both alike


def test_the_products_timed_are_the_half_precision_ones_blas_runs():
    model = small_model().to(torch.bfloat16)
    names = [n for n, m in model.named_modules() if m in set(blas.decode_products(model))]
    per_layer = ["self_attention.query_key_value", "self_attention.dense", "mlp.dense_h_to_4h", "mlp.dense_4h_to_h"]
    assert names == [f"transformer.encoder.layers.{i}.{p}" for i in range(2) for p in per_layer] + [
        "transformer.output_layer"]
    # int8 layers run glmbot's own kernels, fp32 ones no tensor-core BLAS choice: only bf16 output layer left
    assert [m is model.transformer.output_layer for m in blas.decode_products(quantize_model(model, "int8"))] == [True]
    assert blas.decode_products(small_model()) == []


def test_on_the_cpu_there_is_nothing_to_choose_and_a_bad_setting_is_named():
    before = torch.backends.cuda.preferred_blas_library()
    assert blas.choose_blas(small_model().to(torch.bfloat16), 64, "auto") is None
    assert blas.choose_blas(small_model(), 64, "cublaslt") is None
    assert torch.backends.cuda.preferred_blas_library() == before
    with pytest.raises(ValueError, match=r"\[serving\] blas = 'mkl': use 'auto', 'cublas' or 'cublaslt'"):
        blas.choose_blas(small_model(), 64, "mkl")
    with pytest.raises(ValueError, match=r"--blas = 'mkl'"):
        blas.choose_blas(small_model(), 64, "mkl", source="--blas")


def test_a_choice_says_why_and_what_it_measured():
    timed = blas.BlasChoice("cublaslt", "timed over a decode step's products", {"cublas": 4.732, "cublaslt": 4.635})
    assert timed.describe() == "BLAS cublaslt (timed over a decode step's products, cublas 4.732 ms, cublaslt 4.635 ms)"
    assert blas.BlasChoice("cublas", "named in --blas").describe() == "BLAS cublas (named in --blas)"


def test_glmbot_toml_takes_the_three_settings_and_refuses_others(tmp_path):
    config = tmp_path / "glmbot.toml"
    config.write_text("[serving]\nmax_batch_size = 8\n", encoding="utf-8")
    assert load_settings(config).serving.blas == "auto"
    config.write_text('[serving]\nblas = "cublaslt"\n', encoding="utf-8")
    assert load_settings(config).serving.blas == "cublaslt"
    config.write_text('[serving]\nblas = "mkl"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"serving.blas = 'mkl' is not one of 'auto', 'cublas', 'cublaslt'"):
        load_settings(config)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_cuda_auto_times_both_libraries_and_sets_the_faster():
    model = small_model(num_layers=4, hidden_size=1024, ffn_hidden_size=2816, kv_channels=64,
                        num_attention_heads=16, padded_vocab_size=8192).to("cuda", torch.bfloat16)
    backend = {"cublas": torch._C._BlasBackend.Cublas, "cublaslt": torch._C._BlasBackend.Cublaslt}
    before = torch.backends.cuda.preferred_blas_library()
    try:
        choice = blas.choose_blas(model, 64, "auto")
        assert choice.reason.startswith("timed") and set(choice.ms) == {"cublas", "cublaslt"}
        assert all(0.001 < ms < 100 for ms in choice.ms.values())  # events on the products' device saw them run
        assert torch.backends.cuda.preferred_blas_library() == backend[choice.library]
        named = blas.choose_blas(model, 64, "cublaslt")
        assert named.library == "cublaslt" and not named.ms
        assert torch.backends.cuda.preferred_blas_library() == backend["cublaslt"]
        fixed = blas.choose_blas(model, 64, "auto", deterministic=True)  # bit-reproducible starts: never timed
        assert fixed.library == "cublas" and not fixed.ms
        assert torch.backends.cuda.preferred_blas_library() == backend["cublas"]
    finally:
        torch.backends.cuda.preferred_blas_library(before)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_build_engine_times_at_the_engines_rows_before_it_captures(monkeypatch, tok):
    """The factory hands choose_blas the caller's max_batch_size and [serving] deterministic, and
    chooses before the engine's graphs are captured."""
    from glmbot.config import Settings
    from glmbot.serving import factory

    model = small_model().to("cuda", torch.bfloat16)
    seen = []
    real_choose, real_init = factory.choose_blas, factory.Engine.__init__

    def choose(model, rows, setting, deterministic=False):
        seen.append(("choose", rows, setting, deterministic))
        return real_choose(model, rows, setting, deterministic)

    def init(self, *args, **kwargs):
        seen.append(("engine",))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(factory, "choose_blas", choose)
    monkeypatch.setattr(factory.Engine, "__init__", init)
    settings = Settings()
    settings.serving.compile = False
    before = torch.backends.cuda.preferred_blas_library()
    try:
        with factory.build_engine(settings, model, tok, None, max_batch_size=8, max_len=32):
            pass
    finally:
        torch.backends.cuda.preferred_blas_library(before)
    assert seen == [("choose", 8, "auto", False), ("engine",)]
