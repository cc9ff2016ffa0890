"""Round trips between messages and numpy / core types, without rclpy.init."""
import math

import numpy as np
import pytest

pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')

from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402

from disac_ros.core.rf_config import RadarConfig  # noqa: E402
from disac_ros.core.types import SENSED_CAMERA, SENSED_RF, ObjectTruth, Pose  # noqa: E402
from disac_ros.nodes import conversions as cv  # noqa: E402


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(7)


@pytest.mark.parametrize('encoding,channels', [('rgb8', 3), ('bgr8', 3), ('rgba8', 4), ('mono8', 1)])
def test_image_round_trip_is_exact(rng, encoding, channels):
    shape = (6, 5, channels) if channels > 1 else (6, 5)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    msg = cv.image_to_msg(img, encoding, cv.time_to_msg(1.5), 'cam')
    assert (msg.height, msg.width, msg.step, msg.encoding) == (6, 5, 5 * channels, encoding)
    assert msg.header.frame_id == 'cam' and msg.header.stamp.sec == 1
    # Through CDR too, as a subscriber would get it.
    back = cv.msg_to_image(deserialize_message(serialize_message(msg), Image))
    np.testing.assert_array_equal(back, img)


def test_image_with_row_padding_is_unpadded(rng):
    img = rng.integers(0, 256, size=(4, 3, 3), dtype=np.uint8)
    padded = np.zeros((4, 16), dtype=np.uint8)
    padded[:, :9] = img.reshape(4, 9)
    padded[:, 9:] = 255        # garbage in the padding must not leak into the image
    msg = Image(height=4, width=3, encoding='rgb8', step=16, data=padded.tobytes())
    np.testing.assert_array_equal(cv.msg_to_image(msg), img)


def test_image_rgb_to_bgr_swaps_channels(rng):
    img = rng.integers(0, 256, size=(2, 2, 3), dtype=np.uint8)
    bgr = cv.msg_to_image(cv.image_to_msg(img, 'rgb8'), desired_encoding='bgr8')
    np.testing.assert_array_equal(bgr, img[:, :, ::-1])


def test_image_rejects_bad_input():
    with pytest.raises(ValueError, match='encoding'):
        cv.image_to_msg(np.zeros((2, 2, 3), np.uint8), 'yuv422')
    with pytest.raises(ValueError, match='dtype'):
        cv.image_to_msg(np.zeros((2, 2, 3), np.float32), 'rgb8')
    with pytest.raises(ValueError, match='shape'):
        cv.image_to_msg(np.zeros((2, 2, 4), np.uint8), 'rgb8')
    with pytest.raises(ValueError, match='data'):
        cv.msg_to_image(Image(height=4, width=4, encoding='rgb8', step=12, data=b'\0' * 10))


def test_rf_round_trip_keeps_values_shape_and_waveform(rng):
    radar = RadarConfig()
    cube = (rng.standard_normal((4, 32, 128)) + 1j * rng.standard_normal((4, 32, 128))).astype(np.complex64)
    msg = cv.rf_to_msg(cube, device_id='dev1', seq=7, radar=radar, stamp=cv.time_to_msg(2.0),
                       frame_id='dev1/radar')
    assert list(msg.dims) == ['rx', 'chirp', 'sample'] and list(msg.shape) == [4, 32, 128]
    assert len(msg.iq) == 2 * cube.size and msg.iq[0] == cube[0, 0, 0].real and msg.iq[1] == cube[0, 0, 0].imag
    assert msg.carrier_frequency_hz == radar.carrier_frequency_hz
    assert msg.rx_spacing_m == pytest.approx(radar.rx_spacing)
    # kT0 * 5 MHz * NF 12 dB = -174 + 67 + 12 = -95 dBm, the documented default
    assert msg.noise_power_dbm == pytest.approx(-95.0, abs=0.1)
    back = cv.msg_to_rf(deserialize_message(serialize_message(msg), type(msg)))
    assert back.dtype == np.complex64
    np.testing.assert_array_equal(back, cube)


def test_rf_waveform_comes_back_as_a_radar_config_for_the_device_to_resample():
    from disac_ros.core.sensor_adapt import same_waveform
    radar = RadarConfig(num_chirps=16, bandwidth_hz=600e6, max_range_m=30.0)
    msg = cv.rf_to_msg(np.zeros((4, 16, 128), np.complex64), device_id='d', seq=0, radar=radar)
    back = cv.msg_to_radar_config(deserialize_message(serialize_message(msg), type(msg)))
    assert same_waveform(back, radar) and back.max_range_m <= back.max_unambiguous_range_m
    msg.carrier_frequency_hz = 0.0                 # unset (hand-made message): shape only
    assert cv.msg_to_radar_config(msg) is None
    msg.carrier_frequency_hz, msg.chirp_interval_s = 77e9, 1e-6     # shorter than the ramp
    with pytest.raises(ValueError, match='chirp_interval_s'):
        cv.msg_to_radar_config(msg)


