"""disac_fleet: start the fleet's nodes from config/fleet.yaml without ``ros2 launch``.

The fallback for machines without launch_ros (PyPI ROS wheels). It reads the same YAML through the
same function as ``launch/fleet.launch.py`` (``disac_ros.core.fleet_config.build_fleet``), starts
each node as ``<this python> -m <module> --ros-args -r __node:=<name> -r __ns:=<ns>
--params-file <generated> [--params-file <yours>] --log-level <level>``, prefixes each child's
output with ``[<node>]``, forwards SIGINT/SIGTERM, restarts nothing, and exits 0 after a clean stop
(1 if a child failed, 2 on a configuration error). ``--share-device-process`` starts every device
node in one process instead, ``--use-composition`` every composable node (world, devices, link,
aggregator; ``disac_ros.nodes.container``), the rest unchanged. ``--scenario
FILE`` runs that scenario with its own device ids (the world simulates it; K defaults to its device
count); ``--list-devices`` prints the device ids the fleet would use, one per line (scripts use it).
"""
from __future__ import annotations

import argparse
import dataclasses
import os
from pathlib import Path
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Sequence, TextIO

import yaml

import disac_ros
from disac_ros.core.errors import ConfigError
from disac_ros.core.fleet_config import (SOURCES, FleetOptions, NodeSpec, build_fleet, find_default_config,
                                         fleet_device_ids, load_fleet_yaml, params_file_content,
                                         write_fleet_key)
from disac_ros.nodes.container import container_arguments, is_composable

