"""launch/fleet.launch.py and disac_fleet start the same nodes.

launch / launch_ros are not on PyPI (a user without ROS apt has neither), so that this runs
everywhere the launch file is imported with small stand-in modules (named Fake*) that record what
the file builds (test_ros2_launch.py runs the real ``ros2 launch`` where it exists). The test then runs its
OpaqueFunction with the declared defaults plus overrides and compares the launch_ros Node kwargs
with the runner's command lines for the same arguments.
"""
import dataclasses
import importlib.util
from pathlib import Path
import sys
import types

import pytest

from disac_ros.core.fleet_config import build_fleet, load_fleet_yaml
from disac_ros.tools import fleet as runner

REPO = Path(__file__).resolve().parents[1]
LAUNCH_FILE = REPO / 'launch' / 'fleet.launch.py'
FLEET_YAML = REPO / 'config' / 'fleet.yaml'
SMALL = REPO / 'config' / 'scenarios' / 'intersection_small.yaml'


class FakeLaunchDescription:
    def __init__(self, entities):
        self.entities = list(entities)


class FakeDeclareLaunchArgument:
    def __init__(self, name, default_value=None, description='', choices=None):
        self.name, self.default_value, self.description, self.choices = name, default_value, description, choices


class FakeOpaqueFunction:
    def __init__(self, function, args=None, kwargs=None):
        self.function = function


class FakeLaunchConfiguration:
    def __init__(self, name):
        self.name = name

    def perform(self, context):
        return context.launch_configurations[self.name]


class FakeNode:
    def __init__(self, **kwargs):
        self.kwargs = kwargs


class FakeContext:
    def __init__(self, configurations):
        self.launch_configurations = configurations


