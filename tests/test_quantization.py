"""Quantized bases (int8, int4): the official int4 layout, logits near full precision, official
quantized checkpoints loaded as stored, training through the quantized products, mixed-prefix
batches, and one clear error per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import small_model

from glmbot.config import load_settings
from glmbot.errors import CheckpointMismatchError, ConfigError, QuantizationError
from glmbot.model import load_base, quant_kernels
from glmbot.model.prefix import PrefixEncoder, PrefixKV
from glmbot.model.quantization import (
    RowQuantizedWeight,
    check_quantization,
    dequantize,
    pack_int4,
    quantize_model,
    quantize_rows,
    target_names,
    unpack_int4,
    weight_bytes,
)
from tests.test_loading import ids_and_mask, write_official

# Documented tolerances (docs/QUANTIZATION.md): relative L2 error of the logits against the
# full-precision model, and the share of positions whose top token is unchanged.
TOLERANCE = {"int8": (0.03, 0.9), "int4": (0.45, 0.4)}


def official_extract(byte: int) -> tuple[int, int]:
    """The official CPU kernel's extract_int4_weight_to_float for one byte, transcribed:
    column 2j = (signed char)b >> 4, column 2j+1 = (signed char)(b << 4) >> 4."""
    signed = byte - 256 if byte > 127 else byte
    low = ((byte << 4) & 0xFF)
    low = low - 256 if low > 127 else low
    return signed >> 4, low >> 4


def test_int4_nibble_order_is_the_official_kernels():
    every_byte = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(torch.int8)[None]  # (1, 256)
    expected = torch.tensor([v for b in range(256) for v in official_extract(b)], dtype=torch.int8)[None]
    assert torch.equal(unpack_int4(every_byte), expected)
    assert torch.equal(pack_int4(expected), every_byte)
    # Column 0 in the high nibble: [1, -2] -> 0x1E, [7, -8] -> 0x78.
    assert pack_int4(torch.tensor([[1, -2, 7, -8]], dtype=torch.int8)).view(torch.uint8).tolist() == [[0x1E, 0x78]]


def test_quantize_rows_is_symmetric_per_row_as_official():
    w = torch.tensor([[0.7, -0.35, 0.1, 0.0], [-2.0, 1.2, 0.5, 0.25]])
    values, scale = quantize_rows(w, 4)
    assert torch.allclose(scale, torch.tensor([0.1, 2.0 / 7]))
    assert values[0].tolist() == [7, -4, 1, 0] and values[1].tolist() == [-7, 4, 2, 1]
    values8, scale8 = quantize_rows(w, 8)
    assert torch.allclose(dequantize(values8, scale8, 8, torch.float32), w, atol=2.0 / 127 / 2 + 1e-6)


def relative_error(logits: torch.Tensor, reference: torch.Tensor) -> float:
    return float((logits - reference).norm() / reference.norm())


@pytest.fixture(scope="module")
def builtin_fp32():
    return load_base("builtin:tiny", device="cpu")


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_builtin_base_logits_within_tolerance_and_bytes_shrink(builtin_fp32, kind):
    full, tok = builtin_fp32
    model, _ = load_base("builtin:tiny", device="cpu", quantization=kind)
    ids = torch.tensor([tok.encode(tok.build_prompt("图书馆几点开门？退货多久到账？你好，请问可以开发票吗？"))])
    with torch.no_grad():
        ref, got = full(ids).logits, model(ids).logits
    max_err, min_top1 = TOLERANCE[kind]
    assert relative_error(got, ref) <= max_err
    assert (got.argmax(-1) == ref.argmax(-1)).float().mean() >= min_top1
    swapped = target_names(model)
    assert all(isinstance(model.get_submodule(n).weight, RowQuantizedWeight) for n in swapped)
    assert not isinstance(model.transformer.output_layer.weight, RowQuantizedWeight)  # off by default
    linear_bytes = sum(full.get_submodule(n).weight.numel() * 4 for n in swapped)
    saved = weight_bytes(full) - weight_bytes(model)
    stored = {"int8": 1.0, "int4": 0.5}[kind]  # bytes per weight, plus 4 per row for the scale
    rows = sum(full.get_submodule(n).weight.shape[0] for n in swapped)
    assert saved == linear_bytes - (linear_bytes // 4 * stored + 4 * rows)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_small_random_config_logits_within_tolerance(kind):
    full, quant = small_model(seed=5), quantize_model(small_model(seed=5), kind)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        ref, got = full(ids, attention_mask=mask).logits, quant(ids, attention_mask=mask).logits
    assert relative_error(got, ref) <= TOLERANCE[kind][0]


def dequantized_copy(model, kind, scale_dtype=torch.float16):
    """The float model that dequantize-then-run computes with: every quantized weight replaced by
    values * scale (scales rounded to `scale_dtype` first, fp16 as the official files store them)."""
    bits = {"int8": 8, "int4": 4}[kind]
    with torch.no_grad():
        for name in target_names(model):
            linear = model.get_submodule(name)
            values, scale = quantize_rows(linear.weight, bits)
            linear.weight.copy_(dequantize(values, scale.to(scale_dtype), 8, torch.float32))  # values unpacked
    return model


def official_quantized_state(model, bits: int) -> dict:
    """State dict as the official QuantizedLinear stores it: int8 (or packed int4) weight, fp16 weight_scale."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for name in target_names(model):
        values, scale = quantize_rows(state[name + ".weight"], bits)
        state[name + ".weight"] = pack_int4(values) if bits == 4 else values
        state[name + ".weight_scale"] = scale.half()
    return state


