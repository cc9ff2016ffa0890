"""TRAM: transformer aggregation model at the aggregation center.

Inputs per frame, for K device slots (K may change from call to call, up to ``max_devices``):

* ``features`` (B, K, F): decoded semantic features (device-frame content);
* ``present`` (B, K) bool: which slots hold a packet this frame (absent devices are masked out
  everywhere, so their contents cannot affect the output);
* ``pose`` (B, K, 3): device (x, y, yaw) in the world frame, so device-frame features can be
  placed in the world frame;
* ``link`` (B, K, 2): (snr_db, distance_m) of each device's link;
* ``device_index`` (B, K) long: the device's id slot in [0, max_devices) (default 0..K-1).

Architecture (``aggregator='tram'``):

1. per device, ``Linear(F, T*D)`` makes T tokens; each gets a token-index embedding, the device-id
   embedding, a pose embedding MLP([x/s, y/s, cos yaw, sin yaw]) and a link-quality embedding
   MLP([snr/10, log10(d/100 m)]);
2. transformer encoder layers over all K*T tokens (key padding mask on absent devices);
3. adaptive aggregation attention: per device, score = MLP([mean of its tokens, link emb]);
   weights = softmax over *present* devices only (``TRAMOutput.weights``, for diagnostics). They
   depend on content and link quality. They enter the detector twice: as an additive log-weight
   bias on every cross-attention logit to that device's tokens (attention to device k is
   re-weighted by w_k), and as a weighted scene summary added to every object query;
4. the shared DETR-style head (``heads.py``) predicts class (0 = no object), position and
   velocity in the world frame for Q object queries.

With ``detect_in_device_frame`` (step 4 replaced): the head decodes each device's tokens (after
the cross-device encoder, so a device knows what the others report) with its own Q queries in
that DEVICE's frame, as the device's stage-1 proxy head learnt to; the device pose then rotates
and translates positions and velocities into the world frame exactly, instead of the network
having to learn the rigid transform from a pose embedding. The output has K*Q queries; those of
absent devices are forced to "no object" far away. The aggregation weight enters as a bias
``log(K_present * w_k)`` on device k's object-class logits (0 for uniform weights).

With a grid head (``head.kind='grid'``, the shipped layout) the tokens of a device are its polar
cells: ``Linear(cell_dim, D)`` of each cell's decoded values + a cell-index embedding + an
embedding of the cell centre's WORLD position (from the pose), so attention can find the cells of
other devices that look at the same place; then the transformer over all K*G tokens, the grid
head on every cell in its device's frame, and the exact pose transform. Every present device whose
grid contains an object is trained to report it; the output's duplicates are removed by
class-agnostic fusion (``detection_fusion.py``: weighted clusters by default, or NMS).

With ``geometry='relative'`` (the device-agnostic models) there is no device-id embedding, no
pose embedding and no world-position embedding: a cell token is its decoded values + its cell
index (its place in its own device's frame) + the link embedding, and the cross-device encoder
(:mod:`relative_attention`) biases attention by the ground distance between cells. Nothing then
depends on the map frame, the device ids, their order or their number: the output moves with any
rigid motion of the scene, and K is unbounded.

``aggregator='mean_pool'`` is the baseline: the same per-device tokens and embeddings, no
cross-device transformer, the memory is the mean over present devices, the same head.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from disac_ros.core.models.config import TRAMConfig
from disac_ros.core.models.heads import build_head, GridContext, GridHead, SetPrediction
from disac_ros.core.models.polar_grid import PolarGrid
from disac_ros.core.models.relative_attention import RelativeGeometryEncoder
from disac_ros.core.models.semantic_codec import side_info_features


def _mlp(cin: int, dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(cin, dim), nn.GELU(), nn.Linear(dim, dim))


@dataclass
class TRAMOutput:
    """World-frame object predictions and the per-device aggregation weights."""

    prediction: SetPrediction
    weights: torch.Tensor     # (B, K): softmax over present devices, 0 for absent ones


class TRAM(nn.Module):
    """Transformer aggregation over a variable set of devices (see module doc)."""

    def __init__(self, config: TRAMConfig | None = None) -> None:
        super().__init__()
        self.config = config or TRAMConfig()
        c = self.config
        self.relative = c.geometry == 'relative'
        self.grid: PolarGrid | None = None
        if c.head.kind == 'grid':
            # Polar layout: one token per grid cell of each device, placed in the world by pose.
            self.grid = PolarGrid(c.head.polar_grid[0], c.head.polar_grid[1], c.head.max_range_m)
            cells = self.grid.num_cells
            self.feat_proj = nn.Linear(c.feature_dim // cells, c.dim)
            self.cell_context = GridContext(c.head)   # per device, before the cross-device encoder
            self.token_index = nn.Parameter(torch.randn(cells, c.dim) * 0.02)
            if not self.relative:
                self.world_pos_emb = _mlp(2, c.dim)
            self.register_buffer('centres', self.grid.centres_tensor(), persistent=False)
        else:
            self.feat_proj = nn.Linear(c.feature_dim, c.tokens_per_device * c.dim)
            self.token_index = nn.Parameter(torch.randn(c.tokens_per_device, c.dim) * 0.02)
        if not self.relative:
            # Absolute geometry: a device-id slot and the pose in the training map's frame.
            self.device_emb = nn.Embedding(c.max_devices, c.dim)
            nn.init.normal_(self.device_emb.weight, std=0.02)
            self.pose_emb = _mlp(4, c.dim)
        self.link_emb = _mlp(2, c.dim)
        self.encoder: nn.Module | None = None
        self.score: nn.Sequential | None = None
        if c.aggregator == 'tram':
            if c.num_layers > 0 and self.relative:
                self.encoder = RelativeGeometryEncoder(c.dim, c.num_heads, c.num_layers,
                                                       c.ffn_mult, c.dropout, c.relative_scale_m)
            elif c.num_layers > 0:
                layer = nn.TransformerEncoderLayer(c.dim, c.num_heads, c.ffn_mult * c.dim,
                                                   c.dropout, activation='gelu',
                                                   batch_first=True, norm_first=True)
                # Nested tensors would zero padded rows in eval only: keep train == eval.
                self.encoder = nn.TransformerEncoder(layer, c.num_layers,
                                                     norm=nn.LayerNorm(c.dim),
                                                     enable_nested_tensor=False)
            self.score = nn.Sequential(nn.Linear(2 * c.dim, c.dim), nn.GELU(),
                                       nn.Linear(c.dim, 1))
        self.head = build_head(c.head)
        # Inference option (not part of the trained config): keep only this many cells per
        # device, the likeliest to hold an object by the grid head on the tokens before the
        # cross-device encoder; the others keep that head's reading of their own tokens (no
        # cross-device context). 0 = every cell (exact). It makes the encoder's cost grow with
        # K * max_cells instead of K * cells.
        self.max_cells_per_device = 0
        # Inference option: a budget of fused cells over all present devices; each device fuses
        # max_fused_cells // K of its cells (at most every cell, capped by max_cells_per_device).
        # 0 = no budget. With 4 x 128 the model is exact up to K = 4 and the encoder's cost stops
        # growing beyond it: only the per-cell parts stay linear in K.
        self.max_fused_cells = 0

    def _validate(self, features: torch.Tensor, present: torch.Tensor, pose: torch.Tensor,
                  link: torch.Tensor, device_index: torch.Tensor) -> None:
        c = self.config
        if features.dim() != 3 or features.shape[2] != c.feature_dim:
            raise ValueError(f'features: expected (B, K, {c.feature_dim}), '
                             f'got {tuple(features.shape)}')
        b, k = features.shape[:2]
        for name, t, shape in (('present', present, (b, k)), ('pose', pose, (b, k, 3)),
                               ('link', link, (b, k, 2)), ('device_index', device_index, (b, k))):
            if tuple(t.shape) != shape:
                raise ValueError(f'{name}: expected shape {shape}, got {tuple(t.shape)}')
        if present.dtype != torch.bool:
            raise ValueError(f'present: expected a bool tensor, got {present.dtype}')
        empty = torch.nonzero(~present.any(dim=1)).flatten()
        if empty.numel():
            raise ValueError(f'present: frame {int(empty[0])} has no present device')
        if not self.relative and bool(((device_index < 0)
                                       | (device_index >= c.max_devices)).any()):
            raise ValueError(f'device_index: must be in [0, {c.max_devices}) (max_devices)')

    def forward(self, features: torch.Tensor, present: torch.Tensor, pose: torch.Tensor,
                link: torch.Tensor, device_index: torch.Tensor | None = None) -> TRAMOutput:
        """Aggregate K device features (B, K, F) into world-frame object predictions."""
        c = self.config
        b, k = features.shape[:2]
        if device_index is None:
            device_index = torch.arange(k, device=features.device).expand(b, k)
        self._validate(features, present, pose, link, device_index)
        t, d = c.tokens_per_device, c.dim
        pose = pose.float()
        pose_in = torch.stack((pose[..., 0] / c.scene_scale_m, pose[..., 1] / c.scene_scale_m,
                               torch.cos(pose[..., 2]), torch.sin(pose[..., 2])), dim=-1)
        link_e = self.link_emb(side_info_features(link[..., 0].reshape(-1),
                                                  link[..., 1].reshape(-1))
                               .to(features.device).view(b, k, 2))          # (B, K, D)
        world = None
        if self.relative:
            per_device = link_e     # no id, no absolute pose: see TRAMConfig.geometry
        else:
            per_device = (self.device_emb(device_index) + self.pose_emb(pose_in) + link_e)
        if self.grid is not None:
            t = self.grid.num_cells
            cells = features.float().view(b, k, t, -1)
            world = self._to_world(self.centres.to(pose.dtype).expand(b, k, t, 2), pose) \
                + pose[..., None, :2]
            tokens = self.cell_context(self.feat_proj(cells)) + self.token_index
            if not self.relative:
                tokens = tokens + self.world_pos_emb(world / c.scene_scale_m)
        else:
            tokens = self.feat_proj(features.float()).view(b, k, t, d) + self.token_index
        tokens = tokens + per_device.unsqueeze(2)                            # (B, K, T, D)
        absent = ~present
        if c.aggregator == 'mean_pool':
            w = present.float() / present.float().sum(dim=1, keepdim=True)    # (B, K)
            if self.grid is not None:
                # No cross-device attention: every cell gets the mean of the present devices'
                # token summaries, then each device is decoded in its own frame.
                summary = (tokens.mean(dim=2) * w[..., None]).sum(dim=1)      # (B, D)
                return self._grid_output(tokens + summary[:, None, None, :], present, pose, w)
            memory = (tokens * w[:, :, None, None]).sum(dim=1)                 # (B, T, D)
            context = memory.mean(dim=1)
            return TRAMOutput(self.head(memory, context=context), w)
        if c.detect_in_device_frame:
            return self._device_frame_forward(tokens, present, pose, link_e, world)
        flat = tokens.reshape(b, k * t, d)
        pad = absent.repeat_interleave(t, dim=1)                               # (B, K*T)
        if self.encoder is not None:
            flat = self.encoder(flat, src_key_padding_mask=pad)
        summary = flat.view(b, k, t, d).mean(dim=2)                           # (B, K, D)
        assert self.score is not None
        score = self.score(torch.cat((summary, link_e), dim=-1)).squeeze(-1)  # (B, K)
        w = score.masked_fill(absent, float('-inf')).softmax(dim=1)
        w = w.masked_fill(absent, 0.0)
        log_w = torch.log(w.clamp_min(1e-9)).repeat_interleave(t, dim=1)      # (B, K*T)
        context = (w.unsqueeze(-1) * summary).sum(dim=1)                      # (B, D)
        pred = self.head(flat, memory_key_padding_mask=pad, memory_bias=log_w, context=context)
        return TRAMOutput(pred, w)

    def _weights(self, summary: torch.Tensor, link_e: torch.Tensor,
                 absent: torch.Tensor) -> torch.Tensor:
        """(B, K) aggregation weights: softmax of the score MLP over present devices."""
        assert self.score is not None
        score = self.score(torch.cat((summary, link_e), dim=-1)).squeeze(-1)
        w = score.masked_fill(absent, float('-inf')).softmax(dim=1)
        return w.masked_fill(absent, 0.0)

    def _device_frame_forward(self, tokens: torch.Tensor, present: torch.Tensor,
                              pose: torch.Tensor, link_e: torch.Tensor,
                              world: torch.Tensor | None = None) -> TRAMOutput:
        """Per-device decoding in the device frame + exact pose transform (see module doc)."""
        b, k, t, d = tokens.shape
        absent = ~present
        m = self.cells_to_fuse(present, t)
        if m < t and self.grid is not None and self.relative and world is not None:
            return self._pruned_grid_forward(tokens, present, pose, link_e, world, m)
        flat = tokens.reshape(b, k * t, d)
        pad = absent.repeat_interleave(t, dim=1)
        if self.relative and self.encoder is not None:
            assert world is not None
            flat = self.encoder(flat, world.reshape(b, k * t, 2), pad)
        elif self.encoder is not None:
            flat = self.encoder(flat, src_key_padding_mask=pad)
        per_dev = flat.view(b, k, t, d)
        summary = per_dev.mean(dim=2)                                         # (B, K, D)
        w = self._weights(summary, link_e, absent)
        if self.grid is not None:
            return self._grid_output(per_dev, present, pose, w)
        pred = self.head(per_dev.reshape(b * k, t, d), context=summary.reshape(b * k, d))
        return self._place(pred, present, pose, w)

    def cells_to_fuse(self, present: torch.Tensor, cells: int) -> int:
        """How many cells of each device enter the cross-device encoder (``max_cells_per_device``,
        ``max_fused_cells``), for frames with these present devices (B, K)."""
        m = cells
        if self.max_cells_per_device > 0:
            m = min(m, self.max_cells_per_device)
        if self.max_fused_cells > 0:
            most = max(1, int(present.sum(dim=1).max()))
            m = min(m, max(1, self.max_fused_cells // most))
        return m

    def _pruned_grid_forward(self, tokens: torch.Tensor, present: torch.Tensor, pose: torch.Tensor,
                             link_e: torch.Tensor, world: torch.Tensor, m: int) -> TRAMOutput:
        """``_device_frame_forward`` on the ``m`` likeliest cells of each device (see
        ``max_cells_per_device``); the cells left out keep the grid head's reading of their own
        tokens, without the cross-device encoder."""
        b, k, t, d = tokens.shape
        absent = ~present
        head = self.head
        c = head.config
        # The head on every cell before the encoder: it ranks the cells, and it is the answer of
        # the cells that are not fused (one per-cell MLP: linear in K).
        own = head.net(tokens)                                                  # (B, K, T, C+4)
        objectness = 1.0 - own[..., :c.num_classes].softmax(-1)[..., 0]
        keep = objectness.topk(m, dim=-1).indices                               # (B, K, M)
        kept = tokens.gather(2, keep[..., None].expand(b, k, m, d))
        kept_world = world.gather(2, keep[..., None].expand(b, k, m, 2))
        flat = kept.reshape(b, k * m, d)
        pad = absent.repeat_interleave(m, dim=1)
        if self.encoder is not None:
            flat = self.encoder(flat, kept_world.reshape(b, k * m, 2), pad)
        per_dev = flat.view(b, k, m, d)
        w = self._weights(per_dev.mean(dim=2), link_e, absent)
        # The fused cells' head outputs replace their own ones, then one decode of the full grid.
        out = own.scatter(2, keep[..., None].expand(b, k, m, own.shape[-1]), head.net(per_dev))
        logits, position, velocity = head.decode(out, head.centres.expand(b, k, t, 2))
        pred = SetPrediction(logits=logits.reshape(b * k, t, c.num_classes),
                             position=position.reshape(b * k, t, 2),
                             velocity=velocity.reshape(b * k, t, 2))
        return self._place(pred, present, pose, w)

    @staticmethod
    def _to_world(v: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """Rotate device-frame vectors (B, K, N, 2) by each device's yaw (pose (B, K, 3))."""
        c, s = torch.cos(pose[..., 2])[..., None], torch.sin(pose[..., 2])[..., None]
        return torch.stack((c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]), -1)

    def _grid_output(self, per_dev: torch.Tensor, present: torch.Tensor, pose: torch.Tensor,
                     w: torch.Tensor) -> TRAMOutput:
        """Grid head on every device's cell tokens (B, K, G, D), then placed in the world."""
        b, k, t, d = per_dev.shape
        return self._place(self.head(per_dev.reshape(b * k, t, d)), present, pose, w)

    def _place(self, pred: SetPrediction, present: torch.Tensor, pose: torch.Tensor,
               w: torch.Tensor) -> TRAMOutput:
        """Device-frame predictions (B*K, Q, ...) -> world frame, weights as logit bias."""
        b, k = present.shape
        absent = ~present
        q, ncls = pred.logits.shape[1:]
        position = (self._to_world(pred.position.view(b, k, q, 2), pose)
                    + pose[..., None, :2]).reshape(b * k, q, 2)
        velocity = self._to_world(pred.velocity.view(b, k, q, 2), pose).reshape(b * k, q, 2)
        n_present = present.float().sum(dim=1, keepdim=True)
        bias = torch.log((w * n_present).clamp_min(1e-6)).reshape(b * k, 1, 1)
        logits = torch.cat((pred.logits[..., :1], pred.logits[..., 1:] + bias), dim=-1)
        gone = absent.reshape(b * k, 1, 1)
        # Absent devices: "no object" with certainty and far away, so matching never picks them.
        none = torch.full_like(logits, -1e4)
        none[..., 0] = 1e4
        logits = torch.where(gone, none, logits)
        position = torch.where(gone, torch.full_like(position, 1e4), position)
        velocity = torch.where(gone, torch.zeros_like(velocity), velocity)
        out = SetPrediction(logits=logits.reshape(b, k * q, ncls),
                            position=position.reshape(b, k * q, 2),
                            velocity=velocity.reshape(b, k * q, 2))
        return TRAMOutput(out, w)
