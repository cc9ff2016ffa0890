"""rf_synth_node as a real process: RF frames from a ground-truth topic and from /tf object poses,
with the target at the right range (FFT peak), received by an independent subscriber."""
import time

import numpy as np
import pytest

pytest.importorskip('disac_interfaces.msg', reason='needs the built workspace (scripts/setup.sh)')

from disac_interfaces.msg import RfFrame, TrackedObjectArray  # noqa: E402
from tf2_msgs.msg import TFMessage  # noqa: E402

from disac_ros.core.rf import range_axis_m, range_doppler_map  # noqa: E402
from disac_ros.core.rf_config import RadarConfig  # noqa: E402
from disac_ros.core.types import ObjectTruth, Pose  # noqa: E402
from disac_ros.nodes import conversions as cv  # noqa: E402
from disac_ros.nodes.qos import reliable_qos  # noqa: E402
from ros_helpers import Observer, Proc, new_domain_id, ros_env  # noqa: E402

pytestmark = [pytest.mark.ros]


def peak_range(msg):
    cfg = RadarConfig(num_rx=4, num_chirps=16, num_samples=64)
    rd = range_doppler_map(cv.msg_to_rf(msg), cfg)
    return float(range_axis_m(cfg)[int(np.argmax(rd.max(axis=0)))])


def test_rf_frames_from_ground_truth_and_from_tf_objects(tmp_path):
    domain = new_domain_id()
    obs = Observer(domain)
    obs.subscribe('/dev0/rf/frame', RfFrame, reliable_qos(20))
    gt_pub = obs.node.create_publisher(TrackedObjectArray, '/world/ground_truth', reliable_qos(10))
    tf_pub = obs.node.create_publisher(TFMessage, '/tf', reliable_qos(10))
    proc = Proc.python('disac_ros.nodes.rf_synth_node', '--ros-args', '-p', 'device_ids:=[dev0]',
                       '-p', "static_poses:=['dev0 0 0 0 0']", '-p', 'radar_forward_m:=0.0', '-p', 'qos:=reliable',
                       '-p', "object_frames:=['car_1:car']", '-p', 'rate_hz:=20.0',
                       env=ros_env(domain), log=tmp_path / 'rf.log')
    try:
        assert obs.wait_until(lambda: gt_pub.get_subscription_count() > 0 and tf_pub.get_subscription_count() > 0,
                              60), proc.tail()
        stamp = cv.time_to_msg(1000.0)
        car = ObjectTruth(1, 'car', np.array([15.0, 0.0, 0.75]), np.zeros(3), 0.0, (4.5, 1.9, 1.5))
        # Sent at every poll until a frame arrives: the node's RF publisher may match the
        # observer's subscription only after the first ground-truth message has been turned
        # into a frame (one frame per message, so an early one is lost to an unmatched reader).
        gt = cv.objects_to_msg([car], stamp, 'world')
        assert obs.wait_until(lambda: gt_pub.publish(gt) or obs.messages('/dev0/rf/frame'),
                              20, period=0.2), proc.tail()
        for _, msg in obs.messages('/dev0/rf/frame'):
            assert cv.msg_to_ns(msg.header.stamp) == cv.msg_to_ns(stamp) and msg.device_id == 'dev0'
            assert peak_range(msg) == pytest.approx(15.0 - 2.25, abs=1.5)   # the car's near face
        obs.clear()
        for k in range(3):                 # an object known only by its /tf frame, 8-9 m ahead, moving
            t = cv.time_to_msg(2000.0 + 0.1 * k)
            tf_pub.publish(TFMessage(transforms=[cv.pose_to_transform(Pose((8.0 + 0.5 * k, 0.0, 0.75), 0.0),
                                                                       'world', 'car_1', t)]))
            time.sleep(0.15)
        assert obs.wait_for_messages(['/dev0/rf/frame'], 1, 20), proc.tail()
        _, msg = obs.messages('/dev0/rf/frame')[-1]
        assert cv.msg_to_time(msg.header.stamp) >= 2000.0
        assert peak_range(msg) == pytest.approx(9.0 - 2.25, abs=1.5)
        assert proc.stop() == 0
    finally:
        if proc.proc.poll() is None:
            proc.kill()
        obs.close()
