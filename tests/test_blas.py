"""[serving] blas: which CUDA BLAS library the decode step's products run on, timed or named."""

from __future__ import annotations

import pytest
import torch
from conftest import small_model

from glmbot.config import load_settings
from glmbot.errors import ConfigError
from glmbot.model.quantization import quantize_model
from glmbot.serving import blas


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
    try:
        choice = blas.choose_blas(model, 64, "auto")
        assert choice.reason == "timed" and set(choice.ms) == {"cublas", "cublaslt"}
        assert all(0 < ms < 100 for ms in choice.ms.values())
        assert choice.library == blas.pick_library(choice.ms)
        assert torch.backends.cuda.preferred_blas_library() == {
            "cublas": torch._C._BlasBackend.Cublas, "cublaslt": torch._C._BlasBackend.Cublaslt}[choice.library]
        named = blas.choose_blas(model, 64, "cublaslt")
        assert named.library == "cublaslt" and not named.ms
        assert torch.backends.cuda.preferred_blas_library() == torch._C._BlasBackend.Cublaslt
    finally:
        torch.backends.cuda.preferred_blas_library("cublas")
