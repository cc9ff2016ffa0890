"""RVFN: RF-vision fusion network on each device (plain torch, no torchvision/timm).

* Visual extractor: a small ResNet-style CNN (stride-2 residual stages, GroupNorm so batch size 1
  behaves like training) on the image (B, 3, H, W) in [0, 1], adaptive-average-pooled to a fixed
  ``vis_grid`` of tokens.
* RF extractor: the same kind of CNN on the RF feature tensor (B, C_rf, H_rf, W_rf) of any size
  (e.g. Doppler/angle x range maps), pooled to ``rf_grid`` tokens.
* Both get a learned 2-D position embedding and a modality embedding, then
  ``num_cross_layers`` bidirectional cross-attention layers: RF tokens attend to visual tokens and
  visual tokens to RF tokens (simultaneously), each with residual + LayerNorm, then a residual
  feed-forward + LayerNorm.
* Fused semantic feature (B, feature_dim) =
  Linear(LayerNorm([mean of RF tokens, mean of visual tokens])).

Layout ``'polar'`` (the shipped one, ``polar_grid.py``): the RF tokens are the cells of a polar
grid (angle cells in sin(azimuth) x range cells) that the range-angle map pools onto exactly; the
range-Doppler map enters as each range bin's Doppler profile (16 channels). The camera CNN's
column features are lifted onto the cells' azimuths by fixed pinhole geometry (a camera column
looks along one azimuth; which range along that ray is for the RF and the attention to decide)
and added to the cell tokens; then the same bidirectional cross-attention (cells <-> visual
tokens) and a residual 3x3 conv over the grid. The fused feature is ``cell_dim`` values per cell
(Linear + LayerNorm per cell), flattened, and the local grid head reads exactly that, so what a
device transmits is what its own detector used. Spatial structure survives to the aggregator;
the pooled layout averaged it away, and a learned set head on 1000 frames over-fitted.

``modalities='rf'`` or ``'camera'`` builds the unimodal baselines: one extractor, and the
cross-attention layers become self-attention layers of the same size.

:class:`LocalDetector` adds the shared head (set head on the fused tokens, or grid head on the
per-cell feature), so a device can be trained on its own data alone (objects in the device frame).
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch
from torch import nn

from disac_ros.core.models.config import HeadConfig, RVFNConfig
from disac_ros.core.models.heads import build_head, GridContext, GridHead, SetPrediction
from disac_ros.core.types import NUM_OBJECT_CLASSES


def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, channels), channels)


class _ResBlock(nn.Module):
    """Stride-2 basic residual block (conv-GN-GELU-conv-GN + projected skip)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False), _norm(cout), nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(cout))
        self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=2, bias=False), _norm(cout))
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, cin, H, W) -> (B, cout, ceil(H/2), ceil(W/2))."""
        return self.act(self.body(x) + self.skip(x))


class ConvTokenizer(nn.Module):
    """CNN (stride-2 stem + residual stages) -> adaptive pool -> (B, gh*gw, dim) tokens."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], grid: tuple[int, int],
                 dim: int, coord: bool = False) -> None:
        super().__init__()
        self.coord = coord
        cin = in_channels + (2 if coord else 0)
        stem = nn.Sequential(nn.Conv2d(cin, channels[0], 3, stride=2, padding=1, bias=False),
                             _norm(channels[0]), nn.GELU())
        stages = [_ResBlock(a, b) for a, b in zip(channels[:-1], channels[1:])]
        self.cnn = nn.Sequential(stem, *stages)
        self.pool = nn.AdaptiveAvgPool2d(tuple(grid))
        self.proj = nn.Linear(channels[-1], dim)
        self.pos = nn.Parameter(torch.randn(grid[0] * grid[1], dim) * 0.02)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> CNN feature map (B, C', H', W') (coordinate maps appended first)."""
        if self.coord:
            b, _, h, w = x.shape
            rows = torch.linspace(-1.0, 1.0, h, dtype=x.dtype, device=x.device)
            cols = torch.linspace(-1.0, 1.0, w, dtype=x.dtype, device=x.device)
            grid = torch.stack(torch.meshgrid(rows, cols, indexing='ij'))   # (2, H, W)
            x = torch.cat((x, grid.expand(b, -1, -1, -1)), dim=1)
        return self.cnn(x)

    def tokens(self, fmap: torch.Tensor) -> torch.Tensor:
        """Feature map -> (B, gh*gw, dim) pooled tokens with their position embedding."""
        f = self.pool(fmap)                             # (B, C', gh, gw)
        return self.proj(f.flatten(2).transpose(1, 2)) + self.pos

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, gh*gw, dim)."""
        return self.tokens(self.feature_map(x))


class _FFN(nn.Module):
    def __init__(self, dim: int, mult: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, mult * dim), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(mult * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BiCrossAttentionLayer(nn.Module):
    """RF <-> visual cross-attention (residual + LayerNorm), then per-stream FFN (+ LayerNorm).

    With only one stream (unimodal baselines) the same layer does self-attention.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int, dropout: float,
                 streams: int = 2) -> None:
        super().__init__()
        self.streams = streams
        self.attn = nn.ModuleList([nn.MultiheadAttention(dim, heads, dropout=dropout,
                                                         batch_first=True)
                                   for _ in range(streams)])
        self.ln1 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(streams)])
        self.ffn = nn.ModuleList([_FFN(dim, ffn_mult, dropout) for _ in range(streams)])
        self.ln2 = nn.ModuleList([nn.LayerNorm(dim) for _ in range(streams)])

    def forward(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        """xs = [rf, vis] (or one stream): each (B, S_i, D) -> same shapes."""
        out = []
        for i, x in enumerate(xs):
            other = xs[1 - i] if self.streams == 2 else x   # both read the *inputs*: symmetric
            a, _ = self.attn[i](x, other, other, need_weights=False)
            out.append(self.ln1[i](x + a))
        return [self.ln2[i](h + self.ffn[i](h)) for i, h in enumerate(out)]


@dataclass
class RVFNOutput:
    """Fused semantic feature and the fused tokens it came from."""

    feature: torch.Tensor    # (B, feature_dim)
    tokens: torch.Tensor     # (B, S_rf + S_vis, dim) fused tokens (RF first)
    # (B, num_angle_cells, 4) object-class logits of the camera alone per angle cell (polar
    # layout with rvfn.camera_class_head; else None)
    camera_logits: torch.Tensor | None = None


class RVFN(nn.Module):
    """RF-vision fusion network: (image, rf) -> RVFNOutput (see module doc)."""

    def __init__(self, config: RVFNConfig | None = None) -> None:
        super().__init__()
        self.config = config or RVFNConfig()
        c = self.config
        self.use_rf = c.modalities in ('both', 'rf')
        self.use_camera = c.modalities in ('both', 'camera')
        self.rf_net = ConvTokenizer(c.rf_in_channels, c.rf_channels, c.rf_grid, c.dim,
                                    c.coord_channels) \
            if self.use_rf else None
        self.vis_net = ConvTokenizer(c.image_channels, c.vis_channels, c.vis_grid, c.dim,
                                     c.coord_channels) \
            if self.use_camera else None
        streams = int(self.use_rf) + int(self.use_camera)
        self.polar: _PolarLift | None = None
        if c.layout == 'polar':
            self.polar = _PolarLift(c)
            if self.use_rf:   # RA map + the range-Doppler profile of each range bin as channels
                self.rf_net = ConvTokenizer(_polar_rf_channels(c), c.rf_channels, c.polar_grid,
                                            c.dim, c.coord_channels)
        self.modality = nn.Parameter(torch.randn(streams, c.dim) * 0.02)
        self.layers = nn.ModuleList([BiCrossAttentionLayer(c.dim, c.num_heads, c.ffn_mult,
                                                           c.dropout, streams)
                                     for _ in range(c.num_cross_layers)])
        if c.layout == 'polar':
            self.out_norm = nn.LayerNorm(c.dim)
            self.out = nn.Linear(c.dim, c.cell_dim)
        else:
            self.out_norm = nn.LayerNorm(streams * c.dim)
            self.out = nn.Linear(streams * c.dim, c.feature_dim)

    def _check(self, x: torch.Tensor | None, channels: int, name: str) -> torch.Tensor:
        if x is None:
            raise ValueError(f'{name}: required for modalities={self.config.modalities!r}')
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f'{name}: expected shape (B, {channels}, H, W), '
                             f'got {tuple(x.shape)}')
        # contiguous(): backward through the CNN with a channels-last view (e.g. from permute)
        # crashes torch 2.13 on CPU ("double free or corruption").
        return x.float().contiguous()

    def forward(self, image: torch.Tensor | None, rf: torch.Tensor | None) -> RVFNOutput:
        """
        Fuse one batch of frames.

        :param image: (B, 3, H, W) float in [0, 1] (ignored/optional when modalities='rf').
        :param rf: (B, C_rf, H_rf, W_rf) float RF features (optional when modalities='camera').
        """
        c = self.config
        if self.polar is not None:
            return self._forward_polar(image, rf)
        streams: list[torch.Tensor] = []
        if self.rf_net is not None:
            streams.append(self.rf_net(self._check(rf, c.rf_in_channels, 'rf')))
        if self.vis_net is not None:
            img = self._check(image, c.image_channels, 'image')
            streams.append(self.vis_net((img - 0.5) / 0.25))   # roughly zero-mean, unit-scale
        if len(streams) == 2 and streams[0].shape[0] != streams[1].shape[0]:
            raise ValueError(f'image and rf batch sizes differ: {streams[1].shape[0]} vs '
                             f'{streams[0].shape[0]}')
        streams = [s + self.modality[i] for i, s in enumerate(streams)]
        for layer in self.layers:
            streams = layer(streams)
        pooled = torch.cat([s.mean(dim=1) for s in streams], dim=-1)
        feature = self.out(self.out_norm(pooled))
        return RVFNOutput(feature=feature, tokens=torch.cat(streams, dim=1))

    def _forward_polar(self, image: torch.Tensor | None, rf: torch.Tensor | None) -> RVFNOutput:
        """Polar layout: tokens = grid cells (+ visual tokens); feature = per-cell values."""
        c = self.config
        assert self.polar is not None
        batch = None
        cells = None
        vis_tokens = None
        camera_logits = None
        if self.rf_net is not None:
            rfx = self._check(rf, c.rf_in_channels, 'rf')
            cells = self.rf_net(_polar_rf_input(rfx))                    # (B, G, D)
            batch = cells.shape[0]
        if self.vis_net is not None:
            img = self._check(image, c.image_channels, 'image')
            vis_tokens, ray, camera_logits = self.polar.camera(self.vis_net, (img - 0.5) / 0.25)
            if batch is not None and vis_tokens.shape[0] != batch:
                raise ValueError(f'image and rf batch sizes differ: {vis_tokens.shape[0]} vs '
                                 f'{batch}')
            cells = ray if cells is None else cells + ray
        assert cells is not None
        # Camera only (baseline): the lifted rays are the one stream (self-attention).
        streams = [cells] if vis_tokens is None or self.rf_net is None else [cells, vis_tokens]
        streams = [s + self.modality[i] for i, s in enumerate(streams)]
        for layer in self.layers:
            streams = layer(streams)
        cells = self.polar.refine(streams[0])
        feature = self.out(self.out_norm(cells)).flatten(1)             # (B, G * cell_dim)
        # Unit RMS per frame: the channel's power normalisation then loses nothing.
        feature = feature / feature.pow(2).mean(-1, keepdim=True).add(1e-6).sqrt()
        return RVFNOutput(feature=feature, tokens=torch.cat([cells] + streams[1:], dim=1),
                          camera_logits=camera_logits)


