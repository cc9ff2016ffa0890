"""Wireless channel between a device and the aggregator: path loss, thermal noise, fading.

Exact model (all logs base 10; ``cfg`` is a :class:`~.config.ChannelConfig`):

* Log-distance path loss, with ``d`` clamped to ``cfg.min_distance_m``::

      PL(d)  [dB]  = PL(d0) + 10 n log10(d / d0)
      PL(d0) [dB]  = 20 log10(4 pi d0 f_c / c)     (free space at d0; 47.9 dB at 1 m, 5.9 GHz)

  Defaults: f_c = 5.9 GHz, d0 = 1 m, n = 2.7 (urban, between free space 2 and NLOS 3+).
* Thermal noise power over the bandwidth B with receiver noise figure NF::

      N [dBm] = -174 + 10 log10(B / 1 Hz) + NF     (defaults: B = 10 MHz, NF = 9 dB: -95 dBm)

* Link SNR from transmit power (default 23 dBm), or set directly by the caller::

      SNR(d) [dB] = P_t - PL(d) - N                (defaults: 16.1 dB at 100 m, 3.2 dB at 300 m)

* Baseband block model, one packet = L complex symbols ``x`` with mean |x|^2 = 1::

      y = a(d) h x + n,     n ~ CN(0, sigma^2 I_L)
      a(d)    = 10^(-(PL(d) - PL(d_ref)) / 20)           amplitude path gain relative to d_ref
      sigma^2 = a(d)^2 10^(-SNR / 10)
      h = 1 (AWGN)   or   h ~ CN(0, 1), one draw per packet (Rayleigh block fading)

  Units: amplitudes are expressed relative to the signal received at ``cfg.ref_distance_m``
  (default 100 m), which keeps every quantity within a few tens of dB of 1 in float32 (the
  physical received power, ~1e-12 mW, would not be). With the SNR derived from distance,
  sigma^2 = 1 / SNR(d_ref) is constant: fixed receiver noise while the signal falls with distance,
  as in the physical link. With the SNR set directly (SNR sweeps), sigma^2 is chosen so that the
  received signal-to-noise ratio E|a h x|^2 / E|n|^2 equals the set SNR exactly (on average over
  the fading, since E|h|^2 = 1).

What the receiver knows: ``y``, the distance ``d`` and the SNR (both reported in the packet's side
information) and this model's form. It does **not** know ``h``: there are no pilots and no
equaliser; the decoder must use (SNR, d) to undo the path loss ``a(d)`` and cope with the unknown
fading gain and phase (see ``semantic_codec.py``).

Symbols are real tensors of shape (B, L, 2) holding (I, Q), so every model stays real-valued and
autocast-friendly.
"""
from __future__ import annotations

from dataclasses import dataclass
import math

import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.config import ChannelConfig

SPEED_OF_LIGHT_MPS = 299_792_458.0
THERMAL_NOISE_DBM_PER_HZ = -174.0


def _as_batch(value: float | torch.Tensor, batch: int, name: str) -> torch.Tensor:
    """Broadcast a scalar or (B,) value to a float32 (B,) tensor; name the argument on error."""
    t = torch.as_tensor(value, dtype=torch.float32)
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ConfigError(name, f'expected a scalar or shape ({batch},), got {tuple(t.shape)}')
    if not bool(torch.isfinite(t).all()):
        raise ConfigError(name, 'must be finite')
    return t


def free_space_path_loss_db(distance_m: float, carrier_hz: float) -> float:
    """Friis free-space path loss 20 log10(4 pi d f / c) in dB."""
    return 20.0 * math.log10(4.0 * math.pi * distance_m * carrier_hz / SPEED_OF_LIGHT_MPS)


def path_loss_db(distance_m: float | torch.Tensor, cfg: ChannelConfig) -> torch.Tensor:
    """Log-distance path loss PL(d) in dB (tensor of the same shape as ``distance_m``)."""
    d = torch.as_tensor(distance_m, dtype=torch.float32).clamp_min(cfg.min_distance_m)
    pl0 = free_space_path_loss_db(cfg.d0_m, cfg.carrier_hz)
    return pl0 + 10.0 * cfg.path_loss_exponent * torch.log10(d / cfg.d0_m)


def noise_power_dbm(cfg: ChannelConfig) -> float:
    """Receiver thermal noise power N = -174 + 10 log10(B) + NF in dBm."""
    return THERMAL_NOISE_DBM_PER_HZ + 10.0 * math.log10(cfg.bandwidth_hz) + cfg.noise_figure_db


def snr_db_from_distance(distance_m: float | torch.Tensor, cfg: ChannelConfig) -> torch.Tensor:
    """Link SNR(d) = P_t - PL(d) - N in dB."""
    return cfg.tx_power_dbm - path_loss_db(distance_m, cfg) - noise_power_dbm(cfg)


