"""launch_testing test of launch/fleet.launch.py, for ROS installs that have launch_testing (ROS
apt: ``colcon test`` runs it). Without launch_testing (a PyPI-wheel setup without
../shared/ros2-tools) this module is skipped; test_fleet_nodes.py makes the same assertions through the fallback runner
(same YAML, same nodes: test_launch_file.py proves the two agree).

Graph: fleet.launch.py with num_devices:=2, the simulated world without rendering, and a FAKE,
UNTRAINED model folder (test/fake_model.py) given to every node through params_file.
Assertions: fused tracks, markers and aggregation weights from both devices reach an independent
subscriber, and every process exits cleanly at shutdown.
"""
import os
from pathlib import Path
import sys
import tempfile
import time
import unittest

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ros_helpers import require_ros2_tools  # noqa: E402

require_ros2_tools('launch_testing', 'launch_ros')

import launch  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
import launch_testing.actions  # noqa: E402
import launch_testing.asserts  # noqa: E402
import rclpy  # noqa: E402
import yaml  # noqa: E402

from fake_model import make_fake_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEVICES = ['dev0', 'dev1']


@pytest.mark.launch_test
def generate_test_description():
    """fleet.launch.py with 2 devices, no rendering, a fake model via a params file."""
    tmp = Path(tempfile.mkdtemp(prefix='disac_launch_test_'))
    model = make_fake_model(tmp / 'model')
    params = tmp / 'params.yaml'
    params.write_text(yaml.safe_dump({'/**': {'ros__parameters': {
        'model_dir': str(model), 'renderer': 'none', 'score_threshold': 0.05}}}))
    fleet = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(str(REPO / 'launch' / 'fleet.launch.py')),
        launch_arguments={'config': str(REPO / 'config' / 'fleet.yaml'), 'num_devices': '2',
                          'source': 'sim', 'params_file': str(params)}.items())
    return launch.LaunchDescription([fleet, launch_testing.actions.ReadyToTest()]), {}


class TestFleetOutputs(unittest.TestCase):
    """An independent subscriber sees the aggregator's outputs from both devices."""

    @classmethod
    def setUpClass(cls):
        rclpy.init()
        cls.node = rclpy.create_node('launch_test_observer')

    @classmethod
    def tearDownClass(cls):
        cls.node.destroy_node()
        rclpy.shutdown()

    def test_tracks_markers_and_weights_from_every_device(self):
        from disac_interfaces.msg import AggregationWeights, TrackedObjectArray
        from visualization_msgs.msg import MarkerArray
        from disac_ros.nodes.qos import reliable_qos
        got = {'tracks': [], 'markers': [], 'devices': set()}
        self.node.create_subscription(TrackedObjectArray, '/aggregator/tracks',
                                      lambda m: got['tracks'].append(m), reliable_qos(50))
        self.node.create_subscription(MarkerArray, '/aggregator/markers',
                                      lambda m: got['markers'].append(m), reliable_qos(50))
        self.node.create_subscription(AggregationWeights, '/aggregator/weights',
                                      lambda m: got['devices'].update(m.device_ids), reliable_qos(50))
        deadline = time.monotonic() + float(os.environ.get('DISAC_TEST_WORLD_TIMEOUT', '240'))
        while time.monotonic() < deadline and not (len(got['tracks']) >= 5 and got['devices'] == set(DEVICES)):
            rclpy.spin_once(self.node, timeout_sec=0.1)
        self.assertGreaterEqual(len(got['tracks']), 5)
        self.assertTrue(got['markers'])
        self.assertEqual(got['devices'], set(DEVICES))
        self.assertTrue(all(m.header.frame_id == 'world' for m in got['tracks']))


@launch_testing.post_shutdown_test()
class TestShutdown(unittest.TestCase):
    """Every node exits cleanly: code 0 after launch's SIGINT (no SIGTERM, no signal death)."""

    def test_exit_codes(self, proc_info):
        launch_testing.asserts.assertExitCodes(proc_info, allowable_exit_codes=[0])