@pytest.fixture
def launch_module(monkeypatch):
    fakes = {
        'launch': {'LaunchDescription': FakeLaunchDescription},
        'launch.actions': {'DeclareLaunchArgument': FakeDeclareLaunchArgument,
                           'OpaqueFunction': FakeOpaqueFunction},
        'launch.substitutions': {'LaunchConfiguration': FakeLaunchConfiguration},
        'launch_ros': {},
        'launch_ros.actions': {'Node': FakeNode},
    }
    for name, attrs in fakes.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location('fleet_launch_under_test', LAUNCH_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def launched_nodes(module, **overrides):
    ld = module.generate_launch_description()
    declared = {e.name: e for e in ld.entities if isinstance(e, FakeDeclareLaunchArgument)}
    for key, value in overrides.items():
        assert key in declared, f'launch file does not declare {key}'
        if declared[key].choices:
            assert value in declared[key].choices
    configs = {name: (overrides.get(name, arg.default_value)) for name, arg in declared.items()}
    (opaque,) = [e for e in ld.entities if isinstance(e, FakeOpaqueFunction)]
    return [n.kwargs for n in opaque.function(FakeContext(configs))]


def test_launch_file_declares_the_documented_arguments(launch_module):
    ld = launch_module.generate_launch_description()
    names = {e.name for e in ld.entities if isinstance(e, FakeDeclareLaunchArgument)}
    assert {'namespace', 'use_sim_time', 'params_file', 'log_level', 'source', 'num_devices', 'bag',
            'config', 'scenario'} <= names


def _fleet_params(node: dict) -> dict:
    """The fleet's own values among a launched node's parameters (the one dict)."""
    return next(p for p in node['parameters'] if isinstance(p, dict))


@pytest.mark.parametrize('launch_args,runner_args', [
    ({}, []),
    ({'num_devices': '2', 'use_sim_time': 'true', 'log_level': 'debug', 'namespace': 'site1',
      'params_file': '/tmp/extra.yaml'},
     ['--num-devices', '2', '--use-sim-time', 'true', '--log-level', 'debug', '--namespace', 'site1',
      '--params-file', '/tmp/extra.yaml']),
    ({'source': 'bag', 'bag': '/data/bags/sample'}, ['--source', 'bag', '--bag', '/data/bags/sample']),
    ({'scenario': str(SMALL)}, ['--scenario', str(SMALL)]),
    ({'scenario': str(SMALL), 'num_devices': '2'}, ['--scenario', str(SMALL), '--num-devices', '2']),
])
def test_launch_file_and_runner_start_the_same_nodes(launch_module, launch_args, runner_args, tmp_path):
    nodes = launched_nodes(launch_module, config=str(FLEET_YAML), **launch_args)

    args = runner.parse_args(['--config', str(FLEET_YAML), *runner_args])
    # Both front ends make a fresh fleet key per run; compare with the one launch made.
    key_file = next(_fleet_params(n)['key_file'] for n in nodes if n['executable'] == 'device_node')
    assert key_file and Path(key_file).is_file()
    options = dataclasses.replace(runner.options_from_args(args), fleet_key_file=key_file)
    specs = build_fleet(load_fleet_yaml(FLEET_YAML), options)
    params_file = runner.write_params_file(specs, str(tmp_path))
    commands = [runner.child_command(s, params_file, args.log_level) for s in specs]

    assert nodes and len(nodes) == len(specs) == len(commands)
    for node, spec, cmd in zip(nodes, specs, commands):
        assert node['package'] == spec.package == 'disac_ros'
        assert node['executable'] == spec.executable and cmd[2] == f'disac_ros.nodes.{spec.executable}'
        assert node['name'] == spec.name and f'__node:={spec.name}' in cmd
        assert node['namespace'] == spec.namespace and f'__ns:={spec.namespace}' in cmd
        # The node's own parameters file, then the fleet's values, then the user's files.
        assert node['parameters'] == [*spec.node_params_files, spec.parameters, *spec.params_files]
        assert all(cmd.index(f) < cmd.index(params_file) for f in spec.node_params_files)
        assert node['remappings'] == list(spec.remappings)
        assert node['arguments'][-1] == cmd[cmd.index('--log-level') + 1] == args.log_level
    if 'scenario' in launch_args:
        k = int(launch_args.get('num_devices', 3))
        ids = ['car_a', 'rsu_north', 'rsu_east'][:k]
        assert _fleet_params(nodes[0])['scenario'] == str(SMALL)
        assert _fleet_params(nodes[0])['num_devices'] == k
        assert [n['namespace'] for n in nodes if n['executable'] == 'device_node'] == [f'/{d}' for d in ids]
        assert _fleet_params(nodes[-1])['device_ids'] == ids
    elif 'num_devices' in launch_args:
        assert _fleet_params(nodes[0])['num_devices'] == 2 and _fleet_params(nodes[0])['use_sim_time'] is True
        assert nodes[0]['namespace'] == '/site1'
    if 'bag' in launch_args:
        assert nodes[0]['executable'] == 'bag_player'
        assert _fleet_params(nodes[0])['bag'] == '/data/bags/sample'


def test_launch_arguments_are_validated_with_clear_messages(launch_module):
    from disac_ros.core.errors import ConfigError
    with pytest.raises(ConfigError, match=r'num_devices.*whole number >= 1.*abc'):
        launched_nodes(launch_module, config=str(FLEET_YAML), num_devices='abc')
    with pytest.raises(ConfigError, match=r'use_sim_time.*true or false'):
        launched_nodes(launch_module, config=str(FLEET_YAML), use_sim_time='maybe')
    nodes = launched_nodes(launch_module, config=str(FLEET_YAML), use_sim_time='True')   # any case
    assert all(_fleet_params(n)['use_sim_time'] is True for n in nodes)
    composed = launched_nodes(launch_module, config=str(FLEET_YAML), use_composition='true')
    assert [n['executable'] for n in composed] == ['container']
    assert sum(a == '--member' for a in composed[0]['arguments']) == 7   # world, 4 devices, link, aggregator