def amplitude_gain(distance_m: float | torch.Tensor, cfg: ChannelConfig) -> torch.Tensor:
    """Amplitude path gain a(d) = 10^(-(PL(d) - PL(d_ref)) / 20), relative to ref_distance_m."""
    rel_db = path_loss_db(distance_m, cfg) - path_loss_db(cfg.ref_distance_m, cfg)
    return torch.pow(10.0, -rel_db / 20.0)


def power_normalize(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Scale each packet (B, L, 2) so its mean symbol power mean_l |x_l|^2 is exactly 1."""
    if x.dim() != 3 or x.shape[-1] != 2:
        raise ValueError(f'symbols must have shape (B, L, 2), got {tuple(x.shape)}')
    power = x.pow(2).sum(dim=-1).mean(dim=-1, keepdim=True)      # (B, 1)
    return x * torch.rsqrt(power + eps).unsqueeze(-1)


def complex_mul(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B, 2) complex gain times (B, L, 2) symbols, in (I, Q) real arithmetic."""
    hr, hi = h[:, 0:1], h[:, 1:2]
    xr, xi = x[..., 0], x[..., 1]
    return torch.stack((hr * xr - hi * xi, hr * xi + hi * xr), dim=-1)


@dataclass
class ChannelOutput:
    """One batch of packets after the channel."""

    y: torch.Tensor          # (B, L, 2) received samples
    snr_db: torch.Tensor     # (B,) SNR used (set or derived), known to the receiver
    distance_m: torch.Tensor  # (B,) distance, known to the receiver
    gain: torch.Tensor       # (B,) amplitude path gain a(d) (a function of distance)
    h: torch.Tensor          # (B, 2) fading gain (I, Q); (1, 0) for AWGN. Unknown to the receiver
    noise_var: torch.Tensor  # (B,) sigma^2 of the complex noise (E|n|^2 per symbol)


class WirelessChannel:
    """Apply path loss, block fading and AWGN to power-normalised symbols (see module doc)."""

    def __init__(self, cfg: ChannelConfig | None = None) -> None:
        self.cfg = cfg or ChannelConfig()

    def __call__(self, x: torch.Tensor, distance_m: float | torch.Tensor,
                 snr_db: float | torch.Tensor | None = None, fading: str | None = None,
                 generator: torch.Generator | None = None) -> ChannelOutput:
        """
        Send a batch of packets.

        :param x: (B, L, 2) symbols, normally power-normalised (mean |x|^2 = 1).
        :param distance_m: scalar or (B,) transmitter-receiver distance.
        :param snr_db: scalar or (B,) SNR to impose; None derives it from distance and P_t.
        :param fading: 'awgn' or 'rayleigh'; None uses ``cfg.fading``.
        :param generator: torch.Generator for the noise and fading draws (reproducibility).
        :return: ChannelOutput with the received samples and the side information.
        """
        if x.dim() != 3 or x.shape[-1] != 2:
            raise ValueError(f'x: symbols must have shape (B, L, 2), got {tuple(x.shape)}')
        fading = fading or self.cfg.fading
        if fading not in ('awgn', 'rayleigh'):
            raise ConfigError('fading', f"must be 'awgn' or 'rayleigh', got {fading!r}")
        batch = x.shape[0]
        dist = _as_batch(distance_m, batch, 'distance_m')
        if bool((dist <= 0).any()):
            raise ConfigError('distance_m', 'must be > 0')
        snr = (snr_db_from_distance(dist, self.cfg) if snr_db is None
               else _as_batch(snr_db, batch, 'snr_db'))
        gain = amplitude_gain(dist, self.cfg)
        noise_var = gain.pow(2) * torch.pow(10.0, -snr / 10.0)
        if fading == 'rayleigh':
            # CN(0, 1): each of I and Q has variance 1/2.
            h = torch.randn(batch, 2, generator=generator) * math.sqrt(0.5)
        else:
            h = torch.zeros(batch, 2)
            h[:, 0] = 1.0
        # Draws happen on the CPU generator, then move to x's device, so results do not depend
        # on where the model runs.
        like = dict(device=x.device, dtype=x.dtype)
        h = h.to(**like)
        noise = torch.randn(tuple(x.shape), generator=generator).to(**like)
        noise = noise * torch.sqrt(noise_var / 2.0).to(**like).view(batch, 1, 1)
        y = gain.to(**like).view(batch, 1, 1) * complex_mul(h, x) + noise
        return ChannelOutput(y=y, snr_db=snr, distance_m=dist, gain=gain, h=h,
                             noise_var=noise_var)