LOG_LEVELS = ('debug', 'info', 'warn', 'error', 'fatal')
EXIT_OK, EXIT_CHILD_FAILED, EXIT_CONFIG = 0, 1, 2


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments (see --help)."""
    p = argparse.ArgumentParser(
        prog='disac_fleet',
        description='Start the disac_ros fleet (the nodes listed in a fleet YAML) as child processes; '
                    'the fallback for `ros2 launch disac_ros fleet.launch.py`. Runs until SIGINT/SIGTERM '
                    '(or until every node has exited), then stops the nodes and exits 0 on a clean stop.',
        epilog='examples:\n'
               '  disac_fleet --config config/fleet.yaml --num-devices 2\n'
               '  disac_fleet --source bag --bag bags/sample\n'
               '  disac_fleet --scenario config/scenarios/intersection_small.yaml\n'
               '  disac_fleet -p world.rate_hz=5 --log-level debug --dry-run\n'
               'exit status: 0 clean stop, 1 a node failed, 2 bad configuration.',
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--config', help='fleet YAML (default: the installed config/fleet.yaml)')
    p.add_argument('--num-devices', type=int,
                   help='number of devices K (default: the scenario\'s device count with --scenario, '
                        'else fleet.num_devices)')
    p.add_argument('--scenario', default='',
                   help='scenario YAML to simulate, with its own device ids (default: the world\'s '
                        'config/scenarios/default.yaml and the ids of fleet.device_id_format)')
    p.add_argument('--source', choices=SOURCES, help='where sensor data comes from (default: fleet.source)')
    p.add_argument('--bag', default='', help='bag directory, for --source bag')
    p.add_argument('--namespace', default='', help='prefix for every node namespace')
    p.add_argument('--use-sim-time', choices=('true', 'false'),
                   help='set use_sim_time on every node (default: leave each node\'s setting)')
    p.add_argument('--params-file', action='append', default=[],
                   help='extra ROS 2 parameters file for every node (repeatable; applied last)')
    p.add_argument('--log-level', default='info', choices=LOG_LEVELS, help='ROS log level of every node')
    p.add_argument('-p', '--param', action='append', default=[], metavar='[NODE.]NAME=VALUE',
                   help='override a parameter (value parsed as YAML); NODE defaults to every node')
    p.add_argument('--share-device-process', action='store_true',
                   help='host all device nodes in one process (saves ~2 CPU-s of start-up per '
                        'device on a small machine; killing it stops every device)')
    p.add_argument('--use-composition', action='store_true',
                   help='host every composable node (world, devices, link, aggregator) in one '
                        'process, like use_composition:=true of fleet.launch.py')
    p.add_argument('--stop-timeout', type=float, default=10.0,
                   help='seconds to wait for nodes after SIGINT before SIGTERM/SIGKILL (default 10)')
    p.add_argument('--dry-run', action='store_true', help='print the commands and parameters, start nothing')
    p.add_argument('--list-devices', action='store_true',
                   help='print the device ids, one per line, start nothing')
    return p.parse_args(argv)


def options_from_args(args: argparse.Namespace) -> FleetOptions:
    """Command-line arguments -> FleetOptions."""
    overrides: dict[str, Any] = {}
    for item in args.param:
        key, sep, value = item.partition('=')
        if not sep or not key:
            raise ConfigError('--param', f'expected [NODE.]NAME=VALUE, got {item!r}')
        overrides[key] = yaml.safe_load(value)
    sim_time = None if args.use_sim_time is None else args.use_sim_time == 'true'
    return FleetOptions(num_devices=args.num_devices, source=args.source,
                        bag=str(Path(args.bag).resolve()) if args.bag else '',
                        namespace=args.namespace, use_sim_time=sim_time,
                        params_files=tuple(str(Path(f).resolve()) for f in args.params_file),
                        overrides=overrides,
                        scenario=str(Path(args.scenario).resolve()) if args.scenario else '')


def child_command(spec: NodeSpec, params_file: str, log_level: str = 'info',
                  python: str = sys.executable) -> list[str]:
    """The argv that starts one node; the venv's python is required by the ROS wheels' bootstrap."""
    if not spec.module:
        raise ConfigError(f'{spec.name}.module', f'no python module known for {spec.package}/{spec.executable}; '
                                                 f'add "module:" to the node entry')
    cmd = [python, '-m', spec.module, '--ros-args', '-r', f'__node:={spec.name}', '-r', f'__ns:={spec.namespace}']
    for src, dst in spec.remappings:
        cmd += ['-r', f'{src}:={dst}']
    for f in spec.node_params_files:            # the node's own file first: the fleet's values win
        cmd += ['--params-file', f]
    cmd += ['--params-file', params_file]
    for f in spec.params_files:
        cmd += ['--params-file', f]
    cmd += ['--log-level', log_level]
    return cmd


CONTAINER = NodeSpec(package='disac_ros', executable='container', name='container',
                     namespace='/', module='disac_ros.nodes.container')


def group_command(members: Sequence[NodeSpec], params_file: str, log_level: str = 'info',
                  python: str = sys.executable) -> list[str]:
    """The argv that hosts several nodes in one process (disac_ros.nodes.container)."""
    return [python, '-m', CONTAINER.module or '', *container_arguments(members, params_file),
            '--log-level', log_level]


def process_groups(specs: Sequence[NodeSpec], share_device_process: bool,
                   use_composition: bool = False) -> list[tuple[NodeSpec, list[NodeSpec]]]:
    """(label, nodes) per process to start, in start order: one node each; all device nodes in
    one process with ``share_device_process``; every composable node in one process with
    ``use_composition`` (placed where the first hosted one was)."""
    def hosted(s: NodeSpec) -> bool:
        if use_composition:
            return is_composable(s)
        return share_device_process and s.executable == 'device_node'
    together = [s for s in specs if hosted(s)]
    groups: list[tuple[NodeSpec, list[NodeSpec]]] = []
    for s in specs:
        if len(together) > 1 and hosted(s):
            if s is together[0]:
                groups.append((CONTAINER, together))
            continue
        groups.append((s, [s]))
    return groups


def write_params_file(specs: Sequence[NodeSpec], directory: str) -> str:
    """Write one ROS parameters file for all nodes; returns its path."""
    content = params_file_content(specs)
    path = os.path.join(directory, 'fleet_params.yaml')
    with open(path, 'w') as f:
        yaml.safe_dump(content, f, sort_keys=False)
    return path


def child_env() -> dict[str, str]:
    """The environment for nodes: ours, with this disac_ros first on PYTHONPATH.

    So that children run the same code as the runner (a source checkout, not a stale install).
    """
    env = dict(os.environ)
    root = str(Path(disac_ros.__file__).resolve().parents[1])
    parts = [root] + [p for p in env.get('PYTHONPATH', '').split(os.pathsep) if p and p != root]
    env['PYTHONPATH'] = os.pathsep.join(parts)
    env.setdefault('PYTHONUNBUFFERED', '1')
    return env


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the runner dies without stopping us (Linux only)."""
    try:
        import ctypes
        ctypes.CDLL('libc.so.6', use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """One running node process with its output relayed, line by line, with a [name] prefix."""

    def __init__(self, spec: NodeSpec, argv: list[str], env: dict[str, str], out: TextIO):
        self.spec = spec
        self.argv = argv
        # Own session: a terminal Ctrl-C reaches only the runner, which forwards it once.
        self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_die_with_parent if sys.platform == 'linux' else None)
        self._relay = threading.Thread(target=self._pump, args=(out,), daemon=True)
        self._relay.start()
        self.reported = False

    def _pump(self, out: TextIO) -> None:
        assert self.proc.stdout is not None
        for raw in iter(self.proc.stdout.readline, b''):
            out.write(f'[{self.spec.name}] {raw.decode(errors="replace")}')
            out.flush()

    def signal(self, sig: int) -> None:
        """Send ``sig`` if still running."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def join_output(self) -> None:
        """Wait for the output relay to drain."""
        self._relay.join(timeout=2.0)


class Fleet:
    """Starts, watches and stops the children."""

    def __init__(self, specs: Sequence[NodeSpec], log_level: str, out: TextIO = sys.stdout,
                 share_device_process: bool = False, use_composition: bool = False):
        self.specs = list(specs)
        self.groups = process_groups(self.specs, share_device_process, use_composition)
        self.log_level = log_level
        self.out = out
        self.children: list[Child] = []
        self._stop = threading.Event()
        self._tmp = tempfile.TemporaryDirectory(prefix='disac_fleet_')
        self.params_file = write_params_file(self.specs, self._tmp.name)

    def commands(self) -> list[list[str]]:
        """The argv of every process, in start order."""
        return [group_command(members, self.params_file, self.log_level) if label is CONTAINER
                else child_command(label, self.params_file, self.log_level)
                for label, members in self.groups]

    def log(self, text: str) -> None:
        """A runner message."""
        self.out.write(f'[disac_fleet] {text}\n')
        self.out.flush()

    def request_stop(self, signum: int = signal.SIGINT, _frame: object = None) -> None:
        """Signal handler: ask the main loop to stop the fleet."""
        self._stop.set()

    def run(self, stop_timeout: float = 10.0) -> int:
        """Start every node, wait for a stop request or for all to exit, stop the rest."""
        env = child_env()
        try:
            for (label, members), argv in zip(self.groups, self.commands()):
                self.children.append(Child(label, argv, env, self.out))
                hosted = f' hosting {", ".join(m.fqn for m in members)}' if label is CONTAINER else ''
                self.log(f'started {label.fqn}{hosted} (pid {self.children[-1].proc.pid})')
            while not self._stop.is_set():
                self._report_exits(stopping=False)
                if all(c.proc.poll() is not None for c in self.children):
                    self.log('all nodes have exited')
                    break
                self._stop.wait(0.1)
        finally:
            failed = self._shutdown(stop_timeout)
            self._tmp.cleanup()
        return EXIT_CHILD_FAILED if failed else EXIT_OK

    def _report_exits(self, stopping: bool) -> None:
        for c in self.children:
            rc = c.proc.poll()
            if rc is not None and not c.reported:
                c.reported = True
                c.join_output()
                how = f'signal {signal.Signals(-rc).name}' if rc < 0 else f'code {rc}'
                self.log(f'{c.spec.fqn} exited with {how}' + ('' if stopping else ' (not restarted)'))

    def _dump_stacks(self, children: Sequence[Child]) -> None:
        """Ask nodes that ignored SIGINT for their Python stacks (node_main registers SIGUSR1
        with faulthandler), so the log shows where they hang."""
        for c in children:
            self.log(f'{c.spec.fqn} did not stop on SIGINT; its Python stacks follow')
            c.signal(signal.SIGUSR1)
        time.sleep(1.0)

    def _shutdown(self, stop_timeout: float) -> bool:
        """SIGINT every running node, escalate after ``stop_timeout``; True if any node failed."""
        running = [c for c in self.children if c.proc.poll() is None]
        stopped_by_us = {id(c) for c in running}
        if running:
            self.log(f'stopping {len(running)} node(s)')
        for sig, timeout in ((signal.SIGINT, stop_timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            running = [c for c in running if c.proc.poll() is None]
            if not running:
                break
            if sig != signal.SIGINT:
                self.log(f'{len(running)} node(s) still running; sending {sig.name}')
            if sig == signal.SIGTERM:
                self._dump_stacks(running)
            for c in running:
                c.signal(sig)
            deadline = time.monotonic() + timeout
            for c in running:
                try:
                    c.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        self._report_exits(stopping=True)
        failed = False
        for c in self.children:
            rc = c.proc.returncode
            # A node we stopped may end by the signal itself; anything else non-zero is a failure.
            if rc != 0 and not (id(c) in stopped_by_us and rc in (-signal.SIGINT, -signal.SIGTERM)):
                failed = True
        return failed


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``disac_fleet``."""
    args = parse_args(argv)
    # The run's signing key (devices sign, the aggregator verifies): a private file, removed at exit.
    with tempfile.TemporaryDirectory(prefix='disac_fleet_key_') as key_dir:
        return _run(args, write_fleet_key(key_dir))


