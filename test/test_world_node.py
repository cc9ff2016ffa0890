"""A running world (started through the fallback runner) seen from a separate ROS participant.

One runner + world_node (Genesis, 2 devices, 5 Hz) is shared by the whole module; an rclpy observer
in the pytest process, on the test's own ROS domain, subscribes to every topic. Checks: encodings,
shapes, frames and stamps of images, camera_info and RF; the publish rate; ground truth; tf; and
that the runner stops its node and exits 0 on SIGINT.
"""
from __future__ import annotations

import math
import statistics
import sys
import time

import numpy as np
import pytest

pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from disac_interfaces.msg import RfFrame, TrackedObjectArray  # noqa: E402
from sensor_msgs.msg import CameraInfo, Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from disac_ros.core.scenario import load_scenario  # noqa: E402
from disac_ros.core.types import CLASS_NAMES  # noqa: E402
from disac_ros.nodes import conversions as cv  # noqa: E402
from disac_ros.nodes.qos import latched_qos, reliable_qos, sensor_qos  # noqa: E402
from ros_helpers import REPO, WORLD_START_TIMEOUT_S, Observer, Proc, new_domain_id, ros_env  # noqa: E402

pytestmark = [pytest.mark.ros, pytest.mark.genesis]

DEVICES = ['dev0', 'dev1']
RATE_HZ = 5.0
WINDOW_S = 4.0
SCENARIO = load_scenario(REPO / 'config' / 'scenarios' / 'default.yaml', num_devices=len(DEVICES))


