"""disac-bag: record, play and inspect rosbag2 (MCAP) bags without the ``ros2`` CLI.

    disac-bag info BAG
    disac-bag record -o BAG [--max-duration S] [TOPIC|re:REGEX ...]     (default: all topics)
    disac-bag play BAG [--rate R] [--loop] [--no-clock] [--start-offset S] [--wait-for-subscribers N]

``record`` and ``play`` replace this process with the bag_recorder / bag_player node (so SIGINT
reaches the node directly); extra ``--ros-args ...`` are passed through.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from disac_ros.core.bagfile import bag_info, format_info
from disac_ros.core.errors import ConfigError


def _yaml_list(items: Sequence[str]) -> str:
    return '[' + ', '.join('"' + i.replace('"', '\\"') + '"' for i in items) + ']'


def build_command(args: argparse.Namespace, ros_args: Sequence[str]) -> list[str]:
    """The node command line for ``record`` or ``play``."""
    if args.cmd == 'record':
        cmd = [sys.executable, '-m', 'disac_ros.nodes.bag_recorder', '--ros-args',
               '-p', f'output:={args.output}', '-p', f'storage:={args.storage}',
               '-p', f'max_duration_s:={float(args.max_duration)}',
               '-p', f'topics:={_yaml_list(args.topics or ["all"])}']
    else:
        cmd = [sys.executable, '-m', 'disac_ros.nodes.bag_player', '--ros-args',
               '-p', f'bag:={os.path.abspath(args.bag)}', '-p', f'rate:={float(args.rate)}',
               '-p', f'loop:={"true" if args.loop else "false"}',
               '-p', f'publish_clock:={"false" if args.no_clock else "true"}',
               '-p', f'start_offset_s:={float(args.start_offset)}',
               '-p', f'wait_for_subscribers:={int(args.wait_for_subscribers)}']
    extra = list(ros_args)
    if extra and extra[0] == '--ros-args':
        extra = extra[1:]
    return cmd + extra


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``disac-bag``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ros_args: list[str] = []
    if '--ros-args' in argv:
        i = argv.index('--ros-args')
        argv, ros_args = argv[:i], argv[i:]
    p = argparse.ArgumentParser(prog='disac-bag', description='Record, play and inspect rosbag2 bags.')
    sub = p.add_subparsers(dest='cmd', required=True)
    info = sub.add_parser('info', help='summarise a bag')
    info.add_argument('bag')
    rec = sub.add_parser('record', help='record topics until Ctrl-C (or --max-duration)')
    rec.add_argument('-o', '--output', required=True, help='bag folder to create')
    rec.add_argument('--storage', default='mcap', choices=('mcap', 'sqlite3'))
    rec.add_argument('--max-duration', type=float, default=0.0, help='stop after S seconds (0 = Ctrl-C)')
    rec.add_argument('topics', nargs='*', help="topics, or 're:<regex>'; default all")
    play = sub.add_parser('play', help='replay a bag with its original timing')
    play.add_argument('bag')
    play.add_argument('--rate', type=float, default=1.0)
    play.add_argument('--loop', action='store_true')
    play.add_argument('--no-clock', action='store_true', help='do not publish /clock')
    play.add_argument('--start-offset', type=float, default=0.0, help='skip S seconds of the bag')
    play.add_argument('--wait-for-subscribers', type=int, default=0,
                      help='wait (up to 10 s) for N subscribers on every topic before playing')
    args = p.parse_args(argv)
    if args.cmd == 'info':
        try:
            print(format_info(bag_info(args.bag)))
        except ConfigError as exc:
            print(f'disac-bag: {exc}', file=sys.stderr)
            return 2
        return 0
    cmd = build_command(args, ros_args)
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == '__main__':
    sys.exit(main())
