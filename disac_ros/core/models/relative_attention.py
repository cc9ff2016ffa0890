"""Transformer encoder whose attention knows only *relative* ground geometry between tokens.

TRAM's ``geometry='relative'`` mode uses it instead of embedding absolute positions: every token
is a polar-grid cell of some device, placed on the ground by that device's pose; the logit of
token i attending to token j gets an additive bias per head

    bias_h(i, j) = -c_h * |p_i - p_j| / scale

with fixed decays c_h spread from 1 (a head that looks at the cells of any device covering the
same spot) down to 0 (a head that sees the whole scene). Distances are invariant to any
translation or rotation of the scene, so nothing here can memorise a map, and nothing depends on
the number of devices or their ids. Absent (padded) tokens get -inf as keys. The decays are not
learnt: a learnt bias needs its gradient over every (head, query, key) triple, which made a
training step 2.6x slower on CPU (0.55 vs 0.21 s at 4 devices x 128 cells, batch 16).
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F


class _RelativeLayer(nn.Module):
    """Pre-norm self-attention with an additive per-head bias, then a GELU feed-forward."""

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_mult * dim), nn.GELU(),
                                 nn.Linear(ffn_mult * dim, dim))
        self.dropout = dropout

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        h = self.heads
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.dropout if self.training else 0.0)
        x = x + self.out(att.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(self.norm2(x))


class RelativeGeometryEncoder(nn.Module):
    """Stack of :class:`_RelativeLayer` over (B, N, D) tokens with ground positions (B, N, 2)."""

    def __init__(self, dim: int, heads: int, layers: int, ffn_mult: int = 2,
                 dropout: float = 0.0, scale_m: float = 8.0) -> None:
        super().__init__()
        self.heads = heads
        self.scale_m = float(scale_m)
        self.layers = nn.ModuleList(_RelativeLayer(dim, heads, ffn_mult, dropout)
                                    for _ in range(layers))
        # Decays per head, geometric from 1 to ~0.1, the last head global (0).
        decay = torch.tensor([3.0 ** -i for i in range(heads)])
        if heads > 1:
            decay[-1] = 0.0
        self.register_buffer('decay', decay / self.scale_m, persistent=False)
        self.norm = nn.LayerNorm(dim)

    def bias(self, position: torch.Tensor, absent: torch.Tensor) -> torch.Tensor:
        """(B, H, N, N) additive logit bias (see module doc); -inf on absent keys."""
        dist = torch.cdist(position.float(), position.float())                   # (B, N, N)
        bias = dist[:, None] * -self.decay[None, :, None, None]
        if absent.any():    # in place, and only when needed: at 16 devices the copy cost 1/3 of TRAM
            bias.masked_fill_(absent[:, None, None, :], float('-inf'))
        return bias

    def forward(self, tokens: torch.Tensor, position: torch.Tensor,
                absent: torch.Tensor) -> torch.Tensor:
        """Encode tokens (B, N, D); ``position`` (B, N, 2) metres on the ground, ``absent``
        (B, N) bool (padding)."""
        with torch.no_grad():
            bias = self.bias(position, absent).to(tokens.dtype)
        x = tokens
        for layer in self.layers:
            x = layer(x, bias)
        return self.norm(x)
