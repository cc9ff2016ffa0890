"""Physics checks of the FMCW radar synthesis (disac_ros.core.rf)."""
import math
import textwrap

import numpy as np
import pytest
import yaml

from disac_ros.core import rf_config
from disac_ros.core.errors import ConfigError
from disac_ros.core.errors import ScenarioError
from disac_ros.core.rf import angle_axis_rad
from disac_ros.core.rf import CLASS_RCS_M2
from disac_ros.core.rf import expected_snr_db
from disac_ros.core.rf import feature_shape
from disac_ros.core.rf import in_rf_coverage
from disac_ros.core.rf import noise_std
from disac_ros.core.rf import object_scatterers
from disac_ros.core.rf import radar_features
from disac_ros.core.rf import RadarConfig
from disac_ros.core.rf import range_angle_map
from disac_ros.core.rf import range_axis_m
from disac_ros.core.rf import range_doppler_map
from disac_ros.core.rf import Scatterer
from disac_ros.core.rf import synthesize_cube
from disac_ros.core.rf import velocity_axis_mps

CFG = RadarConfig()
ORIGIN = np.zeros(3)


def boresight_target(range_m: float, v_mps: float = 0.0, rcs: float = 1.0,
                     loss_db: float = 0.0) -> Scatterer:
    """A point on the radar boresight moving radially (positive = receding)."""
    return Scatterer(np.array([range_m, 0.0, 0.0]), np.array([v_mps, 0.0, 0.0]), rcs, loss_db)


def rd_peak(cube: np.ndarray) -> tuple[int, int, float]:
    """(Doppler row, range column, power) of the range-Doppler maximum."""
    rd = range_doppler_map(cube, CFG)
    row, col = np.unravel_index(int(np.argmax(rd)), rd.shape)
    return int(row), int(col), float(rd[row, col])


def noise_floor() -> float:
    """Mean power per range-Doppler bin of a noise-only cube (measured, not from the formula)."""
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [], np.random.default_rng(123))
    return float(range_doppler_map(cube, CFG).mean())


def measured_snr_db(range_m: float, rcs: float = 1.0, loss_db: float = 0.0) -> float:
    """Noise-free peak power over the measured noise floor, in dB."""
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [boresight_target(range_m, 0.0, rcs, loss_db)],
                           np.random.default_rng(0), noise=False)
    return 10.0 * math.log10(rd_peak(cube)[2] / noise_floor())


def test_default_config_has_the_documented_resolutions():
    assert CFG.range_resolution_m == pytest.approx(0.5, rel=1e-3)
    assert 55.0 <= CFG.max_unambiguous_range_m <= 70.0
    assert CFG.max_unambiguous_speed_mps >= 20.0
    assert CFG.rx_spacing == pytest.approx(CFG.wavelength_m / 2)
    assert range_axis_m(CFG)[1] == pytest.approx(CFG.range_resolution_m)
    assert velocity_axis_mps(CFG)[CFG.num_chirps // 2] == 0.0


@pytest.mark.parametrize('range_m, v_mps', [
    (8.0, 0.0), (23.7, 4.5), (41.2, -7.3), (55.0, -18.0), (14.3, 21.0), (30.0, -1.0)])
def test_point_target_peaks_in_expected_range_and_doppler_bins(range_m, v_mps):
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [boresight_target(range_m, v_mps)],
                           np.random.default_rng(1))
    row, col, _ = rd_peak(cube)
    assert abs(col - range_m / CFG.range_resolution_m) <= 1.0
    assert abs(row - (CFG.num_chirps // 2 + v_mps / CFG.velocity_resolution_mps)) <= 1.0
    assert abs(velocity_axis_mps(CFG)[row] - v_mps) <= CFG.velocity_resolution_mps
    assert abs(range_axis_m(CFG)[col] - range_m) <= CFG.range_resolution_m


def test_radial_speed_beyond_the_unambiguous_limit_aliases():
    v = 30.0
    aliased = v - 2.0 * CFG.max_unambiguous_speed_mps
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [boresight_target(20.0, v)],
                           np.random.default_rng(2), noise=False)
    row, _, _ = rd_peak(cube)
    assert abs(velocity_axis_mps(CFG)[row] - aliased) <= CFG.velocity_resolution_mps


def test_radar_velocity_makes_radial_speed_relative():
    # A still target seen from a radar driving toward it at 6 m/s closes at 6 m/s.
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [boresight_target(20.0, 0.0)],
                           np.random.default_rng(3), radar_velocity=[6.0, 0.0, 0.0], noise=False)
    row, _, _ = rd_peak(cube)
    assert abs(velocity_axis_mps(CFG)[row] + 6.0) <= CFG.velocity_resolution_mps


