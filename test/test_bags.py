"""Bags: ROS-free read/write helpers, and record a running world -> replay -> identical messages.

The live part shares one world run (runner + Genesis, 2 devices, 5 Hz) recorded by bag_recorder for
about 3 s; the bag is then replayed by bag_player into an rclpy observer on a fresh ROS domain.
"""
from __future__ import annotations

from pathlib import Path
import shutil
import sys
import warnings

import numpy as np
import pytest

from disac_ros.core.bagfile import (BagWriter, bag_info, format_info, make_typestore, read_messages,
                                    topic_matches)
from disac_ros.core.errors import ConfigError

DEVICES = ['dev0', 'dev1']
RATE_HZ = 5.0
DATA_TOPICS = [f'/{d}/{t}' for d in DEVICES for t in ('camera/image_raw', 'camera/camera_info', 'rf/frame')] + [
    '/world/ground_truth', '/tf']
RECORD_TOPICS = DATA_TOPICS + ['/tf_static']


def LIVE(test):  # noqa: N802 - reads as a marker
    """Mark a test that runs the world and ROS processes."""
    return pytest.mark.ros(pytest.mark.genesis(test))


# ---- ROS-free helpers ----------------------------------------------------------------------------

def test_bag_writer_and_reader_round_trip_custom_types(tmp_path):
    store = make_typestore()
    assert 'disac_interfaces/msg/RfFrame' in store.fielddefs
    rf = store.types['disac_interfaces/msg/RfFrame']
    header = store.types['std_msgs/msg/Header'](stamp=store.types['builtin_interfaces/msg/Time'](sec=1, nanosec=2),
                                                frame_id='dev0/radar')
    msg = rf(header=header, device_id='dev0', seq=3, dims=['rx'], shape=np.array([2], np.uint32),
             iq=np.arange(4, dtype=np.float32), carrier_frequency_hz=77e9, bandwidth_hz=3e8,
             chirp_duration_s=1e-5, chirp_interval_s=2e-5, sample_rate_hz=5e6, rx_spacing_m=0.002,
             noise_power_dbm=-95.0)
    cdr = store.serialize_cdr(msg, 'disac_interfaces/msg/RfFrame')
    with BagWriter(tmp_path / 'b', typestore=store) as w:
        w.add_topic('/dev0/rf/frame', 'disac_interfaces/msg/RfFrame', reliable=False)
        w.add_topic('/tf_static', 'tf2_msgs/msg/TFMessage', latched=True)
        w.write('/dev0/rf/frame', 1_000, cdr)
        w.write('/dev0/rf/frame', 3_000, cdr)
        w.write('/tf_static', 2_000, store.serialize_cdr(store.types['tf2_msgs/msg/TFMessage'](transforms=[]),
                                                         'tf2_msgs/msg/TFMessage'))
    msgs = list(read_messages(tmp_path / 'b'))
    assert [(m.topic, m.timestamp_ns) for m in msgs] == [('/dev0/rf/frame', 1_000), ('/tf_static', 2_000),
                                                         ('/dev0/rf/frame', 3_000)]
    assert msgs[0].data == cdr
    assert store.deserialize_cdr(msgs[0].data, msgs[0].msgtype).device_id == 'dev0'
    info = bag_info(tmp_path / 'b')
    assert (info.storage, info.message_count, info.duration_s) == ('mcap', 3, pytest.approx(2e-6))
    assert [(t.topic, t.count, t.latched) for t in info.topics] == [('/dev0/rf/frame', 2, False),
                                                                    ('/tf_static', 1, True)]
    assert '/tf_static' in format_info(info) and '(latched)' in format_info(info)
    assert [m.topic for m in read_messages(tmp_path / 'b', topics=['/tf_static'])] == ['/tf_static']


def test_bag_helpers_reject_bad_input(tmp_path):
    with pytest.raises(ConfigError, match='storage'):
        BagWriter(tmp_path / 'x', storage='rosbag1')
    (tmp_path / 'exists').mkdir()
    with pytest.raises(ConfigError, match='already exists'):
        BagWriter(tmp_path / 'exists')
    with pytest.raises(ConfigError, match='metadata.yaml'):
        bag_info(tmp_path / 'exists')
    with BagWriter(tmp_path / 'y') as w:
        with pytest.raises(ConfigError, match='unknown'):
            w.add_topic('/x', 'nope_msgs/msg/Nope')


