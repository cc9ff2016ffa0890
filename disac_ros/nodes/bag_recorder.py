"""bag_recorder: record topics to a rosbag2 folder (MCAP by default), a ``ros2 bag record`` stand-in.

Topics are discovered from the graph (type and publisher QoS) every ``discovery_period_s``;
subscriptions are raw, so the middleware's CDR bytes go straight into the bag with the receive
time (the node clock: sim time when ``use_sim_time`` is true). The subscription QoS follows the
publishers: reliable only if every publisher is reliable, transient local only if every publisher
is (so /tf_static is recorded from late-joined latched publishers too).

    python -m disac_ros.nodes.bag_recorder --ros-args -p output:=bags/run1 \
        -p topics:='[/dev0/camera/image_raw, "re:/dev[0-9]+/rf/frame", /tf, /tf_static]'
"""
from __future__ import annotations

from datetime import datetime
import importlib
import sys
from typing import Any
import time

import rclpy
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from disac_ros.core.bagfile import STORAGES, BagWriter, make_typestore, topic_matches
from disac_ros.core.errors import ConfigError
from disac_ros.nodes.diagnostics import Diagnostics
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.params import Param, declare_params

PARAMS = (
    Param('output', '', 'bag folder to create; empty = bags/disac_<date>_<time>'),
    Param('topics', ['all'], "topics to record: 'all', exact names, or 're:<regex>' patterns"),
    Param('exclude', ['/rosout', '/parameter_events'], 'topics never recorded (exact names or re:<regex>)'),
    Param('storage', 'mcap', 'rosbag2 storage plugin', choices=tuple(STORAGES)),
    Param('discovery_period_s', 0.5, 'how often the graph is scanned for new topics (s)',
          minimum=0.0, exclusive_minimum=True),
    Param('max_duration_s', 0.0, 'stop and close the bag this long (wall s) after the first recorded '
                                 'message; 0 = until stopped', minimum=0.0),
    Param('queue_depth', 100, 'subscription history depth per topic', minimum=1, maximum=100000),
)


def message_class(msgtype: str) -> type:
    """'pkg/msg/Name' -> the rclpy message class (ImportError if the package is not built)."""
    pkg, _, name = msgtype.split('/')
    return getattr(importlib.import_module(f'{pkg}.msg'), name)


class BagRecorder(Node):
    """Subscribes (raw) to matching topics as they appear and writes every message to a bag."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (``cli_args``, ``parameter_overrides``, ``context``: composition, tests)."""
        super().__init__('bag_recorder', **node_kwargs)
        self._name = self.get_name()
        self.cfg = declare_params(self, PARAMS)
        output = self.cfg['output'] or datetime.now().strftime('bags/disac_%Y%m%d_%H%M%S')
        self.writer = BagWriter(output, self.cfg['storage'], make_typestore())
        self.done = False
        self._subs: dict[str, object] = {}
        self._skipped: set[str] = set()
        self._first_message: float | None = None   # monotonic time of the first recorded message
        self.diag = Diagnostics(self, 'recorder')
        self.get_logger().info(f'recording {self.cfg["topics"]} to {output} ({self.cfg["storage"]})')
        self._scan()
        self.create_timer(self.cfg['discovery_period_s'], self._scan)

    def _scan(self) -> None:
        if self.cfg['max_duration_s'] > 0 and self._first_message is not None and \
                time.monotonic() - self._first_message >= self.cfg['max_duration_s']:
            self.done = True
            return
        for topic, types in self.get_topic_names_and_types():
            if topic in self._subs or topic in self._skipped:
                continue
            if not topic_matches(topic, self.cfg['topics']) or topic_matches(topic, self.cfg['exclude']):
                continue
            pubs = self.get_publishers_info_by_topic(topic)
            if not pubs:
                continue                       # only subscribers so far: QoS unknown, try later
            if len(types) != 1:
                self.get_logger().warning(f'skipping {topic}: several types {types}')
                self._skipped.add(topic)
                continue
            self._subscribe(topic, types[0], pubs)

    def _subscribe(self, topic: str, msgtype: str, pubs: list) -> None:
        reliable = all(p.qos_profile.reliability == ReliabilityPolicy.RELIABLE for p in pubs)
        latched = all(p.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in pubs)
        try:
            cls = message_class(msgtype)
            self.writer.add_topic(topic, msgtype, reliable=reliable, latched=latched)
        except (ImportError, AttributeError, ConfigError) as exc:
            self.get_logger().warning(f'skipping {topic} ({msgtype}): {exc}')
            self._skipped.add(topic)
            return
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.cfg['queue_depth'],
                         reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
        self._subs[topic] = self.create_subscription(
            cls, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True)
        self.get_logger().info(f'subscribed {topic} [{msgtype}] '
                               f'{"reliable" if reliable else "best_effort"}{"/latched" if latched else ""}')

    def _on_message(self, topic: str, data: bytes) -> None:
        if self.done:
            return
        if self._first_message is None:
            self._first_message = time.monotonic()
        self.writer.write(topic, self.get_clock().now().nanoseconds, data)
        self.diag.tick('messages')
        self.diag.set('recorded', float(self.writer.count))

    @property
    def recorded_topics(self) -> list[str]:
        """Topics subscribed so far."""
        return sorted(self._subs)

    def close(self) -> None:
        """Close the bag (writes metadata.yaml); safe after destroy_node."""
        self.writer.close()
        # Called after destroy_node (see node_main): log without the node.
        rclpy.logging.get_logger(self._name).info(f'closed {self.writer.path}: {self.writer.count} messages on '
                               f'{len(self._subs)} topics')


def _spin(node: BagRecorder) -> int:
    while rclpy.ok() and not node.done:
        rclpy.spin_once(node, timeout_sec=0.1)
    return 0


def main(args: list[str] | None = None) -> int:
    """Entry point: record until SIGINT/SIGTERM or max_duration_s; the bag is closed either way."""
    return run_node(BagRecorder, _spin, args=args, name='bag_recorder', params=PARAMS, doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
