"""Resampling a device's own camera and radar to a model's sensors (disac_ros.core.sensor_adapt)."""
import dataclasses
import math

import numpy as np
import pytest

from disac_ros.core import rf, sensor_adapt as sa
from disac_ros.core.errors import ConfigError
from disac_ros.core.rf_config import RadarConfig

MODEL_RADAR = RadarConfig()


def point_cube(cfg: RadarConfig, range_m: float, azimuth_deg: float, speed_mps: float,
               seed: int = 0) -> np.ndarray:
    """One strong point target at radar height (receding at speed_mps), with receiver noise."""
    az = math.radians(azimuth_deg)
    pos = np.array([range_m * math.cos(az), range_m * math.sin(az), 0.0])
    vel = pos / np.linalg.norm(pos) * speed_mps
    return rf.synthesize_cube(cfg, np.zeros(3), 0.0, [rf.Scatterer(pos, vel, 50.0)],
                              np.random.default_rng(seed))


def peak(feature_map: np.ndarray) -> tuple[int, int]:
    return tuple(int(v) for v in np.unravel_index(np.argmax(feature_map), feature_map.shape))


def test_the_models_own_waveform_is_the_fft_bit_for_bit():
    cube = point_cube(MODEL_RADAR, 20.0, 15.0, 4.0)
    np.testing.assert_array_equal(sa.resampled_radar_features(cube, MODEL_RADAR, MODEL_RADAR),
                                  rf.radar_features(cube, MODEL_RADAR))
    # Link-budget fields do not change the axes.
    assert sa.same_waveform(MODEL_RADAR, dataclasses.replace(MODEL_RADAR, tx_power_dbm=3.0,
                                                             max_range_m=40.0, fov_deg=90.0))


def test_the_dft_path_on_the_models_own_axes_equals_the_fft(monkeypatch):
    cube = point_cube(MODEL_RADAR, 33.0, -25.0, -6.0, seed=3)
    monkeypatch.setattr(sa, 'same_waveform', lambda a, b: False)
    np.testing.assert_allclose(sa.resampled_radar_features(cube, MODEL_RADAR, MODEL_RADAR),
                               rf.radar_features(cube, MODEL_RADAR), atol=1e-4)


@pytest.mark.parametrize('other', [
    dataclasses.replace(MODEL_RADAR, num_chirps=16),                             # intersection_small
    dataclasses.replace(MODEL_RADAR, num_samples=256, sample_rate_hz=10e6),      # 0.25 m bins
    dataclasses.replace(MODEL_RADAR, num_chirps=64, chirp_interval_s=30e-6, num_rx=8),
])
def test_a_target_lands_in_the_models_bins_whatever_the_waveform(other):
    want = rf.radar_features(point_cube(MODEL_RADAR, 24.0, 20.0, 5.0), MODEL_RADAR)
    got = sa.resampled_radar_features(point_cube(other, 24.0, 20.0, 5.0), other, MODEL_RADAR)
    assert got.shape == want.shape == (2, 32, 128)
    for ch in (0, 1):       # range-Doppler, range-angle: the same peak within one bin
        (r0, c0), (r1, c1) = peak(want[ch]), peak(got[ch])
        assert abs(r0 - r1) <= 1 and abs(c0 - c1) <= 1, (ch, (r0, c0), (r1, c1))
    # Fed as they are, the 16-chirp maps would have half the rows: another angle per row.
    if other.num_chirps == 16:
        assert rf.radar_features(point_cube(other, 24.0, 20.0, 5.0), other).shape == (2, 16, 128)


def _half_power_cells(feature_map: np.ndarray) -> int:
    return int((feature_map > feature_map.max() - 3.0 / 20.0).sum())     # within 3 dB of the peak


