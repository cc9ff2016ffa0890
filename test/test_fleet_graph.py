"""The fleet graph in config/fleet.yaml per source, and launch/device.launch.py (ROS-free checks;
the launch file is imported with the stand-ins of test_launch_file.py)."""
import importlib.util
from pathlib import Path

import pytest
import yaml

from disac_ros.core.fleet_config import FleetOptions, build_fleet, load_fleet_yaml
from test_launch_file import FakeContext, FakeDeclareLaunchArgument, FakeOpaqueFunction, launch_module  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
FLEET = load_fleet_yaml(REPO / 'config' / 'fleet.yaml')


def graph(**kw):
    return {s.fqn: s for s in build_fleet(FLEET, FleetOptions(**kw))}


def test_sim_graph_has_world_devices_link_and_aggregator_behind_the_link():
    g = graph(num_devices=4)
    assert set(g) == {'/world', '/dev0/device_node', '/dev1/device_node', '/dev2/device_node',
                      '/dev3/device_node', '/link', '/aggregator'}
    assert g['/dev2/device_node'].parameters['device_id'] == 'dev2'
    assert g['/aggregator'].parameters['device_ids'] == ['dev0', 'dev1', 'dev2', 'dev3']
    assert g['/aggregator'].parameters['input_topic'] == 'link/feature'
    # The link's own settings come from its parameters file (config/params/link.yaml).
    (link_file,) = g['/link'].node_params_files
    link = yaml.safe_load(Path(link_file).read_text())['/**/link']['ros__parameters']
    assert link['output_topic'] == 'link/feature' and link['input_topic'] == 'semantic/feature'
    assert g['/world'].parameters['num_devices'] == 4


def test_bag_graph_replays_instead_of_simulating():
    g = graph(num_devices=2, source='bag', bag='/data/b')
    assert '/world' not in g and g['/bag_player'].parameters['bag'] == '/data/b'
    assert {'/link', '/aggregator', '/dev0/device_node', '/dev1/device_node'} <= set(g)


def test_external_graph_has_no_world_and_no_link():
    g = graph(num_devices=3, source='external')
    assert set(g) == {'/dev0/device_node', '/dev1/device_node', '/dev2/device_node', '/aggregator'}
    assert g['/aggregator'].parameters['input_topic'] == 'semantic/feature'
    assert g['/aggregator'].parameters['verify_auth'] is False


@pytest.fixture
def device_launch(launch_module):  # noqa: F811 - the fixture installs the launch stand-ins
    spec = importlib.util.spec_from_file_location('device_launch_under_test', REPO / 'launch' / 'device.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_launch_starts_one_device_node_with_its_arguments(device_launch):
    ld = device_launch.generate_launch_description()
    declared = {e.name: e.default_value for e in ld.entities if isinstance(e, FakeDeclareLaunchArgument)}
    assert {'device_id', 'namespace', 'camera_topic', 'rf_topic', 'model_dir', 'params_file',
            'log_level'} <= set(declared)
    declared.update(device_id='veh7', camera_topic='/front/image', threads='2', static_pose='1 2 0 0.5')
    (opaque,) = [e for e in ld.entities if isinstance(e, FakeOpaqueFunction)]
    (node,) = [n.kwargs for n in opaque.function(FakeContext(declared))]
    assert node['executable'] == 'device_node' and node['namespace'] == '/veh7'
    p = node['parameters'][0]
    assert p['device_id'] == 'veh7' and p['camera_topic'] == '/front/image' and p['threads'] == 2
    assert p['static_pose'] == '1 2 0 0.5' and p['use_sim_time'] is False
