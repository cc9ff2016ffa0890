"""Emulated wireless link between a sensing device and the aggregator (simulation only).

One :class:`LinkEmulator` serves every device. For each packet (a quantised block of channel
symbols, see :mod:`disac_ros.core.packet`) :meth:`LinkEmulator.transmit`:

1. computes the transmitter-receiver distance from the device position and ``aggregator_xy``;
2. sets the SNR: from the log-distance path-loss model of :mod:`~disac_ros.core.models.channel`
   (``snr_mode='distance'``) or a fixed value (``'fixed'``);
3. drops the packet with probability ``loss_probability`` (fixed) combined with an SNR-dependent
   probability ``1 / (1 + exp((snr - loss_snr_midpoint_db) / loss_snr_width_db))`` (a logistic
   "waterfall" of a real modem; off when ``loss_snr_width_db`` is 0);
4. enforces the bandwidth cap with a token bucket per device (``bandwidth_bps`` refills,
   ``bucket_bytes`` deep): a packet that finds too few tokens is dropped, never queued, so a slow
   link cannot build a backlog;
5. applies the channel to the dequantised symbols: ``y = a(d) h x + n`` (``fading`` 'rayleigh',
   'awgn', or 'none' to pass the symbols through untouched) exactly as the models were trained
   (:class:`~disac_ros.core.models.channel.WirelessChannel`), then re-quantises ``y`` with
   ``bits`` bits (the receiver's ADC; 0 keeps the sender's bit width);
6. schedules delivery after ``delay_s`` plus a half-normal jitter of scale ``jitter_s`` (packets
   can overtake each other, as on a real multi-path network).

The outcome carries what a receiver knows: the SNR and the distance. Every random draw comes from
a per-device ``numpy.random.Generator`` seeded from (seed, device id), so a run is reproducible
whatever the interleaving of devices.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
import math
from typing import Any, Mapping
import zlib

import numpy as np
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.models.channel import WirelessChannel, snr_db_from_distance
from disac_ros.core.models.config import ChannelConfig
from disac_ros.core.packet import QuantizedPayload, dequantize, quantize

FADINGS = ('rayleigh', 'awgn', 'none')
SNR_MODES = ('distance', 'fixed')
DROP_REASONS = ('loss', 'snr', 'bandwidth')


@dataclass(frozen=True)
class LinkConfig:
    """Link emulation parameters (SI units); validated on construction, errors name the field."""

    fading: str = 'rayleigh'            # 'rayleigh' | 'awgn' | 'none' (symbols pass unchanged)
    snr_mode: str = 'distance'          # 'distance': path-loss model; 'fixed': fixed_snr_db
    fixed_snr_db: float = 15.0
    loss_probability: float = 0.0       # fixed packet loss probability
    loss_snr_midpoint_db: float = 0.0   # SNR at which the SNR-dependent loss is 50 %
    loss_snr_width_db: float = 0.0      # logistic width; 0 disables SNR-dependent loss
    delay_s: float = 0.005              # fixed one-way delay
    jitter_s: float = 0.0               # scale of the half-normal extra delay
    bandwidth_bps: float = 0.0          # token-bucket rate in bits/s; 0 = unlimited
    bucket_bytes: int = 4096            # token-bucket depth (burst size)
    bits: int = 8                       # re-quantisation bits after the channel; 0 = sender's
    aggregator_xy: tuple[float, float] = (0.0, 0.0)
    channel: ChannelConfig = field(default_factory=ChannelConfig)

    def __post_init__(self) -> None:
        """Validate every field."""
        if self.fading not in FADINGS:
            raise ConfigError('link.fading', f'expected one of {", ".join(FADINGS)}, got {self.fading!r}')
        if self.snr_mode not in SNR_MODES:
            raise ConfigError('link.snr_mode', f'expected one of {", ".join(SNR_MODES)}, got {self.snr_mode!r}')
        for name in ('fixed_snr_db', 'loss_snr_midpoint_db'):
            _finite(name, getattr(self, name))
        for name in ('loss_snr_width_db', 'delay_s', 'jitter_s', 'bandwidth_bps'):
            v = _finite(name, getattr(self, name))
            if v < 0:
                raise ConfigError(f'link.{name}', f'must be >= 0, got {v}')
        p = _finite('loss_probability', self.loss_probability)
        if not 0.0 <= p <= 1.0:
            raise ConfigError('link.loss_probability', f'must be in [0, 1], got {p}')
        if isinstance(self.bucket_bytes, bool) or not isinstance(self.bucket_bytes, int) or self.bucket_bytes < 1:
            raise ConfigError('link.bucket_bytes', f'must be an integer >= 1, got {self.bucket_bytes!r}')
        if isinstance(self.bits, bool) or not isinstance(self.bits, int) or not 0 <= self.bits <= 8 \
                or self.bits == 1:
            raise ConfigError('link.bits', f'must be 0 (keep) or an integer in 2..8, got {self.bits!r}')
        if len(self.aggregator_xy) != 2:
            raise ConfigError('link.aggregator_xy', f'expected [x, y], got {self.aggregator_xy!r}')
        for v in self.aggregator_xy:
            _finite('aggregator_xy', v)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> 'LinkConfig':
        """Build from a mapping (e.g. node parameters); unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ConfigError(f'link.{key}', f'unknown key; expected one of {", ".join(sorted(known))}')
        d = dict(data)
        if 'aggregator_xy' in d:
            d['aggregator_xy'] = tuple(float(v) for v in d['aggregator_xy'])
        if isinstance(d.get('channel'), Mapping):
            d['channel'] = ChannelConfig.from_dict(d['channel'], 'link.channel.')
        return cls(**d)