def write_quantized(folder, model, sp_model_file, bits: int, edit=None):
    folder = write_official(folder, model, sp_model_file, "safetensors-single", quantization_bit=bits)
    from safetensors.torch import save_file

    state = official_quantized_state(model, bits)
    if edit is not None:
        edit(state)
    save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
    return folder, state


@pytest.mark.parametrize("bits", [8, 4])
def test_official_quantized_checkpoint_loads_as_stored_and_equals_dequantize_then_run(tmp_path, sp_model_file,
                                                                                       bits):
    folder, state = write_quantized(tmp_path / f"int{bits}", small_model(seed=7), sp_model_file, bits)
    loaded, _ = load_base(folder, device="cpu")
    qkv = "transformer.encoder.layers.1.self_attention.query_key_value"
    weight = loaded.get_submodule(qkv).weight
    assert isinstance(weight, RowQuantizedWeight) and weight.bits == bits
    assert torch.equal(weight.qdata, state[qkv + ".weight"])  # the stored bytes, not re-quantized
    assert torch.equal(weight.scale, state[qkv + ".weight_scale"])
    reference = dequantized_copy(small_model(seed=7), f"int{bits}")
    ids, mask = ids_and_mask()
    with torch.no_grad():
        got, ref = loaded(ids, attention_mask=mask).logits, reference(ids, attention_mask=mask).logits
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-5)
    # Asking for the checkpoint's own quantization is fine; another one is refused with the fix.
    assert isinstance(load_base(folder, device="cpu", quantization=f"int{bits}")[0].get_submodule(qkv).weight,
                      RowQuantizedWeight)
    other = "int8" if bits == 4 else "int4"
    with pytest.raises(QuantizationError, match=f"already quantized to int{bits}.*set quantization = 'int{bits}'"):
        load_base(folder, device="cpu", quantization=other)


def _unpacked_int4(state):
    name = "transformer.encoder.layers.0.mlp.dense_4h_to_h.weight"
    state[name] = unpack_int4(state[name])


def _float_weight(state):
    name = "transformer.encoder.layers.0.self_attention.dense.weight"
    state[name] = torch.randn(*state[name].shape[:1], state[name].shape[1] * 2, dtype=torch.float16)


def _no_scale(state):
    del state["transformer.encoder.layers.1.mlp.dense_h_to_4h.weight_scale"]


def _scale_for_output_layer(state):
    state["transformer.output_layer.weight_scale"] = torch.ones(state["transformer.output_layer.weight"].shape[0])


def _scale_per_group(state):
    name = "transformer.encoder.layers.0.self_attention.query_key_value.weight_scale"
    state[name] = state[name].repeat(1, 2).reshape(-1, 2)


