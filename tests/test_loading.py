"""Official checkpoint layouts load back with identical logits; bad files fail clearly."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from glmbot.errors import CheckpointMismatchError, ModelLoadError, PrefixCheckpointError
from glmbot.model import load_base, load_prefix_checkpoint, prefix_encoder_from_state
from glmbot.model.prefix import PrefixKV
from tests.conftest import small_model

OFFICIAL_CONFIG_EXTRAS = {
    "_name_or_path": "THUDM/chatglm2-6b", "model_type": "chatglm", "architectures": ["ChatGLMModel"],
    "auto_map": {"AutoConfig": "configuration_chatglm.ChatGLMConfig",
                 "AutoModel": "modeling_chatglm.ChatGLMForConditionalGeneration"},
    "torch_dtype": "float16", "transformers_version": "4.27.1", "original_rope": True, "use_cache": True,
    "bias_dropout_fusion": True, "fp32_residual_connection": False, "quantization_bit": 0,
}


def official_config(model, **extra) -> dict:
    """A config.json as the official repository writes it (remote-code fields included)."""
    c = model.config
    fields = ["num_layers", "padded_vocab_size", "hidden_size", "ffn_hidden_size", "kv_channels",
              "num_attention_heads", "seq_length", "hidden_dropout", "attention_dropout", "layernorm_epsilon",
              "rmsnorm", "apply_residual_connection_post_layernorm", "post_layer_norm", "add_bias_linear",
              "add_qkv_bias", "multi_query_attention", "multi_query_group_num", "apply_query_key_layer_scaling",
              "attention_softmax_in_fp32", "pre_seq_len", "prefix_projection", "eos_token_id", "pad_token_id",
              "tie_word_embeddings"]
    return {**OFFICIAL_CONFIG_EXTRAS, **{f: getattr(c, f) for f in fields}, **extra}


def official_state(model) -> dict:
    """The state dict as the official files hold it, rotary buffer included."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rot = model.config.kv_channels // 2
    state["transformer.rotary_pos_emb.inv_freq"] = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    return state