def test_tangential_motion_has_no_doppler():
    target = Scatterer(np.array([25.0, 0.0, 0.0]), np.array([0.0, 8.0, 0.0]), 1.0)
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [target], np.random.default_rng(4), noise=False)
    assert rd_peak(cube)[0] == CFG.num_chirps // 2


@pytest.mark.parametrize('lateral_m', [6.0, -6.0, 12.0])
def test_target_to_the_left_peaks_at_positive_angle(lateral_m):
    target = Scatterer(np.array([20.0, lateral_m, 0.0]), np.zeros(3), 1.0)
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [target], np.random.default_rng(5))
    ra = range_angle_map(cube, CFG)
    row = int(np.unravel_index(int(np.argmax(ra)), ra.shape)[0])
    angles = angle_axis_rad(ra.shape[0])
    true_angle = math.atan2(lateral_m, 20.0)
    assert np.sign(angles[row]) == np.sign(lateral_m)
    step = 2.0 / ra.shape[0]   # sin(theta) per bin at half-wavelength spacing
    assert abs(math.sin(angles[row]) - math.sin(true_angle)) <= step


def test_angle_uses_the_radar_yaw_and_position():
    # Radar at (10, 5) facing world +y: a target 20 m ahead and 5 m to its left is at (5, 25).
    radar = np.array([10.0, 5.0, 1.0])
    target = Scatterer(np.array([5.0, 25.0, 1.0]), np.zeros(3), 1.0)
    cube = synthesize_cube(CFG, radar, math.pi / 2, [target], np.random.default_rng(6),
                           noise=False)
    ra = range_angle_map(cube, CFG)
    row, col = np.unravel_index(int(np.argmax(ra)), ra.shape)
    assert angle_axis_rad(ra.shape[0])[row] > 0
    assert abs(range_axis_m(CFG)[col] - math.hypot(20.0, 5.0)) <= CFG.range_resolution_m


def test_noise_power_matches_noise_std():
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [], np.random.default_rng(7))
    assert cube.dtype == np.complex64
    assert cube.shape == (CFG.num_rx, CFG.num_chirps, CFG.num_samples)
    assert np.mean(np.abs(cube) ** 2) == pytest.approx(noise_std(CFG) ** 2, rel=0.03)
    # Circular: I and Q carry half the power each.
    assert np.var(cube.real) == pytest.approx(np.var(cube.imag), rel=0.05)


@pytest.mark.parametrize('range_bin', [10, 40, 100])
def test_measured_snr_matches_the_radar_equation(range_bin):
    range_m = float(range_axis_m(CFG)[range_bin])   # bin-centred: no straddle loss
    assert measured_snr_db(range_m) == pytest.approx(expected_snr_db(CFG, range_m, 1.0), abs=1.5)


def test_snr_falls_40_db_per_decade_of_range():
    near, far = float(range_axis_m(CFG)[10]), float(range_axis_m(CFG)[100])
    drop = measured_snr_db(near) - measured_snr_db(far)
    assert drop == pytest.approx(40.0, abs=1.5)
    assert expected_snr_db(CFG, near, 1.0) - expected_snr_db(CFG, far, 1.0) == pytest.approx(40.0)