@pytest.mark.parametrize(("edit", "message"), [
    (_unpacked_int4, (r"dense_4h_to_h.weight is int8 \(64, 96\) but quantization_bit=4 stores int8 \(64, 48\) "
                      r"\(int4 packed two per byte")),
    (_float_weight, r"self_attention.dense.weight is float16 \(64, 64\) but quantization_bit=4 stores int8"),
    (_no_scale, r"layers.1.mlp.dense_h_to_4h.weight_scale is missing .*download the checkpoint again"),
    (_scale_for_output_layer, r"output_layer.weight_scale \(640,\) scales a weight that quantization_bit=4 does not"),
    (_scale_per_group, r"query_key_value.weight_scale is float16 \(128, 2\) but .* a float vector of 128 row scales"),
])
def test_foreign_quantized_layouts_are_refused_naming_the_tensor_and_the_fix(tmp_path, sp_model_file, edit,
                                                                              message):
    folder, _ = write_quantized(tmp_path / "q", small_model(seed=2), sp_model_file, 4, edit)
    with pytest.raises(CheckpointMismatchError, match=message):
        load_base(folder, device="cpu")


def test_unknown_quantization_and_unserved_device_are_refused(tmp_path):
    with pytest.raises(QuantizationError, match=r"unknown quantization 'int3': use one of none, int8, int4"):
        check_quantization("int3", torch.device("cpu"))
    with pytest.raises(QuantizationError, match=r"'int4' has no kernels on device 'mps'.*quantization = \"none\""):
        check_quantization("int4", torch.device("mps"))
    assert check_quantization(None, torch.device("mps")) == "none"
    config = tmp_path / "glmbot.toml"
    config.write_text('[model]\nquantization = "nf4"\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"model.quantization = 'nf4' is not one of 'none', 'int8', 'int4'"):
        load_settings(config)


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_prefix_gradient_through_the_quantized_base_equals_dequantize_then_run(kind):
    """The input gradient of each quantized product is dy @ W (W dequantized), as the official W8A16Linear."""
    quant = quantize_model(small_model(seed=4), kind)
    reference = dequantized_copy(small_model(seed=4), kind, torch.float32)
    for model in (quant, reference):
        model.requires_grad_(False)
    ids, mask = ids_and_mask()
    grads = []
    for model in (quant, reference):
        torch.manual_seed(0)
        encoder = PrefixEncoder(model.config, 4)
        kv = encoder.kv()
        out = model(ids, attention_mask=mask, prefix=PrefixKV.repeat(kv, 2), use_cache=False)
        out.logits.float().pow(2).mean().backward()
        grads.append(encoder.embedding.weight.grad)
    assert grads[0].abs().sum() > 0
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-8)


def test_quantized_weight_refuses_operations_it_does_not_define():
    model = quantize_model(small_model(), "int8")
    weight = model.transformer.encoder.layers[0].mlp.dense_h_to_4h.weight
    with pytest.raises(QuantizationError, match=r"not defined on a quantized int8 weight \(192, 64\).*\.dequantize\(\)"):
        weight.sum()
    assert torch.allclose(weight.dequantize(), small_model().transformer.encoder.layers[0].mlp.dense_h_to_4h.weight,
                          atol=0.02)
    moved = model.to("cpu")
    assert isinstance(moved.transformer.encoder.layers[0].mlp.dense_h_to_4h.weight, RowQuantizedWeight)


def test_config_json_of_a_quantized_folder_is_read(tmp_path, sp_model_file):
    folder, _ = write_quantized(tmp_path / "q", small_model(seed=1), sp_model_file, 8)
    assert json.loads((folder / "config.json").read_text())["quantization_bit"] == 8
    model, _ = load_base(folder, device="cpu")
    assert model.config.quantization_bit == 8 and model.config.glmbot_quantization == "int8"


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_mixed_prefix_batch_on_a_quantized_base_equals_each_row_alone(sp_model_file, kind):
    from glmbot.model.tokenizer import ChatGLMTokenizer
    from glmbot.serving.engine import Engine
    from tests.test_engine import QUERIES, greedy, oracle, random_kv

    base = quantize_model(small_model(), kind)
    tok = ChatGLMTokenizer(sp_model_file)
    prefixes = {"support": random_kv(base.config, 3, 1), "ads": random_kv(base.config, 7, 2),
                "hr": random_kv(base.config, 12, 3)}
    plan = [("support", QUERIES[0]), ("ads", QUERIES[1]), ("hr", QUERIES[2]), (None, QUERIES[3]),
            ("hr", QUERIES[4]), ("support", QUERIES[5])]
    with Engine(base, tok, prefixes=prefixes, max_batch_size=8, max_len=96) as eng:
        batched = eng.generate_many([greedy(q, d, 12) for d, q in plan])
        assert eng.stats().peak_rows == len(plan)
        alone = [eng.generate(greedy(q, d, 12)) for d, q in plan]
    for (domain, query), b, a in zip(plan, batched, alone):
        assert b.token_ids == a.token_ids and len(b.token_ids) > 0
        assert b.text == oracle(base, tok, query, prefixes.get(domain), 12), (domain, query)
    assert len({b.token_ids for b in batched}) == len(plan)


