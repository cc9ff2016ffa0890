"""The running fleet as real processes (fallback runner, no rclpy mocks), seen by an independent
rclpy observer in the test process.

Three runner starts, each shared by several checks:

* ``sim``: world (renderer none: RF + ground truth, black images) + 3 device nodes + link +
  aggregator. Tracks, markers, weights and diagnostics arrive; link side information is stamped;
  bad and foreign packets are counted while tracks keep flowing; killing one device leaves the
  aggregator publishing from the others; a restarted device rejoins.
* ``bag``: the same graph replaying a bag written here (no simulator).
* ``external``: no world and no link; the test publishes camera, RF and /tf itself; devices sign
  their features and the aggregator verifies them (an unsigned packet is refused). Here the two
  device nodes share one process (``--share-device-process``), each with its own parameters.

The model is a FAKE, UNTRAINED one (test/fake_model.py) with a low score threshold, so there are
detections and tracks to carry; accuracy is measured elsewhere with a trained model.
"""
from __future__ import annotations

import array
import math
import os
from pathlib import Path
import re
import signal
import sys
import time

import numpy as np
import pytest

pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')

from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402
from disac_interfaces.msg import AggregationWeights, RfFrame, SemanticFeature, TrackedObjectArray  # noqa: E402
from rclpy.serialization import serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402
from visualization_msgs.msg import MarkerArray  # noqa: E402

from disac_ros.core.bagfile import BagWriter  # noqa: E402
from disac_ros.core.rf_config import RadarConfig  # noqa: E402
from disac_ros.core.types import Pose  # noqa: E402
from disac_ros.nodes import conversions as cv  # noqa: E402
from disac_ros.nodes.qos import reliable_qos, sensor_qos  # noqa: E402
from fake_model import make_fake_model  # noqa: E402
from ros_helpers import REPO, Observer, Proc, new_domain_id, ros_env  # noqa: E402

pytestmark = [pytest.mark.ros]

START_TIMEOUT_S = 120.0
SECRET = 'hex:' + '11' * 32


@pytest.fixture(scope='module')
def fake_model(tmp_path_factory):
    return make_fake_model(tmp_path_factory.mktemp('fake_untrained_model') / 'model')


def runner(args, domain, log, model):
    return Proc([sys.executable, '-m', 'disac_ros.tools.fleet', '--config', str(REPO / 'config' / 'fleet.yaml'),
                 *args, '-p', f'model_dir={model}', '-p', 'aggregator.score_threshold=0.05'],
                ros_env(domain), log)


def diag_values(obs, name_part):
    """Latest key/value dict of the diagnostics status whose name contains name_part."""
    for _, msg in reversed(obs.messages('/diagnostics')):
        for st in msg.status:
            if name_part in st.name:
                return {kv.key: kv.value for kv in st.values}
    return {}


def subscribe_outputs(obs, devices):
    obs.subscribe('/aggregator/tracks', TrackedObjectArray, reliable_qos(50))
    obs.subscribe('/aggregator/markers', MarkerArray, reliable_qos(20))
    obs.subscribe('/aggregator/weights', AggregationWeights, reliable_qos(50))
    obs.subscribe('/diagnostics', DiagnosticArray, reliable_qos(100))
    for d in devices:
        obs.subscribe(f'/{d}/semantic/feature', SemanticFeature, sensor_qos(10))


def publish_until(obs, pub, msgs, done, timeout=20.0):
    """Publish ``msgs`` (fresh stamps) at every poll until ``done()``. A new publisher's
    subscription count also counts the test observer's own subscription, so the node under test
    may match it later, and best-effort messages sent before that are lost."""
    def step():
        for m in msgs:
            m.header.stamp = cv.time_to_msg(time.time())
            pub.publish(m)
        return done()
    return obs.wait_until(step, timeout, period=0.1)


def weight_devices(obs, since):
    return {d for t, m in obs.messages('/aggregator/weights') if t >= since for d in m.device_ids}


# ---------------------------------------------------------------------------------------- sim

