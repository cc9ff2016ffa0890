"""Several device nodes in one process: ``disac_fleet --share-device-process``.

On one small machine that simulates a whole fleet, every device process pays the same start-up
(rclpy, torch, ~2 CPU-s); hosting the simulated devices' nodes in one process pays it once, like a
ROS component container. Each member is an ordinary :class:`DeviceNode` with its own namespace,
name, parameters (from the shared ``--params-file``, keyed by the node's full name), topics and
diagnostics; they share one executor thread (device inference is a few ms per frame). Killing the
process stops every member, so the kill-one-device behaviour needs separate processes (the
default).

    python -m disac_ros.nodes.device_group --member /dev0/device_node --member /dev1/device_node \
        --ros-args --params-file fleet_params.yaml --log-level info

A member may carry remappings after its name: ``--member '/dev0/device_node|camera/image_raw:=cam'``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from disac_ros.core.errors import ConfigError
from disac_ros.nodes.node_main import EXIT_CONFIG, run_nodes


def parse_member(text: str) -> tuple[str, str, list[str]]:
    """'/ns/name|from:=to|...' -> (namespace, name, remappings)."""
    fqn, *remaps = text.split('|')
    ns, _, name = fqn.rpartition('/')
    if not fqn.startswith('/') or not name:
        raise ConfigError('--member', f"expected '/NAMESPACE/NAME[|FROM:=TO...]', got {text!r}")
    for r in remaps:
        if ':=' not in r:
            raise ConfigError('--member', f"remapping {r!r} of {fqn} must be FROM:=TO")
    return ns or '/', name, remaps


def node_cli_args(namespace: str, name: str, remaps: Sequence[str]) -> list[str]:
    """The node-local ROS arguments that place one member."""
    args = ['--ros-args', '-r', f'__ns:={namespace}', '-r', f'__node:={name}']
    for r in remaps:
        args += ['-r', r]
    return args


def main(args: list[str] | None = None) -> int:
    """Entry point: build every member, spin them together until SIGINT/SIGTERM."""
    argv = list(sys.argv[1:] if args is None else args)
    split = argv.index('--ros-args') if '--ros-args' in argv else len(argv)
    own, ros = argv[:split], argv[split:]
    p = argparse.ArgumentParser(prog='device_group', description=__doc__.split('\n\n')[0])
    p.add_argument('--member', action='append', required=True,
                   help="a device node to host: '/NAMESPACE/NAME[|FROM:=TO...]' (repeatable)")
    opts = p.parse_args(own)
    try:
        members = [parse_member(m) for m in opts.member]
    except ConfigError as exc:
        print(f'device_group: configuration error: {exc}', file=sys.stderr)
        return EXIT_CONFIG

    def build(nodes: list[Node]) -> None:
        from disac_ros.nodes.device_node import DeviceNode
        for ns, name, remaps in members:
            nodes.append(DeviceNode(cli_args=node_cli_args(ns, name, remaps)))

    def spin(nodes: list[Node]) -> None:
        executor = SingleThreadedExecutor()
        for n in nodes:
            executor.add_node(n)
        executor.spin()

    return run_nodes(build, spin, args=['device_group', *ros], name='device_group')


if __name__ == '__main__':
    sys.exit(main())
