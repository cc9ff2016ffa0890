"""Bring a device's own camera and radar to the sensors a model was trained on (ROS-free).

A model's networks learned one camera (image size, field of view) and one radar waveform
(0.5 m range bins, 32 chirps, 4 RX at half a wavelength, ...). A device with other sensors would
feed them objects at another pixel scale and RF maps whose rows and columns mean other ranges,
speeds and angles: on ``config/scenarios/intersection_small.yaml`` (a 96 x 72 camera with a 50
degree field of view and a 16-chirp radar) that cost the shipped model 0.2 of its accuracy.
What each sensor measures is known on the device (``sensor_msgs/CameraInfo``, the waveform in
``disac_interfaces/RfFrame``), so the device resamples both before its network:

* :func:`resample_image`: the pinhole image re-projected into the model's camera (same optical
  centre and axis: a scale and a shift; bilinear, edges replicated where the device's view is
  narrower, area-averaged first when the device's image is finer).
* :func:`resampled_radar_features`: the feature maps of :func:`disac_ros.core.rf.radar_features`
  evaluated on the model's range, Doppler and angle axes: each axis is a DFT of the device's
  samples at the frequencies where the model's bins lie (their physical range, radial speed,
  direction cosine), instead of the device's own FFT bins, from no more sweep bandwidth, frame
  time and array length than the model's radar had (:func:`apertures`), so that a finer radar's
  peaks are as wide as those the network learned. Ranges beyond the device's unambiguous range
  read as noise floor. With the model's own waveform it is the FFT exactly.

Neither can add what a sensor does not measure (a coarser range resolution stays coarse, fewer
chirps give less gain); both make what it does measure land where the network expects it.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import math
from typing import Any, Mapping

import numpy as np
import torch

from disac_ros.core.errors import ConfigError
from disac_ros.core.rf import _hann, _normalise, radar_features
from disac_ros.core.rf_config import RadarConfig

# Fields of RadarConfig that change the feature maps (the others are link budget and coverage).
WAVEFORM_FIELDS = ('carrier_frequency_hz', 'bandwidth_hz', 'num_samples', 'num_chirps', 'num_rx',
                   'sample_rate_hz', 'chirp_duration_s', 'chirp_interval_s')


@dataclass(frozen=True)
class CameraModel:
    """A pinhole camera: image size and intrinsics (pixel centres at integer coordinates)."""

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float

    def __post_init__(self) -> None:
        for name in ('width', 'height'):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f'camera.{name}', f'must be a positive integer, got {v!r}')
        for name in ('fx', 'fy', 'cx', 'cy'):
            v = getattr(self, name)
            if not math.isfinite(float(v)):
                raise ConfigError(f'camera.{name}', f'must be finite, got {v!r}')
        if self.fx <= 0 or self.fy <= 0:
            raise ConfigError('camera.fx', f'focal lengths must be > 0, got {self.fx}, {self.fy}')

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float) -> 'CameraModel':
        """Square pixels, centred principal point, ``fov_deg`` the *vertical* field of view
        (the scenario convention, :func:`disac_ros.core.geometry.intrinsics`)."""
        if not 0.0 < float(fov_deg) < 180.0:
            raise ConfigError('camera.fov_deg', f'must be in (0, 180), got {fov_deg!r}')
        f = 0.5 * height / math.tan(math.radians(0.5 * float(fov_deg)))
        return cls(int(width), int(height), f, f, 0.5 * (width - 1), 0.5 * (height - 1))

    @classmethod
    def from_k(cls, k: Any, width: int, height: int) -> 'CameraModel':
        """From a 3 x 3 K (OpenCV / CameraInfo convention) and the image size."""
        m = np.asarray(k, dtype=np.float64).reshape(3, 3)
        return cls(int(width), int(height), float(m[0, 0]), float(m[1, 1]), float(m[0, 2]),
                   float(m[1, 2]))

    @property
    def hfov_deg(self) -> float:
        """Horizontal field of view (principal point centred)."""
        return math.degrees(2.0 * math.atan(0.5 * self.width / self.fx))

    def same_as(self, other: 'CameraModel', tol: float = 1e-3) -> bool:
        """True when resampling would change nothing (same size, intrinsics within ``tol`` px)."""
        return (self.width == other.width and self.height == other.height
                and all(abs(a - b) <= tol for a, b in ((self.fx, other.fx), (self.fy, other.fy),
                                                      (self.cx, other.cx), (self.cy, other.cy))))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly fields."""
        return {'width': self.width, 'height': self.height, 'fx': self.fx, 'fy': self.fy,
                'cx': self.cx, 'cy': self.cy}