def _run(args: argparse.Namespace, fleet_key_file: str) -> int:
    try:
        config_path = Path(args.config) if args.config else find_default_config()
        config = load_fleet_yaml(config_path)
        options = dataclasses.replace(options_from_args(args), fleet_key_file=fleet_key_file)
        specs = build_fleet(config, options)
        device_ids = fleet_device_ids(config, options)
        if args.list_devices:
            print('\n'.join(device_ids))
            return EXIT_OK
        fleet = Fleet(specs, args.log_level, share_device_process=args.share_device_process,
                      use_composition=args.use_composition)
        commands = fleet.commands()
    except ConfigError as exc:
        print(f'disac_fleet: configuration error: {exc}', file=sys.stderr)
        return EXIT_CONFIG
    if args.dry_run:
        print(f'# config: {config_path}')
        if args.scenario:
            print(f'# scenario: {Path(args.scenario).resolve()}')
        print(f'# devices: {" ".join(device_ids)}')
        print(yaml.safe_dump(params_file_content(specs), sort_keys=False), end='')
        for cmd in commands:
            print(' '.join(cmd))
        return EXIT_OK
    signal.signal(signal.SIGINT, fleet.request_stop)
    signal.signal(signal.SIGTERM, fleet.request_stop)
    fleet.log(f'{len(specs)} node(s) from {config_path}'
              + (f', scenario {options.scenario}' if options.scenario else '')
              + f'; devices {" ".join(device_ids)}')
    return fleet.run(args.stop_timeout)


if __name__ == '__main__':
    sys.exit(main())
