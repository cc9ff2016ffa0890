"""Hostile and broken input to the device and aggregator nodes, in process (no DDS traffic).

The nodes are built on their own rclpy context (isolated domain) with a FAKE, UNTRAINED model
(test/fake_model.py); the tests call their input callbacks directly with crafted messages and read
the diagnostics counters. Each case was a crash, a silent pass or a fleet-wide outage before:
a 0x0 or 4000x4000 image, a scale that overflows float32, a 50 MB payload, stamps that are zero,
old, replayed or in the future, absurd poses / SNR / distance. One bad device must never blank
the others, and the tracker restarts only when the node's own clock jumps back.
"""
from __future__ import annotations

import array
import copy
from pathlib import Path
import sys

import numpy as np
import pytest

pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')

import rclpy  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from disac_interfaces.msg import SemanticFeature  # noqa: E402
from disac_ros.core.packet import CODEC_VERSION, quantize  # noqa: E402
from disac_ros.nodes import conversions as cv  # noqa: E402
from disac_ros.nodes import feature_msgs as fm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_model import make_fake_model  # noqa: E402
from ros_helpers import new_domain_id  # noqa: E402

pytestmark = pytest.mark.ros
DEVICES = ['dev0', 'dev1']


@pytest.fixture(scope='module')
def model(tmp_path_factory):
    return make_fake_model(tmp_path_factory.mktemp('guards') / 'model')


@pytest.fixture
def context():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=new_domain_id())
    yield ctx
    rclpy.try_shutdown(context=ctx)


def _aggregator(context, model, **params):
    from disac_ros.nodes.aggregator_node import AggregatorNode
    overrides = [Parameter('model_dir', value=str(model)), Parameter('device_ids', value=DEVICES),
                 Parameter('warm_up', value=False)]
    overrides += [Parameter(k, value=v) for k, v in params.items()]
    return AggregatorNode(context=context, parameter_overrides=overrides)


class _Clock:
    """A FAKE clock for the aggregator's ``_now`` (seconds), moved by the test."""

    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _feature(node, dev: str, stamp_s: float, seed: int = 0, **fields) -> SemanticFeature:
    n = node.pipeline.num_symbols
    symbols = np.random.default_rng(seed).standard_normal((n, 2)).astype(np.float32)
    pose = fm.static_pose([5.0, -3.0, 1.5, 0.3])
    from builtin_interfaces.msg import Time
    stamp = cv.time_to_msg(stamp_s) if stamp_s >= 0 else Time(sec=int(stamp_s))   # a hostile stamp
    msg = fm.feature_msg(dev, 0, stamp, 'world', pose, quantize(symbols, 8))
    msg.snr_db, msg.distance_m = 12.0, 30.0
    for k, v in fields.items():
        setattr(msg, k, v)
    return msg


def _counts(node) -> dict:
    return node.diag.snapshot()


def test_stale_future_replayed_and_zero_stamps_are_refused_per_device(context, model):
    node = _aggregator(context, model)
    try:
        clock = _Clock(1000.0)
        node._now = clock
        node._on_feature('dev0', _feature(node, 'dev0', 999.9))
        node._on_feature('dev1', _feature(node, 'dev1', 999.9))
        assert node.sync.pending == 1
        cases = [('stale_stamp', 0.0), ('stale_stamp', -5.0), ('stale_stamp', 940.0),   # zero, negative, 60 s old
                 ('future_stamp', 1003.0),                                             # 3 s ahead
                 ('replayed', 999.9), ('replayed', 999.8)]                             # same / older again
        for counter, stamp in cases:
            before = _counts(node).get(counter, 0.0)
            node._on_feature('dev0', _feature(node, 'dev0', stamp))
            assert _counts(node)[counter] == before + 1, (counter, stamp)
        assert _counts(node)['dev0.rejected'] == len(cases)
        # None of it touched the other device, the tracker or the synchroniser's horizon.
        clock.t = 1000.2
        node._on_feature('dev1', _feature(node, 'dev1', 1000.1))
        node._on_feature('dev0', _feature(node, 'dev0', 1000.1))
        assert 'dev1.rejected' not in _counts(node)
        assert _counts(node).get('late', 0.0) == 0.0 and node.sync.pending == 2
    finally:
        node.destroy_node()