def test_compiled_dense_parts_on_a_quantized_base_give_the_eager_logits():
    model = quantize_model(small_model(seed=6), "int4")
    ids, mask = ids_and_mask()
    with torch.no_grad():
        eager = model(ids, attention_mask=mask).logits
        torch._dynamo.reset()
        model.compile_dense(backend="aot_eager")
        try:
            compiled = model(ids, attention_mask=mask).logits
        finally:
            model.uncompile_dense()
            torch._dynamo.reset()
    assert torch.allclose(compiled, eager, atol=1e-5)


def test_train_cli_quantize_int4_trains_and_records_it_and_a_bad_value_is_refused(tmp_path, capsys, monkeypatch):
    from tests.cli_helpers import cli, make_project, registry_of

    monkeypatch.setenv("COLUMNS", "200")

    config = make_project(tmp_path, train="max_target_length = 8\nmax_source_length = 16")
    data = tmp_path / "two.jsonl"
    data.write_text('{"prompt": "图书馆几点开门？", "response": "九点。"}\n{"prompt": "能借几本？", "response": "十本。"}\n',
                    encoding="utf-8")
    code, out, err = cli(config, "train", "-d", "support", "--data", str(data), "--steps", "1", "--no-eval",
                         "--pre-seq-len", "4", "--quantize", "int4", capsys=capsys)
    assert code == 0, err
    run = next((tmp_path / "runs" / "support").iterdir())
    assert json.loads((run / "run.json").read_text())["base_quantization"] == "int4"
    with registry_of(config) as reg:
        (adapter,) = reg.list_adapters("support")
    full, _ = load_base("builtin:tiny", device="cpu")
    from glmbot.model.fingerprint import base_fingerprint

    assert adapter.base_fingerprint == base_fingerprint(full)  # the adapter fits the full-precision base too
    code, out, err = cli(config, "chat", "--quantize", "int3", capsys=capsys)
    assert code == 1 and "--quantize 'int3' is not one of none, int8, int4: e.g. --quantize int4" in err
    for command in ("train", "chat", "serve", "eval"):
        code, out, _ = cli(config, command, "--help", capsys=capsys)
        assert code == 0 and "--quantize" in out and "none|int8|int4" in out, command


def test_a_prefix_trained_on_the_int4_base_learns_its_answers(sp_model_file, tmp_path):
    """Training reaches the prefix through the int4 products: a small random int4 base learns answers it
    did not give before. (The demo's support adapter on the int4 builtin base: bench/quantized_adapter.py.)"""
    from glmbot.config import TrainSettings
    from glmbot.model.generate import generate_answers
    from glmbot.model.tokenizer import ChatGLMTokenizer
    from glmbot.training.data import Example, encode_all
    from glmbot.training.trainer import PrefixTrainer

    tok = ChatGLMTokenizer(sp_model_file)
    pairs = [("请问订单什么时候发货？", "谢谢，再见。"), ("退货需要几天到账？", "你好！有什么可以帮您？"),
             ("你好", "Hello world 123"), ("谢谢，再见。", "退货需要几天到账？")]
    model = quantize_model(small_model(seed=0), "int4").requires_grad_(False)
    encoded, _ = encode_all(tok, [Example(q, a) for q, a in pairs], 32, 32)
    result = PrefixTrainer(model, TrainSettings(max_steps=300, checkpoint_every=0, batch_size=4, pre_seq_len=8),
                           tmp_path).fit(encoded)
    questions = [q for q, _ in pairs]
    before = generate_answers(model, tok, questions, None, max_new_tokens=16)
    after = generate_answers(model, tok, questions, result.encoder.kv().detach(), max_new_tokens=16)
    assert sum(b == a for b, (_, a) in zip(before, pairs)) == 0
    assert sum(b == a for b, (_, a) in zip(after, pairs)) >= 2, after  # 3 of 4 measured here
    assert sum(result.losses[-5:]) < sum(result.losses[:5]) / 1.5  # 6.9 -> 3.6 measured (a random base)