@pytest.fixture(scope='module')
def sim(tmp_path_factory, fake_model):
    log_dir = tmp_path_factory.mktemp('fleet_sim')
    domain = new_domain_id()
    devices = ['dev0', 'dev1', 'dev2']
    obs = Observer(domain)
    subscribe_outputs(obs, devices)
    obs.subscribe('/world/ground_truth', TrackedObjectArray, reliable_qos(50))
    obs.subscribe('/dev0/link/feature', SemanticFeature, sensor_qos(10))
    proc = runner(['--num-devices', '3', '-p', 'world.renderer=none'], domain, log_dir / 'fleet.log', fake_model)
    extra = []
    try:
        ok = obs.wait_until(lambda: len(weight_devices(obs, 0)) == 3 or proc.proc.poll() is not None,
                            START_TIMEOUT_S)
        assert ok and proc.proc.poll() is None, f'no fused output from 3 devices:\n{proc.tail()}'
        yield {'obs': obs, 'proc': proc, 'domain': domain, 'log_dir': log_dir, 'extra': extra,
               'devices': devices}
    finally:
        for p in extra:
            if p.proc.poll() is None:
                p.kill()
        if proc.proc.poll() is None:
            proc.kill()
        obs.close()


def test_sim_tracks_markers_and_weights_arrive_in_the_world_frame(sim):
    obs = sim['obs']
    assert obs.wait_for_messages(['/aggregator/tracks', '/aggregator/markers', '/world/ground_truth'], 5, 30)
    tracks = [m for _, m in obs.messages('/aggregator/tracks')]
    assert all(m.header.frame_id == 'world' for m in tracks)
    gt_stamps = sorted(cv.msg_to_ns(m.header.stamp) for _, m in obs.messages('/world/ground_truth'))
    # Tracks are stamped with the sensor time of the fused group: a world step's stamp.
    inside = [cv.msg_to_ns(m.header.stamp) for m in tracks
              if gt_stamps[0] <= cv.msg_to_ns(m.header.stamp) <= gt_stamps[-1]]
    assert inside and all(s in set(gt_stamps) for s in inside)
    assert obs.wait_until(lambda: any(m.objects for _, m in obs.messages('/aggregator/tracks')), 30)
    w = obs.messages('/aggregator/weights')[-1][1]
    assert set(w.device_ids) <= set(sim['devices']) and sum(w.weights) == pytest.approx(1.0, abs=1e-3)
    assert all(math.isfinite(s) and s > -50 for s in w.snr_db) and all(d > 0 for d in w.distance_m)
    # The simulated fleet signs and verifies (fleet key, header scope) behind the emulated link.
    assert 'auth verified' in sim['proc'].output(), sim['proc'].tail()
    assert float(diag_values(obs, 'aggregator').get('auth_failed', 'nan')) == 0.0
    assert 'hex:' not in sim['proc'].output()          # the key is in a private file, not on a command line


def test_sim_devices_read_their_camera_from_camera_info_and_radar_from_the_rf_waveform(sim):
    obs = sim['obs']
    # The devices resample both to the model's sensors (sensor_adapt.py); here they already match.
    assert obs.wait_until(lambda: '128x128' in diag_values(obs, '/dev1/device_node').get('camera_model', ''), 20), \
        diag_values(obs, '/dev1/device_node')
    v = diag_values(obs, '/dev1/device_node')
    assert 'field of view 60.0 deg' in v['camera_model'] and v['radar_model'].startswith('32 chirps')
    assert float(v['bad_camera_info']) == 0.0 and float(v['bad_rf_waveform']) == 0.0


def test_sim_link_stamps_snr_and_distance_that_devices_leave_unknown(sim):
    obs = sim['obs']
    assert obs.wait_for_messages(['/dev0/semantic/feature', '/dev0/link/feature'], 3, 30)
    raw = obs.messages('/dev0/semantic/feature')[-1][1]
    linked = obs.messages('/dev0/link/feature')[-1][1]
    assert math.isnan(raw.snr_db) and math.isnan(raw.distance_m) and raw.device_id == 'dev0'
    assert math.isfinite(linked.snr_db) and linked.distance_m > 0
    p = raw.device_pose.position
    assert linked.distance_m == pytest.approx(max(1.0, math.hypot(p.x, p.y)), rel=0.5)


