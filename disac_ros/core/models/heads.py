"""DETR-style multi-object set-prediction head, shared by the device-local detector and TRAM.

Q learned object queries cross-attend to a memory of tokens (B, S, D) through a transformer
decoder; each query predicts class logits (index 0 = "no object", 1..4 = car, truck, pedestrian,
cyclist), a 2-D position and a 2-D velocity. Positions and velocities are tanh-bounded to twice
the configured scales, in metres and m/s of the frame the memory is expressed in (the device
frame for the local head, the world frame for TRAM). Trained with the Hungarian set loss of
``losses.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disac_ros.core.models.config import HeadConfig
from disac_ros.core.models.polar_grid import PolarGrid


@dataclass
class SetPrediction:
    """Per-query outputs of a set-prediction head."""

    logits: torch.Tensor     # (B, Q, C) class logits, class 0 = no object
    position: torch.Tensor   # (B, Q, 2) metres
    velocity: torch.Tensor   # (B, Q, 2) m/s

    def detections(self, threshold: float = 0.5) -> list[list[dict[str, object]]]:
        """Per batch item, the queries whose best class is an object with prob >= threshold."""
        probs = self.logits.detach().float().softmax(-1)
        score, cls = probs[..., 1:].max(-1)
        out: list[list[dict[str, object]]] = []
        for b in range(probs.shape[0]):
            items = []
            for q in torch.nonzero(score[b] >= threshold).flatten().tolist():
                items.append({'class_id': int(cls[b, q]) + 1, 'score': float(score[b, q]),
                              'position': self.position[b, q].detach().tolist(),
                              'velocity': self.velocity[b, q].detach().tolist()})
            out.append(items)
        return out


class SetPredictionHead(nn.Module):
    """Object queries + transformer decoder over a token memory -> SetPrediction."""

    def __init__(self, config: HeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or HeadConfig()
        c = self.config
        self.queries = nn.Parameter(torch.randn(c.num_queries, c.dim) * 0.02)
        layer = nn.TransformerDecoderLayer(c.dim, c.num_heads, c.ffn_mult * c.dim, c.dropout,
                                           activation='gelu', batch_first=True, norm_first=True)
        self.decoder = nn.TransformerDecoder(layer, c.num_layers, norm=nn.LayerNorm(c.dim))
        self.class_head = nn.Linear(c.dim, c.num_classes)
        self.box_head = nn.Sequential(nn.Linear(c.dim, c.dim), nn.GELU(), nn.Linear(c.dim, 4))

    def forward(self, memory: torch.Tensor, memory_key_padding_mask: torch.Tensor | None = None,
                memory_bias: torch.Tensor | None = None,
                context: torch.Tensor | None = None) -> SetPrediction:
        """
        Decode object queries against a token memory.

        :param memory: (B, S, D) tokens.
        :param memory_key_padding_mask: (B, S) bool, True = ignore this token.
        :param memory_bias: (B, S) additive attention bias on the memory keys (e.g. log weights).
        :param context: (B, D) vector added to every query (e.g. a pooled scene summary).
        """
        c = self.config
        batch = memory.shape[0]
        tgt = self.queries.unsqueeze(0).expand(batch, -1, -1)
        if context is not None:
            tgt = tgt + context.unsqueeze(1)
        mask = None
        if memory_bias is not None or memory_key_padding_mask is not None:
            # One float mask of shape (B * heads, Q, S): bias plus -inf on padded keys. Using a
            # single float mask avoids mixing bool and float masks, which torch rejects.
            bias = memory.new_zeros(batch, memory.shape[1]) if memory_bias is None \
                else memory_bias.to(memory.dtype)
            if memory_key_padding_mask is not None:
                bias = bias.masked_fill(memory_key_padding_mask, float('-inf'))
            mask = bias[:, None, None, :].expand(batch, c.num_heads, c.num_queries, -1)
            mask = mask.reshape(batch * c.num_heads, c.num_queries, memory.shape[1])
        h = self.decoder(tgt, memory, memory_mask=mask)
        box = torch.tanh(self.box_head(h)) * 2.0
        return SetPrediction(logits=self.class_head(h),
                             position=box[..., :2] * c.position_scale_m,
                             velocity=box[..., 2:] * c.velocity_scale_mps)


class GridHead(nn.Module):
    """Per-cell detector on polar-grid tokens (B, ..., G, D) in a device frame -> SetPrediction.

    Each cell predicts class logits (0 = no object centre in this cell), the object's position
    as the cell centre plus a tanh-bounded offset (up to 2 cell extents, so borders are soft)
    and its velocity; queries are the cells, in grid order. See ``polar_grid.py``.
    """

    def __init__(self, config: HeadConfig | None = None) -> None:
        super().__init__()
        self.config = config or HeadConfig(kind='grid')
        c = self.config
        self.grid = PolarGrid(c.polar_grid[0], c.polar_grid[1], c.max_range_m)
        self.register_buffer('centres', self.grid.centres_tensor(), persistent=False)
        self.net = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.dim), nn.GELU(),
                                 nn.Linear(c.dim, c.num_classes + 4))

    def forward(self, tokens: torch.Tensor) -> SetPrediction:
        """(B, G, D) or (B, K, G, D) cell tokens -> predictions with G (or K*G) queries."""
        c = self.config
        g = self.grid.num_cells
        if tokens.shape[-2] != g or tokens.shape[-1] != c.dim:
            raise ValueError(f'GridHead: expected (..., {g}, {c.dim}) cell tokens, '
                             f'got {tuple(tokens.shape)}')
        logits, position, velocity = self.decode(self.net(tokens), self.centres)
        lead = tokens.shape[0]
        return SetPrediction(logits=logits.reshape(lead, -1, c.num_classes),
                             position=position.reshape(lead, -1, 2),
                             velocity=velocity.reshape(lead, -1, 2))

    def decode(self, out: torch.Tensor, centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``net`` outputs (..., C + 4) of cells with these centres (..., 2) -> class logits,
        position (centre + a tanh-bounded offset) and velocity."""
        c = self.config
        box = torch.tanh(out[..., c.num_classes:]) * 2.0
        position = centres.to(box.dtype) + box[..., :2] * self.grid.offset_scale_m
        return out[..., :c.num_classes], position, box[..., 2:] * c.velocity_scale_mps