def write_official(folder, model, tokenizer_file, fmt: str, shards: int = 3, **config_extra):
    """Write `model` as the official repo does: .bin shards + index, or (sharded) safetensors."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(official_config(model, **config_extra)))
    shutil.copy(tokenizer_file, folder / "tokenizer.model")
    state = official_state(model)
    keys = list(state)
    groups = [keys[i::shards] for i in range(shards)]
    if fmt == "safetensors-single":
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / "model.safetensors"))
        return folder
    ext, index_name = (("bin", "pytorch_model.bin.index.json") if fmt == "bin"
                       else ("safetensors", "model.safetensors.index.json"))
    weight_map = {}
    for i, group in enumerate(groups, start=1):
        name = (f"pytorch_model-{i:05d}-of-{shards:05d}.bin" if ext == "bin"
                else f"model-{i:05d}-of-{shards:05d}.safetensors")
        part = {k: state[k].contiguous() for k in group}
        if ext == "bin":
            torch.save(part, folder / name)
        else:
            save_file(part, str(folder / name))
        weight_map.update({k: name for k in group})
    (folder / index_name).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    return folder


def ids_and_mask():
    ids = torch.tensor([[0, 0, 5, 9, 33, 2], [7, 8, 9, 10, 11, 12]])
    return ids, (ids != 0).long()


@pytest.mark.parametrize("fmt", ["bin", "safetensors", "safetensors-single"])
def test_official_layouts_load_with_identical_logits(tmp_path, sp_model_file, fmt):
    model = small_model(seed=3)
    folder = write_official(tmp_path / "chatglm2", model, sp_model_file, fmt)
    loaded, tokenizer = load_base(folder, device="cpu")
    ids, mask = ids_and_mask()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
    assert tokenizer.sp_size == tokenizer.vocab_size - 5
    assert not any(p.requires_grad for p in loaded.parameters())


def test_half_precision_load_keeps_dtype_and_fp32_prefix(tmp_path, sp_model_file):
    model = small_model(seed=3, pre_seq_len=4)
    folder = write_official(tmp_path / "m", model, sp_model_file, "bin")
    loaded, _ = load_base(folder, dtype="bfloat16", device="cpu")
    assert loaded.transformer.encoder.layers[0].mlp.dense_h_to_4h.weight.dtype == torch.bfloat16
    assert loaded.transformer.prefix_encoder.embedding.weight.dtype == torch.float32
    torch.testing.assert_close(loaded.transformer.prefix_encoder.embedding.weight,
                               model.transformer.prefix_encoder.embedding.weight)


def test_ptuned_folder_applies_prefix_like_the_official_model(tmp_path, sp_model_file):
    plain = small_model(seed=4)
    tuned = small_model(seed=4, pre_seq_len=3)
    tuned.load_state_dict(plain.state_dict(), strict=False)
    with torch.no_grad():
        tuned.transformer.prefix_encoder.embedding.weight.normal_(0, 0.5)
    folder = write_official(tmp_path / "tuned", tuned, sp_model_file, "bin")
    loaded, _ = load_base(folder, device="cpu")
    ids, mask = ids_and_mask()
    with torch.no_grad():
        expected = plain(ids, attention_mask=mask,
                         prefix=PrefixKV.repeat(tuned.transformer.prefix_encoder.kv(), 2)).logits
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, expected)


def write_prefix_checkpoint(folder, state: dict, pre_seq_len: int, projection: bool = False):
    """An official ptuning `checkpoint-N`: only requires_grad params, pickled, plus config.json."""
    folder.mkdir(parents=True)
    torch.save(state, folder / "pytorch_model.bin")
    (folder / "config.json").write_text(json.dumps({"pre_seq_len": pre_seq_len, "prefix_projection": projection}))
    return folder


@pytest.mark.parametrize("projection", [False, True])
def test_official_prefix_checkpoint_reproduces_trainer_logits(tmp_path, projection):
    base = small_model(seed=5)
    trainer_side = small_model(seed=5, pre_seq_len=4, prefix_projection=projection)
    trainer_side.load_state_dict(base.state_dict(), strict=False)
    with torch.no_grad():
        trainer_side.transformer.prefix_encoder.embedding.weight.normal_(0, 0.5)
    trained = {k: v for k, v in trainer_side.state_dict().items() if "prefix_encoder" in k}
    ckpt = write_prefix_checkpoint(tmp_path / "checkpoint-3000", trained, 4, projection)
    state, spec = load_prefix_checkpoint(ckpt, base.config)
    assert (spec.pre_seq_len, spec.prefix_projection) == (4, projection)
    encoder = prefix_encoder_from_state(state, base.config)
    ids, mask = ids_and_mask()
    with torch.no_grad():
        ours = base(ids, attention_mask=mask, prefix=PrefixKV.repeat(encoder.kv(), 2)).logits
        torch.testing.assert_close(ours, trainer_side(ids, attention_mask=mask).logits)


def test_v1_prefix_is_refused(tmp_path):
    base = small_model()
    ckpt = write_prefix_checkpoint(
        tmp_path / "checkpoint-10", {"transformer.prefix_encoder.embedding.weight": torch.zeros(2, 28 * 2 * 4096)}, 2)
    with pytest.raises(PrefixCheckpointError, match="v1"):
        load_prefix_checkpoint(ckpt, base.config)


def test_prefix_for_another_base_and_config_mismatch_are_refused(tmp_path):
    base = small_model()
    wrong = write_prefix_checkpoint(tmp_path / "a", {"transformer.prefix_encoder.embedding.weight": torch.zeros(2, 99)}, 2)
    with pytest.raises(PrefixCheckpointError, match="width 99.*another base"):
        load_prefix_checkpoint(wrong, base.config)
    width = base.config.prefix_width
    lying = write_prefix_checkpoint(
        tmp_path / "b", {"transformer.prefix_encoder.embedding.weight": torch.zeros(2, width)}, 8)
    with pytest.raises(PrefixCheckpointError, match="pre_seq_len=2.*pre_seq_len=8"):
        load_prefix_checkpoint(lying, base.config)
    with pytest.raises(PrefixCheckpointError, match="not a prefix checkpoint"):
        load_prefix_checkpoint(tmp_path, base.config)


def test_missing_and_unknown_base_paths(tmp_path):
    with pytest.raises(ModelLoadError, match="builtin:nope"):
        load_base("builtin:nope")
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_base(tmp_path)
    with pytest.raises(ModelLoadError, match="neither a folder"):
        load_base(str(tmp_path / "missing" / "model"))


def test_truncated_weight_file_is_reported(tmp_path, sp_model_file):
    folder = write_official(tmp_path / "m", small_model(), sp_model_file, "safetensors-single")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="model.safetensors is corrupt or truncated"):
        load_base(folder, device="cpu")
    bin_folder = write_official(tmp_path / "b", small_model(), sp_model_file, "bin")
    shard = bin_folder / "pytorch_model-00002-of-00003.bin"
    shard.write_bytes(shard.read_bytes()[:500])
    with pytest.raises(ModelLoadError, match="pytorch_model-00002-of-00003.bin is corrupt"):
        load_base(bin_folder, device="cpu")


def test_config_that_does_not_match_the_weights_names_key_and_shapes(tmp_path, sp_model_file):
    folder = write_official(tmp_path / "m", small_model(), sp_model_file, "bin", ffn_hidden_size=80)
    with pytest.raises(CheckpointMismatchError, match=r"dense_h_to_4h.weight has shape \(192, 64\).*\(160, 64\)"):
        load_base(folder, device="cpu")


def test_missing_weight_is_named(tmp_path, sp_model_file):
    folder = write_official(tmp_path / "m", small_model(), sp_model_file, "bin", shards=2)
    index = json.loads((folder / "pytorch_model.bin.index.json").read_text())
    shard = folder / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    dropped = sorted(state)[0]
    del state[dropped]
    torch.save(state, shard)
    assert dropped in index["weight_map"]
    with pytest.raises(CheckpointMismatchError, match="is missing"):
        load_base(folder, device="cpu")


def test_save_pretrained_round_trip(tmp_path, model):
    from glmbot.model import ChatGLMForConditionalGeneration

    model.save_pretrained(tmp_path / "saved")
    again = ChatGLMForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    ids, mask = ids_and_mask()
    with torch.no_grad():
        assert torch.equal(again(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_hub_id_offline_without_cache_says_what_to_do(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError, match="THUDM/chatglm2-6b is not in the local Hub cache"):
        load_base("THUDM/chatglm2-6b")


def test_hub_id_loads_from_a_populated_cache_offline(tmp_path, monkeypatch, sp_model_file):
    """The real huggingface_hub cache layout: refs/main -> snapshots/<commit>/ with the official files."""
    import huggingface_hub.constants as hf_constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--chatglm2-mini"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    model = small_model(seed=6)
    write_official(repo / "snapshots" / commit, model, sp_model_file, "bin")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded, _ = load_base("org/chatglm2-mini", device="cpu")
    ids, mask = ids_and_mask()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)