def test_sim_bad_packets_are_counted_and_tracks_keep_flowing(sim):
    obs = sim['obs']
    node = obs.node
    pub = node.create_publisher(SemanticFeature, '/dev0/link/feature', sensor_qos(10))
    assert obs.wait_until(lambda: pub.get_subscription_count() > 0, 15)
    bad_shape = SemanticFeature(device_id='dev0', codec_version=1, shape=array.array('I', [3, 2]), scale=1.0,
                                zero_point=128, bits_per_element=8, payload=array.array('B', [1] * 6))
    foreign = SemanticFeature(device_id='evil', codec_version=1)
    garbage = SemanticFeature(device_id='dev0', codec_version=1, shape=array.array('I', [16, 2]), scale=math.nan,
                              zero_point=0, bits_per_element=8, payload=array.array('B', [0] * 3))

    def counted():
        v = diag_values(obs, 'aggregator')
        return float(v.get('unknown_device', 0)) >= 1 and float(v.get('bad_payload', 0)) >= 2
    assert publish_until(obs, pub, (bad_shape, foreign, garbage), counted), diag_values(obs, 'aggregator')
    node.destroy_publisher(pub)
    t = time.monotonic()
    assert obs.wait_until(lambda: len([1 for r, _ in obs.messages('/aggregator/tracks') if r > t]) >= 3, 15)
    v = diag_values(obs, 'aggregator')
    for d in sim['devices']:
        assert f'{d}.since_heard_s' in v and f'{d}.snr_db' in v
    assert 'decode_fuse_ms_mean' in v and 'sensor_to_tracks_ms_mean' in v
    assert v['class_calibration'] == 'none'          # the fake model has no calibration file


def _params_file_args(pid: int) -> list[str]:
    """The '--params-file FILE' arguments of a running node (its own file, the fleet's, the user's)."""
    argv = Path(f'/proc/{pid}/cmdline').read_bytes().decode().split('\0')
    return [a for i, v in enumerate(argv) if v == '--params-file' for a in ('--params-file', argv[i + 1])]


def test_sim_killing_a_device_keeps_tracks_and_a_restart_rejoins(sim):
    obs, proc = sim['obs'], sim['proc']
    m = re.search(r'started /dev1/device_node \(pid (\d+)\)', proc.output())
    assert m, proc.tail()
    os.kill(int(m.group(1)), signal.SIGKILL)
    t_kill = time.monotonic()
    # After the active timeout (1 s) groups are fused without dev1, and tracks keep coming. On a
    # loaded machine the aggregator may still be publishing groups stamped before the kill, so
    # wait for the newest three fused groups, not for everything received 2 s after it.
    def newest_groups() -> list[set[str]]:
        return [set(m.device_ids) for t, m in obs.messages('/aggregator/weights')
                if t >= t_kill + 2.0][-3:]
    assert obs.wait_until(lambda: (len(newest_groups()) == 3
                                   and all(g == {'dev0', 'dev2'} for g in newest_groups())), 30), \
        newest_groups()
    assert obs.wait_until(lambda: len([1 for r, _ in obs.messages('/aggregator/tracks') if r > t_kill + 2.0]) >= 3,
                          15)
    assert proc.proc.poll() is None                                 # the runner and the rest live on
    # Restart it as an operator would: the same parameters file (device id, model, fleet key).
    dev0 = re.search(r'started /dev0/device_node \(pid (\d+)\)', proc.output())
    params = _params_file_args(int(dev0.group(1)))
    restarted = Proc.python('disac_ros.nodes.device_node', '--ros-args', '-r', '__node:=device_node',
                            '-r', '__ns:=/dev1', *params,
                            env=ros_env(sim['domain']), log=sim['log_dir'] / 'dev1_restart.log')
    sim['extra'].append(restarted)
    t_re = time.monotonic()
    assert obs.wait_until(lambda: 'dev1' in weight_devices(obs, t_re), 90), restarted.tail()
    assert restarted.stop() == 0


def test_sim_a_killed_aggregator_restarts_and_tracks_resume(sim):
    obs, proc = sim['obs'], sim['proc']
    pid = int(re.search(r'started /aggregator \(pid (\d+)\)', proc.output()).group(1))
    params = _params_file_args(pid)
    os.kill(pid, signal.SIGKILL)
    t_kill = time.monotonic()
    # The same parameters (devices, model, fleet key): a restart as an operator or a supervisor does.
    restarted = Proc.python('disac_ros.nodes.aggregator_node', '--ros-args', '-r', '__node:=aggregator',
                            *params, env=ros_env(sim['domain']),
                            log=sim['log_dir'] / 'aggregator_restart.log')
    sim['extra'].append(restarted)
    # Wait for the new process to load its model first: on a loaded machine the observer may
    # still be taking in messages the killed aggregator sent before the kill.
    assert restarted.wait_for_output('loaded mlp decoder', 90), restarted.tail()
    t_loaded = time.monotonic()
    assert obs.wait_until(lambda: len([1 for r, m in obs.messages('/aggregator/tracks') if r > t_loaded]) >= 3
                          and len(weight_devices(obs, t_loaded)) >= 2, 60), restarted.tail()
    first = min(r for r, _ in obs.messages('/aggregator/tracks') if r > t_loaded)
    print(f'tracks resumed {first - t_kill:.1f} s after the SIGKILL (restart incl. python + torch + model)')
    assert proc.proc.poll() is None
    assert restarted.stop() == 0, restarted.tail()


