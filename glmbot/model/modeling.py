"""ChatGLM2 written for current torch and transformers (see CHATGLM2_SPEC.md).

Module and parameter names follow the official checkpoint (`transformer.encoder.layers.{i}...`),
so official weights load as they are. Activations are batch-first: (B, T, hidden); attention
tensors are (B, heads, T, head_dim); the KV cache holds (B, groups, T, head_dim) per layer and
never the prefix: P-Tuning v2 prefixes come in through `prefix` (a `PrefixKV`, one per row) and
are prepended to each layer's keys/values after rotary, taking no positions.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.bias import CausalBias, CausalVariant, causal_lower_right
from torch.utils.checkpoint import checkpoint
from transformers import GenerationMixin, PreTrainedModel
from transformers.cache_utils import Cache, DynamicCache
from transformers.modeling_outputs import CausalLMOutputWithPast

from glmbot.model import kernels
from glmbot.model.kernels import gather_rows, scatter_rows
from glmbot.model.configuration import ChatGLMConfig
from glmbot.model.prefix import PrefixEncoder, PrefixKV
# The rotary functions live in glmbot.model.rotary; re-exported here for existing callers.
from glmbot.model.rotary import RotarySpec, apply_rotary, rotary_cos_sin, rotary_inverse_backward, rotary_tables

# transformers 5.x names the cache `cache`; earlier releases `past_key_values`.
_CACHE_FIELD = "cache" if "cache" in {f.name for f in dataclasses.fields(CausalLMOutputWithPast)} else "past_key_values"

# Recent torch passes enable_gqa through a CausalBias to the flash kernel; releases without it need expanded KV.
_CAUSAL_BIAS_GQA = "enable_gqa" in inspect.signature(CausalBias._dispatch).parameters
# Grouped-KV decode attention (`set_deterministic_decode(False)`): cuDNN first. On an H200 at 64
# rows it takes 8 us per layer against 14 us for the query heads folded onto the groups, but its
# results vary in the last bit from call to call. Torch releases that cannot reorder the SDPA
# backends keep the folded form.
_CAN_REORDER = "set_priority" in inspect.signature(sdpa_kernel).parameters
_CUDNN_FIRST = ([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                 SDPBackend.MATH] if _CAN_REORDER else None)
_SDPA_ENABLED = {SDPBackend.CUDNN_ATTENTION: torch.backends.cuda.cudnn_sdp_enabled,
                 SDPBackend.FLASH_ATTENTION: torch.backends.cuda.flash_sdp_enabled,
                 SDPBackend.EFFICIENT_ATTENTION: torch.backends.cuda.mem_efficient_sdp_enabled,
                 SDPBackend.MATH: torch.backends.cuda.math_sdp_enabled}


# Folded decode (`[serving] deterministic = true`) leaves out cuDNN, whose results vary in the last bit
# from call to call. It is named explicitly because otherwise the kernel depends on the process's first
# SDPA call: torch puts cuDNN first lazily there on Hopper, unless that call sits inside an
# sdpa_kernel(set_priority=True), whose exit restores an order ending in math.
_REPRODUCIBLE = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def _prefer(order: list[SDPBackend] | None) -> contextlib.AbstractContextManager:
    """SDPA with only `order`'s backends on, tried in that order where this torch can reorder them;
    backends switched off (torch.backends.cuda.enable_*_sdp, an outer sdpa_kernel) stay off. A no-op
    when none of `order` is on."""
    enabled = [b for b in order or () if _SDPA_ENABLED[b]()]
    if not enabled:
        return contextlib.nullcontext()
    return sdpa_kernel(enabled, set_priority=True) if _CAN_REORDER else sdpa_kernel(enabled)


def cudnn_first() -> contextlib.AbstractContextManager:
    """SDPA with cuDNN tried first (see `_prefer`)."""
    return _prefer(_CUDNN_FIRST)


def reproducible_first() -> contextlib.AbstractContextManager:
    """SDPA without cuDNN: flash, then mem-efficient, then math (see `_prefer`)."""
    return _prefer(_REPRODUCIBLE)


TRAINING_ATTENTION = ("flash", "cudnn")


class RMSNorm(nn.Module):
    """Official RMSNorm: mean square in fp32, result cast back to the input dtype."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    variance = x.to(torch.float32).pow(2).mean(-1, keepdim=True)
    return (weight * (x * torch.rsqrt(variance + eps))).to(x.dtype)