def test_snr_with_noise_present_matches_expected():
    range_m = float(range_axis_m(CFG)[60])
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [boresight_target(range_m)],
                           np.random.default_rng(8))
    rd = range_doppler_map(cube, CFG)
    floor = float(np.mean(rd[:, 90:]))     # far from the target: noise only
    peak = float(rd.max())
    snr = 10.0 * math.log10((peak - floor) / floor)
    assert snr == pytest.approx(expected_snr_db(CFG, range_m, 1.0), abs=1.5)


def test_extra_loss_attenuates_by_that_amount():
    range_m = float(range_axis_m(CFG)[40])
    assert measured_snr_db(range_m) - measured_snr_db(range_m, loss_db=CFG.occlusion_loss_db) == \
        pytest.approx(CFG.occlusion_loss_db, abs=0.01)
    assert expected_snr_db(CFG, range_m, 1.0) - expected_snr_db(CFG, range_m, 1.0, 15.0) == \
        pytest.approx(15.0)


def test_rcs_scales_power_linearly():
    range_m = float(range_axis_m(CFG)[40])
    assert measured_snr_db(range_m, rcs=10.0) - measured_snr_db(range_m, rcs=1.0) == \
        pytest.approx(10.0, abs=0.01)


@pytest.mark.parametrize('position', [
    [-20.0, 0.0, 0.0],                       # behind the radar
    [10.0, 30.0, 0.0],                       # outside the 120 deg field of view
    [CFG.max_unambiguous_range_m + 1.0, 0.0, 0.0],   # would alias in range: filtered out
])
def test_scatterers_outside_the_radar_view_are_not_synthesized(position):
    target = Scatterer(np.array(position), np.zeros(3), 10.0)
    cube = synthesize_cube(CFG, ORIGIN, 0.0, [target], np.random.default_rng(9), noise=False)
    assert not np.any(cube)


def test_same_seed_gives_the_same_cube():
    scatterers = object_scatterers('car', [20.0, 3.0, 0.75], [5.0, 0.0, 0.0], 0.0,
                                   (4.5, 1.8, 1.5), 0.3)
    a = synthesize_cube(CFG, ORIGIN, 0.0, scatterers, np.random.default_rng(42))
    b = synthesize_cube(CFG, ORIGIN, 0.0, scatterers, np.random.default_rng(42))
    c = synthesize_cube(CFG, ORIGIN, 0.0, scatterers, np.random.default_rng(43))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_in_rf_coverage_respects_range_and_field_of_view():
    half_fov = math.radians(CFG.fov_deg / 2)
    inside = 0.9 * CFG.max_range_m
    assert in_rf_coverage(CFG, ORIGIN, 0.0, [inside, 0.0, 0.0])
    assert not in_rf_coverage(CFG, ORIGIN, 0.0, [CFG.max_range_m + 0.5, 0.0, 0.0])
    assert not in_rf_coverage(CFG, ORIGIN, 0.0, [-10.0, 0.0, 0.0])
    for sign in (1.0, -1.0):
        just_in = half_fov - 0.02
        just_out = half_fov + 0.02
        assert in_rf_coverage(CFG, ORIGIN, 0.0, [20 * math.cos(just_in),
                                                 sign * 20 * math.sin(just_in), 0.0])
        assert not in_rf_coverage(CFG, ORIGIN, 0.0, [20 * math.cos(just_out),
                                                     sign * 20 * math.sin(just_out), 0.0])
    # Yawed and displaced radar: facing world -x from (50, 0, 1).
    assert in_rf_coverage(CFG, [50.0, 0.0, 1.0], math.pi, [30.0, 2.0, 0.0])
    assert not in_rf_coverage(CFG, [50.0, 0.0, 1.0], math.pi, [70.0, 2.0, 0.0])


