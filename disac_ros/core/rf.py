"""FMCW radar synthesis and processing in numpy: radar cube, range-Doppler/angle maps, features.

Signal model
------------
One TX at the radar origin and ``num_rx`` RX elements at body ``y_m = m * d`` (m = 0..M-1, a
uniform linear array along body +y; body x is boresight, z up). The IF signal is the transmitted
chirp times the conjugate of the received one, sampled with a complex (I/Q) ADC at ``fs``. For
scatterer ``p`` at 3D range ``R`` with range rate ``v`` (positive = receding) and direction cosine
``u = y_body / R`` along the array (``u = sin(azimuth)`` for a target at radar height; azimuth is
measured from boresight, positive to the left, toward body +y) the sample ``k`` of chirp ``n`` on
RX ``m`` is::

    x[m, n, k] = a_p * exp(j * (4 pi R / lambda                        # carrier phase
                                + 2 pi (2 S R / c + 2 v / lambda) k / fs  # beat (+ Doppler)
                                + 4 pi v n Tci / lambda                   # Doppler across chirps
                                - 2 pi d u m / lambda))                   # array phase
    a_p^2 = Pt G^2 lambda^2 sigma / ((4 pi)^3 max(R, 1 m)^4) * 10^(-extra_loss_db / 10)

in volts across a 1 ohm load (so ``|x|^2`` is watts), ``S = bandwidth / chirp_duration``,
``Tci`` the chirp interval, ``G`` the antenna gain (TX and each RX). The sum over scatterers is
separable per scatterer, so the cube is one matrix product of per-axis phasors (no per-sample
``exp``). Receiver noise is circular complex Gaussian with ``E|n|^2 = k T0 fs F`` (T0 = 290 K,
noise bandwidth = the complex sampling rate ``fs``, noise figure F).

Simplifications (documented on purpose):

* Range migration within a frame is ignored (a target at 25 m/s moves 3 cm in the default 1.28 ms
  frame, well inside a 0.5 m range bin); the residual video phase is dropped.
* The antenna is an ideal sector: full gain inside ``fov_deg`` (azimuth from body x/y), nothing
  outside. Elevation has no pattern; it only enters through the 3D range and ``u``.
* Scatterers at or beyond the max unambiguous range are dropped (the IF anti-alias filter of a
  real radar removes them); radial speeds beyond +-max_unambiguous_speed alias as they would.
* The radar equation is clamped at 1 m (near field) so a scatterer on top of the radar does not
  blow up; there is no multipath, clutter or TX-RX leakage unless the caller adds scatterers.

Processing
----------
``range_doppler_map``: Hann window and FFT over fast time (range) and slow time (Doppler), power
summed over RX, Doppler fft-shifted: row ``i`` is ``velocity_axis_mps(cfg)[i]``, column ``k``
is ``range_axis_m(cfg)[k]``.

``range_angle_map``: the range FFT, then an angle FFT over RX (rectangular window, zero-padded to
``Q`` bins, kernel ``exp(+j 2 pi m q / Q)`` so that targets to the left land on rows above the
centre), power summed over chirps, fft-shifted: row ``i`` is ``angle_axis_rad(Q)[i]``.

``radar_features`` (network input), float32 ``(2, num_chirps, num_samples)``::

    channel 0 = f(range_doppler_map(cube))
    channel 1 = f(range_angle_map(cube, num_angle_bins=num_chirps))
    f(P)      = 10 * log10(max(P / median(P), 0.1)) / 20

The median of each map is its noise floor (almost every bin is noise), so values are the
signal-to-floor ratio in units of 20 dB: noise sits near 0, the floor is clipped at -0.5
(-10 dB), a 40 dB target reads 2.0. The map is independent of the cube's absolute scale.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import numpy as np
from numpy.typing import ArrayLike

from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.rf_config import SPEED_OF_LIGHT_MPS
from disac_ros.core.rf_targets import CLASS_RCS_M2
from disac_ros.core.rf_targets import object_scatterers
from disac_ros.core.rf_targets import Scatterer

__all__ = [
    'CLASS_RCS_M2', 'FEATURE_CHANNELS', 'RadarConfig', 'Scatterer', 'angle_axis_rad',
    'expected_snr_db', 'feature_shape', 'in_rf_coverage', 'noise_std', 'object_scatterers',
    'radar_features', 'range_angle_map', 'range_axis_m', 'range_doppler_map', 'synthesize_cube',
    'velocity_axis_mps',
]

BOLTZMANN_J_PER_K = 1.380649e-23
REFERENCE_TEMPERATURE_K = 290.0
MIN_RANGE_M = 1.0            # radar-equation clamp (near field)
FEATURE_CHANNELS: tuple[str, ...] = ('range_doppler', 'range_angle')
_FEATURE_FLOOR = 0.1         # -10 dB below the median
_FEATURE_DB_SCALE = 20.0


def noise_std(cfg: RadarConfig) -> float:
    """Std of the complex receiver noise per sample in volts (1 ohm): sqrt(k T0 fs F)."""
    power_w = (BOLTZMANN_J_PER_K * REFERENCE_TEMPERATURE_K * cfg.sample_rate_hz
               * 10.0 ** (cfg.noise_figure_db / 10.0))
    return math.sqrt(power_w)


def _received_power_w(cfg: RadarConfig, range_m: np.ndarray, rcs_m2: np.ndarray,
                      extra_loss_db: np.ndarray) -> np.ndarray:
    """Radar equation per RX channel, monostatic, same gain for TX and RX antennas."""
    pt_w = 10.0 ** ((cfg.tx_power_dbm - 30.0) / 10.0)
    gain = 10.0 ** (cfg.antenna_gain_dbi / 10.0)
    r = np.maximum(range_m, MIN_RANGE_M)
    return (pt_w * gain * gain * cfg.wavelength_m ** 2 * rcs_m2 / ((4.0 * math.pi) ** 3 * r ** 4)
            * 10.0 ** (-extra_loss_db / 10.0))


@functools.lru_cache(maxsize=32)
def _hann(n: int) -> np.ndarray:
    """Symmetric Hann window as float32 (cached: sizes repeat every frame)."""
    w = np.hanning(n).astype(np.float32) if n > 1 else np.ones(1, np.float32)
    w.setflags(write=False)
    return w


def _window_gain(n: int) -> float:
    """Coherent processing gain of the window: (sum w)^2 / sum w^2 (n if rectangular)."""
    w = _hann(n).astype(np.float64)
    return float(w.sum() ** 2 / (w ** 2).sum())


def expected_snr_db(cfg: RadarConfig, range_m: float, rcs_m2: float,
                    extra_loss_db: float = 0.0) -> float:
    """
    Return the SNR (dB) of a point target at the peak of the range-Doppler map.

    Radar equation over ``k T0 fs F``, plus the coherent gain of the Hann-windowed range and
    Doppler FFTs, ``(sum w)^2 / sum w^2`` each. Valid for a target centred in its range and
    Doppler bins (off-bin straddle loss is up to ~1.4 dB per axis). It is the per-RX SNR; the
    RX-summed map has the same peak-to-floor ratio, and a coherent angle FFT adds
    ``10 log10(num_rx)``.
    """
    pr = float(_received_power_w(cfg, np.asarray(float(range_m)), np.asarray(float(rcs_m2)),
                                 np.asarray(float(extra_loss_db))))
    gain = _window_gain(cfg.num_samples) * _window_gain(cfg.num_chirps)
    return 10.0 * math.log10(pr * gain / noise_std(cfg) ** 2)


def _yaw_matrix(yaw: float) -> np.ndarray:
    """Columns are the body x, y, z axes in the world frame."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _to_body(radar_position: ArrayLike, radar_yaw: float, points: np.ndarray) -> np.ndarray:
    """World points (..., 3) -> radar body frame (..., 3)."""
    rel = np.asarray(points, dtype=np.float64) - np.asarray(radar_position, dtype=np.float64)
    return rel @ _yaw_matrix(radar_yaw)   # row-vector form of R^T @ rel