_POLAR_DOPPLER_BINS = 16   # Doppler profile per range bin, max-pooled to this many channels


def _polar_rf_channels(c: RVFNConfig) -> int:
    return c.rf_in_channels - 1 + _POLAR_DOPPLER_BINS


def _polar_rf_input(rf: torch.Tensor) -> torch.Tensor:
    """
    (B, 2, H, W) [range-Doppler, range-angle] -> (B, 1 + 16, H, W) on the angle x range axes.

    Channel 0 of the RF features is Doppler x range, channel 1 angle x range (rf.py). The polar
    grid lives on angle x range, so the range-angle map stays an image and each range bin's
    Doppler profile (max-pooled to 16 bins, so any chirp count works) becomes 16 channels,
    repeated along the angle rows: every cell sees the radial speeds present at its range.
    """
    rd, ra = rf[:, :1], rf[:, 1:]
    prof = nn.functional.adaptive_max_pool2d(rd, (_POLAR_DOPPLER_BINS, rd.shape[-1]))
    prof = prof.transpose(1, 2).expand(-1, -1, ra.shape[-2], -1)   # (B, 16, H, W)
    return torch.cat((ra, prof), dim=1).contiguous()


class _PolarLift(nn.Module):
    """Camera columns -> polar cells (fixed pinhole geometry) and a post-fusion grid conv."""

    def __init__(self, c: RVFNConfig) -> None:
        super().__init__()
        from disac_ros.core.models.polar_grid import PolarGrid
        self.grid = PolarGrid(c.polar_grid[0], c.polar_grid[1], c.max_range_m)
        self.hfov_deg = c.camera_hfov_deg
        self.lift_mode = c.camera_lift
        self.shape = tuple(c.polar_grid)
        cols = c.vis_channels[-1]
        self.ray = nn.Sequential(nn.Linear(cols, c.dim), nn.GELU(), nn.Linear(c.dim, c.dim))
        # +1 input: "this cell is inside the camera's view" (lift weights sum to 1, else 0)
        self.ray_gate = nn.Linear(1, c.dim)
        self.range_emb = nn.Parameter(torch.randn(c.polar_grid[1], c.dim) * 0.02)
        self.conv = nn.Sequential(nn.Conv2d(c.dim, c.dim, 3, padding=1), _norm(c.dim), nn.GELU(),
                                  nn.Conv2d(c.dim, c.dim, 3, padding=1))
        self.class_head = (nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, NUM_OBJECT_CLASSES))
                           if c.camera_class_head else None)
        self._lift_cols = -1
        self.register_buffer('lift', torch.zeros(0), persistent=False)

    def camera(self, vis_net: 'ConvTokenizer', img: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(visual tokens (B, S_vis, D), per-cell camera-ray features (B, G, D), per-angle
        camera class logits (B, A, 4) or None)."""
        fmap = vis_net.feature_map(img)                                   # (B, C, h, w)
        tokens = vis_net.tokens(fmap)
        columns = fmap.amax(dim=2).transpose(1, 2)                        # (B, w, C)
        if self._lift_cols != columns.shape[1]:
            self.lift = self.grid.camera_lift(self.hfov_deg, columns.shape[1],
                                              self.lift_mode).to(fmap.device)
            self._lift_cols = columns.shape[1]
        lift = self.lift.to(columns.dtype)
        per_angle = lift @ self.ray(columns)                              # (B, A, D)
        logits = None if self.class_head is None else self.class_head(per_angle)
        seen = lift.sum(-1, keepdim=True)                                 # (A, 1)
        per_angle = per_angle + self.ray_gate(seen)
        a, r = self.shape
        ray = (per_angle[:, :, None, :] + self.range_emb).reshape(img.shape[0], a * r, -1)
        return tokens, ray, logits

    def refine(self, cells: torch.Tensor) -> torch.Tensor:
        """Residual 3x3 conv over the (angle, range) grid of fused cell tokens."""
        b, g, d = cells.shape
        x = cells.transpose(1, 2).reshape(b, d, *self.shape)
        x = x + self.conv(x)
        return x.reshape(b, d, g).transpose(1, 2)


class LocalDetector(nn.Module):
    """RVFN + set-prediction head: a device's own detector (objects in the device frame)."""

    def __init__(self, rvfn_config: RVFNConfig | None = None,
                 head_config: HeadConfig | None = None) -> None:
        super().__init__()
        rc = rvfn_config or RVFNConfig()
        hc = head_config or HeadConfig(dim=rc.dim)
        if hc.dim != rc.dim:
            from disac_ros.core.errors import ConfigError
            raise ConfigError('head.dim', f'must equal rvfn.dim={rc.dim}, got {hc.dim}')
        from disac_ros.core.errors import ConfigError
        if (hc.kind == 'grid') != (rc.layout == 'polar'):
            raise ConfigError('head.kind', "'grid' goes with rvfn.layout 'polar' (and 'set' "
                              f"with 'pooled'); got {hc.kind!r} with {rc.layout!r}")
        if hc.kind == 'grid' and (tuple(hc.polar_grid) != tuple(rc.polar_grid)
                                  or hc.max_range_m != rc.max_range_m):
            raise ConfigError('head.polar_grid', 'must match rvfn.polar_grid / max_range_m')
        self.config = (rc, hc)
        self.rvfn = RVFN(rc)
        self.head = build_head(hc)
        # Grid heads read the transmitted per-cell feature itself (not the wider fused tokens),
        # so what a device sends is exactly what its own detector needed.
        self.cell_in = nn.Linear(rc.cell_dim, hc.dim) if hc.kind == 'grid' else None
        self.cell_context = GridContext(hc) if hc.kind == 'grid' else None

    def forward(self, image: torch.Tensor | None,
                rf: torch.Tensor | None) -> tuple[RVFNOutput, SetPrediction]:
        """Fuse and detect: (RVFNOutput, SetPrediction in the device frame)."""
        fused = self.rvfn(image, rf)
        if isinstance(self.head, GridHead):
            return fused, self.detect_from_feature(fused.feature)
        return fused, self.head(fused.tokens)

    def detect_from_feature(self, feature: torch.Tensor) -> SetPrediction:
        """Grid head on a (possibly decoded) per-cell feature (B, G * cell_dim)."""
        if not isinstance(self.head, GridHead) or self.cell_in is None:
            raise ValueError('detect_from_feature needs a grid head (head.kind=grid)')
        cells = feature.float().view(feature.shape[0], self.head.grid.num_cells, -1)
        assert self.cell_context is not None
        return self.head(self.cell_context(self.cell_in(cells)))