class _PadRows(torch.autograd.Function):
    """`scatter_rows`, whose backward is `gather_rows` (and the other way round for
    `_UnpadRows`): with distinct indices both are plain copies, where autograd's own indexing
    backward accumulates into a zero-filled tensor."""

    @staticmethod
    def forward(x, index, rows):
        return scatter_rows(x, index, rows)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.source_rows = inputs[0].shape[0]

    @staticmethod
    def backward(ctx, grad):
        return gather_rows(grad, ctx.saved_tensors[0], ctx.source_rows), None, None


class _UnpadRows(_PadRows):
    @staticmethod
    def forward(x, index, rows):
        return gather_rows(x, index, rows)

    @staticmethod
    def backward(ctx, grad):
        return scatter_rows(grad, ctx.saved_tensors[0], ctx.source_rows), None, None


def pad_rows(x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """Packed rows (M, ...) -> (rows, ...): row i < N of x at index[i] (N = len(index)), zeros elsewhere."""
    return _PadRows.apply(x, index, rows)


def unpad_rows(x: torch.Tensor, index: torch.Tensor, rows: int) -> torch.Tensor:
    """x[index] then zero rows, `rows` packed rows in all; index distinct, its backward a plain scatter."""
    return _UnpadRows.apply(x, index, rows)


@dataclasses.dataclass(frozen=True)
class Packing:
    """Right-padded rows with their real tokens packed: the dense parts of every block run on
    the N real tokens (plus zero filler rows, see ChatGLMModel.pack_multiple); attention runs on
    the padded (B, T) layout, its inputs scattered there and its output gathered back.
    index: (N,) positions of the real tokens in the flat B*T layout."""

    index: torch.Tensor
    batch: int
    length: int


def attention_inputs(x, delta, norm_weight, eps: float, qkv_weight, qkv_bias, cos, sin, heads: int, groups: int,
                     head_dim: int, rotary: Callable = rotary_inverse_backward, pad_index: torch.Tensor | None = None,
                     padded_rows: int = 0, scatter: Callable | None = None,
                     qkv_only: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The previous block's last residual add, RMSNorm, QKV projection and rotary of one block.

    x (..., hidden) + delta (the previous block's MLP output; zeros for the first block) -> the
    block input x, q (..., H, D) and the new keys and values together, kv (..., 2, G, D)
    ([..., 0, :, :] keys after rotary, [..., 1, :, :] values). Doing the add here fuses it with
    the norm. x is (B, T, hidden), or packed tokens (M, hidden) with `pad_index` (N,): then the
    first N rows of q and kv come back scattered to rows `pad_index` of zero-filled
    (padded_rows, ...) tensors, by `scatter` (kernels.rotary_scatter, rotary included) if given.
    qkv_only: -> (x, the projection (..., (H + 2G) D), None), rotary left to the caller (the serving
    engine's slots do it in the kernel that writes them, see kernels.rotary_to_slots).

    A plain function of tensors (weights passed in), so one compiled graph serves every layer. It
    keeps the projection's own (..., heads, D) layout: the caller's transpose to (B, heads, T, D)
    is a free view. Transposing inside made the compiled rotary kernels write across memory
    (on the H200 training bench, keeping the layout took 17.5k to 18.6k real tokens/s).
    """
    lead = x.shape[:-1]
    x = x + delta
    qkv = F.linear(rms_norm(x, norm_weight, eps), qkv_weight, qkv_bias)
    if qkv_only:
        return x, qkv, None
    if pad_index is not None and scatter is not None:
        q, kv = scatter(qkv, cos, sin, pad_index, padded_rows, heads, groups)
        return x, q, kv
    q, k, v = qkv.split([heads * head_dim, groups * head_dim, groups * head_dim], dim=-1)
    q = rotary(q.view(*lead, heads, head_dim), cos, sin)
    k = rotary(k.view(*lead, groups, head_dim), cos, sin)
    kv = torch.stack((k, v.view(*lead, groups, head_dim)), dim=-3)
    if pad_index is not None:
        q, kv = pad_rows(q, pad_index, padded_rows), pad_rows(kv, pad_index, padded_rows)
    return x, q, kv


def block_outputs(x, attn, dense_weight, dense_bias, norm_weight, eps: float, up_weight, up_bias, down_weight,
                  down_bias, dropout: float, training: bool, unpad_index: torch.Tensor | None = None,
                  swiglu: Callable | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The rest of a block after attention (..., H*D): output projection + residual, RMSNorm,
    SwiGLU MLP (dense_h_to_4h gives [a | b]; silu(a) * b; dense_4h_to_h). With `unpad_index`,
    attn is the padded (B*T, H*D) output whose rows `unpad_index` are x's first packed tokens,
    and `swiglu` (kernels.swiglu), if given, computes silu(a) * b.

    Returns (x, mlp): the block's output is x + mlp, added by the next block's `attention_inputs`.
    """
    if unpad_index is not None:
        attn = unpad_rows(attn, unpad_index, x.shape[0])
    x = x + F.dropout(F.linear(attn, dense_weight, dense_bias), dropout, training)
    h = F.linear(rms_norm(x, norm_weight, eps), up_weight, up_bias)
    if unpad_index is not None and swiglu is not None:
        act = swiglu(h)
    else:
        a, b = h.chunk(2, dim=-1)
        act = F.silu(a) * b
    return x, F.dropout(F.linear(act, down_weight, down_bias), dropout, training)


@dataclasses.dataclass(frozen=True)
class BlockKernels:
    """The dense parts of a block: eager by default, compiled by `compile_dense()` (shared by all
    layers). On packed tokens (the training layout) SwiGLU and rotary + scatter run as the ops
    of glmbot.model.kernels (Triton on CUDA); None leaves them to the parts' own code."""

    attention_inputs: Callable = attention_inputs
    block_outputs: Callable = block_outputs
    rotary: Callable = rotary_inverse_backward
    swiglu: Callable | None = kernels.swiglu
    rotary_scatter: Callable | None = kernels.rotary_scatter


EAGER_KERNELS = BlockKernels()



class SelfAttention(nn.Module):
    """Multi-query attention: 32 query heads share 2 KV groups (heads 0-15 -> group 0)."""

    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = config.num_attention_heads
        self.groups = config.kv_groups
        self.head_dim = config.kv_channels
        self.q_size = self.num_heads * self.head_dim
        self.kv_size = self.groups * self.head_dim
        self.query_key_value = nn.Linear(
            config.hidden_size, self.q_size + 2 * self.kv_size, bias=config.add_bias_linear or config.add_qkv_bias)
        self.dense = nn.Linear(self.q_size, config.hidden_size, bias=config.add_bias_linear)
        self.dropout = config.attention_dropout
        self.grouped_decode = False  # see ChatGLMForConditionalGeneration.set_deterministic_decode

    def attend(self, q, kv, mask, cache: Cache | None, prefix: PrefixKV | None) -> torch.Tensor:
        """Rotated q (B, T, H, D) and kv (B, T, 2, G, D) -> attention output (B, T, H*D), before `dense`.
        kv is None when the cache already holds it (the serving engine's `write_new`).

        mask: None (causal), an additive (B or 1, 1, T, keys) tensor, or a lower-right CausalBias.
        """
        if hasattr(cache, "attend"):  # the engine's mixed forward: the cache splits it into its parts
            return cache.attend(self, q, kv)
        B, T = q.shape[:2]
        if getattr(cache, "limits", None) is not None and kv is None:
            # The engine's slots with each query's key count: one kernel (kernels.slot_attention)
            return cache.fused(q, self.layer_idx).view(B, T, self.q_size)
        q = q.transpose(1, 2)  # (B, H, T, D), a view
        if hasattr(cache, "update_kv"):  # the serving engine's slots: keys and values in one write
            k, v = cache.update_kv(kv, self.layer_idx)  # (B, G, slots, D)
        else:
            # (B, G, T, D) views; unbind's backward stacks the two gradients in one kernel, where two
            # selects would each zero-fill a (B, T, 2, G, D) gradient and then add them.
            k, v = (t.transpose(1, 2) for t in kv.unbind(2))
            if cache is not None:
                k, v = cache.update(k, v, self.layer_idx)  # (B, G, past+T, D)
        if prefix is not None:
            pk, pv = prefix.layer(self.layer_idx)  # (B, G, P, D), never rotated
            k = torch.cat((pk.to(k.dtype), k), dim=2)
            v = torch.cat((pv.to(v.dtype), v), dim=2)
        dropout = self.dropout if self.training else 0.0
        gqa = self.groups != self.num_heads
        if isinstance(mask, CudnnCausal):
            return self._attend_cudnn(q, k, v, mask, dropout)
        if gqa and T == 1 and self.grouped_decode and _CUDNN_FIRST is not None and mask is not None:
            with cudnn_first():
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, enable_gqa=True)
            return out.reshape(B, 1, self.q_size)  # (B, H, 1, D) -> (B, 1, H*D)
        if gqa and T == 1:
            # Decode: fold each group's query heads into the query axis, a plain attention over G
            # heads that takes a mask in the fused kernels (grouped KV + a mask falls back to math),
            # and never cuDNN's (see _REPRODUCIBLE).
            with reproducible_first() if q.is_cuda else contextlib.nullcontext():
                out = F.scaled_dot_product_attention(
                    q.reshape(B, self.groups, self.num_heads // self.groups, self.head_dim), k, v, attn_mask=mask,
                    dropout_p=dropout)
            return out.reshape(B, 1, self.q_size)  # heads g*H/G.. are consecutive: (B, 1, H*D)
        if isinstance(mask, CausalBias) and gqa and not _CAUSAL_BIAS_GQA:
            k = k.repeat_interleave(self.num_heads // self.groups, dim=1)  # this torch's CausalBias has no GQA
            v = v.repeat_interleave(self.num_heads // self.groups, dim=1)
            gqa = False
        # Grouped KV with a mask tensor (the serving engine's prompts): flash takes no mask and
        # mem-efficient no grouped KV, so only cuDNN fuses it. Torch puts cuDNN first on Hopper at the
        # process's first SDPA call, unless that call runs inside sdpa_kernel(set_priority=True), as
        # grouped decode's does: the order restored on exit ends in the fp32 math kernel, 71 against
        # 14 us a layer for a 64-token prompt over 384 slots on an H100 (bench/sdpa_order.py).
        masked = isinstance(mask, torch.Tensor) and not isinstance(mask, CausalBias)  # a CausalBias is a Tensor
        with cudnn_first() if gqa and masked and q.is_cuda else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None and T > 1, dropout_p=dropout,
                **({"enable_gqa": True} if gqa else {}))  # (B, H, T, D); no enable_gqa kwarg for such a CausalBias
        return out.transpose(1, 2).reshape(B, T, self.q_size)

    def _attend_cudnn(self, q, k, v, mask: CudnnCausal, dropout: float) -> torch.Tensor:
        """q (B, H, T, D), k/v (B, G, keys, D) -> (B, T, H*D) through SDPA asking cuDNN first."""
        B, H, T, _ = q.shape
        with cudnn_first():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask.additive, dropout_p=dropout,
                                                 enable_gqa=self.groups != H)
        return out.transpose(1, 2).reshape(B, T, self.q_size)


class MLP(nn.Module):
    """SwiGLU: dense_h_to_4h gives [a | b]; silu(a) * b; dense_4h_to_h (computed in `block_outputs`)."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 2 * config.ffn_hidden_size, bias=config.add_bias_linear)
        self.dense_4h_to_h = nn.Linear(config.ffn_hidden_size, config.hidden_size, bias=config.add_bias_linear)


class GLMBlock(nn.Module):
    """Pre-norm residual block: x + Attn(RMSNorm(x)), then x + MLP(RMSNorm(x))."""

    def __init__(self, config: ChatGLMConfig, layer_idx: int):
        super().__init__()
        self.input_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.self_attention = SelfAttention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon)
        self.mlp = MLP(config)
        self.hidden_dropout = config.hidden_dropout
        self.kernels = EAGER_KERNELS
        self.l2_prefetch_bytes = 0  # bytes of this block's next weights asked into L2 before attention (serving)

    def forward(self, x, delta, cos, sin, mask, cache, prefix, packing: Packing | None = None):
        """(x, delta) -> (x, delta): the block's input and output are each x + delta (delta: zeros or
        the previous block's MLP output, see `attention_inputs`). x is (B, T, hidden), or (N, hidden)
        packed tokens with `packing`."""
        attn, norm1, norm2, mlp = self.self_attention, self.input_layernorm, self.post_attention_layernorm, self.mlp
        index = None if packing is None else packing.index
        # The serving engine's slots take the new keys and values with rotary in one kernel.
        write = getattr(cache, "write_new", None) if packing is None else None
        x, q, kv = self.kernels.attention_inputs(
            x, delta, norm1.weight, norm1.eps, attn.query_key_value.weight, attn.query_key_value.bias, cos, sin,
            attn.num_heads, attn.groups, attn.head_dim, self.kernels.rotary, index,
            0 if packing is None else packing.batch * packing.length, self.kernels.rotary_scatter,
            qkv_only=write is not None)
        if write is not None:  # q was the projection; kv stays None: already in the slots
            if self.l2_prefetch_bytes:  # the next products' weights asked for while attention runs
                asked = kernels.l2_prefetch(attn.dense.weight, self.l2_prefetch_bytes)
                kernels.l2_prefetch(mlp.dense_h_to_4h.weight, self.l2_prefetch_bytes - asked)
            q = write(q, cos, sin, attn.layer_idx, attn.num_heads, attn.groups)
        if packing is not None:  # (B*T, ...) -> (B, T, ...) views
            q, kv = (t.view(packing.batch, packing.length, *t.shape[1:]) for t in (q, kv))
        out = attn.attend(q, kv, mask, cache, prefix)
        if packing is not None:
            out = out.view(-1, out.shape[-1])  # (B*T, H*D)
        return self.kernels.block_outputs(
            x, out, attn.dense.weight, attn.dense.bias, norm2.weight, norm2.eps, mlp.dense_h_to_4h.weight,
            mlp.dense_h_to_4h.bias, mlp.dense_4h_to_h.weight, mlp.dense_4h_to_h.bias, self.hidden_dropout,
            self.training, index, self.kernels.swiglu)


class GLMTransformer(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.layers = nn.ModuleList([GLMBlock(config, i) for i in range(config.num_layers)])
        self.final_layernorm = RMSNorm(config.hidden_size, config.layernorm_epsilon) if config.post_layer_norm else None
        self.gradient_checkpointing = False

    def forward(self, x, cos, sin, mask, cache, prefix, packing: Packing | None = None):
        # The first block adds zeros: one variant of each compiled part instead of two (dynamo
        # recompiles per variant, and batch/length 1 specialisations already make four).
        delta = torch.zeros_like(x)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                x, delta = checkpoint(layer, x, delta, cos, sin, mask, cache, prefix, packing, use_reentrant=False)
            else:
                x, delta = layer(x, delta, cos, sin, mask, cache, prefix, packing)
        x = x + delta
        return self.final_layernorm(x) if self.final_layernorm is not None else x


class Embedding(nn.Module):
    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.padded_vocab_size, config.hidden_size)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.word_embeddings(input_ids)


def build_attention_mask(
    attention_mask: torch.Tensor | None,
    prefix_mask: torch.Tensor | None,
    prefix_len: int,
    query_len: int,
    past_len: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | CausalBias | None:
    """Additive mask (B or 1, 1, T, P + past + T), built once per forward and shared by all layers.

    Every query sees the valid prefix slots, earlier real tokens, and itself (so left-padding
    queries never see an empty row). Returns None when plain causal attention is exact, and a
    lower-right CausalBias when "all of the prefix + causal" is (every row has the whole prefix,
    no cache, no padding or padding only on the right, as in training): that runs in the flash
    kernel instead of materialising the mask. Right-padding queries then see real tokens (their
    outputs are never used); real tokens never see padding, which comes after them.
    """
    has_padding = attention_mask is not None and not bool(attention_mask.all())
    if not has_padding and prefix_mask is None and prefix_len == 0 and (past_len == 0 or query_len == 1):
        return None  # SDPA's is_causal (T > 1) or no mask at all (T == 1)
    if past_len == 0 and prefix_mask is None and (not has_padding or _right_padded(attention_mask)):
        return causal_lower_right(query_len, prefix_len + query_len) if prefix_len else None
    total = past_len + query_len
    q_pos = torch.arange(past_len, total, device=device)[:, None]
    k_pos = torch.arange(total, device=device)[None, :]
    allowed = (k_pos <= q_pos)[None]  # (1, T, past+T)
    if has_padding:
        keep = attention_mask[:, -total:].bool()  # (B, past+T)
        allowed = (allowed & keep[:, None, :]) | (k_pos == q_pos)[None]
    if prefix_len:
        if prefix_mask is None:
            pre = torch.ones(1, query_len, prefix_len, dtype=torch.bool, device=device)
        else:
            pre = prefix_mask[:, None, :].expand(-1, query_len, -1)
        batch = max(pre.shape[0], allowed.shape[0])
        allowed = torch.cat((pre.expand(batch, -1, -1), allowed.expand(batch, -1, -1)), dim=-1)
    additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
    additive.masked_fill_(~allowed, torch.finfo(dtype).min)
    return additive[:, None]  # (B, 1, T, P+past+T)


@dataclasses.dataclass(frozen=True)
class CudnnCausal:
    """The training layout's lower-right causal mask as an additive (1, 1, T, keys) tensor for
    cuDNN (see `ChatGLMForConditionalGeneration.set_training_attention`)."""

    additive: torch.Tensor


def additive_causal(bias: CausalBias, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A lower-right CausalBias as the additive (1, 1, T, keys) mask it stands for (0 where
    allowed, dtype min elsewhere)."""
    if bias.variant is not CausalVariant.LOWER_RIGHT:
        raise ValueError(f"only a lower-right CausalBias has an additive form here, got {bias.variant}")
    T, keys = bias.seq_len_q, bias.seq_len_kv
    allowed = torch.ones(T, keys, dtype=torch.bool, device=device).tril(keys - T)
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(~allowed, torch.finfo(dtype).min)[None, None]


def _right_padded(attention_mask: torch.Tensor) -> bool:
    """Every row is ones then zeros (B, T)."""
    return bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())


def position_ids_from_mask(attention_mask: torch.Tensor | None, batch: int, query_len: int, past_len: int,
                           device: torch.device) -> torch.Tensor:
    """Positions count real tokens from 0 at [gMASK]; left padding gets position 0 (as official)."""
    if attention_mask is None:
        return torch.arange(past_len, past_len + query_len, device=device).expand(batch, -1)
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions[:, -query_len:]


class ChatGLMPreTrainedModel(PreTrainedModel):
    config_class = ChatGLMConfig
    base_model_prefix = "transformer"
    supports_gradient_checkpointing = True
    _no_split_modules = ["GLMBlock"]
    _supports_sdpa = True
    # The official files carry the rotary buffer; this model computes the table on the fly.
    _keys_to_ignore_on_load_unexpected = [r"rotary_pos_emb\.inv_freq"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class ChatGLMModel(nn.Module):
    """The `transformer` of the official checkpoint: embedding, encoder, output layer, prefix encoder."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__()
        config.check_supported()
        self.config = config
        self.embedding = Embedding(config)
        self.encoder = GLMTransformer(config)
        self.output_layer = nn.Linear(config.hidden_size, config.padded_vocab_size, bias=False)
        self.rot_pairs = config.kv_channels // 4  # rotary on the first half of each head, in pairs
        self.rotary = RotarySpec.for_config(config)  # the family's table variant (glmbot.model.rotary)
        self.training_attention = "flash"  # see ChatGLMForConditionalGeneration.set_training_attention
        self.pack_multiple = 1  # packed token rows of the training layout (see _packed; x64 and x128 measured slower)
        self.prefix_encoder = None
        if config.pre_seq_len:
            self.prefix_encoder = PrefixEncoder(config, config.pre_seq_len, config.prefix_projection)
            self.prefix_dropout = nn.Dropout(0.1)

    def builtin_prefix(self, batch: int, dtype: torch.dtype) -> PrefixKV:
        """The official P-tuned model's own prefix on every row (dropout 0.1 in training only)."""
        kv = PrefixKV.repeat(self.prefix_encoder.kv(dtype), batch)
        return PrefixKV(self.prefix_dropout(kv.kv)) if self.training else kv

    def forward(self, input_ids, position_ids, attention_mask, cache, prefix, inputs_embeds=None):
        x = self.embedding(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, hidden)
        B, T, _ = x.shape
        past = cache.get_seq_length() if cache is not None else 0
        if prefix is None and self.prefix_encoder is not None:
            prefix = self.builtin_prefix(B, x.dtype)
        if prefix is not None and prefix.batch_size != B:
            if B % prefix.batch_size:
                raise ValueError(f"prefix has {prefix.batch_size} rows but the batch has {B}")
            # generate() expanded the rows (num_return_sequences, beams): repeat each prefix row.
            prefix = prefix.select(torch.arange(prefix.batch_size, device=x.device).repeat_interleave(B // prefix.batch_size))
        if getattr(cache, "owns_masks", False):
            # The serving engine's mixed forward (glmbot.serving.kv_slots.MixedSlots): decode queries
            # and prompt chunks in one pass, each part attending with its own mask and positions.
            if position_ids is None:
                raise ValueError("a cache that owns its masks needs explicit position_ids")
            mask = None
        elif attention_mask is not None and attention_mask.dim() == 4:
            # A caller that manages its own KV slots (the serving engine) gives the additive mask
            # (B, 1, T, P + slots) and the positions itself.
            if position_ids is None:
                raise ValueError("a 4D attention_mask needs explicit position_ids")
            mask = attention_mask.to(x.dtype)
        else:
            if position_ids is None:
                position_ids = position_ids_from_mask(attention_mask, B, T, past, x.device)
            mask = build_attention_mask(
                attention_mask, None if prefix is None else prefix.mask,
                0 if prefix is None else prefix.length, T, past, x.dtype, x.device)
            if isinstance(mask, CausalBias):
                # Training packs even a batch without padding: one layout for the compiled parts.
                if attention_mask is not None and (self.training or not bool(attention_mask.all())):
                    return self._packed(x, position_ids, attention_mask, mask, prefix)
                mask = self._training_mask(mask, x)
        cos, sin = rotary_tables(*rotary_cos_sin(position_ids, self.rot_pairs, x.dtype, self.rotary), self.config.kv_channels)
        return self.encoder(x, cos, sin, mask, cache, prefix)  # (B, T, hidden)

    def _training_mask(self, bias: CausalBias, x: torch.Tensor) -> CausalBias | CudnnCausal:
        if self.training_attention == "flash":
            return bias
        return CudnnCausal(additive_causal(bias, x.dtype, x.device))

    def _packed(self, x, position_ids, attention_mask, bias: CausalBias, prefix: PrefixKV | None) -> torch.Tensor:
        """The training layout (right-padded rows, whole prefix, no cache): the dense parts of
        every block run on the real tokens only (see `Packing`); the padded positions of the
        (B, T, hidden) result are zeros. On the H200 train bench padding was 7% of the tokens
        (batches of 32 of similar length, padded to a multiple of 8), so of the matrix products.
        The packed rows are padded to a multiple of `pack_multiple` with filler rows, which
        attention never sees."""
        B, T, _ = x.shape
        index = attention_mask.reshape(-1).nonzero().squeeze(1)  # (N,) real tokens in the flat B*T layout
        rows = -(-index.shape[0] // self.pack_multiple) * self.pack_multiple
        packed = unpad_rows(x.reshape(B * T, -1), index, rows)
        positions = gather_rows(position_ids.reshape(-1), index, rows)[None]  # (1, rows); filler rows at 0
        cos, sin = rotary_tables(*rotary_cos_sin(positions, self.rot_pairs, x.dtype, self.rotary), self.config.kv_channels)
        out = self.encoder(packed, cos[0], sin[0], self._training_mask(bias, x), None, prefix, Packing(index, B, T))
        return pad_rows(out, index, B * T).view(B, T, -1)


class ChatGLMForConditionalGeneration(ChatGLMPreTrainedModel, GenerationMixin):
    """Causal LM with the official checkpoint layout; `generate()` compatible."""

    def __init__(self, config: ChatGLMConfig):
        super().__init__(config)
        self.transformer = ChatGLMModel(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.transformer.embedding.word_embeddings

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.transformer.embedding.word_embeddings = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.transformer.output_layer

    def _set_gradient_checkpointing(self, enable: bool = True, *args, **kwargs) -> None:
        self.set_checkpointing(enable)

    def set_checkpointing(self, enable: bool) -> None:
        """Recompute each block in backward (non-reentrant, so a frozen base works); saves memory."""
        self.transformer.encoder.gradient_checkpointing = enable

    def compile_dense(self, rotary: Callable | None = None, packed_kernels: bool = True, **options) -> BlockKernels:
        """torch.compile the dense parts of every block: RMSNorm + QKV + rotary before attention,
        output projection + residual + RMSNorm + SwiGLU MLP + residual after it (attention stays SDPA).

        The parts are plain functions of tensors, so every layer shares one compiled graph of each
        (no per-layer recompiles). Shapes are torch.compile's automatic dynamic: the first batch
        compiles for its shape, the next one of another batch size or length once more with those
        dimensions symbolic; the model's own dimensions stay constants. (dynamic=True makes them
        symbolic too, and the kernels then divide by runtime sizes: on the H200 the rotary backward
        took 0.6 ms per layer of a 32 x 120 batch.) `rotary` replaces the rotary function (see the
        train bench); packed_kernels=False leaves SwiGLU and rotary of the packed training layout
        to torch.compile instead of glmbot.model.kernels; `options` go to torch.compile (mode=...,
        backend=...).
        """
        ops = {} if packed_kernels else {"swiglu": None, "rotary_scatter": None}
        parts = BlockKernels(torch.compile(attention_inputs, **options), torch.compile(block_outputs, **options),
                             rotary or EAGER_KERNELS.rotary, **ops)
        for layer in self.transformer.encoder.layers:
            layer.kernels = parts
        return parts

    def set_deterministic_decode(self, deterministic: bool) -> None:
        """Deterministic (the model's default; the serving engine on CUDA follows `[serving]
        deterministic`): decode attention folds each KV group's query heads onto its query axis,
        and the same inputs give the same bits every time (never in cuDNN: it runs mem-efficient,
        22 us a layer at 64 rows on an H100). False: one grouped-KV call that prefers cuDNN (8 us a
        layer on an H200; the two were not timed on one card), but cuDNN's kernel varies in the last
        bit from run to run, which can flip a near-tied token.
        """
        for layer in self.transformer.encoder.layers:
            layer.self_attention.grouped_decode = not deterministic

    def set_l2_prefetch(self, nbytes: int) -> None:
        """Serving forwards over KV slots: before each layer's attention, ask for the first `nbytes` of
        its dense weight, then of its h->4h weight, to be brought into L2 (kernels.l2_prefetch), so the
        products after attention read them from the cache. A hint: results are unchanged. 0: off. Set
        it before the engine captures its CUDA graphs (they keep what they captured). The requests run
        on the forward's stream, before rotary and attention (bench/l2_prefetch.py also times them
        on a side stream)."""
        if nbytes < 0:
            raise ValueError(f"L2 prefetch of {nbytes} bytes: give 0 (off) or a positive byte count")
        for layer in self.transformer.encoder.layers:
            layer.l2_prefetch_bytes = nbytes

    def set_training_attention(self, kind: str) -> None:
        """How the training layout's attention runs (a shared prefix on right-padded rows, no cache).

        "flash" (the default): a lower-right CausalBias in the flash kernel with grouped KV.
        "cudnn": the same mask as an additive (1, 1, T, P + T) tensor, built once per forward, in
        cuDNN with grouped KV (0.41 vs flash's 0.49 ms per layer fwd + bwd in
        bench/attention_train.py on an H200 at the 6B shape, batch 32; within noise of it in the
        whole training step). cuDNN, like flash's backward, does not promise bit-equal results
        from run to run; where it cannot run (CPU, other dtypes, older GPUs) SDPA takes the next
        backend that can.
        """
        if kind not in TRAINING_ATTENTION:
            raise ValueError(f"training attention {kind!r} is not one of {', '.join(TRAINING_ATTENTION)}")
        self.transformer.training_attention = kind

    def uncompile_dense(self) -> None:
        for layer in self.transformer.encoder.layers:
            layer.kernels = EAGER_KERNELS

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        prefix: PrefixKV | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids (B, T) -> logits (B, T, vocab); `prefix` gives each row its prefix KV (or none).

        attention_mask is (B, past + T) with 1 for real tokens, or a ready additive (B, 1, T, keys)
        mask with explicit position_ids for callers that manage their own cache slots.
        """
        cache = cache if cache is not None else kwargs.pop("past_key_values", None)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if use_cache and cache is None:
            cache = DynamicCache()
        hidden = self.transformer(input_ids, position_ids, attention_mask, cache if use_cache else None, prefix,
                                  inputs_embeds=inputs_embeds)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.transformer.output_layer(hidden)
        loss = None
        if labels is not None:
            # Labels are not shifted by the data code: shift here, fp32 cross-entropy (official).
            shift_logits = logits[:, :-1].float()
            shift_labels = labels[:, 1:].to(logits.device)
            loss = F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                                   ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_CACHE_FIELD: cache if use_cache else None})


def answer_loss(model: ChatGLMForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, prefix: PrefixKV | None) -> torch.Tensor:
    """The training loss of `forward(labels=...)`, with logits computed only where a label is.

    Prompt positions carry no label, so projecting them onto the 65k vocabulary (and keeping
    that for backward) is pure waste: (B*T, vocab) fp32 becomes (answer tokens, vocab).
    """
    hidden = model.transformer(input_ids, None, attention_mask, None, prefix)  # (B, T, hidden)
    targets = labels[:, 1:]
    keep = targets != -100  # (B, T-1)
    logits = model.transformer.output_layer(hidden[:, :-1][keep])  # (N, vocab)
    return F.cross_entropy(logits.float(), targets[keep])


def count_parameters(model: nn.Module) -> int:
    """Parameters of the base (prefix encoder excluded), as the spec counts them."""
    return sum(p.numel() for name, p in model.named_parameters() if "prefix_encoder" not in name)


__all__ = [
    "ChatGLMForConditionalGeneration",
    "ChatGLMModel",
    "ChatGLMPreTrainedModel",
    "GLMBlock",
    "RMSNorm",
    "answer_loss",
    "apply_rotary",
    "build_attention_mask",
    "count_parameters",
    "rotary_cos_sin",
    "rotary_tables",
]
