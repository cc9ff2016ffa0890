"""Launch the disac_ros fleet described by config/fleet.yaml.

    ros2 launch disac_ros fleet.launch.py [config:=FILE] [num_devices:=K] [source:=sim|bag|external]
        [bag:=DIR] [scenario:=FILE] [namespace:=NS] [use_sim_time:=true|false] [params_file:=FILE]
        [log_level:=info] [use_composition:=false]

``scenario:=FILE`` runs that scenario with its own device ids (the world simulates it; num_devices
defaults to its device count), like ``disac_fleet --scenario FILE``. ``use_composition:=true`` hosts
the world, devices, link and aggregator in one process (``disac_ros container``), like
``disac_fleet --use-composition``; topics, parameters and diagnostics are the same.

The node list comes from disac_ros.core.fleet_config.build_fleet, the same function the fallback
runner (disac_fleet) uses, so both start the same nodes with the same parameters. Only long-stable
launch APIs are used (DeclareLaunchArgument, OpaqueFunction, LaunchConfiguration, launch_ros Node).
"""
import atexit
import dataclasses
from pathlib import Path
import shutil
import tempfile

import yaml

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from disac_ros.core.errors import ConfigError
from disac_ros.core.fleet_config import (SOURCES, FleetOptions, build_fleet, find_default_config, load_fleet_yaml,
                                         params_file_content, write_fleet_key)
from disac_ros.nodes.container import container_arguments, is_composable

ARGUMENTS = (
    ('config', '', 'fleet YAML; empty = the installed config/fleet.yaml', None),
    ('num_devices', '', 'number of devices K; empty = the scenario\'s device count with scenario:=, '
                        'else fleet.num_devices from the YAML', None),
    ('source', '', 'sensor data source; empty = fleet.source from the YAML', ('',) + SOURCES),
    ('bag', '', 'bag directory for source:=bag', None),
    ('scenario', '', 'scenario YAML with its own device ids (the world simulates it, num_devices defaults '
                     'to its device count); empty = config/scenarios/default.yaml and fleet.device_id_format',
     None),
    ('namespace', '', 'namespace prefix for every node', None),
    ('use_sim_time', '', 'true/false (any case) sets use_sim_time on every node; empty leaves each '
                         'node\'s own (source:=bag turns it on)', None),
    ('params_file', '', 'extra ROS 2 parameters file applied to every node (after fleet.yaml)', None),
    ('log_level', 'info', 'ROS log level of every node', ('debug', 'info', 'warn', 'error', 'fatal')),
    ('use_composition', 'false', 'true: world, devices, link and aggregator share one process', None),
)


def fleet_options(context) -> FleetOptions:
    """Launch arguments -> FleetOptions (the same knobs as disac_fleet's flags)."""
    def arg(name: str) -> str:
        return LaunchConfiguration(name).perform(context).strip()

    num = arg('num_devices')
    if num and not (num.isdigit() and int(num) >= 1):
        raise ConfigError('num_devices', f'expected a whole number >= 1, got {num!r} (e.g. num_devices:=4)')
    sim_time = arg('use_sim_time').lower()
    if sim_time not in ('', 'true', 'false'):
        raise ConfigError('use_sim_time', f'expected true or false, got {arg("use_sim_time")!r}')
    params_file = arg('params_file')
    return FleetOptions(
        num_devices=int(num) if num else None,
        source=arg('source') or None,
        bag=arg('bag'),
        scenario=arg('scenario'),
        namespace=arg('namespace'),
        use_sim_time=None if not sim_time else sim_time == 'true',
        params_files=(params_file,) if params_file else ())


def _launch_nodes(context, *args, **kwargs):
    config = LaunchConfiguration('config').perform(context).strip() or str(find_default_config())
    # The run's signing key (never on a command line) and generated files: a private folder,
    # removed when launch ends.
    run_dir = Path(tempfile.mkdtemp(prefix='disac_launch_'))
    atexit.register(shutil.rmtree, run_dir, True)
    options = dataclasses.replace(fleet_options(context), fleet_key_file=write_fleet_key(run_dir))
    specs = build_fleet(load_fleet_yaml(config), options)
    log_level = LaunchConfiguration('log_level').perform(context)
    compose = LaunchConfiguration('use_composition').perform(context).strip().lower()
    if compose not in ('true', 'false'):
        raise ConfigError('use_composition', f'expected true or false, got {compose!r}')
    hosted = [s for s in specs if compose == 'true' and is_composable(s)]
    actions = [
        Node(package=spec.package, executable=spec.executable, name=spec.name, namespace=spec.namespace,
             parameters=[*spec.node_params_files, dict(spec.parameters), *spec.params_files],
             remappings=list(spec.remappings),
             arguments=['--ros-args', '--log-level', log_level],
             output='screen')
        for spec in specs if spec not in hosted
    ]
    if hosted:
        # One process; each member's parameters are keyed by its full name in one params file.
        params = run_dir / 'fleet_params.yaml'
        params.write_text(yaml.safe_dump(params_file_content(hosted), sort_keys=False))
        actions.append(Node(package='disac_ros', executable='container', output='screen',
                            arguments=[*container_arguments(hosted, str(params)), '--log-level', log_level]))
    return actions


def generate_launch_description() -> LaunchDescription:
    """Declare the arguments; the nodes are built at launch time from the YAML."""
    declared = []
    for name, default, description, choices in ARGUMENTS:
        kwargs = {'default_value': default, 'description': description}
        if choices is not None:
            kwargs['choices'] = list(choices)
        declared.append(DeclareLaunchArgument(name, **kwargs))
    return LaunchDescription(declared + [OpaqueFunction(function=_launch_nodes)])