def doppler_spread_mps(class_name: str, size: tuple[float, float, float], speed: float) -> float:
    """Power-weighted std of the Doppler profile at the object's ranges, averaged over a gait."""
    vel_axis = velocity_axis_mps(CFG)
    spreads = []
    for time_s in np.linspace(0.0, 2.0, 21):
        scatterers = object_scatterers(class_name, [20.0, 0.0, 0.9], [speed, 0.0, 0.0], 0.0,
                                       size, float(time_s))
        cube = synthesize_cube(CFG, [0.0, 0.0, 0.5], 0.0, scatterers,
                               np.random.default_rng(0), noise=False)
        profile = range_doppler_map(cube, CFG).sum(axis=1)
        p = profile / profile.sum()
        mean = float(np.sum(p * vel_axis))
        spreads.append(math.sqrt(float(np.sum(p * (vel_axis - mean) ** 2))))
    return float(np.mean(spreads))


def test_walking_pedestrian_has_a_wider_doppler_spread_than_a_car():
    pedestrian = doppler_spread_mps('pedestrian', (0.5, 0.6, 1.8), 1.4)
    car = doppler_spread_mps('car', (4.5, 1.8, 1.5), 1.4)
    standing = doppler_spread_mps('pedestrian', (0.5, 0.6, 1.8), 0.0)
    assert pedestrian > 1.2 * car
    assert pedestrian > 1.2 * standing


@pytest.mark.parametrize('class_name, size', [
    ('car', (4.5, 1.8, 1.5)), ('truck', (8.0, 2.5, 3.2)), ('pedestrian', (0.5, 0.6, 1.8)),
    ('cyclist', (1.8, 0.6, 1.7)), ('unknown', (1.0, 1.0, 1.0))])
def test_object_scatterers_carry_the_class_rcs_and_stay_near_the_box(class_name, size):
    centre = np.array([10.0, -4.0, size[2] / 2])
    scatterers = object_scatterers(class_name, centre, [3.0, 1.0, 0.0], 0.7, size, 1.23)
    assert sum(s.rcs_m2 for s in scatterers) == pytest.approx(CLASS_RCS_M2[class_name], rel=0.03)
    reach = 0.5 * math.hypot(*size) + 0.5   # limbs may swing a little outside the box
    for s in scatterers:
        assert np.linalg.norm(s.position - centre) <= reach
    again = object_scatterers(class_name, centre, [3.0, 1.0, 0.0], 0.7, size, 1.23)
    for a, b in zip(scatterers, again):
        np.testing.assert_array_equal(a.position, b.position)
        np.testing.assert_array_equal(a.velocity, b.velocity)


def test_car_wheel_rim_speeds_span_zero_to_twice_the_body_speed():
    speeds = []
    for time_s in np.linspace(0.0, 1.0, 50):
        scatterers = object_scatterers('car', [0.0, 0.0, 0.75], [10.0, 0.0, 0.0], 0.0,
                                       (4.5, 1.8, 1.5), float(time_s))
        speeds.extend(np.linalg.norm(s.velocity) for s in scatterers if s.rcs_m2 < 0.5)
    assert min(speeds) < 1.0 and max(speeds) > 19.0
    assert max(speeds) <= 20.0 + 1e-9


def test_object_scatterers_rejects_an_unknown_class():
    with pytest.raises(ConfigError, match='class_name'):
        object_scatterers('bus', [0, 0, 0], [0, 0, 0], 0.0, (10, 2.5, 3), 0.0)