def test_rf_rejects_real_cube_and_inconsistent_shape():
    with pytest.raises(ValueError, match='complex'):
        cv.rf_to_msg(np.zeros((2, 2, 2)), device_id='d', seq=0, radar=RadarConfig())
    msg = cv.rf_to_msg(np.zeros((2, 2, 2), np.complex64), device_id='d', seq=0, radar=RadarConfig())
    msg.shape = [2, 2, 3]
    with pytest.raises(ValueError, match='rf.iq'):
        cv.msg_to_rf(msg)


def test_time_conversions_are_exact_in_nanoseconds():
    t = cv.time_to_msg(12.000000001)
    assert (t.sec, t.nanosec) == (12, 1)
    assert cv.msg_to_ns(cv.ns_to_msg(1_700_000_000_123_456_789)) == 1_700_000_000_123_456_789
    with pytest.raises(ValueError, match='stamp'):
        cv.time_to_msg(-1.0)


def test_camera_info_from_k():
    K = np.array([[100.0, 0, 64], [0, 100.0, 64], [0, 0, 1]])
    msg = cv.camera_info_msg(K, 128, 128, cv.time_to_msg(3.0), 'dev0/camera_optical')
    assert msg.distortion_model == 'plumb_bob' and list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(cv.camera_info_to_k(msg), K)
    assert list(msg.p) == [100.0, 0, 64, 0, 0, 100.0, 64, 0, 0, 0, 1, 0]
    assert (msg.width, msg.height) == (128, 128)


def test_pose_to_transform_and_back():
    pose = Pose((1.0, -2.0, 0.5), yaw=0.7)
    tf = cv.pose_to_transform(pose, 'world', 'dev0/base_link', cv.time_to_msg(1.0))
    assert tf.header.frame_id == 'world' and tf.child_frame_id == 'dev0/base_link'
    assert (tf.transform.translation.x, tf.transform.translation.y) == (1.0, -2.0)
    assert cv.yaw_from_quaternion(tf.transform.rotation) == pytest.approx(0.7)
    back = cv.msg_to_pose(cv.pose_to_msg(pose))
    assert back.position == pose.position and back.yaw == pytest.approx(pose.yaw)


def test_objects_round_trip_with_sensing_flags():
    objs = [
        ObjectTruth(3, 'truck', np.array([1.0, 2.0, 1.5]), np.array([0.5, 0.0, 0.0]), 0.3, (8.0, 2.5, 3.0),
                    visible_camera={'dev0': True, 'dev1': False, 'dev2': False},
                    in_rf_range={'dev0': True, 'dev1': True, 'dev2': False}),
        ObjectTruth(9, 'pedestrian', np.array([-4.0, 0.0, 0.9]), np.array([0.0, 1.2, 0.0]), -math.pi / 2,
                    (0.5, 0.5, 1.8)),
    ]
    msg = cv.objects_to_msg(objs, cv.time_to_msg(4.0), 'world', device_ids=['dev0', 'dev1', 'dev2'])
    o = msg.objects[0]
    assert msg.header.frame_id == 'world' and len(msg.objects) == 2
    assert list(o.contributing_devices) == ['dev0', 'dev1']
    assert list(o.sensed_by_modalities) == [SENSED_CAMERA | SENSED_RF, SENSED_RF]
    assert o.classification == o.CLASS_TRUCK and o.class_confidence == 1.0
    assert 0 < o.pose.covariance[0] < 1e-2 and o.pose.covariance[21] > 1e3   # x var small, roll large
    assert list(msg.objects[1].contributing_devices) == []
    back = cv.msg_to_objects(deserialize_message(serialize_message(msg), type(msg)))
    for a, b in zip(objs, back):
        assert (a.object_id, a.class_name, a.size) == (b.object_id, b.class_name, b.size)
        np.testing.assert_allclose(b.position, a.position)
        np.testing.assert_allclose(b.velocity, a.velocity)
        assert b.yaw == pytest.approx(a.yaw)
        for dev in ['dev0', 'dev1', 'dev2']:
            assert a.sensed_by(dev) == b.sensed_by(dev)


def test_params_validate_types_ranges_and_choices():
    from disac_ros.core.errors import ConfigError
    from disac_ros.nodes.params import Param, validate
    rate = Param('rate_hz', 10.0, 'rate', minimum=0.0, exclusive_minimum=True)
    assert validate(rate, 5) == 5.0 and isinstance(validate(rate, 5), float)
    with pytest.raises(ConfigError, match='rate_hz: must be > 0'):
        validate(rate, 0.0)
    with pytest.raises(ConfigError, match='expected a number'):
        validate(rate, 'fast')
    clock = Param('publish_clock', 'auto', 'clock', choices=('auto', 'true', 'false'))
    assert validate(clock, True) == 'true' and validate(clock, 'auto') == 'auto'
    assert clock.descriptor().dynamic_typing
    with pytest.raises(ConfigError, match='expected one of'):
        validate(clock, 'sometimes')
    topics = Param('topics', ['all'], 'topics')
    assert validate(topics, ('/a', '/b')) == ['/a', '/b']
    with pytest.raises(ConfigError, match='list of strings'):
        validate(topics, [1])
    count = Param('n', 0, 'count', minimum=0, maximum=3)
    with pytest.raises(ConfigError, match='expected int'):
        validate(count, True)
    assert 'range [0, 3]' in count.descriptor().additional_constraints
