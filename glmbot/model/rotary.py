"""Rotary position embedding of the GLM family: the one home of the table and its application.

modeling.py (the model) and kernels.py (the packed training ops) both import from here, so neither
imports the other. The table variants (see `RotarySpec`) follow the official modeling files:
THUDM/chatglm2-6b (table in the model dtype), chatglm2-6b-32k (positions / rope_ratio),
THUDM/chatglm3-6b and -32k, glm-4-9b-chat (fp32, base x rope_ratio).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RotarySpec:
    """Which official rotary table a base uses.

    base: 10000 x rope_ratio for ChatGLM3/GLM-4 ("scaled_base"; GLM-4-9B: 5e6), 10000 otherwise.
    position_divisor: chatglm2-6b-32k's rope_ratio (positions / 16, linear interpolation); 1 elsewhere.
    float32: theta and positions in float32 then the table cast to the model dtype (ChatGLM3, GLM-4);
    False: in the model dtype, as ChatGLM2 builds it from its `inv_freq` buffer.
    """

    base: float = 10000.0
    position_divisor: float = 1.0
    float32: bool = False

    @classmethod
    def for_config(cls, config) -> RotarySpec:
        """The spec of a ChatGLMConfig: its family's rotary variant and its rope_ratio."""
        from glmbot.model.family import family_of

        ratio = float(getattr(config, "rope_ratio", 1.0) or 1.0)
        if family_of(config).rotary == "scaled_base":
            return cls(base=10000.0 * ratio, float32=True)
        return cls(position_divisor=ratio)


CHATGLM2_ROTARY = RotarySpec()


def rotary_cos_sin(position_ids: torch.Tensor, rot_pairs: int, dtype: torch.dtype,
                   spec: RotarySpec = CHATGLM2_ROTARY) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of the official rotary table at `position_ids` (B, T) -> each (B, 1, T, rot_pairs).

    ChatGLM2 (the default spec): like the official code, frequencies, positions and their product are
    computed in the model dtype (exact in fp32; bit-equal to the official table in fp16/bf16), cos/sin
    in fp32, and the table cast back to the model dtype. `spec.float32` (ChatGLM3, GLM-4): frequencies
    and positions in fp32 with base `spec.base`, then cast. Computed on the fly: no buffer to go stale
    after loading.
    """
    n_elem = 2 * rot_pairs
    work = torch.float32 if spec.float32 else dtype
    theta = 1.0 / (spec.base ** (torch.arange(0, n_elem, 2, dtype=work, device=position_ids.device) / n_elem))
    positions = position_ids.to(work)
    if spec.position_divisor != 1.0:
        positions = positions / spec.position_divisor
    angles = (positions[..., None] * theta).float()  # (B, T, rot_pairs)
    cos, sin = torch.cos(angles), torch.sin(angles)
    if dtype in (torch.float16, torch.bfloat16):
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos.unsqueeze(1), sin.unsqueeze(1)


def rotary_tables(cos: torch.Tensor, sin: torch.Tensor, head_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 1, T, rot_pairs) cos/sin -> full-width multipliers (B, T, 1, head_dim) for `apply_rotary`
    on (B, T, heads, head_dim) tensors.

    Pair i's two dims get (cos_i, cos_i) and (-sin_i, +sin_i); dims past the rotary part get 1 and 0.
    """
    cos, sin = cos.transpose(1, 2), sin.transpose(1, 2)
    pass_dims = head_dim - 2 * cos.shape[-1]
    shape = (*cos.shape[:-1], pass_dims)
    full_cos = torch.cat((cos.repeat_interleave(2, dim=-1), cos.new_ones(shape)), dim=-1)
    full_sin = torch.cat((torch.stack((-sin, sin), dim=-1).flatten(-2), sin.new_zeros(shape)), dim=-1)
    return full_cos, full_sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x[2i], x[2i+1]) of the rotary dims; the rest pass unchanged.

    cos, sin: full-width tables from `rotary_tables`. x * cos + swap_pairs(x) * sin is
    (x0 cos - x1 sin, x1 cos + x0 sin) with the official rounding (the same products and sums in the
    same dtype) in few, plain elementwise kernels, whose backward is the same cheap form.
    """
    swapped = x.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
    return x * cos + swapped * sin


class _RotaryWithInverseBackward(torch.autograd.Function):
    """`apply_rotary` whose backward is the inverse rotation, the same elementwise form.

    A rotation's gradient is its transpose, the rotation by -angle: d/dx = apply_rotary(g, cos, -sin),
    bit-equal to what autograd derives from the forward (negation is exact), but written as the
    forward's two products and a sum instead of autograd's flip-of-a-product chain.
    """

    @staticmethod
    def forward(x, cos, sin):
        return apply_rotary(x, cos, sin)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1], inputs[2])

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return apply_rotary(grad, cos, -sin), None, None


def rotary_inverse_backward(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`apply_rotary` with an explicit inverse-rotation backward (see `_RotaryWithInverseBackward`)."""
    return _RotaryWithInverseBackward.apply(x, cos, sin)


__all__ = ["CHATGLM2_ROTARY", "RotarySpec", "apply_rotary", "rotary_cos_sin", "rotary_inverse_backward",
           "rotary_tables"]