@dataclass(frozen=True)
class SensorSpec:
    """The camera and radar a model was trained with (what devices resample to)."""

    camera: CameraModel
    radar: RadarConfig

    def to_dict(self) -> dict[str, Any]:
        """The ``sensors`` entry of ``model.json``."""
        return {'camera': self.camera.to_dict(), 'radar': self.radar.to_dict()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = 'sensors') -> 'SensorSpec':
        """Inverse of :meth:`to_dict` (``camera`` may instead give width, height, fov_deg)."""
        try:
            cam = dict(d['camera'])
            camera = (CameraModel.from_fov(int(cam['width']), int(cam['height']),
                                           float(cam['fov_deg']))
                      if 'fov_deg' in cam else
                      CameraModel(int(cam['width']), int(cam['height']), float(cam['fx']),
                                  float(cam['fy']), float(cam['cx']), float(cam['cy'])))
            radar = RadarConfig.from_dict(dict(d['radar']), f'{where}.radar')
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(where, f'expected camera {{width, height, fov_deg | fx, fy, cx, '
                                     f'cy}} and radar {{RadarConfig fields}}: {exc!r}') from None
        return cls(camera, radar)


def default_sensors(hfov_deg: float = 60.0) -> SensorSpec:
    """What every model so far was trained on: a 128 x 128 camera with ``hfov_deg`` (square
    images: the same vertically) and the default radar (``RadarConfig()``)."""
    return SensorSpec(CameraModel.from_fov(128, 128, hfov_deg), RadarConfig())


def sensors_of_manifest(manifest: Mapping[str, Any]) -> SensorSpec:
    """The sensors of a dataset folder (its manifest's scenario camera and radar)."""
    return SensorSpec.from_dict({'camera': manifest['scenario']['camera'],
                                 'radar': manifest['radar']}, 'manifest')


def sensors_of_model_json(model: Mapping[str, Any], hfov_deg: float = 60.0,
                          where: str = 'model.json') -> SensorSpec:
    """A parsed ``model.json``'s ``sensors`` entry, else :func:`default_sensors` (``hfov_deg``:
    the recipe's ``rvfn.camera_hfov_deg``)."""
    if isinstance(model, Mapping) and 'sensors' in model:
        return SensorSpec.from_dict(model['sensors'], f'{where}: sensors')
    return default_sensors(hfov_deg)


# ---- camera -------------------------------------------------------------------------------------

def resample_image(image: np.ndarray, source: CameraModel, target: CameraModel) -> np.ndarray:
    """
    Re-project an (H, W, 3) uint8 image of ``source`` into ``target`` (same optical centre).

    A target pixel (u, v) sees the ray ((u - cx) / fx, (v - cy) / fy); the source pixel on that
    ray is read bilinearly. Rays outside the source's view repeat its nearest edge pixel (the
    sky above, the road below), which the network has seen at the image borders. When the
    source is finer than the target (more pixels per radian), it is area-averaged down first so
    that thin objects are not lost between samples.
    """
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ConfigError('image', f'expected (H, W, 3) uint8, got {a.dtype} {a.shape}')
    if a.shape[0] != source.height or a.shape[1] != source.width:
        raise ConfigError('image', f'{a.shape[1]}x{a.shape[0]} pixels, but its camera model says '
                                   f'{source.width}x{source.height}')
    if source.same_as(target):
        return a
    x = torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1)[None].float()
    src = source
    ratio = min(src.fx / target.fx, src.fy / target.fy)
    if ratio > 1.5:       # pre-shrink: bilinear sampling alone would alias
        h = max(1, round(src.height / ratio))
        w = max(1, round(src.width / ratio))
        x = torch.nn.functional.interpolate(x, size=(h, w), mode='area')
        sx, sy = w / src.width, h / src.height
        src = CameraModel(w, h, src.fx * sx, src.fy * sy, (src.cx + 0.5) * sx - 0.5,
                          (src.cy + 0.5) * sy - 0.5)
    u = (torch.arange(target.width, dtype=torch.float64) - target.cx) / target.fx
    v = (torch.arange(target.height, dtype=torch.float64) - target.cy) / target.fy
    su = u * src.fx + src.cx                     # source pixel coordinates
    sv = v * src.fy + src.cy
    gx = (2.0 * su / max(src.width - 1, 1) - 1.0).float()
    gy = (2.0 * sv / max(src.height - 1, 1) - 1.0).float()
    grid = torch.stack(torch.meshgrid(gy, gx, indexing='ij')[::-1], dim=-1)[None]
    out = torch.nn.functional.grid_sample(x, grid, mode='bilinear', padding_mode='border',
                                          align_corners=True)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


# ---- radar --------------------------------------------------------------------------------------

def same_waveform(a: RadarConfig, b: RadarConfig) -> bool:
    """True when ``a`` and ``b`` give feature maps on the same axes."""
    return (all(getattr(a, f) == getattr(b, f) for f in WAVEFORM_FIELDS)
            and math.isclose(a.rx_spacing / a.wavelength_m, b.rx_spacing / b.wavelength_m,
                             rel_tol=1e-6))     # RfFrame carries the spacing as float32


