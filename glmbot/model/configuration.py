"""ChatGLM2 configuration with the official field names (see CHATGLM2_SPEC.md)."""

from __future__ import annotations

from transformers import PretrainedConfig


class ChatGLMConfig(PretrainedConfig):
    """Config of a GLM-family model (ChatGLM2/3, GLM-4); defaults are the official ChatGLM2-6B values.

    Fields the official config.json carries but that do not change the function computed
    (dropouts, fusion flags, `original_rope`, ...) are accepted and kept as plain attributes.
    """

    model_type = "chatglm"
    # generate() and the cache utilities look these up under the common names.
    attribute_map = {
        "num_hidden_layers": "num_layers",
        "n_positions": "seq_length",
        "max_position_embeddings": "seq_length",
    }

    def __init__(
        self,
        num_layers: int = 28,
        padded_vocab_size: int = 65024,
        hidden_size: int = 4096,
        ffn_hidden_size: int = 13696,
        kv_channels: int = 128,  # head dim
        num_attention_heads: int = 32,
        seq_length: int = 32768,  # rotary table length
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        layernorm_epsilon: float = 1e-5,
        rmsnorm: bool = True,
        apply_residual_connection_post_layernorm: bool = False,
        post_layer_norm: bool = True,
        add_bias_linear: bool = False,
        add_qkv_bias: bool = True,
        bias_dropout_fusion: bool = True,
        multi_query_attention: bool = True,
        multi_query_group_num: int = 2,  # KV heads
        apply_query_key_layer_scaling: bool = True,
        attention_softmax_in_fp32: bool = True,
        fp32_residual_connection: bool = False,
        quantization_bit: int = 0,
        pre_seq_len: int | None = None,  # P-Tuning v2 prefix length; None = no prefix
        prefix_projection: bool = False,
        rope_ratio: float = 1.0,  # chatglm2-6b-32k: positions / rope_ratio; ChatGLM3-32k, GLM-4: base x rope_ratio
        glm_family: str = "chatglm2",  # chatglm2 | chatglm3 | glm4 (glmbot.model.family), set at load
        initializer_range: float = 0.02,
        use_cache: bool = True,
        eos_token_id: int | list[int] = 2,  # GLM-4: [151329, 151336, 151338]
        pad_token_id: int = 0,
        tie_word_embeddings: bool = False,
        **kwargs,
    ):
        self.num_layers = num_layers
        self.vocab_size = padded_vocab_size
        self.padded_vocab_size = padded_vocab_size
        self.hidden_size = hidden_size
        self.ffn_hidden_size = ffn_hidden_size
        self.kv_channels = kv_channels
        self.num_attention_heads = num_attention_heads
        self.seq_length = seq_length
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        self.layernorm_epsilon = layernorm_epsilon
        self.rmsnorm = rmsnorm
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.post_layer_norm = post_layer_norm
        self.add_bias_linear = add_bias_linear
        self.add_qkv_bias = add_qkv_bias
        self.bias_dropout_fusion = bias_dropout_fusion
        self.multi_query_attention = multi_query_attention
        self.multi_query_group_num = multi_query_group_num
        self.apply_query_key_layer_scaling = apply_query_key_layer_scaling
        self.attention_softmax_in_fp32 = attention_softmax_in_fp32
        self.fp32_residual_connection = fp32_residual_connection
        self.quantization_bit = quantization_bit
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.rope_ratio = rope_ratio
        self.glm_family = glm_family
        self.initializer_range = initializer_range
        self.use_cache = use_cache
        super().__init__(
            eos_token_id=eos_token_id,
            pad_token_id=pad_token_id,
            tie_word_embeddings=tie_word_embeddings,
            **kwargs,
        )

    @property
    def kv_groups(self) -> int:
        """Number of key/value heads (2 for ChatGLM2-6B)."""
        return self.multi_query_group_num if self.multi_query_attention else self.num_attention_heads

    @property
    def prefix_width(self) -> int:
        """Width of one prefix position: num_layers x (key, value) x groups x head dim."""
        return self.num_layers * 2 * self.kv_groups * self.kv_channels

    def check_supported(self) -> None:
        """Refuse variants this implementation does not compute (instead of computing wrongly)."""
        problems = []
        if not self.rmsnorm:
            problems.append("rmsnorm=false (LayerNorm variant)")
        if self.apply_residual_connection_post_layernorm:
            problems.append("apply_residual_connection_post_layernorm=true")
        if self.add_bias_linear:
            problems.append("add_bias_linear=true")
        if self.quantization_bit not in (0, 4, 8):  # 4 and 8: the official int4/int8 checkpoints
            problems.append(f"quantization_bit={self.quantization_bit} (official checkpoints use 4 or 8)")
        if self.num_attention_heads % self.kv_groups:
            problems.append(f"{self.num_attention_heads} heads not divisible by {self.kv_groups} KV groups")
        if problems:
            raise ValueError("unsupported ChatGLM2 config: " + "; ".join(problems))