def in_rf_coverage(cfg: RadarConfig, radar_position: ArrayLike, radar_yaw: float,
                   target_position: ArrayLike) -> bool:
    """True when the target is within ``max_range_m`` (3D) and the azimuth field of view."""
    body = _to_body(radar_position, radar_yaw, np.asarray(target_position).reshape(3))
    if float(np.linalg.norm(body)) > cfg.max_range_m:
        return False
    return abs(math.degrees(math.atan2(body[1], body[0]))) <= 0.5 * cfg.fov_deg


def synthesize_cube(cfg: RadarConfig, radar_position: ArrayLike, radar_yaw: float,
                    scatterers: Sequence[Scatterer], rng: np.random.Generator, *,
                    radar_velocity: ArrayLike | None = None, noise: bool = True) -> np.ndarray:
    """
    Synthesize one frame: complex64 ``(num_rx, num_chirps, num_samples)``.

    Positions and velocities are world frame; ``radar_position`` (3,) and ``radar_yaw`` place the
    radar, ``radar_velocity`` (3,, default still) makes radial speeds relative for a moving
    platform. ``noise=False`` gives the noise-free cube (tests, debugging); the noise draw comes
    from ``rng`` only, so the same seed gives the same cube.
    """
    m_rx, n_ch, n_s = cfg.num_rx, cfg.num_chirps, cfg.num_samples
    cube = np.zeros((m_rx, n_ch, n_s), dtype=np.complex64)
    if scatterers:
        pos = np.array([s.position for s in scatterers])
        vel = np.array([s.velocity for s in scatterers])
        rcs = np.array([s.rcs_m2 for s in scatterers])
        loss = np.array([s.extra_loss_db for s in scatterers])
        if radar_velocity is not None:
            vel = vel - np.asarray(radar_velocity, dtype=np.float64).reshape(3)
        rot = _yaw_matrix(radar_yaw)
        body = (pos - np.asarray(radar_position, dtype=np.float64).reshape(3)) @ rot
        rng_m = np.linalg.norm(body, axis=1)
        azimuth = np.arctan2(body[:, 1], body[:, 0])
        keep = ((rng_m < cfg.max_unambiguous_range_m) & (rng_m > 0.0) & (rcs > 0.0)
                & (np.abs(azimuth) <= math.radians(0.5 * cfg.fov_deg)))
        if np.any(keep):
            cube += _scatterer_sum(cfg, body[keep], (vel[keep] @ rot), rng_m[keep], rcs[keep],
                                   loss[keep])
    if noise:
        draw = rng.standard_normal((2, m_rx, n_ch, n_s), dtype=np.float32)
        scale = np.float32(noise_std(cfg) / math.sqrt(2.0))
        cube.real += draw[0] * scale
        cube.imag += draw[1] * scale
    return cube