def apertures(source: RadarConfig, target: RadarConfig) -> tuple[int, int, int]:
    """(samples, chirps, rx elements) of ``source`` to use: no more sweep bandwidth, frame time
    and array length than ``target`` has, so that a finer radar's peaks are as wide as the ones
    the network learned (a coarser one uses everything it has)."""
    per_sample_hz = source.slope_hz_per_s / source.sample_rate_hz
    target_bw = target.slope_hz_per_s * target.num_samples / target.sample_rate_hz
    samples = min(source.num_samples, max(4, round(target_bw / per_sample_hz)))
    frame_s = target.num_chirps * target.chirp_interval_s
    chirps = min(source.num_chirps, max(2, round(frame_s / source.chirp_interval_s)))
    target_len = target.num_rx * target.rx_spacing / target.wavelength_m        # wavelengths
    rx = min(source.num_rx, max(1, round(target_len / (source.rx_spacing / source.wavelength_m))))
    return samples, chirps, rx


@functools.lru_cache(maxsize=16)
def _kernels(source: RadarConfig, target: RadarConfig
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(range DFT (N_use, N_t), Doppler DFT (Nc_use, Nc_t), angle steering (Q_t, M_use),
    valid range columns (N_t,) bool) from the source's samples (the first ``apertures`` of each
    axis) to the target's axes."""
    n_use, c_use, m_use = apertures(source, target)
    # Range: target bin j lies at j * dr_t metres = fractional source bin j * dr_t / dr_src.
    ranges = np.arange(target.num_samples) * target.range_resolution_m
    k_src = ranges / source.range_resolution_m
    valid = k_src < source.num_samples - 0.5
    n = np.arange(n_use)
    win = _hann(n_use).astype(np.float64)
    rng = win[:, None] * np.exp(-2j * np.pi * np.outer(n, k_src) / source.num_samples)
    # Doppler: target row i is radial speed v_i; on the source it turns 2 v Tci / lambda cycles
    # per chirp (aliasing beyond the source's unambiguous speed, as the source itself would).
    speeds = (np.arange(target.num_chirps) - target.num_chirps // 2) * target.velocity_resolution_mps
    cycles = 2.0 * speeds * source.chirp_interval_s / source.wavelength_m
    c = np.arange(c_use)
    wd = _hann(c_use).astype(np.float64)
    dop = wd[:, None] * np.exp(-2j * np.pi * np.outer(c, cycles))
    # Angle: target row q is direction cosine u_q; element m of the source array sees
    # exp(-j 2 pi d u m / lambda), so steering with the + sign (rf._angle_kernel's convention).
    q = target.num_chirps
    u = (np.arange(q) - q // 2) / (q * target.rx_spacing / target.wavelength_m)
    m = np.arange(m_use)
    ang = np.exp(2j * np.pi * np.outer(u, m) * source.rx_spacing / source.wavelength_m)
    out = (rng.astype(np.complex64), dop.astype(np.complex64), ang.astype(np.complex64), valid)
    for arr in out:
        arr.setflags(write=False)
    return out


def resampled_radar_features(cube: np.ndarray, source: RadarConfig,
                             target: RadarConfig) -> np.ndarray:
    """
    ``radar_features`` of a ``source`` cube on the axes of ``target``: float32
    (2, target.num_chirps, target.num_samples). The model's own waveform takes the FFT path
    (bit-identical to :func:`~disac_ros.core.rf.radar_features`).
    """
    c = np.asarray(cube)
    expected = (source.num_rx, source.num_chirps, source.num_samples)
    if c.shape != expected:
        raise ConfigError('rf', f'cube {c.shape} does not match its waveform (rx, chirps, '
                                f'samples) = {expected}')
    if same_waveform(source, target):
        return radar_features(c, source)
    rng, dop, ang, valid = _kernels(source, target)
    c = c[:ang.shape[1], :dop.shape[0], :rng.shape[0]].astype(np.complex64, copy=False)
    spec = c @ rng                                                   # (M, Nc_use, N_t)
    rd = np.einsum('mcn,ci->min', spec, dop)                         # (M, Nc_t, N_t)
    rd_power = (rd.real ** 2 + rd.imag ** 2).sum(axis=0)
    per_bin = spec.transpose(2, 0, 1)                                # (N_t, M, Nc_src)
    cov = per_bin @ per_bin.conj().transpose(0, 2, 1)                # (N_t, M, M)
    ra_power = np.ascontiguousarray(((ang @ cov) * ang.conj()).sum(axis=-1).real.T)  # (Q, N_t)
    out = np.zeros((2, target.num_chirps, target.num_samples), dtype=np.float32)
    for ch, power in enumerate((rd_power, ra_power)):
        out[ch][:, valid] = _normalise(power[:, valid])   # beyond the source's range: the floor
    return out



def sensors_of_model(model_dir: Any, hfov_deg: float = 60.0) -> SensorSpec:
    """:func:`sensors_of_model_json` of a model folder (no ``model.json``: the defaults)."""
    import json
    from pathlib import Path
    p = Path(model_dir) / 'model.json'
    try:
        model = json.loads(p.read_text()) if p.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(str(p), f'unreadable ({exc})') from None
    return sensors_of_model_json(model, hfov_deg, str(p))
