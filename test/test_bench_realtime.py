"""The real-time harness's pure parts: CDR stamps, frame grouping, ros2_benchmark-style scoring.

The harness itself (``benchmarks/bench_realtime.py``) is a benchmark, not a test; these check that
what it measures is what it says.
"""
from __future__ import annotations

from pathlib import Path
import sys

import pytest
from rclpy.serialization import deserialize_message, serialize_message

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
from bench_realtime import (bag_devices, cdr_header_stamp_ns, group_frames, node_label,  # noqa: E402
                            score_segment, with_header_stamp)


def _image(stamp_ns: int) -> bytes:
    from sensor_msgs.msg import Image
    msg = Image(height=2, width=3, encoding='rgb8', step=9, data=bytes(range(18)))
    msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(stamp_ns, 1_000_000_000)
    msg.header.frame_id = 'dev0/camera_optical'
    return serialize_message(msg)


def test_header_stamps_are_read_and_rewritten_in_the_cdr_bytes():
    from sensor_msgs.msg import Image
    data = _image(12_500_000_123)
    assert cdr_header_stamp_ns(data) == 12_500_000_123
    moved = with_header_stamp(data, 1_764_770_000_250_000_000)
    msg = deserialize_message(moved, Image)
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (1_764_770_000, 250_000_000)
    assert msg.header.frame_id == 'dev0/camera_optical' and bytes(msg.data) == bytes(range(18))
    with pytest.raises(ValueError):
        cdr_header_stamp_ns(b'\x00\x07')


def test_only_complete_frames_are_kept_in_stamp_order():
    msgs = [('/dev0/camera/image_raw', _image(2)), ('/dev0/rf/frame', _image(2)),
            ('/dev1/camera/image_raw', _image(2)), ('/dev1/rf/frame', _image(2)),
            ('/dev0/camera/image_raw', _image(1)), ('/dev0/rf/frame', _image(1)),   # dev1 missing at 1
            ('/dev1/camera/image_raw', _image(1)), ('/world/ground_truth', _image(1))]
    frames = group_frames(msgs, ['dev0', 'dev1'])
    assert [f.stamp_ns for f in frames] == [2]
    assert sorted(frames[0].sensors) == ['/dev0/camera/image_raw', '/dev0/rf/frame',
                                         '/dev1/camera/image_raw', '/dev1/rf/frame']
    assert bag_devices(['/dev10/camera/image_raw', '/dev2/camera/image_raw', '/dev2/rf/frame', '/tf']) == \
        ['dev2', 'dev10']


def test_segment_scores_count_missed_frames_latency_and_jitter():
    rate = 10.0
    published = [(int((100.0 + i / rate) * 1e9), 100.0 + i / rate) for i in range(10)]
    # Frames 0-7 delivered 50 ms after their stamp, frame 8 twice (counted once), 9 never;
    # a tracks message with a stamp that was not published does not count.
    outputs = [(t + 0.05, s) for s, t in published[:9]] + [(published[8][1] + 0.2, published[8][0]),
                                                            (101.5, 42)]
    row = score_segment(published, outputs, rate, duration_s=1.0)
    assert row['frames_sent'] == 10 and row['NUM_MISSED_FRAMES'] == 1
    assert row['missed_share'] == pytest.approx(0.1)
    assert row['MEAN_FRAME_RATE'] == pytest.approx(9.0)
    assert row['latency_p50_ms'] == pytest.approx(50.0, abs=1e-3)
    assert row['latency_max_ms'] == pytest.approx(50.0, abs=1e-3)
    assert row['jitter_max_ms'] == pytest.approx(0.0, abs=1e-3)
    nothing = score_segment(published, [], rate, duration_s=1.0)
    assert nothing['NUM_MISSED_FRAMES'] == 10 and nothing['MEAN_FRAME_RATE'] == 0.0


def test_processes_are_labelled_by_node():
    assert node_label(['python', '-m', 'disac_ros.nodes.device_node', '--ros-args', '-r', '__node:=device_node',
                       '-r', '__ns:=/dev3']) == 'dev3/device_node'
    assert node_label(['python', '-m', 'disac_ros.nodes.aggregator_node', '--ros-args', '-r',
                       '__node:=aggregator', '-r', '__ns:=/']) == 'aggregator'