def _scatterer_sum(cfg: RadarConfig, body: np.ndarray, vel_body: np.ndarray,
                   rng_m: np.ndarray, rcs: np.ndarray, loss_db: np.ndarray) -> np.ndarray:
    """Noise-free cube of P in-coverage scatterers as one (M*Nc, P) @ (P, N) product."""
    lam = cfg.wavelength_m
    unit = body / rng_m[:, None]
    v_r = np.einsum('pi,pi->p', vel_body, unit)          # range rate, + receding
    amp = np.sqrt(_received_power_w(cfg, rng_m, rcs, loss_db))
    two_pi = 2.0 * math.pi
    # Per-sample phase step: beat frequency plus the Doppler shift within the chirp.
    fast = two_pi * (2.0 * cfg.slope_hz_per_s * rng_m / SPEED_OF_LIGHT_MPS + 2.0 * v_r / lam)
    fast /= cfg.sample_rate_hz
    slow = 2.0 * two_pi * v_r * cfg.chirp_interval_s / lam
    spatial = -two_pi * cfg.rx_spacing * unit[:, 1] / lam
    carrier = 2.0 * two_pi * rng_m / lam
    k = np.arange(cfg.num_samples)
    n = np.arange(cfg.num_chirps)
    m = np.arange(cfg.num_rx)
    range_ph = np.exp(1j * (carrier[:, None] + fast[:, None] * k))      # (P, N)
    doppler_ph = np.exp(1j * slow[:, None] * n)                          # (P, Nc)
    array_ph = amp[:, None] * np.exp(1j * spatial[:, None] * m)         # (P, M)
    slow_axes = (array_ph[:, :, None] * doppler_ph[:, None, :]).reshape(len(amp), -1)
    out = slow_axes.T.astype(np.complex64) @ range_ph.astype(np.complex64)
    return out.reshape(cfg.num_rx, cfg.num_chirps, cfg.num_samples)


def range_axis_m(cfg: RadarConfig) -> np.ndarray:
    """Range of each range bin (num_samples,), metres; bin k is beat frequency k * fs / N."""
    return np.arange(cfg.num_samples) * cfg.range_resolution_m


