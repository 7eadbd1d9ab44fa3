"""P-Tuning v2 prefixes: the official PrefixEncoder and batched per-row prefix KV.

An adapter's prefix KV does not depend on the input (the encoder always reads arange(P)), so it
is computed once and reused. `PrefixKV` carries one prefix per batch row (different adapters,
different lengths, or none) padded to the longest and masked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:  # only for annotations: importing transformers costs ~1 s
    from glmbot.model.configuration import ChatGLMConfig


# ChatGLM-6B (v1) prefixes: 28 layers x (k, v) x 4096 full-width heads.
V1_PREFIX_WIDTH = 28 * 2 * 4096


class PrefixEncoder(nn.Module):
    """The official prefix encoder: Embedding(P, width) [-> Linear, Tanh, Linear].

    width = num_layers x 2 x groups x kv_channels (14336 for ChatGLM2-6B). Parameter names match
    the official checkpoint keys under `transformer.prefix_encoder.`.
    """

    def __init__(self, config: ChatGLMConfig, pre_seq_len: int, prefix_projection: bool = False):
        super().__init__()
        if pre_seq_len <= 0:
            raise ValueError(f"pre_seq_len must be > 0, got {pre_seq_len}")
        self.pre_seq_len = pre_seq_len
        self.prefix_projection = prefix_projection
        self.num_layers = config.num_layers
        self.groups = config.kv_groups
        self.head_dim = config.kv_channels
        width = config.prefix_width
        self.embedding = nn.Embedding(pre_seq_len, width)
        if prefix_projection:
            self.trans = nn.Sequential(
                nn.Linear(width, config.hidden_size), nn.Tanh(), nn.Linear(config.hidden_size, width)
            )

    def forward(self) -> torch.Tensor:
        """The prefix as flat rows: (P, width)."""
        tokens = torch.arange(self.pre_seq_len, device=self.embedding.weight.device)
        out = self.embedding(tokens)
        if self.prefix_projection:
            out = self.trans(out)
        return out

    def kv(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Per-layer keys/values of this prefix: (2L, G, P, D); slot 2l = layer l key, 2l+1 value."""
        return flat_to_kv(self(), self.num_layers, self.groups, self.head_dim, dtype)


def flat_to_kv(flat: torch.Tensor, num_layers: int, groups: int, head_dim: int,
               dtype: torch.dtype | None = None) -> torch.Tensor:
    """(P, 2L*G*D) -> (2L, G, P, D), following the official flat index ((l*2+kv)*G+g)*D+d."""
    p = flat.shape[0]
    kv = flat.view(p, 2 * num_layers, groups, head_dim)  # (P, 2L, G, D)
    kv = kv.permute(1, 2, 0, 3)  # (2L, G, P, D)
    return kv.to(dtype) if dtype is not None else kv


@dataclass
class PrefixKV:
    """Prefix keys/values for every row of a batch.

    kv: (2L, B, G, P, D), P the longest prefix of the batch; mask: (B, P) bool, True where a
    row has a real prefix slot, or None when every row uses all P slots.
    """

    kv: torch.Tensor
    mask: torch.Tensor | None = None
    # kv split along its first axis on first use: one unbind for all layers, whose backward stacks
    # the 2L gradients in one kernel; indexing kv per layer instead made autograd zero-fill a
    # whole-kv gradient per layer and add them up (H200, 6B shape, batch 32: 6.6 ms per micro-batch).
    _layers: tuple[torch.Tensor, ...] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def length(self) -> int:
        return self.kv.shape[3]

    @property
    def batch_size(self) -> int:
        return self.kv.shape[1]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(key, value) of layer `index`, each (B, G, P, D)."""
        if self._layers is None:
            self._layers = self.kv.unbind(0)
        return self._layers[2 * index], self._layers[2 * index + 1]

    def select(self, rows: torch.Tensor) -> PrefixKV:
        """The prefixes of the given batch rows (used when beams or rows are re-ordered)."""
        mask = None if self.mask is None else self.mask[rows]
        return PrefixKV(self.kv[:, rows], mask)

    @classmethod
    def repeat(cls, kv: torch.Tensor, batch_size: int) -> PrefixKV:
        """The same prefix (2L, G, P, D) on every row."""
        return cls(kv.unsqueeze(1).expand(-1, batch_size, -1, -1, -1))

    @classmethod
    def stack(cls, prefixes: list[torch.Tensor | None], pad_to_multiple: int = 1) -> PrefixKV | None:
        """One prefix (2L, G, P_i, D) or None per row -> a padded, masked batch; None if no row has one."""
        present = [p for p in prefixes if p is not None]
        if not present:
            return None
        ref = present[0]
        for p in present[1:]:
            if p.shape[:2] != ref.shape[:2] or p.shape[3] != ref.shape[3]:
                raise ValueError(
                    f"prefixes of one batch must share layers/groups/head dim: {tuple(ref.shape)} vs {tuple(p.shape)}")
        longest = max(p.shape[2] for p in present)
        if pad_to_multiple > 1:
            longest = -(-longest // pad_to_multiple) * pad_to_multiple
        two_l, groups, _, head_dim = ref.shape
        kv = ref.new_zeros(two_l, len(prefixes), groups, longest, head_dim)
        mask = torch.zeros(len(prefixes), longest, dtype=torch.bool, device=ref.device)
        for row, p in enumerate(prefixes):
            if p is not None:
                kv[:, row, :, : p.shape[2]] = p
                mask[row, : p.shape[2]] = True
        return cls(kv, None if bool(mask.all()) else mask)