def _finite(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f'link.{name}', f'must be a finite number, got {value!r}')
    return float(value)


@dataclass(frozen=True)
class LinkOutcome:
    """What happened to one packet."""

    delivered: bool
    reason: str                         # '' when delivered, else one of DROP_REASONS
    snr_db: float                       # what the receiver knows (also for dropped packets)
    distance_m: float
    deliver_at_s: float                 # send time + delay + jitter (meaningful when delivered)
    payload: QuantizedPayload | None    # the received, re-quantised payload


@dataclass
class _DeviceState:
    rng: np.random.Generator
    tokens: float
    last_refill_s: float | None = None


class LinkEmulator:
    """Per-device seeded link emulation (see the module docstring)."""

    def __init__(self, config: LinkConfig | None = None, seed: int = 0) -> None:
        self.config = config or LinkConfig()
        self.seed = int(seed)
        self._channel = WirelessChannel(self.config.channel)
        self._devices: dict[str, _DeviceState] = {}

    def _state(self, device_id: str) -> _DeviceState:
        st = self._devices.get(device_id)
        if st is None:
            key = zlib.crc32(device_id.encode('utf-8'))
            st = _DeviceState(rng=np.random.default_rng([self.seed, key]),
                              tokens=float(self.config.bucket_bytes))
            self._devices[device_id] = st
        return st

    def distance_m(self, device_xy: Any) -> float:
        """Planar distance from the device to the aggregator, clamped to the model's minimum."""
        xy = np.asarray(device_xy, dtype=np.float64).reshape(-1)[:2]
        if xy.shape != (2,) or not np.all(np.isfinite(xy)):
            raise ConfigError('device_xy', f'expected a finite (x, y), got {device_xy!r}')
        d = float(np.hypot(*(xy - np.asarray(self.config.aggregator_xy))))
        return max(d, self.config.channel.min_distance_m)

    def snr_db(self, distance_m: float) -> float:
        """The link SNR for a distance (path-loss model) or the fixed SNR."""
        if self.config.snr_mode == 'fixed':
            return float(self.config.fixed_snr_db)
        return float(snr_db_from_distance(distance_m, self.config.channel))

    def loss_probability(self, snr_db: float) -> float:
        """Total loss probability at ``snr_db``: fixed loss combined with the SNR waterfall."""
        c = self.config
        p_snr = 0.0
        if c.loss_snr_width_db > 0:
            z = (snr_db - c.loss_snr_midpoint_db) / c.loss_snr_width_db
            p_snr = 1.0 / (1.0 + math.exp(min(z, 700.0)))
        return 1.0 - (1.0 - c.loss_probability) * (1.0 - p_snr)

    def transmit(self, device_id: str, payload: QuantizedPayload, device_xy: Any,
                 now_s: float) -> LinkOutcome:
        """Send one packet at time ``now_s`` (seconds, any monotonic clock)."""
        c = self.config
        st = self._state(device_id)
        dist = self.distance_m(device_xy)
        snr = self.snr_db(dist)
        # Draw the loss first, with a fixed number of draws per packet, so a change in one
        # mechanism does not reshuffle the others' random streams.
        u_loss, u_snr = st.rng.random(2)
        if u_loss < c.loss_probability:
            return LinkOutcome(False, 'loss', snr, dist, math.nan, None)
        p_total = self.loss_probability(snr)
        p_snr = 0.0 if c.loss_probability >= 1 else 1.0 - (1.0 - p_total) / (1.0 - c.loss_probability)
        if u_snr < p_snr:
            return LinkOutcome(False, 'snr', snr, dist, math.nan, None)
        if c.bandwidth_bps > 0:
            if st.last_refill_s is not None:
                st.tokens = min(float(c.bucket_bytes),
                                st.tokens + max(0.0, now_s - st.last_refill_s) * c.bandwidth_bps / 8.0)
            st.last_refill_s = now_s
            size = len(payload.payload)
            if size > st.tokens:
                return LinkOutcome(False, 'bandwidth', snr, dist, math.nan, None)
            st.tokens -= size
        received = self._apply_channel(payload, dist, snr, st.rng)
        extra = abs(float(st.rng.normal(0.0, c.jitter_s))) if c.jitter_s > 0 else 0.0
        return LinkOutcome(True, '', snr, dist, now_s + c.delay_s + extra, received)

    def _apply_channel(self, payload: QuantizedPayload, dist: float, snr: float,
                       rng: np.random.Generator) -> QuantizedPayload:
        if self.config.fading == 'none':
            return payload
        x = dequantize(payload)
        if x.ndim != 2 or x.shape[1] != 2:
            raise ConfigError('payload.shape', f'expected (L, 2) I/Q symbols, got {x.shape}')
        gen = torch.Generator().manual_seed(int(rng.integers(0, 2 ** 63 - 1)))
        out = self._channel(torch.from_numpy(x)[None], dist, snr, fading=self.config.fading, generator=gen)
        y = out.y[0].numpy().astype(np.float64)
        return quantize(y, self.config.bits or payload.bits)