def velocity_axis_mps(cfg: RadarConfig) -> np.ndarray:
    """Range rate of each fft-shifted Doppler bin (num_chirps,), m/s, positive = receding."""
    return (np.arange(cfg.num_chirps) - cfg.num_chirps // 2) * cfg.velocity_resolution_mps


def angle_axis_rad(num_angle_bins: int, rx_spacing_wavelengths: float = 0.5) -> np.ndarray:
    """
    Azimuth of each fft-shifted angle bin (num_angle_bins,), radians, positive to the left.

    Bin ``i`` has ``sin(theta) = (i - Q // 2) / (Q * d / lambda)``; bins outside the visible
    region (possible when ``d > lambda / 2``) are NaN.
    """
    q = num_angle_bins
    sin_theta = (np.arange(q) - q // 2) / (q * rx_spacing_wavelengths)
    with np.errstate(invalid='ignore'):
        return np.where(np.abs(sin_theta) <= 1.0, np.arcsin(np.clip(sin_theta, -1, 1)), np.nan)


def _check_cube(cube: np.ndarray, cfg: RadarConfig) -> np.ndarray:
    """Return the cube as complex64; ValueError if its shape does not match cfg."""
    cube = np.asarray(cube)
    expected = (cfg.num_rx, cfg.num_chirps, cfg.num_samples)
    if cube.shape != expected:
        raise ValueError(f'cube: expected shape (num_rx, num_chirps, num_samples) = {expected}, '
                         f'got {cube.shape}')
    return cube.astype(np.complex64, copy=False)


def _range_fft(cube: np.ndarray) -> np.ndarray:
    """Hann-windowed FFT over fast time: (M, Nc, N) complex, column k = range bin k."""
    return np.fft.fft(cube * _hann(cube.shape[-1]), axis=-1)


def _rd_from_range(spec: np.ndarray) -> np.ndarray:
    """Hann-windowed Doppler FFT, power summed over RX, zero speed on row Nc // 2."""
    win = _hann(spec.shape[1])[None, :, None]
    rd = np.fft.fft(spec * win, axis=1)
    power = (rd.real ** 2 + rd.imag ** 2).sum(axis=0)
    return np.fft.fftshift(power, axes=0)


@functools.lru_cache(maxsize=32)
def _angle_kernel(num_angle_bins: int, num_rx: int) -> np.ndarray:
    """(Q, M) zero-padded angle DFT, rows already fft-shifted: exp(+j 2 pi m q / Q)."""
    q = np.arange(num_angle_bins) - num_angle_bins // 2
    kernel = np.exp(2j * np.pi * np.outer(q, np.arange(num_rx)) / num_angle_bins)
    kernel = kernel.astype(np.complex64)
    kernel.setflags(write=False)
    return kernel


def _ra_from_range(spec: np.ndarray, num_angle_bins: int) -> np.ndarray:
    """Angle power (Q, N) summed over chirps, boresight on row Q // 2."""
    # sum_n |A x_n|^2 = diag(A C A^H) with the per-range-bin RX covariance C = sum_n x_n x_n^H:
    # 3x faster than steering every chirp (and 8x faster than a zero-padded FFT over 4 RX).
    # The + sign in A maps positive u (target to the left) to rows above the centre.
    kernel = _angle_kernel(num_angle_bins, spec.shape[0])
    per_bin = spec.transpose(2, 0, 1)                              # (N, M, Nc)
    cov = per_bin @ per_bin.conj().transpose(0, 2, 1)              # (N, M, M)
    power = ((kernel @ cov) * kernel.conj()).sum(axis=-1).real     # (N, Q)
    return np.ascontiguousarray(power.T)


def range_doppler_map(cube: np.ndarray, cfg: RadarConfig) -> np.ndarray:
    """Power map (num_chirps, num_samples): Hann-windowed range/Doppler FFTs, summed over RX."""
    return _rd_from_range(_range_fft(_check_cube(cube, cfg)))


def range_angle_map(cube: np.ndarray, cfg: RadarConfig,
                    num_angle_bins: int | None = None) -> np.ndarray:
    """Power map (Q, num_samples), Q = num_angle_bins (default num_chirps), summed over chirps."""
    q = cfg.num_chirps if num_angle_bins is None else int(num_angle_bins)
    if q < cfg.num_rx:
        raise ValueError(f'num_angle_bins: must be >= num_rx = {cfg.num_rx}, got {q}')
    return _ra_from_range(_range_fft(_check_cube(cube, cfg)), q)


def feature_shape(cfg: RadarConfig) -> tuple[int, int, int]:
    """Shape (C_rf, H_rf, W_rf) of ``radar_features``."""
    return (len(FEATURE_CHANNELS), cfg.num_chirps, cfg.num_samples)


def _normalise(power: np.ndarray) -> np.ndarray:
    """Log power over the median (the noise floor) in units of 20 dB, floored at -10 dB."""
    floor = max(float(np.median(power)), float(np.finfo(np.float32).tiny))
    ratio = np.maximum(power / floor, _FEATURE_FLOOR)
    return (10.0 / _FEATURE_DB_SCALE) * np.log10(ratio)


def radar_features(cube: np.ndarray, cfg: RadarConfig) -> np.ndarray:
    """
    Network input float32 (2, num_chirps, num_samples): log range-Doppler and range-angle maps.

    See the module docstring for the exact definition; both maps share one range FFT.
    """
    spec = _range_fft(_check_cube(cube, cfg))
    out = np.empty(feature_shape(cfg), dtype=np.float32)
    out[0] = _normalise(_rd_from_range(spec))
    out[1] = _normalise(_ra_from_range(spec, cfg.num_chirps))
    return out
