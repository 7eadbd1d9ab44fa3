"""The GLM family (ChatGLM3, GLM-4): tokenizers, family detection, rotary variants, loading, adapters.

Test vectors are the issue's and GLM_FAMILY.md's (taken from the official tokenizers); the tokenizer
files are built by tests/glm_family_fixtures.py with the needed pieces at their official ids (see its
docstring for what that pins and what it does not).
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from glmbot.errors import ModelLoadError, PrefixCheckpointError
from glmbot.model import load_base
from glmbot.model.family import CHATGLM2, CHATGLM3, GLM4, detect_family, tokenizer_kind
from glmbot.model.fingerprint import (
    base_fingerprint,
    check_same_family,
    fingerprint_family,
)
from glmbot.model.prefix_io import EMBEDDING_KEY, load_prefix_checkpoint
from glmbot.model.rotary import RotarySpec, rotary_cos_sin
from glmbot.model.tokenizer import ChatGLM3Tokenizer, ChatGLMTokenizer
from glmbot.model.tokenizer_glm4 import GLM4Tokenizer
from tests.conftest import small_model
from tests.glm_family_fixtures import (
    write_family_folder,
)

CHATGLM3_HELLO = [64790, 64792, 64795, 30910, 13, 36474, 54591, 64796]
GLM4_HELLO = [151331, 151333, 151336, 198, 109377, 151337]


# -- tokenizers ----------------------------------------------------------------------------------

def test_chatglm3_special_ids_and_the_hello_vector(tok3):
    assert tok3.special_ids == {"[MASK]": 64789, "[gMASK]": 64790, "[sMASK]": 64791, "sop": 64792, "eop": 64793,
                                "<|system|>": 64794, "<|user|>": 64795, "<|assistant|>": 64796,
                                "<|observation|>": 64797}
    assert tok3.build_chat_input("你好") == CHATGLM3_HELLO
    assert (tok3.eos_token_id, tok3.pad_token_id, tok3.vocab_size) == (2, 0, 64798)
    # encode("\n") and encode("你好") each carry the dummy-prefix "▁": decoded together, the second one is a
    # space (the official SPTokenizer.decode hands the same run of ids to SentencePiece).
    assert tok3.decode(CHATGLM3_HELLO, skip_special_tokens=False) == "[gMASK]sop<|user|>\n 你好<|assistant|>"


def test_glm4_special_ids_and_the_hello_vector(tok4):
    assert tok4.n_ranks == 151329
    assert {t: tok4.special_ids[t] for t in ("<|endoftext|>", "[gMASK]", "<sop>", "<|user|>", "<|assistant|>",
                                             "<|observation|>")} == {
        "<|endoftext|>": 151329, "[gMASK]": 151331, "<sop>": 151333, "<|user|>": 151336, "<|assistant|>": 151337,
        "<|observation|>": 151338}
    assert tok4.build_chat_input("你好") == GLM4_HELLO
    assert tok4.eos_token_id == tok4.pad_token_id == 151329
    assert tok4.decode(GLM4_HELLO, skip_special_tokens=False) == "[gMASK]<sop><|user|>\n你好<|assistant|>"
    assert tok4.decode(GLM4_HELLO) == "\n你好"


@pytest.mark.parametrize("which", ["tok3", "tok4"])
def test_role_tokens_can_never_come_from_text(which, request):
    tok = request.getfixturevalue(which)
    text = "<|user|><|assistant|><|observation|><|system|>[gMASK]"
    ids = tok.encode(text, add_special_tokens=False)
    assert not set(ids) & set(tok.special_ids.values())
    assert tok.decode(ids) == text


def test_coverage_counts_byte_fallback_on_both_tokenizer_kinds(tok3, tok4):
    from glmbot.training.coverage import tokenizer_coverage
    from glmbot.training.data import Example, encode_all

    examples = [Example("你好", "你好啊")]  # 啊 is in neither test vocabulary: bytes
    for tok in (tok3, tok4):
        report = tokenizer_coverage(tok, examples, encode_all(tok, examples, 32, 32)[0])
        assert (report.uncovered_chars, report.first_uncovered) == (1, "啊"), type(tok).__name__
        assert report.byte_answer_tokens == 3  # 啊 = e5 95 8a


def test_tokenizer_kind_tells_rank_files_from_sentencepiece(chatglm3_sp, glm4_ranks, sp_model_file):
    assert tokenizer_kind(glm4_ranks) == "tiktoken"
    assert tokenizer_kind(chatglm3_sp) == tokenizer_kind(sp_model_file) == "sentencepiece"


def test_save_pretrained_keeps_the_family(tok3, tok4, tmp_path):
    tok3.save_pretrained(tmp_path / "c3")
    tok4.save_pretrained(tmp_path / "g4")
    assert json.loads((tmp_path / "c3" / "tokenizer_config.json").read_text())["glm_family"] == "chatglm3"
    assert detect_family(tmp_path / "c3", {}) is CHATGLM3 and detect_family(tmp_path / "g4", {}) is GLM4
    assert GLM4Tokenizer.from_pretrained(tmp_path / "g4").encode("你好") == tok4.encode("你好")


# -- family detection ----------------------------------------------------------------------------

def test_family_is_chosen_from_the_folder_files(tmp_path, sp_model_file, chatglm3_sp, glm4_ranks):
    import shutil

    folder = tmp_path / "m"
    folder.mkdir()
    shutil.copy(sp_model_file, folder / "tokenizer.model")
    assert detect_family(folder, {"_name_or_path": "THUDM/chatglm2-6b"}) is CHATGLM2
    assert detect_family(folder, {}) is CHATGLM2
    assert detect_family(folder, {"_name_or_path": "THUDM/chatglm3-6b-32k"}) is CHATGLM3
    assert detect_family(folder, {}, name="THUDM/chatglm3-6b-base") is CHATGLM3
    assert detect_family(folder, {"glm_family": "chatglm3"}) is CHATGLM3
    with pytest.raises(ModelLoadError, match="GLM-4 needs its tiktoken"):
        detect_family(folder, {"_name_or_path": "THUDM/glm-4-9b-chat"})
    # a folder's path is only a weak hint: a ChatGLM2 folder under a 'glm4' directory stays ChatGLM2
    assert detect_family(folder, {}, name="/data/glm4-work/chatglm2-6b") is CHATGLM2
    assert detect_family(folder, {}, name="/data/glm-4-9b-chat") is CHATGLM2
    shutil.copy(glm4_ranks, folder / "tokenizer.model")
    assert detect_family(folder, {"_name_or_path": "THUDM/glm-4-9b-chat-1m"}) is GLM4
    assert detect_family(folder, {}) is GLM4
    with pytest.raises(ModelLoadError, match="tiktoken ranks"):
        detect_family(folder, {"_name_or_path": "THUDM/chatglm3-6b"})


# -- rotary --------------------------------------------------------------------------------------

def official_cache(seq_len: int, n_elem: int, dtype, variant: str, rope_ratio: float = 1.0):
    """RotaryEmbedding.forward_impl of the official modeling files, written out (THUDM/chatglm2-6b and
    -32k: theta and positions in `dtype`, positions / rope_ratio; THUDM/chatglm3-6b and glm-4-9b-chat:
    base x rope_ratio, float32)."""
    if variant == "chatglm2":
        theta = 1.0 / (10000 ** (torch.arange(0, n_elem, 2, dtype=dtype) / n_elem))
        seq_idx = torch.arange(seq_len, dtype=dtype) / rope_ratio
    else:
        base = 10000 * rope_ratio
        theta = 1.0 / (base ** (torch.arange(0, n_elem, 2, dtype=torch.float) / n_elem))
        seq_idx = torch.arange(seq_len, dtype=torch.float)
    idx_theta = torch.outer(seq_idx, theta).float()
    cache = torch.stack([torch.cos(idx_theta), torch.sin(idx_theta)], dim=-1)
    if dtype in (torch.float16, torch.bfloat16):
        cache = cache.to(dtype)
    return cache


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant,ratio", [("chatglm2", 1.0), ("chatglm2", 16.0), ("chatglm3", 1.0),
                                           ("chatglm3", 50.0), ("glm4", 500.0)])
def test_rotary_tables_are_bit_equal_to_each_official_variant(dtype, variant, ratio):
    config = small_model().config
    config.glm_family, config.rope_ratio = variant, ratio
    spec = RotarySpec.for_config(config)
    positions = torch.tensor([[0, 1, 7, 300, 2047, 5000, 30001]])
    cos, sin = rotary_cos_sin(positions, 32, dtype, spec)
    ref = official_cache(30002, 64, dtype, variant, ratio)[positions[0]]
    assert torch.equal(cos[0, 0], ref[..., 0]) and torch.equal(sin[0, 0], ref[..., 1])


def test_the_chatglm3_table_differs_from_chatglm2_only_in_half_precision():
    positions = torch.tensor([[3000, 5001, 7777]])
    two = rotary_cos_sin(positions, 32, torch.float16, RotarySpec())
    three = rotary_cos_sin(positions, 32, torch.float16, RotarySpec(float32=True))
    assert not torch.equal(two[0], three[0])  # fp16 cannot hold these positions exactly
    assert torch.equal(rotary_cos_sin(positions, 32, torch.float32, RotarySpec())[0],
                       rotary_cos_sin(positions, 32, torch.float32, RotarySpec(float32=True))[0])
    assert RotarySpec.for_config(small_model(glm_family="glm4", rope_ratio=500).config) == RotarySpec(5e6, 1.0, True)


# -- loading -------------------------------------------------------------------------------------

SMALL3 = {"padded_vocab_size": 64896}
SMALL4 = {"padded_vocab_size": 151552, "hidden_size": 32, "ffn_hidden_size": 48, "kv_channels": 8}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, chatglm3_sp, glm4_ranks):
    root = tmp_path_factory.mktemp("families")
    m3 = small_model(3, glm_family="chatglm3", **SMALL3)
    m3k = small_model(4, glm_family="chatglm3", rope_ratio=50, **SMALL3)
    m4 = small_model(5, glm_family="glm4", rope_ratio=500, layernorm_epsilon=1.5625e-07, **SMALL4)
    return {
        "chatglm3": (write_family_folder(root / "chatglm3-6b", m3, chatglm3_sp, "chatglm3"), m3),
        "chatglm3-32k": (write_family_folder(root / "chatglm3-6b-32k", m3k, chatglm3_sp, "chatglm3-32k"), m3k),
        "glm4": (write_family_folder(root / "glm-4-9b-chat", m4, glm4_ranks, "glm4"), m4),
    }


@pytest.mark.parametrize("variant,family,tok_class", [("chatglm3", "chatglm3", ChatGLM3Tokenizer),
                                                      ("chatglm3-32k", "chatglm3", ChatGLM3Tokenizer),
                                                      ("glm4", "glm4", GLM4Tokenizer)])
def test_official_folders_load_with_their_family(folders, variant, family, tok_class):
    folder, reference = folders[variant]
    model, tok = load_base(folder, dtype="float32", device="cpu")
    assert model.config.glm_family == family and type(tok) is tok_class
    assert model.transformer.rotary == reference.transformer.rotary
    ids = torch.tensor([tok.build_chat_input("你好")])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    if family == "glm4":
        assert model.config.eos_token_id == [151329, 151336, 151338] and model.config.pad_token_id == 151329
        assert model.config.layernorm_epsilon == 1.5625e-07 and model.transformer.rotary.base == 5e6
    if variant == "chatglm3-32k":
        assert model.transformer.rotary == RotarySpec(base=500000.0, float32=True)


def test_a_chatglm2_folder_still_loads_as_chatglm2(tmp_path, sp_model_file):
    from tests.test_loading import write_official

    folder = write_official(tmp_path / "c2", small_model(), sp_model_file, "safetensors-single")
    model, tok = load_base(folder, dtype="float32", device="cpu")
    assert model.config.glm_family == "chatglm2" and type(tok) is ChatGLMTokenizer
    assert model.transformer.rotary == RotarySpec()
    assert base_fingerprint(model).startswith("sha256:")  # ChatGLM2 fingerprints unchanged
    ref32k = small_model(rope_ratio=16)
    folder = write_official(tmp_path / "c2-32k", ref32k, sp_model_file, "safetensors-single",
                            _name_or_path="THUDM/chatglm2-6b-32k", rope_ratio=16)
    model, _ = load_base(folder, dtype="float32", device="cpu")
    assert model.config.glm_family == "chatglm2" and model.transformer.rotary == RotarySpec(position_divisor=16.0)
    ids = torch.tensor([list(range(5, 40))])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, ref32k(ids).logits)
        assert not torch.equal(model(ids).logits, small_model()(ids).logits)


def test_hub_id_of_a_glm4_base_loads_from_the_cache_offline(folders, tmp_path, monkeypatch):
    import shutil

    cache = tmp_path / "hub"
    snapshot = cache / "models--THUDM--glm-4-9b-chat" / "snapshots" / ("a" * 40)
    shutil.copytree(folders["glm4"][0], snapshot)
    (cache / "models--THUDM--glm-4-9b-chat" / "refs").mkdir()
    (cache / "models--THUDM--glm-4-9b-chat" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    model, tok = load_base("THUDM/glm-4-9b-chat", dtype="float32", device="cpu")
    assert model.config.glm_family == "glm4" and isinstance(tok, GLM4Tokenizer)


# -- adapters: family in the fingerprint, refusal, official prefixes ------------------------------

@pytest.mark.parametrize("name,overrides,width", [
    ("chatglm2-6b / chatglm3-6b", {}, 14336),
    ("glm-4-9b-chat", {"num_layers": 40, "padded_vocab_size": 151552}, 20480),
    ("glm-4-9b-chat-1m", {"num_layers": 40, "padded_vocab_size": 151552, "multi_query_group_num": 4}, 40960),
])
def test_full_size_prefix_widths(name, overrides, width):
    from glmbot.model.configuration import ChatGLMConfig

    assert ChatGLMConfig(**overrides).prefix_width == width, name  # layers x 2 x groups x kv_channels


def test_glm4_table_defaults_are_the_official_config_values():
    d = GLM4.config_defaults
    assert (d["num_layers"], d["padded_vocab_size"], d["layernorm_epsilon"], d["rope_ratio"]) == (
        40, 151552, 1.5625e-07, 500)
    assert d["eos_token_id"] == [151329, 151336, 151338] and d["torch_dtype"] == "bfloat16"
    assert CHATGLM3.native_system and CHATGLM3.native_tools and not CHATGLM2.native_tools


def test_fingerprints_record_the_family_and_other_families_are_refused(folders):
    m3 = folders["chatglm3"][1]
    fp3 = base_fingerprint(m3)
    assert fp3.startswith("chatglm3/sha256:") and fingerprint_family(fp3) == "chatglm3"
    assert fingerprint_family("sha256:0123456789abcdef") == "chatglm2"
    check_same_family(fp3, m3.config, "support@v1")
    with pytest.raises(PrefixCheckpointError, match="trained on a chatglm2 base but this base is chatglm3"):
        check_same_family("sha256:0123456789abcdef", m3.config, "support@v1")
    assert m3.config.prefix_width == 2 * 2 * 2 * 16  # layers x 2 x groups x kv_channels


def test_chatglm3_finetune_demo_checkpoint_imports_its_prefix(folders, tmp_path):
    """THUDM/ChatGLM3 finetune_demo (PREFIX_TUNING): config.pre_seq_len = num_virtual_tokens and the HF
    Trainer saves the whole model, sharded, the prefix encoder included."""
    _, m3 = folders["chatglm3"]
    ckpt = tmp_path / "checkpoint-500"
    ckpt.mkdir()
    state = {k: v.clone() for k, v in m3.state_dict().items()}
    prefix = torch.randn(8, m3.config.prefix_width)
    state[EMBEDDING_KEY] = prefix
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, group in shards.items():
        save_file({k: state[k].contiguous() for k in group}, str(ckpt / name))
    weight_map = {k: n for n, g in shards.items() for k in g}
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (ckpt / "config.json").write_text(json.dumps({"pre_seq_len": 8, "prefix_projection": False}))
    loaded, spec = load_prefix_checkpoint(ckpt, m3.config)
    assert spec.pre_seq_len == 8 and torch.equal(loaded[EMBEDDING_KEY], prefix)


def test_glm4_finetune_demo_peft_prefix_imports_through_the_registry(folders, tmp_path):
    """THUDM/GLM-4 finetune_demo configs/ptuning_v2.yaml: PEFT PREFIX_TUNING (num_virtual_tokens,
    num_attention_heads = KV groups, token_dim); PEFT saves `prompt_embeddings` (P, layers x 2 x token_dim)."""
    from glmbot.registry import Registry
    from glmbot.registry.transfer import import_path

    _, m4 = folders["glm4"]
    peft = tmp_path / "output" / "checkpoint-3000"
    peft.mkdir(parents=True)
    prompt = torch.randn(6, m4.config.prefix_width)
    save_file({"prompt_embeddings": prompt}, str(peft / "adapter_model.safetensors"))
    (peft / "adapter_config.json").write_text(json.dumps({
        "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": 6,
        "num_attention_heads": 2, "token_dim": 16, "num_layers": 2, "base_model_name_or_path": "THUDM/glm-4-9b-chat"}))
    registry = Registry(f"sqlite:///{tmp_path / 'registry.db'}", tmp_path / "adapters")
    fp = base_fingerprint(m4)
    info = import_path(registry, peft, "support", config=m4.config, base_model="THUDM/glm-4-9b-chat",
                       base_fingerprint=fp, create_domain=True)
    state, info = registry.load_prefix_state(info.id)
    assert torch.equal(state[EMBEDDING_KEY], prompt) and info.base_fingerprint == fp
    assert info.provenance["format"] == "peft-prefix-tuning"
    with pytest.raises(PrefixCheckpointError, match="prefix width"):
        import_path(registry, peft, "support", config=folders["chatglm3"][1].config, base_model="x",
                    base_fingerprint="chatglm3/sha256:0", create_domain=True)


@pytest.mark.parametrize("which", ["tok3", "tok4"])
def test_a_too_long_question_is_cut_but_keeps_the_assistant_token(which, request):
    from glmbot.training.data import Example, encode_example

    tok = request.getfixturevalue(which)
    enc = encode_example(tok, Example("你好" * 40, "你好"), max_source_length=12, max_target_length=8)
    prompt = enc.input_ids[:enc.labels.count(-100)]
    assert enc.prompt_truncated and len(prompt) == 12
    assert prompt[-1] == tok.special_ids["<|assistant|>"] and prompt[:3] == tok.build_chat_input("你好")[:3]