def test_topic_patterns():
    assert topic_matches('/dev0/rf/frame', ['all'])
    assert topic_matches('/dev0/rf/frame', ['/tf', 're:/dev[0-9]+/rf/frame'])
    assert not topic_matches('/dev0/rf/frame_x', ['re:/dev[0-9]+/rf/frame', '/dev0/rf'])


# ---- live: record a running world, replay it ------------------------------------------------------

@pytest.fixture(scope='module')
def recorded(tmp_path_factory):
    """Record ~3 s of a running world into an MCAP bag; returns (bag path, recorder log).

    The recorder joins a world that is already publishing, the way a user starts ``ros2 bag
    record`` on a live robot: every topic, /tf_static included, is discovered late and /tf_static's
    one latched message must still reach the bag. (Starting both together also raced the world's
    first step, which compiles Genesis kernels on a fresh machine.)
    """
    pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')
    from sensor_msgs.msg import Image

    from disac_ros.nodes.qos import sensor_qos
    from ros_helpers import WORLD_START_TIMEOUT_S, Observer, Proc, fleet_subset_config, new_domain_id, ros_env

    tmp = tmp_path_factory.mktemp('bag')
    domain = new_domain_id()
    env = ros_env(domain)
    bag = tmp / 'world_bag'
    obs = Observer(domain)
    obs.subscribe('/dev0/camera/image_raw', Image, sensor_qos(10))
    runner = Proc([sys.executable, '-m', 'disac_ros.tools.fleet', '--config', str(fleet_subset_config(tmp, ['world'])),
                   '--num-devices', str(len(DEVICES)), '-p', f'world.rate_hz={RATE_HZ}'], env, tmp / 'fleet.log')
    recorder = None
    try:
        assert obs.wait_for_messages(['/dev0/camera/image_raw'], 2, WORLD_START_TIMEOUT_S, alive=runner), \
            f'the world published no frames:\n{runner.tail()}'
        topics = '[' + ', '.join(RECORD_TOPICS) + ']'
        for attempt in (1, 2):
            recorder = Proc.python('disac_ros.nodes.bag_recorder', '--ros-args', '-p', f'output:={bag}',
                                   '-p', f'topics:={topics}', '-p', 'discovery_period_s:=0.2',
                                   env=env, log=tmp / f'recorder{attempt}.log')

            def subscribed() -> int:
                return recorder.output().count(']: subscribed ')
            if obs.wait_until(lambda: subscribed() == len(RECORD_TOPICS) or recorder.proc.poll() is not None, 60):
                break
            failure = (f'recorder did not subscribe to all of {RECORD_TOPICS}:\n{recorder.tail()}\n'
                       f'the test observer sees publishers: {graph_publishers(obs.node, RECORD_TOPICS)}')
            assert attempt == 1, f'{failure}\n{runner.tail()}'
            # Once (CI, 2026-11-27) DDS discovery never delivered one publisher to a recorder: say
            # so, and give a fresh participant one more chance before failing.
            warnings.warn(f'restarting the recorder: {failure}')
            recorder.kill()
            shutil.rmtree(bag, ignore_errors=True)
        obs.clear()
        # Record until the observer has seen ~3 s of frames (event-driven, bounded).
        assert obs.wait_for_messages(['/dev0/camera/image_raw'], int(3 * RATE_HZ), 30, alive=runner), runner.tail()
        assert recorder.stop() == 0, recorder.tail()
        assert runner.stop(timeout=30) == 0, runner.tail()
    finally:
        for p in (recorder, runner):
            if p is not None and p.proc.poll() is None:
                p.kill()
        obs.close()
    return bag, recorder


def graph_publishers(node, topics: list[str]) -> dict[str, int]:
    """Publisher count per topic in ``node``'s view of the graph (tells a discovery failure apart)."""
    return {t: node.count_publishers(t) for t in topics}