def test_a_finer_radar_uses_only_the_models_aperture_so_peaks_are_as_wide():
    fine = dataclasses.replace(MODEL_RADAR, num_samples=256, sample_rate_hz=10e6,
                               bandwidth_hz=600e6, num_rx=8, num_chirps=64)   # 2x on every axis
    assert sa.apertures(fine, MODEL_RADAR) == (128, 32, 4)
    assert sa.apertures(dataclasses.replace(MODEL_RADAR, num_chirps=16), MODEL_RADAR) == (128, 16, 4)
    want = rf.radar_features(point_cube(MODEL_RADAR, 30.0, -10.0, 3.0), MODEL_RADAR)
    got = sa.resampled_radar_features(point_cube(fine, 30.0, -10.0, 3.0), fine, MODEL_RADAR)
    for ch in (0, 1):
        assert abs(_half_power_cells(got[ch]) - _half_power_cells(want[ch])) <= 2, ch


def test_ranges_beyond_the_devices_unambiguous_range_read_as_the_noise_floor():
    short = dataclasses.replace(MODEL_RADAR, num_samples=64, sample_rate_hz=2.5e6,
                                max_range_m=30.0)                     # 0.5 m bins up to 32 m
    got = sa.resampled_radar_features(point_cube(short, 12.0, 0.0, 2.0), short, MODEL_RADAR)
    assert np.all(got[:, :, 64:] == 0.0) and got[:, :, :64].max() > 1.0
    assert abs(peak(got[1])[1] - 24) <= 1                           # 12 m = model bin 24


def test_a_wrong_cube_shape_names_the_waveform():
    with pytest.raises(ConfigError, match='does not match its waveform'):
        sa.resampled_radar_features(np.zeros((4, 16, 128), np.complex64), MODEL_RADAR, MODEL_RADAR)


def _dot_image(cam: sa.CameraModel, ray: tuple[float, float]) -> np.ndarray:
    img = np.full((cam.height, cam.width, 3), 40, np.uint8)
    u = round(ray[0] * cam.fx + cam.cx)
    v = round(ray[1] * cam.fy + cam.cy)
    img[max(v - 1, 0):v + 2, max(u - 1, 0):u + 2] = 250
    return img


@pytest.mark.parametrize('source', [sa.CameraModel.from_fov(96, 72, 50.0),     # coarser, wider
                                    sa.CameraModel.from_fov(320, 240, 45.0)])  # finer: area first
def test_a_point_keeps_its_ray_in_the_models_camera(source):
    target = sa.default_sensors().camera
    ray = (0.25, -0.15)                       # tan(azimuth), tan(elevation) of a bright point
    out = sa.resample_image(_dot_image(source, ray), source, target)
    assert out.shape == (128, 128, 3) and out.dtype == np.uint8
    v, u = np.unravel_index(np.argmax(out[..., 0]), out.shape[:2])
    assert abs(u - (ray[0] * target.fx + target.cx)) <= 1.5
    assert abs(v - (ray[1] * target.fy + target.cy)) <= 1.5
    assert out[..., 0].max() > 120            # not averaged away


def test_the_models_own_camera_is_left_alone_and_a_wrong_size_is_refused():
    cam = sa.default_sensors().camera
    img = np.zeros((128, 128, 3), np.uint8)
    assert sa.resample_image(img, cam, cam) is img
    assert math.isclose(cam.hfov_deg, 60.0)
    with pytest.raises(ConfigError, match='camera model says 96x72'):
        sa.resample_image(img, sa.CameraModel.from_fov(96, 72, 50.0), cam)


def test_sensor_spec_round_trips_and_bad_entries_are_named():
    spec = sa.SensorSpec(sa.CameraModel.from_fov(96, 72, 50.0),
                         dataclasses.replace(MODEL_RADAR, num_chirps=16))
    assert sa.SensorSpec.from_dict(spec.to_dict()) == spec
    short = sa.SensorSpec.from_dict({'camera': {'width': 128, 'height': 128, 'fov_deg': 60.0},
                                     'radar': {}})
    assert short == sa.default_sensors()
    with pytest.raises(ConfigError, match='sensors'):
        sa.SensorSpec.from_dict({'camera': {'width': 128}, 'radar': {}})
    with pytest.raises(ConfigError, match='radar.num_chirps'):
        sa.SensorSpec.from_dict({'camera': {'width': 8, 'height': 8, 'fov_deg': 60.0},
                                 'radar': {'num_chirps': 'many'}})