def test_sim_runner_stops_every_node_cleanly(sim):
    proc = sim['proc']
    # Exit 1: the runner reports the nodes the tests killed; every other node stops cleanly.
    assert proc.stop(signal.SIGINT, timeout=40) == 1, proc.tail()
    out = proc.output()
    for fqn in ('/world', '/dev0/device_node', '/dev2/device_node', '/link'):
        assert f'{fqn} exited with code 0' in out, proc.tail()
    assert '/dev1/device_node exited with signal SIGKILL' in out


# ---------------------------------------------------------------------------------------- bag

def write_sensor_bag(path, devices, seconds=6.0, rate=5.0):
    """A bag with camera, RF, /tf and ground truth for ``devices`` (random images, noise cubes)."""
    radar = RadarConfig(num_rx=4, num_chirps=16, num_samples=64)
    rng = np.random.default_rng(0)
    t0 = time.time() - 100.0
    with BagWriter(path) as w:
        for d in devices:
            w.add_topic(f'/{d}/camera/image_raw', 'sensor_msgs/msg/Image')
            w.add_topic(f'/{d}/rf/frame', 'disac_interfaces/msg/RfFrame')
        w.add_topic('/tf', 'tf2_msgs/msg/TFMessage')
        w.add_topic('/world/ground_truth', 'disac_interfaces/msg/TrackedObjectArray')
        for k in range(int(seconds * rate)):
            t = t0 + k / rate
            stamp = cv.time_to_msg(t)
            ns = cv.msg_to_ns(stamp)
            tfs = []
            for i, d in enumerate(devices):
                img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
                cube = (rng.normal(size=(4, 16, 64)) + 1j * rng.normal(size=(4, 16, 64))).astype(np.complex64)
                image = cv.image_to_msg(img, 'rgb8', stamp, f'{d}/camera_optical')
                rf = cv.rf_to_msg(cube, device_id=d, seq=k, radar=radar, stamp=stamp, frame_id=f'{d}/radar')
                w.write(f'/{d}/camera/image_raw', ns, serialize_message(image))
                w.write(f'/{d}/rf/frame', ns, serialize_message(rf))
                pose = Pose((20.0 * i - 10.0, 5.0, 0.0), 0.3 * i)
                tfs.append(cv.pose_to_transform(pose, 'world', f'{d}/base_link', stamp))
            w.write('/tf', ns, serialize_message(TFMessage(transforms=tfs)))
            w.write('/world/ground_truth', ns, serialize_message(cv.objects_to_msg([], stamp, 'world', devices)))
    return t0


def test_bag_source_runs_the_same_graph_without_a_simulator(tmp_path, fake_model):
    devices = ['dev0', 'dev1']
    t0 = write_sensor_bag(tmp_path / 'bag', devices)
    domain = new_domain_id()
    obs = Observer(domain)
    subscribe_outputs(obs, devices)
    # The player waits for a subscriber on every topic it plays, ground truth included.
    obs.subscribe('/world/ground_truth', TrackedObjectArray, reliable_qos(50))
    proc = runner(['--num-devices', '2', '--source', 'bag', '--bag', str(tmp_path / 'bag'),
                   '-p', 'bag_player.wait_for_subscribers=1', '-p', 'bag_player.wait_timeout_s=60',
                   '-p', 'bag_player.loop=true', '-p', 'bag_player.start_delay_s=1.0'],
                   domain, tmp_path / 'fleet.log', fake_model)
    try:
        assert obs.wait_until(lambda: weight_devices(obs, 0) == set(devices) or proc.proc.poll() is not None,
                              START_TIMEOUT_S), proc.tail()
        assert 'world' not in obs.node.get_node_names()
        # The bag loops: stamps jump back and the graph keeps fusing (tracker and pairing reset).
        t_loop = time.monotonic() + 7.0
        assert obs.wait_until(lambda: time.monotonic() > t_loop and weight_devices(obs, t_loop) == set(devices), 60)
        stamps = [cv.msg_to_time(m.header.stamp) for _, m in obs.messages('/aggregator/tracks')]
        # Tracks carry the bag's sensor stamps (on the 5 Hz grid of the recording).
        assert stamps and all(abs((s - t0) * 5.0 - round((s - t0) * 5.0)) < 1e-3 for s in stamps)
        assert proc.stop(signal.SIGINT, timeout=40) == 0, proc.tail()
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        obs.close()