def test_clock_jumping_back_restarts_the_tracker(context, model):
    node = _aggregator(context, model)
    try:
        clock = _Clock(500.0)
        node._now = clock
        node._process()
        clock.t = 10.0                       # a bag looped: the node's clock went back
        node._on_feature('dev0', _feature(node, 'dev0', 9.9))
        assert _counts(node)['stale_stamp'] == 0.0        # judged against the new clock ...
        node._process()
        assert _counts(node)['clock_jumps'] == 1.0         # ... and the tracker started over
    finally:
        node.destroy_node()


def test_dds_message_lost_events_count_what_the_event_reports(context, model):
    from types import SimpleNamespace
    node = _aggregator(context, model)
    try:
        for change in (3, 0, 2):          # a FAKE event info as rclpy hands it over; 0 = nothing new
            node._on_dds_lost('dev0', SimpleNamespace(total_count=0, total_count_change=change))
        assert _counts(node)['dev0.dds_lost'] == 5.0 and _counts(node)['dds_lost'] == 5.0
        assert 'dev1.dds_lost' not in _counts(node)
    finally:
        node.destroy_node()


@pytest.mark.parametrize('field, value', [
    ('scale', 3e38),                 # finite, but the symbols overflow float32 (and poisoned the batch)
    ('scale', 1e30),                 # finite symbols far beyond any channel output
    ('snr_db', 1e30),
    ('distance_m', 1e30),
    ('distance_m', float('inf')),
])
def test_absurd_values_are_refused_as_bad_payload(context, model, field, value):
    node = _aggregator(context, model)
    try:
        node._now = _Clock(100.0)
        node._on_feature('dev0', _feature(node, 'dev0', 99.9, **{field: value}))
        assert _counts(node)['bad_payload'] == 1.0 and node.sync.pending == 0
        # ... and the other device's packet still forms a group.
        node._on_feature('dev1', _feature(node, 'dev1', 99.9))
        assert node.sync.pending == 1
    finally:
        node.destroy_node()