def test_gradient_checkpointing_through_a_quantized_base_gives_the_same_prefix_gradient():
    model = quantize_model(small_model(seed=8), "int4").requires_grad_(False)
    ids, mask = ids_and_mask()
    labels = ids.masked_fill(mask == 0, -100)
    grads = []
    for checkpointing in (False, True):
        model.set_checkpointing(checkpointing)
        model.train()
        torch.manual_seed(0)
        encoder = PrefixEncoder(model.config, 4)
        loss = model(ids, attention_mask=mask, labels=labels, prefix=PrefixKV.repeat(encoder.kv(), 2)).loss
        loss.backward()
        grads.append(encoder.embedding.weight.grad)
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], atol=1e-7)


@pytest.mark.skipif(quant_kernels.triton is None or not torch.cuda.is_available()
                    or torch.cuda.get_device_capability() < (8, 0),
                    reason="the weight-only kernel needs Triton and a CUDA GPU with bf16 tensor cores")
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("rows", [1, 5, 16, 64, 128])
@pytest.mark.parametrize("inputs", [4104, 4106])
def test_weight_only_kernel_equals_the_dequantized_product(bits, rows, inputs):
    """The decode-sized CUDA kernel, reached through F.linear on a quantized weight, reads the stored
    layout (int8, or int4 with the official nibble order) and gives the dequantized weight's
    product within bf16 rounding; odd shapes included (4106 inputs: rows of no whole int32 words,
    which one row takes through the tensor-core kernel)."""
    torch.manual_seed(0)
    w = torch.randn(200, inputs, device="cuda") * 0.02
    values, scale = quantize_rows(w, bits)
    qdata = pack_int4(values) if bits == 4 else values
    weight = RowQuantizedWeight(qdata, scale, bits, torch.bfloat16)  # notes the GPU's capability
    x = torch.randn(rows, inputs, device="cuda", dtype=torch.bfloat16)
    assert quant_kernels.available(x)  # the model's F.linear below takes the kernel
    got = torch.nn.functional.linear(x, weight).float()
    want = x.float() @ dequantize(qdata, scale, bits, torch.float32).t()
    assert got.shape == (rows, 200)
    assert (got - want).abs().max() <= 1e-2 * want.abs().max()


def test_the_gemv_takes_only_rows_of_whole_aligned_words():
    """The one-row kernel reads the stored rows as int32 words; rows whose bytes are not whole,
    aligned words (an odd width, a view that starts mid-word) go to the tensor-core kernel, and
    forcing the gemv on them names why."""
    whole = torch.zeros(8, 2052, dtype=torch.int8)
    assert quant_kernels.word_aligned(whole)
    assert not quant_kernels.word_aligned(torch.zeros(8, 2053, dtype=torch.int8))
    assert not quant_kernels.word_aligned(whole[:, 1:2049])
    assert not quant_kernels.word_aligned(whole.t())
    x = torch.zeros(1, 4106)
    with pytest.raises(ValueError, match="one row of whole int32 words, got 1 rows of 2053 bytes"):
        quant_kernels.weight_only_matmul(x, torch.zeros(8, 2053, dtype=torch.int8), torch.ones(8), 4, kernel="gemv")
    with pytest.raises(ValueError, match="unknown kernel 'tensor_core': use one of gemv, tensor_cores"):
        quant_kernels.weight_only_matmul(x, torch.zeros(8, 2052, dtype=torch.int8), torch.ones(8), 4, kernel="tensor_core")