# ------------------------------------------------------------------------------------ external

def test_external_source_with_signed_features_and_a_test_publisher(tmp_path, fake_model):
    devices = ['dev0', 'dev1']
    domain = new_domain_id()
    obs = Observer(domain)
    subscribe_outputs(obs, devices)
    node = obs.node
    radar = RadarConfig(num_rx=4, num_chirps=16, num_samples=64)
    pubs = {d: (node.create_publisher(Image, f'/{d}/camera/image_raw', sensor_qos(5)),
                node.create_publisher(RfFrame, f'/{d}/rf/frame', sensor_qos(5))) for d in devices}
    tf_pub = node.create_publisher(TFMessage, '/tf', reliable_qos(100))
    rng = np.random.default_rng(1)
    seq = [0]

    def publish_sensors():
        stamp = cv.time_to_msg(time.time())
        tfs = []
        for i, d in enumerate(devices):
            img = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
            cube = (rng.normal(size=(4, 16, 64)) + 1j * rng.normal(size=(4, 16, 64))).astype(np.complex64)
            tfs.append(cv.pose_to_transform(Pose((15.0 * i, -8.0, 0.0), 0.0), 'world', f'{d}/base_link', stamp))
            pubs[d][0].publish(cv.image_to_msg(img, 'rgb8', stamp, f'{d}/camera_optical'))
            pubs[d][1].publish(cv.rf_to_msg(cube, device_id=d, seq=seq[0], radar=radar, stamp=stamp))
        tf_pub.publish(TFMessage(transforms=tfs))
        seq[0] += 1

    timer = node.create_timer(0.2, publish_sensors)
    proc = runner(['--num-devices', '2', '--source', 'external', '--share-device-process',
                   '-p', f'shared_secret={SECRET}', '-p', 'aggregator.verify_auth=true'],
                  domain, tmp_path / 'fleet.log', fake_model)
    try:
        assert obs.wait_until(lambda: weight_devices(obs, 0) == set(devices) or proc.proc.poll() is not None,
                              START_TIMEOUT_S), proc.tail()
        names = obs.node.get_node_names()
        assert 'world' not in names and 'link' not in names
        feat = obs.messages('/dev0/semantic/feature')[-1][1]
        assert len(feat.auth_tag) == 16                        # devices sign with the fleet secret
        # An unsigned packet claiming to be dev1 is refused; fused output goes on.
        fake = SemanticFeature()
        fake.device_id, fake.codec_version = 'dev1', feat.codec_version
        fake.shape, fake.scale, fake.zero_point = feat.shape, feat.scale, feat.zero_point
        fake.bits_per_element, fake.payload = feat.bits_per_element, feat.payload
        forge = node.create_publisher(SemanticFeature, '/dev1/semantic/feature', sensor_qos(5))
        assert publish_until(obs, forge, (fake,),
                             lambda: float(diag_values(obs, 'aggregator').get('auth_failed', 0)) >= 1), \
            diag_values(obs, 'aggregator')
        t = time.monotonic()
        assert obs.wait_until(lambda: weight_devices(obs, t) == set(devices), 15)
        assert proc.stop(signal.SIGINT, timeout=40) == 0, proc.tail()
    finally:
        timer.cancel()
        if proc.proc.poll() is None:
            proc.kill()
        obs.close()


# ------------------------------------------------------------------------------- hang diagnosis

def test_a_node_prints_its_python_stacks_on_sigusr1(tmp_path):
    # How a node that hangs on SIGINT is diagnosed: disac_fleet sends SIGUSR1 before SIGTERM.
    code = ('import time\n'
            'from disac_ros.nodes.node_main import run_nodes\n'
            'def spin(nodes):\n'
            '    print("spinning", flush=True)\n'
            '    time.sleep(60)\n'
            'run_nodes(lambda nodes: None, spin, name="sleeper")\n')
    proc = Proc([sys.executable, '-c', code], ros_env(new_domain_id()), tmp_path / 'node.log')
    try:
        deadline = time.monotonic() + 60
        while 'spinning' not in proc.tail() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 'spinning' in proc.tail(), proc.tail()
        proc.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while 'in spin' not in proc.tail() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert 'most recent call first' in proc.tail() and 'in spin' in proc.tail(), proc.tail()
        assert proc.proc.poll() is None                      # the dump does not stop the node
    finally:
        proc.kill()