def test_absurd_pose_and_a_50_mb_payload_are_refused_before_decoding(context, model):
    node = _aggregator(context, model)
    try:
        node._now = _Clock(100.0)
        far = _feature(node, 'dev0', 99.9)
        far.device_pose.position.x = 1e30
        node._on_feature('dev0', far)
        huge = _feature(node, 'dev0', 99.9)
        n = 50 * 1024 * 1024
        huge.shape = array.array('I', [n // 2, 2])
        huge.payload = array.array('B', bytes(n))
        node._on_feature('dev0', huge)
        assert _counts(node)['bad_payload'] == 2.0 and node.sync.pending == 0
    finally:
        node.destroy_node()


def test_tuning_parameters_change_at_once_and_structural_ones_are_refused(context, model):
    node = _aggregator(context, model)
    try:
        ok = node.set_parameters([Parameter('score_threshold', value=0.9),
                                  Parameter('class_thresholds', value='0.5,0.6,0.7,0.8'),
                                  Parameter('max_wait_s', value=0.5), Parameter('tracker_min_hits', value=4)])
        assert all(r.successful for r in ok), [r.reason for r in ok]
        assert node.pipeline.score_threshold == 0.9 and node.sync.max_wait_s == 0.5
        assert node.pipeline.fusion.class_thresholds == (0.5, 0.6, 0.7, 0.8)
        assert node.tracker.config.min_hits == 4
        bad = node.set_parameters([Parameter('class_weights', value='1,2')])[0]
        assert not bad.successful and 'class_weights' in bad.reason
        assert node.set_parameters([Parameter('score_threshold', value=0.0)])[0].successful is False
        assert node.pipeline.score_threshold == 0.9          # a refused set changes nothing
        ro = node.set_parameters([Parameter('threads', value=2)])[0]
        assert not ro.successful and 'read-only' in ro.reason.lower()
    finally:
        node.destroy_node()


def test_device_survives_images_that_crash_or_exhaust_the_network(context, model):
    from sensor_msgs.msg import Image
    from disac_ros.core.rf_config import RadarConfig
    from disac_ros.nodes.device_node import DeviceNode
    node = DeviceNode(context=context, parameter_overrides=[
        Parameter('model_dir', value=str(model)), Parameter('device_id', value='dev0'),
        Parameter('static_pose', value='0 0 1 0'), Parameter('warm_up', value=False)])
    try:
        radar = RadarConfig(num_rx=4, num_chirps=16, num_samples=64)
        cube = (np.random.default_rng(0).standard_normal((4, 16, 64)) * (1 + 1j)).astype(np.complex64)
        rf = cv.rf_to_msg(cube, device_id='dev0', seq=0, radar=radar, stamp=cv.time_to_msg(1.0), frame_id='dev0/radar')
        for k, (h, w) in enumerate([(0, 0), (4000, 4000), (1, 1)]):
            img = Image(height=h, width=w, encoding='rgb8', step=3 * w, data=bytes(3 * w * h))
            img.header.stamp = cv.time_to_msg(1.0 + k)
            rf.header.stamp = img.header.stamp
            node._pending = (1.0 + k, img, rf)
            node._process()                  # must not raise
        v = node.diag.snapshot()
        assert v['bad_input'] == 3.0 and v['published'] == 0.0

        class FakeCrashingPipeline:
            """FAKE pipeline: fails the way torch does on an input it cannot handle."""

            def run(self, images, cubes, cameras=None, radars=None):
                raise RuntimeError('Given input size: (16x0x0). Calculated output size is too small')
        # Refused on arrival too, so a bad frame never displaces a good one waiting for its partner.
        node._on_image(Image(height=4000, width=4000, encoding='rgb8', step=12000, data=bytes(16)))
        bad_rf = copy.deepcopy(rf)
        bad_rf.iq = array.array('f', [0.0] * 10)
        node._on_rf(bad_rf)
        assert node.diag.snapshot()['bad_input'] == 5.0 and not node._images and not node._rf
        node.pipeline = FakeCrashingPipeline()
        img = Image(height=32, width=32, encoding='rgb8', step=96, data=bytes(96 * 32))
        node._pending = (9.0, img, rf)
        node._process()
        assert node.diag.snapshot()['processing_errors'] == 1.0
    finally:
        node.destroy_node()


def test_device_resamples_its_camera_and_radar_from_camera_info_and_the_rf_waveform(context, model):
    from sensor_msgs.msg import Image
    from disac_ros.core.rf_config import RadarConfig
    from disac_ros.nodes.device_node import DeviceNode
    node = DeviceNode(context=context, parameter_overrides=[
        Parameter('model_dir', value=str(model)), Parameter('device_id', value='dev0'),
        Parameter('static_pose', value='0 0 1 0'), Parameter('warm_up', value=False)])
    try:
        seen = []
        real = node.pipeline

        class RecordingPipeline:
            """FAKE wrapper: records the sensor models the node hands the real pipeline."""

            adapt_sensors = True

            def run(self, images, cubes, cameras=None, radars=None):
                seen.append((images[0].shape, cameras[0], radars[0]))
                real.adapt_sensors = self.adapt_sensors
                return real.run(images, cubes, cameras, radars)
        node.pipeline = RecordingPipeline()
        radar = RadarConfig(num_chirps=16, max_range_m=45.0)          # intersection_small's radar
        cube = (np.random.default_rng(1).standard_normal((4, 16, 128)) * (1 + 1j)).astype(np.complex64)
        rf = cv.rf_to_msg(cube, device_id='dev0', seq=0, radar=radar, stamp=cv.time_to_msg(1.0))
        img = cv.image_to_msg(np.zeros((72, 96, 3), np.uint8), 'rgb8', stamp=cv.time_to_msg(1.0))
        k = np.array([[77.2, 0, 47.5], [0, 77.2, 35.5], [0, 0, 1]])
        node._on_camera_info(cv.camera_info_msg(k, 96, 72))
        bad = cv.camera_info_msg(k, 96, 72)
        bad.k[0] = 0.0                                              # fx = 0: no camera
        node._on_camera_info(bad)
        node._pending = (1.0, img, rf)
        node._process()
        v = node.diag.snapshot()
        assert v['published'] == 1.0 and v['bad_camera_info'] == 1.0
        assert '96x72' in v['camera_model'] and '16 chirps' in v['radar_model']
        shape, camera, got_radar = seen[-1]
        assert shape == (72, 96, 3) and (camera.width, camera.fx) == (96, 77.2)
        assert got_radar.num_chirps == 16 and got_radar.bandwidth_hz == radar.bandwidth_hz
        # An image of another size than camera_info says is used as it is (and warned about).
        node._pending = (2.0, cv.image_to_msg(np.zeros((64, 64, 3), np.uint8), 'rgb8'), rf)
        node._process()
        assert seen[-1][1] is None and node.diag.snapshot()['published'] == 2.0
        # A rectified image is described by P, not K.
        node.cfg['camera_intrinsics'] = 'P'
        info = cv.camera_info_msg(k, 96, 72)
        info.p = [70.0, 0.0, 47.5, 0.0, 0.0, 70.0, 35.5, 0.0, 0.0, 0.0, 1.0, 0.0]
        node._on_camera_info(info)
        node._pending = (3.0, img, rf)
        node._process()
        assert seen[-1][1].fx == 70.0
    finally:
        node.destroy_node()


def test_aggregator_is_a_lifecycle_node(context, model):
    node = _aggregator(context, model, autostart=False)
    try:
        assert node.model is None and node.pipeline is None and not node.active
        assert node.count_subscribers('dev0/link/feature') == 0
        node.trigger_configure()                       # loads the model, subscribes
        assert node.pipeline is not None and node.count_subscribers('dev0/link/feature') == 1
        node._now = _Clock(100.0)
        node._on_feature('dev0', _feature(node, 'dev0', 99.9))
        assert node.diag.snapshot()['inactive_dropped'] == 1.0 and node.sync.pending == 0
        node.trigger_activate()
        node._on_feature('dev0', _feature(node, 'dev0', 99.95))
        assert node.sync.pending == 1
        node.trigger_deactivate()
        node.trigger_cleanup()                         # model and subscriptions released
        assert node.pipeline is None and node.count_subscribers('dev0/link/feature') == 0
        node.trigger_configure()
        node.trigger_activate()
        assert node.active and node.pipeline is not None
    finally:
        node.destroy_node()


def test_header_scope_tags_survive_the_link_and_stop_forgeries_and_replays(context, model, tmp_path):
    from disac_ros.core.fleet_config import write_fleet_key
    from disac_ros.core.packet import KeyRing
    key_file = write_fleet_key(tmp_path / 'key')
    assert (Path(key_file).stat().st_mode & 0o777) == 0o600
    node = _aggregator(context, model, verify_auth=True, key_file=key_file, auth_scope='header')
    try:
        node._now = _Clock(100.0)
        ring = KeyRing.from_file(key_file)
        signed = _feature(node, 'dev0', 99.9)
        signed.auth_tag = array.array('B', ring.sign(fm.packet_fields(signed), 'header'))
        # What the radio link does: other symbols, re-quantised, SNR and distance written in.
        noisy = np.random.default_rng(1).standard_normal((node.pipeline.num_symbols, 2)).astype(np.float32)
        fm.set_payload(signed, quantize(noisy, 6))
        signed.snr_db, signed.distance_m = 3.0, 80.0
        node._on_feature('dev0', signed)
        assert node.sync.pending == 1 and _counts(node)['auth_failed'] == 0.0
        node._on_feature('dev0', signed)                          # the same packet again
        assert _counts(node)['replayed'] == 1.0
        forged = _feature(node, 'dev1', 99.9)
        other = KeyRing.from_mapping({'shared_secret': 'hex:' + '11' * 32})
        forged.auth_tag = array.array('B', other.sign(fm.packet_fields(forged), 'header'))
        node._on_feature('dev1', forged)
        moved = _feature(node, 'dev1', 99.95)
        moved.auth_tag = array.array('B', ring.sign(fm.packet_fields(moved), 'header'))
        moved.device_pose.position.x += 5.0                      # a pose changed after signing
        node._on_feature('dev1', moved)
        unsigned = _feature(node, 'dev1', 99.97)
        node._on_feature('dev1', unsigned)
        assert _counts(node)['auth_failed'] == 3.0 and node.sync.pending == 1
    finally:
        node.destroy_node()


def test_shipped_parameter_files_load_with_ros_args(context, model, tmp_path):
    """`ros2 run disac_ros aggregator_node --ros-args --params-file config/params/aggregator.yaml`."""
    from disac_ros.nodes.aggregator_node import AggregatorNode
    import yaml
    shipped = Path(__file__).resolve().parents[1] / 'config' / 'params' / 'aggregator.yaml'
    doc = yaml.safe_load(shipped.read_text())
    doc['/**/aggregator']['ros__parameters']['fusion_radius_m'] = 3.25      # visible if the file is read
    mine = tmp_path / 'aggregator.yaml'
    mine.write_text(yaml.safe_dump(doc))
    node = AggregatorNode(context=context, cli_args=['--ros-args', '--params-file', str(mine)],
                          parameter_overrides=[Parameter('model_dir', value=str(model)),
                                               Parameter('device_ids', value=DEVICES)])
    try:
        assert node.cfg['fusion_radius_m'] == 3.25 and node.cfg['max_stamp_age_s'] == 10.0
    finally:
        node.destroy_node()