_INTERPRETED = """
import torch, triton
from glmbot.model import quant_kernels as qk
from glmbot.model.quantization import dequantize, pack_int4, quantize_rows
torch.manual_seed(0)
n, k = 40, 1040  # neither a multiple of any tile (in words too: 260 int8, 130 int4): the masks are exercised
w = torch.randn(n, k) * 0.02
worst = 0.0
for bits in (8, 4):
    values, scale = quantize_rows(w, bits)
    q = pack_int4(values) if bits == 4 else values
    ref = dequantize(q, scale, bits, torch.float32)
    words = q.view(torch.int32)  # the gemv's view of the stored rows
    runs = [(1, torch.bfloat16, c, qk._gemv_kernel.fn, (triton.cdiv(n, c.kwargs["BN"]),)) for c in qk._GEMV_CONFIGS]
    for m in (1, 5, 33):
        bm = min(max(qk.rows_bucket(m), 16), 128)
        runs += [(m, torch.float16, c, qk._tensor_core_kernel.fn, (triton.cdiv(n, c.kwargs["BN"]), triton.cdiv(m, bm)))
                 for c in qk._TC_CONFIGS]
    for m, dtype, config, kernel, grid in runs:
        x = torch.randn(m, k).to(dtype)
        y = torch.full((m, n), float("nan"), dtype=dtype)
        if kernel is qk._gemv_kernel.fn:
            kernel[grid](x, words, scale, y, n, words.shape[1], words.stride(0), BITS=bits, **config.kwargs)
        else:
            kernel[grid](x, q, scale, y, m, n, k, x.stride(0), q.stride(0), y.stride(0), BITS=bits, BM=bm, **config.kwargs)
        want = x.float() @ ref.t()
        worst = max(worst, ((y.float() - want).abs().max() / want.abs().max()).item())
print(len(runs), worst)
"""


def _interpreter_runs() -> bool:
    """Triton's interpreter before 3.7 fails on any loop with a runtime bound under NumPy 2.x
    (torch 2.11's CUDA wheels pin Triton 3.6; there the GPU test above covers the kernels)."""
    if quant_kernels.triton is None:
        return False
    return tuple(int(p) for p in quant_kernels.triton.__version__.split(".")[:2]) >= (3, 7)


@pytest.mark.skipif(not _interpreter_runs(), reason="needs Triton >= 3.7 (a dev dependency) for its interpreter")
def test_weight_only_kernels_in_tritons_interpreter():
    """Every tile configuration of both CUDA kernels, run on the CPU by Triton's interpreter, gives
    the dequantized weight's product: int8 and int4 (the official nibble order, interleaved in
    the tensor-core tile, read from int32 words in the gemv), one row and several, shapes that no
    tile divides. (The interpreter's bf16 tensor-core product is wrong by itself, so those tiles
    run in fp16 here; the GPU test above covers bf16.)"""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    done = subprocess.run([sys.executable, "-c", _INTERPRETED], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs, worst = done.stdout.split()
    assert int(runs) == len(quant_kernels._GEMV_CONFIGS) + 3 * len(quant_kernels._TC_CONFIGS)
    assert float(worst) <= 1e-2


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_product_is_one_custom_op_that_compiles_whole(bits):
    """The product is a `torch.library` op whose fake implementation agrees with the real one
    (opcheck), so torch.compile keeps a block with quantized weights as one graph holding the
    three products as whole op calls (no break, no trace into a kernel) and gives the eager
    block's output."""
    from torch._dynamo.testing import AotEagerAndRecordGraphs

    from glmbot.model.modeling import block_outputs
    from glmbot.model.quantization import quantized_matmul

    torch.manual_seed(0)
    h, f = 64, 96

    def weight(n, k):
        values, scale = quantize_rows(torch.randn(n, k) * 0.02, bits)
        return RowQuantizedWeight(pack_int4(values) if bits == 4 else values, scale, bits, torch.float32)

    dense, up, down = weight(h, h), weight(2 * f, h), weight(h, f)
    for rows in (1, 7):  # the CPU's two paths: PyTorch's int8 matrix-vector kernel, the converted weight
        torch.library.opcheck(quantized_matmul, (torch.randn(rows, h), up.qdata, up.scale, bits))
    args = (torch.randn(5, h), torch.randn(5, h), dense, None, torch.ones(h), 1e-5, up, None, down, None, 0.0, False)
    torch._dynamo.reset()
    backend = AotEagerAndRecordGraphs()
    compiled = torch.compile(block_outputs, backend=backend, fullgraph=True)  # fullgraph: a break fails
    for got, want in zip(compiled(*args), block_outputs(*args)):
        assert torch.equal(got, want)
    assert len(backend.fw_graphs) == 1
    assert backend.fw_graphs[0].code.count("torch.ops.glmbot.quantized_matmul.default(") == 3  # dense, up, down