class GridContext(nn.Module):
    """``HeadConfig.cell_context`` residual blocks (LayerNorm over each cell's channels, then
    3x3 conv, GELU, 3x3 conv over the (angle, range) grid) on cell tokens (..., G, D), each grid
    (device) on its own; identity with 0 blocks. A cell reads only the cells up to 2 per block
    away (no grid-wide statistics), so what it reports stays local."""

    def __init__(self, config: HeadConfig) -> None:
        super().__init__()
        self.shape = tuple(config.polar_grid)
        d = config.dim
        self.norms = nn.ModuleList(nn.LayerNorm(d) for _ in range(config.cell_context))
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.GELU(), nn.Conv2d(d, d, 3, padding=1))
            for _ in range(config.cell_context))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.convs:
            return tokens
        lead, (g, d) = tokens.shape[:-2], tokens.shape[-2:]
        x = tokens.reshape(-1, g, d)
        for norm, conv in zip(self.norms, self.convs):
            y = norm(x).transpose(1, 2).reshape(-1, d, *self.shape)
            x = x + conv(y).reshape(-1, d, g).transpose(1, 2)
        return x.reshape(*lead, g, d)


def build_head(config: HeadConfig) -> nn.Module:
    """The head a config asks for: SetPredictionHead ('set') or GridHead ('grid')."""
    return GridHead(config) if config.kind == 'grid' else SetPredictionHead(config)