def test_radar_features_shape_scale_and_noise_level():
    scatterers = [boresight_target(float(range_axis_m(CFG)[60]))]
    cube = synthesize_cube(CFG, ORIGIN, 0.0, scatterers, np.random.default_rng(10))
    feats = radar_features(cube, CFG)
    assert feats.shape == feature_shape(CFG) == (2, CFG.num_chirps, CFG.num_samples)
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
    # Noise sits at 0 (the median), the floor is clipped at -0.5, the target reads SNR / 20 dB.
    assert np.median(feats[0]) == pytest.approx(0.0, abs=1e-6)
    assert feats.min() >= -0.5 - 1e-6
    snr = expected_snr_db(CFG, float(range_axis_m(CFG)[60]), 1.0)
    assert feats[0].max() == pytest.approx(snr / 20.0, abs=0.15)
    assert np.unravel_index(int(np.argmax(feats[1])), feats[1].shape)[1] == 60
    # Independent of the cube's absolute scale.
    np.testing.assert_allclose(radar_features(cube * 1000.0, CFG), feats, atol=1e-4)


def test_maps_reject_a_cube_of_the_wrong_shape():
    with pytest.raises(ValueError, match='cube'):
        range_doppler_map(np.zeros((2, 3, 4), np.complex64), CFG)


def test_config_round_trips_through_dict():
    cfg = RadarConfig.from_dict({'num_chirps': 64, 'rx_spacing_m': 0.002, 'fov_deg': 90.0})
    assert cfg.num_chirps == 64 and cfg.rx_spacing == 0.002
    assert RadarConfig.from_dict(cfg.to_dict()) == cfg
    assert RadarConfig.from_dict({}) == RadarConfig()


@pytest.mark.parametrize('patch, field', [
    ({'bandwith_hz': 1e9}, 'radar.bandwith_hz'),                 # unknown (misspelt) key
    ({'bandwidth_hz': -300e6}, 'radar.bandwidth_hz'),
    ({'num_chirps': 'many'}, 'radar.num_chirps'),
    ({'tx_power_dbm': '12 dBm'}, 'radar.tx_power_dbm'),
    ({'num_rx': 4.5}, 'radar.num_rx'),
    ({'num_rx': True}, 'radar.num_rx'),
    ({'noise_figure_db': float('nan')}, 'radar.noise_figure_db'),
    ({'fov_deg': 200.0}, 'radar.fov_deg'),
    ({'max_range_m': 100.0}, 'radar.max_range_m'),               # beyond unambiguous range
    ({'chirp_interval_s': 10e-6}, 'radar.chirp_interval_s'),     # shorter than the chirp
    ({'sample_rate_hz': 1e6}, 'radar.sample_rate_hz'),           # ADC window longer than chirp
])
def test_from_dict_errors_name_the_field(patch, field):
    with pytest.raises(ScenarioError) as info:
        RadarConfig.from_dict(patch)
    assert info.value.field == field
    assert field in str(info.value)


def test_from_dict_uses_the_given_path_and_rejects_non_mappings():
    with pytest.raises(ScenarioError, match=r'devices\[1\]\.radar\.num_rx'):
        RadarConfig.from_dict({'num_rx': 0}, where='devices[1].radar')
    with pytest.raises(ScenarioError, match='radar'):
        RadarConfig.from_dict([1, 2, 3])  # type: ignore[arg-type]


def test_direct_construction_is_validated_too():
    with pytest.raises(ConfigError, match='bandwidth_hz'):
        RadarConfig(bandwidth_hz=0.0)


def test_documented_yaml_block_parses_to_the_defaults():
    # The YAML in the rf_config docstring is what users copy: it must load, and match defaults.
    doc = rf_config.__doc__
    block = doc[doc.index('    radar:'):].rstrip()
    loaded = yaml.safe_load(textwrap.dedent(block))
    assert RadarConfig.from_dict(loaded['radar']) == RadarConfig()
    assert set(loaded['radar']) == set(RadarConfig().to_dict())


def test_yaml_exponent_without_sign_gets_a_hint():
    with pytest.raises(ScenarioError, match=r'radar\.carrier_frequency_hz.*77\.0e\+9'):
        RadarConfig.from_dict({'carrier_frequency_hz': '77e9'})