@LIVE
def test_recorder_captured_every_world_topic(recorded):
    bag, recorder = recorded
    info = bag_info(bag)
    counts = {t.topic: t.count for t in info.topics}
    assert set(counts) == set(RECORD_TOPICS), format_info(info)
    assert counts['/tf_static'] == 1 and [t.latched for t in info.topics if t.topic == '/tf_static'] == [True]
    for topic in DATA_TOPICS:
        assert counts[topic] >= 2 * RATE_HZ, format_info(info)    # >= 2 s of data on every topic
    types = {t.topic: t.msgtype for t in info.topics}
    assert types['/dev0/rf/frame'] == 'disac_interfaces/msg/RfFrame'
    assert types['/world/ground_truth'] == 'disac_interfaces/msg/TrackedObjectArray'
    assert info.storage == 'mcap' and any(Path(bag).glob('*.mcap'))


def play_and_capture(bag: Path, tmp: Path, *params: str, topics: list[str] | None = None):
    """Run bag_player on a fresh domain; return (rc, observer data per topic, player log)."""
    from rosgraph_msgs.msg import Clock

    from disac_ros.nodes.bag_recorder import message_class
    from disac_ros.nodes.qos import latched_qos, reliable_qos
    from ros_helpers import Observer, Proc, new_domain_id, ros_env

    info = bag_info(bag)
    domain = new_domain_id()
    obs = Observer(domain)
    wanted = [t for t in info.topics if topics is None or t.topic in topics]
    for t in wanted:
        qos = latched_qos(10) if t.latched else reliable_qos(1000)
        obs.subscribe(t.topic, message_class(t.msgtype), qos, raw=True)
    obs.subscribe('/clock', Clock, reliable_qos(1000))
    args = ['-p', f'bag:={bag}', '-p', 'wait_for_subscribers:=1', '-p', 'start_delay_s:=0.3', *params]
    if topics is not None:
        args += ['-p', 'topics:=[' + ', '.join(topics) + ']']
    player = Proc.python('disac_ros.nodes.bag_player', '--ros-args', *args, env=ros_env(domain),
                         log=tmp / f'player_{domain}.log')
    try:
        player.proc.wait(timeout=60)
        rc = player.proc.returncode
        # Everything was acknowledged before the player exited (wait_for_all_acked).
        data = {t.topic: obs.messages(t.topic) for t in wanted}
        data['/clock'] = obs.messages('/clock')
    finally:
        if player.proc.poll() is None:
            player.kill()
        obs.close()
    return rc, data, player


@LIVE
def test_replay_is_byte_identical_in_order_with_original_timing_and_clock(recorded, tmp_path):
    bag, _ = recorded
    rc, data, player = play_and_capture(bag, tmp_path)
    assert rc == 0, player.tail()
    by_topic: dict[str, list] = {}
    for m in read_messages(bag):
        by_topic.setdefault(m.topic, []).append(m)
    for topic, recorded_msgs in by_topic.items():
        got = data[topic]
        assert [bytes(d) for _, d in got] == [m.data for m in recorded_msgs], \
            f'{topic}: {len(got)} received vs {len(recorded_msgs)} recorded'
        if len(got) > 1:
            # Inter-message timing: receive offsets vs recorded offsets.
            recv = np.array([t for t, _ in got]) - got[0][0]
            orig = (np.array([m.timestamp_ns for m in recorded_msgs]) - recorded_msgs[0].timestamp_ns) * 1e-9
            assert np.max(np.abs(recv - orig)) < 0.15, f'{topic}: timing error {np.max(np.abs(recv - orig)):.3f} s'
    clock = [c.clock.sec * 10**9 + c.clock.nanosec for _, c in data['/clock']]
    info = bag_info(bag)
    assert len(clock) > 10 and clock == sorted(clock)
    assert info.start_ns <= clock[0] and clock[-1] == info.end_ns


@LIVE
def test_replay_rate_factor_speeds_up_playback(recorded, tmp_path):
    bag, _ = recorded
    rc, data, player = play_and_capture(bag, tmp_path, '-p', 'rate:=4.0', '-p', 'publish_clock:=false',
                                        topics=['/dev0/rf/frame'])
    assert rc == 0, player.tail()
    got = data['/dev0/rf/frame']
    orig = [m.timestamp_ns for m in read_messages(bag, topics=['/dev0/rf/frame'])]
    assert len(got) == len(orig) and data['/clock'] == []
    span_recv = got[-1][0] - got[0][0]
    span_bag = (orig[-1] - orig[0]) * 1e-9
    assert span_recv == pytest.approx(span_bag / 4.0, abs=0.15)


