"""Semantic encoder (device) and the MLP baseline decoder (receiver), plus receiver preprocessing.

Encoder: fused feature (B, F) -> MLP -> L complex symbols (B, L, 2), power-normalised per packet
to mean |x|^2 = 1. At 8 bits per real, L = 64 is 128 bytes per device per frame (budget: 512).

Receiver preprocessing shared by every decoder (:func:`receiver_inputs`):

* ``input_scaling='agc'``: blind automatic gain control ``y / rms(y)`` per packet. It needs no
  pilots and no knowledge of ``h``; it only keeps the decoder's input near unit scale whatever the
  path loss (which spans tens of dB). ``log10(rms(y))`` is passed on as an input, so nothing is
  lost: the decoder still sees how strong the packet arrived.
* ``input_scaling='agc_phase'``: AGC, then blind phase normalisation: the packet is rotated so
  that its own mean symbol is real and positive (no pilot; see :func:`receiver_inputs`). The
  unknown Rayleigh phase then no longer changes what the decoder sees; the gain's magnitude and
  the noise are still the decoder's to handle.
* ``input_scaling='none'``: the raw samples.

Side information known at the receiver, as features: ``snr_db / 10`` and
``log10(distance_m / 100 m)``. The decoder has to learn to undo the path loss and the unknown
fading gain/phase from these and from the samples themselves (no equaliser).
"""
from __future__ import annotations

import torch
from torch import nn

from disac_ros.core.models.channel import power_normalize
from disac_ros.core.models.config import EncoderConfig, MLPDecoderConfig

DISTANCE_NORM_M = 100.0   # side-info feature: log10(d / DISTANCE_NORM_M)
SNR_NORM_DB = 10.0        # side-info feature: snr_db / SNR_NORM_DB


def side_info_features(snr_db: torch.Tensor, distance_m: torch.Tensor) -> torch.Tensor:
    """(B,), (B,) -> (B, 2) features [snr_db / 10, log10(d / 100 m)]."""
    snr = torch.as_tensor(snr_db, dtype=torch.float32).reshape(-1)
    dist = torch.as_tensor(distance_m, dtype=torch.float32).reshape(-1).clamp_min(1e-3)
    if snr.shape != dist.shape:
        raise ValueError(f'snr_db {tuple(snr.shape)} and distance_m {tuple(dist.shape)} differ')
    return torch.stack((snr / SNR_NORM_DB, torch.log10(dist / DISTANCE_NORM_M)), dim=-1)


def receiver_inputs(y: torch.Tensor, scaling: str,
                    eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Scale received samples as configured.

    :param y: (B, L, 2) received samples.
    :param scaling: 'agc' or 'none'.
    :return: (scaled samples (B, L, 2), level feature (B, 1)); the level is log10 rms(y) for
        'agc' and zeros for 'none' (the raw samples already carry it).
    """
    if y.dim() != 3 or y.shape[-1] != 2:
        raise ValueError(f'y: received samples must have shape (B, L, 2), got {tuple(y.shape)}')
    y = y.float()
    if scaling == 'none':
        return y, y.new_zeros(y.shape[0], 1)
    if scaling not in ('agc', 'agc_phase'):
        raise ValueError(f"input_scaling must be 'agc', 'agc_phase' or 'none', got {scaling!r}")
    rms = y.pow(2).sum(-1).mean(-1, keepdim=True).add(eps).sqrt()    # (B, 1)
    ys = y / rms.unsqueeze(-1)
    if scaling == 'agc_phase':
        # Blind phase normalisation: rotate the packet so that its own mean symbol is real and
        # positive. No pilot: a fading phase rotates every symbol and the mean alike, so the
        # rotated packet does not depend on the phase of h; the encoder learns to give its code
        # a mean worth locking to (it is trained through this step).
        m = ys.mean(dim=1)                                               # (B, 2)
        mag = m.pow(2).sum(-1, keepdim=True).add(eps).sqrt()
        c, s = (m[:, :1] / mag)[:, None], (m[:, 1:] / mag)[:, None]      # (B, 1, 1)
        ys = torch.cat((c * ys[..., :1] + s * ys[..., 1:], c * ys[..., 1:] - s * ys[..., :1]),
                       dim=-1)
    return ys, torch.log10(rms)


class SemanticEncoder(nn.Module):
    """Fused feature (B, F) -> (B, L, 2) power-normalised channel symbols."""

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or EncoderConfig()
        c = self.config
        out = 2 * c.num_symbols
        if c.hidden == 0:
            self.net: nn.Module = nn.Linear(c.feature_dim, out)
        else:
            self.net = nn.Sequential(nn.Linear(c.feature_dim, c.hidden), nn.GELU(),
                                     nn.Linear(c.hidden, out))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B, L, 2) with mean |x|^2 = 1 per packet."""
        if feature.dim() != 2 or feature.shape[1] != self.config.feature_dim:
            raise ValueError(f'feature must have shape (B, {self.config.feature_dim}), '
                             f'got {tuple(feature.shape)}')
        x = self.net(feature.float()).view(feature.shape[0], self.config.num_symbols, 2)
        return power_normalize(x)


class MLPDecoder(nn.Module):
    """Baseline decoder: [scaled y, rx level, snr, log distance] -> MLP -> feature (B, F)."""

    def __init__(self, config: MLPDecoderConfig | None = None) -> None:
        super().__init__()
        self.config = config or MLPDecoderConfig()
        c = self.config
        in_dim = 2 * c.num_symbols + 1 + (2 if c.use_side_info else 0)
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(c.num_layers):
            layers += [nn.Linear(width, c.hidden), nn.LayerNorm(c.hidden), nn.GELU()]
            width = c.hidden
        layers.append(nn.Linear(width, c.feature_dim))
        self.net = nn.Sequential(*layers)
        self.skip = nn.Linear(2 * c.num_symbols, c.feature_dim, bias=False) \
            if c.linear_skip else None

    def forward(self, y: torch.Tensor, snr_db: torch.Tensor,
                distance_m: torch.Tensor) -> torch.Tensor:
        """(B, L, 2) received samples + (B,) SNR and distance -> (B, F) feature estimate."""
        if y.dim() != 3 or y.shape[1:] != (self.config.num_symbols, 2):
            raise ValueError(f'y must have shape (B, {self.config.num_symbols}, 2), '
                             f'got {tuple(y.shape)}')
        ys, level = receiver_inputs(y, self.config.input_scaling)
        parts = [ys.flatten(1), level]
        if self.config.use_side_info:
            parts.append(side_info_features(snr_db, distance_m).to(ys.device))
        out = self.net(torch.cat(parts, dim=-1))
        return out if self.skip is None else out + self.skip(ys.flatten(1))


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
