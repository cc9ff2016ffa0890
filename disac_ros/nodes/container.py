"""Several disac_ros nodes in one process: ``use_composition:=true`` / ``disac_fleet --use-composition``.

A Python stand-in for a ROS component container (rclcpp_components hosts C++ components only).
Each member is the ordinary node class of its executable with its own namespace, name,
remappings and parameters (from the shared ``--params-file``, keyed by the node's full name), so
topics, ``ros2 param`` and diagnostics look exactly as with one process per node. One process pays
the Python/rclpy/torch start-up once and its messages never leave the process's DDS participant
for another. One executor thread runs every member's callbacks in turn (``--threads N`` a
multi-threaded executor: slower here, the GIL serialises the Python work anyway; measured in
``benchmarks/bench_composition.py``). Killing the process stops every member.

    python -m disac_ros.nodes.container --member world_node@/world --member device_node@/dev0/device_node \\
        --member 'aggregator_node@/aggregator|aggregator/tracks:=tracks' \\
        --ros-args --params-file fleet_params.yaml --log-level info

A member is ``EXECUTABLE@/NAMESPACE/NAME`` followed by optional ``|FROM:=TO`` remappings;
``EXECUTABLE@`` defaults to ``device_node``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NamedTuple, Sequence

from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor
from rclpy.node import Node

from disac_ros.core.errors import ConfigError
from disac_ros.core.fleet_config import NodeSpec
from disac_ros.nodes.node_main import EXIT_CONFIG, run_nodes

# Executables whose node can share a process (the bag player and recorder run their own threads).
COMPOSABLE: dict[str, tuple[str, str]] = {
    'world_node': ('disac_ros.nodes.world_node', 'WorldNode'),
    'device_node': ('disac_ros.nodes.device_node', 'DeviceNode'),
    'link_node': ('disac_ros.nodes.link_node', 'LinkNode'),
    'aggregator_node': ('disac_ros.nodes.aggregator_node', 'AggregatorNode'),
    'rf_synth_node': ('disac_ros.nodes.rf_synth_node', 'RfSynthNode'),
}


def is_composable(spec: NodeSpec) -> bool:
    """Whether the node of ``spec`` can be hosted by the container."""
    return spec.package == 'disac_ros' and spec.executable in COMPOSABLE


def container_arguments(members: Sequence[NodeSpec], params_file: str) -> list[str]:
    """The container's arguments for ``members`` (before ``--log-level``): one ``--member`` each,
    then the members' own parameters files (each keyed by its node name), the fleet's
    ``params_file`` (keyed by full name) and the user's files, in that order of precedence."""
    args = [a for m in members for a in ('--member', member_argument(m.executable, m.fqn, m.remappings))]
    node_files = dict.fromkeys(f for m in members for f in m.node_params_files)
    files = (*node_files, params_file, *members[0].params_files)
    return [*args, '--ros-args', *(a for f in files for a in ('--params-file', f))]


class Member(NamedTuple):
    """One hosted node."""

    executable: str
    namespace: str
    name: str
    remaps: list[str]


def parse_member(text: str) -> Member:
    """'[EXECUTABLE@]/ns/name|from:=to|...' -> Member."""
    head, *remaps = text.split('|')
    executable, sep, fqn = head.rpartition('@')
    executable = executable if sep else 'device_node'
    if executable not in COMPOSABLE:
        raise ConfigError('--member', f'{executable!r} cannot share a process; composable: {", ".join(COMPOSABLE)}')
    ns, _, name = fqn.rpartition('/')
    if not fqn.startswith('/') or not name:
        raise ConfigError('--member', f"expected '[EXECUTABLE@]/NAMESPACE/NAME[|FROM:=TO...]', got {text!r}")
    for r in remaps:
        if ':=' not in r:
            raise ConfigError('--member', f"remapping {r!r} of {fqn} must be FROM:=TO")
    return Member(executable, ns or '/', name, remaps)


def node_cli_args(namespace: str, name: str, remaps: Sequence[str]) -> list[str]:
    """The node-local ROS arguments that place one member."""
    args = ['--ros-args', '-r', f'__ns:={namespace}', '-r', f'__node:={name}']
    for r in remaps:
        args += ['-r', r]
    return args


def member_argument(executable: str, fqn: str, remappings: Sequence[tuple[str, str]]) -> str:
    """The ``--member`` value for one node (inverse of ``parse_member``)."""
    return f'{executable}@{fqn}' + ''.join(f'|{src}:={dst}' for src, dst in remappings)


def build_member(member: Member) -> Node:
    """Construct one member's node."""
    module, cls = COMPOSABLE[member.executable]
    node_class = getattr(importlib.import_module(module), cls)
    return node_class(cli_args=node_cli_args(member.namespace, member.name, member.remaps))


def main(args: list[str] | None = None, prog: str = 'container') -> int:
    """Entry point: build every member, spin them together until SIGINT/SIGTERM."""
    argv = list(sys.argv[1:] if args is None else args)
    split = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    own, ros = argv[:split], argv[split:]
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split('\n\n')[0])
    p.add_argument('--member', action='append', required=True,
                   help="a node to host: '[EXECUTABLE@]/NAMESPACE/NAME[|FROM:=TO...]' (repeatable); "
                        f"executables: {', '.join(COMPOSABLE)} (default device_node)")
    p.add_argument('--threads', type=int, default=1,
                   help='executor threads (default 1: a single-threaded executor, measured faster '
                        'than a multi-threaded one under the GIL)')
    opts = p.parse_args(own)
    try:
        members = [parse_member(m) for m in opts.member]
    except ConfigError as exc:
        print(f'{prog}: configuration error: {exc}', file=sys.stderr)
        return EXIT_CONFIG

    def build(nodes: list[Node]) -> None:
        for m in members:
            nodes.append(build_member(m))

    def spin(nodes: list[Node]) -> None:
        executor = (SingleThreadedExecutor() if opts.threads <= 1
                    else MultiThreadedExecutor(num_threads=opts.threads))
        for n in nodes:
            executor.add_node(n)
        executor.spin()

    return run_nodes(build, spin, args=[prog, *ros], name=prog)


if __name__ == '__main__':
    sys.exit(main())