@LIVE
def test_disac_bag_info_command(recorded, capsys):
    from disac_ros.tools import bag as bag_cli
    bag, _ = recorded
    assert bag_cli.main(['info', str(bag)]) == 0
    out = capsys.readouterr().out
    assert 'mcap' in out and '/dev0/rf/frame' in out and 'disac_interfaces/msg/RfFrame' in out


@LIVE
def test_fleet_runner_with_source_bag_replays_and_exits_0(recorded, tmp_path):
    """disac_fleet --source bag starts bag_player instead of the world; it ends when the bag does."""
    from disac_ros.nodes.qos import reliable_qos
    from disac_interfaces.msg import RfFrame
    from ros_helpers import Observer, Proc, fleet_subset_config, new_domain_id, ros_env

    bag, _ = recorded
    domain = new_domain_id()
    obs = Observer(domain)
    obs.subscribe('/dev1/rf/frame', RfFrame, reliable_qos(1000), raw=True)
    # Only the player: the full graph's device and aggregator nodes would outlive the bag.
    config = fleet_subset_config(tmp_path, ['bag_player'])
    runner = Proc([sys.executable, '-m', 'disac_ros.tools.fleet', '--config', str(config),
                   '--source', 'bag', '--bag', str(bag), '-p', 'bag_player.wait_for_subscribers=1',
                   '-p', 'bag_player.topics=[/dev1/rf/frame]', '-p', 'bag_player.rate=2.0'],
                  ros_env(domain), tmp_path / 'fleet.log')
    try:
        runner.proc.wait(timeout=60)
    finally:
        if runner.proc.poll() is None:
            runner.kill()
        obs.close()
    out = runner.output()
    assert runner.proc.returncode == 0, out[-3000:]
    assert '/bag_player exited with code 0' in out and 'all nodes have exited' in out
    expected = [m.data for m in read_messages(bag, topics=['/dev1/rf/frame'])]
    assert [bytes(d) for _, d in obs.messages('/dev1/rf/frame')] == expected


@pytest.mark.ros
def test_player_loops_and_honours_start_offset(tmp_path):
    """A synthetic 3-message bag, offset past the first message, looped: 2, 3, 2, 3, ..."""
    pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')
    from disac_interfaces.msg import RfFrame
    from rclpy.serialization import serialize_message

    from disac_ros.nodes.qos import reliable_qos
    from ros_helpers import Observer, Proc, new_domain_id, ros_env

    payloads = [serialize_message(RfFrame(device_id='dev0', seq=k)) for k in range(3)]
    with BagWriter(tmp_path / 'tiny') as w:
        w.add_topic('/dev0/rf/frame', 'disac_interfaces/msg/RfFrame')
        for k, data in enumerate(payloads):
            w.write('/dev0/rf/frame', 1_000_000_000 + k * 100_000_000, data)
    domain = new_domain_id()
    obs = Observer(domain)
    obs.subscribe('/dev0/rf/frame', RfFrame, reliable_qos(100), raw=True)
    player = Proc.python('disac_ros.nodes.bag_player', '--ros-args', '-p', f'bag:={tmp_path / "tiny"}',
                         '-p', 'loop:=true', '-p', 'start_offset_s:=0.05', '-p', 'wait_for_subscribers:=1',
                         '-p', 'rate:=2.0', env=ros_env(domain), log=tmp_path / 'player.log')
    try:
        assert obs.wait_for_messages(['/dev0/rf/frame'], 6, 30, alive=player), player.tail()
        assert player.proc.poll() is None, 'a looping player must keep running'
        assert player.stop() == 0, player.tail()
    finally:
        if player.proc.poll() is None:
            player.kill()
        obs.close()
    got = [bytes(d) for _, d in obs.messages('/dev0/rf/frame')][:6]
    assert got == [payloads[1], payloads[2]] * 3