def stamp_s(msg) -> float:
    return cv.msg_to_time(msg.header.stamp)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Start the fleet (world only), wait for data on every topic, then record a window."""
    log_dir = tmp_path_factory.mktemp('world')
    domain = new_domain_id()
    obs = Observer(domain)
    per_device = {}
    for d in DEVICES:
        per_device[f'/{d}/camera/image_raw'] = Image
        per_device[f'/{d}/camera/camera_info'] = CameraInfo
        per_device[f'/{d}/rf/frame'] = RfFrame
    for topic, typ in per_device.items():
        obs.subscribe(topic, typ, sensor_qos(10))
    obs.subscribe('/world/ground_truth', TrackedObjectArray, reliable_qos(50))
    obs.subscribe('/tf', TFMessage, reliable_qos(100))
    obs.subscribe('/tf_static', TFMessage, latched_qos(10))
    obs.subscribe('/diagnostics', DiagnosticArray, reliable_qos(50))
    runner = Proc([sys.executable, '-m', 'disac_ros.tools.fleet', '--config', str(world_only_config(log_dir)),
                   '--num-devices', str(len(DEVICES)), '-p', f'world.rate_hz={RATE_HZ}'],
                  ros_env(domain), log_dir / 'fleet.log')
    try:
        topics = list(per_device) + ['/world/ground_truth', '/tf']
        started = obs.wait_for_messages(topics, 2, WORLD_START_TIMEOUT_S, alive=runner)
        assert started, f'no data on every topic within {WORLD_START_TIMEOUT_S} s:\n{runner.tail()}'
        obs.clear(topics)
        t0 = time.monotonic()
        obs.wait_until(lambda: runner.proc.poll() is not None, WINDOW_S)   # the measurement window
        window = {t: obs.messages(t) for t in topics}
        yield {'obs': obs, 'runner': runner, 'window': window, 'window_s': time.monotonic() - t0,
               'wall_offset': time.time() - time.monotonic()}
    finally:
        if runner.proc.poll() is None:
            runner.kill()
        obs.close()


@pytest.mark.parametrize('dev', DEVICES)
def test_images_are_rgb8_with_the_scenario_shape_frame_and_sim_stamps(world, dev):
    msgs = [m for _, m in world['window'][f'/{dev}/camera/image_raw']]
    assert msgs
    w, h = SCENARIO.camera.width, SCENARIO.camera.height
    for m in msgs:
        assert (m.encoding, m.width, m.height, m.step, len(m.data)) == ('rgb8', w, h, 3 * w, 3 * w * h)
        assert m.header.frame_id == f'{dev}/camera_optical'
    img = cv.msg_to_image(msgs[-1])
    assert img.shape == (h, w, 3) and img.std() > 1.0          # a rendered scene, not a blank frame
    stamps = [stamp_s(m) for m in msgs]
    steps = np.diff(stamps) * RATE_HZ
    # Sim time advances exactly 1/rate per step; a dropped best-effort frame shows as a multiple.
    assert np.all(steps > 0.5) and np.allclose(steps, np.round(steps), atol=1e-3)
    assert np.mean(np.round(steps) == 1) >= 0.8
    # Not on sim time: stamps are offset to wall time (within a second while the world keeps up).
    recv_wall = [t + world['wall_offset'] for t, _ in world['window'][f'/{dev}/camera/image_raw']]
    lag = statistics.median(r - s for r, s in zip(recv_wall, stamps))
    assert -0.05 < lag < 1.0, f'median receive - stamp = {lag:.3f} s'


@pytest.mark.parametrize('dev', DEVICES)
def test_camera_info_matches_images(world, dev):
    infos = [m for _, m in world['window'][f'/{dev}/camera/camera_info']]
    images = {stamp_s(m) for _, m in world['window'][f'/{dev}/camera/image_raw']}
    assert infos
    info = infos[-1]
    assert info.header.frame_id == f'{dev}/camera_optical' and info.distortion_model == 'plumb_bob'
    assert (info.width, info.height) == (SCENARIO.camera.width, SCENARIO.camera.height)
    K = cv.camera_info_to_k(info)
    fy = SCENARIO.camera.height / (2 * math.tan(math.radians(SCENARIO.camera.fov_deg) / 2))
    assert K[1, 1] == pytest.approx(fy, rel=1e-3) and K[0, 2] == pytest.approx(SCENARIO.camera.width / 2, abs=1)
    assert list(info.p[:3]) == list(info.k[:3]) and info.p[3] == 0.0
    # Same stamp as the image of the same step.
    assert len({stamp_s(m) for m in infos} & images) >= 0.8 * min(len(infos), len(images))


@pytest.mark.parametrize('dev', DEVICES)
def test_rf_frames_have_the_radar_shape_and_waveform(world, dev):
    msgs = [m for _, m in world['window'][f'/{dev}/rf/frame']]
    assert msgs
    r = SCENARIO.radar
    for m in msgs:
        assert list(m.dims) == ['rx', 'chirp', 'sample']
        assert list(m.shape) == [r.num_rx, r.num_chirps, r.num_samples]
        assert len(m.iq) == 2 * r.num_rx * r.num_chirps * r.num_samples
        assert m.device_id == dev and m.header.frame_id == f'{dev}/radar'
        assert m.carrier_frequency_hz == r.carrier_frequency_hz and m.sample_rate_hz == r.sample_rate_hz
    cube = cv.msg_to_rf(msgs[-1])
    assert cube.dtype == np.complex64 and np.all(np.isfinite(cube)) and np.abs(cube).max() > 0
    seqs = [m.seq for m in msgs]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_publish_rate_matches_the_configured_rate(world):
    for dev in DEVICES:
        for topic in (f'/{dev}/camera/image_raw', f'/{dev}/rf/frame'):
            times = [t for t, _ in world['window'][topic]]
            assert len(times) >= 3, topic
            rate = (len(times) - 1) / (times[-1] - times[0])
            # Generous bounds: a shared 2-core machine; the stamp test checks the exact sim step.
            assert 0.6 * RATE_HZ <= rate <= 1.3 * RATE_HZ, f'{topic}: {rate:.2f} Hz'
            count = len(times)
            assert 0.5 * RATE_HZ * world['window_s'] <= count <= 1.3 * RATE_HZ * world['window_s'] + 2, topic


def test_ground_truth_lists_objects_with_sensing_flags(world):
    msgs = [m for _, m in world['window']['/world/ground_truth']]
    assert msgs
    last = msgs[-1]
    assert last.header.frame_id == 'world' and len(last.objects) > 0
    for o in last.objects:
        assert 0 < o.classification < len(CLASS_NAMES) and o.class_confidence == 1.0
        assert set(o.contributing_devices) <= set(DEVICES)
        assert len(o.sensed_by_modalities) == len(o.contributing_devices)
        assert all(b in (1, 2, 3) for b in o.sensed_by_modalities)
        assert o.dimensions.x > 0 and 0 < o.pose.covariance[0] < 0.01
    assert any(o.contributing_devices for m in msgs for o in m.objects), 'no device ever senses anything'
    image_stamps = {stamp_s(m) for _, m in world['window']['/dev0/camera/image_raw']}
    assert {stamp_s(m) for m in msgs} & image_stamps


def test_tf_has_device_poses_and_static_sensor_frames(world):
    tf = [m for _, m in world['window']['/tf']]
    assert tf
    children = {t.child_frame_id for m in tf for t in m.transforms}
    assert children == {f'{d}/base_link' for d in DEVICES}
    assert all(t.header.frame_id == 'world' for m in tf for t in m.transforms)
    static = world['obs'].messages('/tf_static')
    assert static, 'no /tf_static (transient local) received'
    pairs = {(t.header.frame_id, t.child_frame_id) for _, m in static for t in m.transforms}
    assert pairs == {(f'{d}/base_link', f'{d}/{s}') for d in DEVICES for s in ('camera_optical', 'radar')}


def test_diagnostics_report_rate_and_step_time(world):
    obs = world['obs']
    assert obs.wait_until(lambda: any(s.name.startswith('/world') for _, m in obs.messages('/diagnostics')
                                      for s in m.status), 5.0)
    status = [s for _, m in obs.messages('/diagnostics') for s in m.status if s.name.startswith('/world')][-1]
    values = {kv.key: float(kv.value) for kv in status.values}
    assert {'step_ms_mean', 'render_ms_mean', 'published_hz', 'overruns', 'steps'} <= set(values)
    assert values['published_hz'] == pytest.approx(RATE_HZ, rel=0.4)


def test_runner_stops_the_world_and_exits_0_on_sigint(world):
    runner = world['runner']
    assert runner.proc.poll() is None, runner.tail()
    rc = runner.stop(timeout=30)
    out = runner.output()
    assert rc == 0, out[-3000:]
    assert '/world exited with code 0' in out


def test_world_on_sim_time_publishes_clock_and_sim_stamps(tmp_path):
    """use_sim_time:=true -> /clock carries world time and stamps are world time (no Genesis)."""
    from rosgraph_msgs.msg import Clock
    domain = new_domain_id()
    obs = Observer(domain)
    obs.subscribe('/clock', Clock, reliable_qos(100))
    obs.subscribe('/dev0/rf/frame', RfFrame, reliable_qos(100))
    rate = 20.0
    node = Proc.python('disac_ros.nodes.world_node', '--ros-args', '-p', 'use_sim_time:=true',
                       '-p', 'renderer:=none', '-p', 'num_devices:=1', '-p', f'rate_hz:={rate}',
                       '-p', 'sensor_qos:=reliable', env=ros_env(domain), log=tmp_path / 'world.log')
    try:
        assert obs.wait_for_messages(['/clock', '/dev0/rf/frame'], 10, 60, alive=node), node.tail()
        assert node.stop() == 0, node.tail()
    finally:
        if node.proc.poll() is None:
            node.kill()
        obs.close()
    clock = [cv.msg_to_time(c.clock) for _, c in obs.messages('/clock')]
    rf = [stamp_s(m) for _, m in obs.messages('/dev0/rf/frame')]
    assert clock == sorted(clock) and clock[-1] < 600, 'sim time, not wall time'
    assert np.allclose(np.array(clock) * rate, np.round(np.array(clock) * rate), atol=1e-6)
    assert set(rf) <= set(clock) and len(rf) >= 10
    assert 'sim stamps, clock on' in node.output()


def world_only_config(tmp_path):
    """config/fleet.yaml reduced to its world entry: these tests are about the world and the runner."""
    from ros_helpers import fleet_subset_config
    return fleet_subset_config(tmp_path, ['world'])


def _runner(tmp_path, domain, *args):
    return Proc([sys.executable, '-m', 'disac_ros.tools.fleet', '--config', str(world_only_config(tmp_path)),
                 '--num-devices', '1', '-p', 'world.renderer=none', *args], ros_env(domain), tmp_path / 'fleet.log')


def test_runner_forwards_sigterm_and_exits_0(tmp_path):
    import signal
    domain = new_domain_id()
    obs = Observer(domain)
    obs.subscribe('/dev0/rf/frame', RfFrame, sensor_qos(10))
    runner = _runner(tmp_path, domain, '-p', 'world.rate_hz=20')
    try:
        assert obs.wait_for_messages(['/dev0/rf/frame'], 3, 60, alive=runner), runner.tail()
        assert runner.stop(signal.SIGTERM, timeout=30) == 0, runner.tail()
    finally:
        if runner.proc.poll() is None:
            runner.kill()
        obs.close()
    assert '/world exited with code 0' in runner.output()


def test_runner_reports_a_failing_node_and_exits_1(tmp_path):
    runner = _runner(tmp_path, new_domain_id(), '-p', 'world.rate_hz=-1.0')
    try:
        rc = runner.proc.wait(timeout=60)
    finally:
        if runner.proc.poll() is None:
            runner.kill()
    out = runner.output()
    assert rc == 1, out
    assert 'configuration error: world.rate_hz' in out and '-1.0' in out   # names the bad parameter
    assert '/world exited with code 2 (not restarted)' in out and 'all nodes have exited' in out


def test_a_stalled_first_step_moves_the_stamps_on_by_whole_periods_only():
    from disac_ros.nodes.world_node import stall_catch_up_s
    assert stall_catch_up_s(3.73, 0.1) == pytest.approx(3.7)     # 37 periods lost compiling
    assert stall_catch_up_s(0.08, 0.1) == 0.0                    # jitter: no shift
    assert stall_catch_up_s(-0.02, 0.1) == 0.0                   # early: never backwards
    assert stall_catch_up_s(0.5, 0.25) == pytest.approx(0.5)
