"""bag_player: replay a rosbag2 folder with its original timing, a ``ros2 bag play`` stand-in.

Messages are published as the recorded CDR bytes (no deserialisation), on their recorded topic
names, at ``rate`` x the original pace, optionally looping and starting ``start_offset_s`` into the
bag. With ``publish_clock`` the player drives /clock from the bag's log times (every message, and
at ``clock_rate_hz`` in between), so nodes with ``use_sim_time:=true`` run on bag time. A /clock
topic inside the bag is not replayed when the player publishes its own.

Publishers are reliable (they match reliable and best-effort subscribers); topics recorded as
transient local (/tf_static) are replayed transient local. Before the first message the player can
wait for ``wait_for_subscribers`` subscriptions on every topic (bounded by ``wait_timeout_s``) and
then ``start_delay_s``; before exiting it waits until every message is acknowledged.

    python -m disac_ros.nodes.bag_player --ros-args -p bag:=bags/sample -p rate:=2.0 -p loop:=true
"""
from __future__ import annotations

import sys
from typing import Any
import threading
import time

import rclpy
from rclpy.duration import Duration
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock

from disac_ros.core.bagfile import BagInfo, bag_info, read_messages, topic_matches
from disac_ros.core.errors import ConfigError
from disac_ros.nodes.bag_recorder import message_class
from disac_ros.nodes.conversions import ns_to_msg
from disac_ros.nodes.diagnostics import Diagnostics
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.params import Param, declare_params

PARAMS = (
    Param('bag', '', 'rosbag2 folder to play (required)'),
    Param('rate', 1.0, 'playback speed factor (2.0 = twice as fast)', minimum=0.0, exclusive_minimum=True,
          maximum=1000.0),
    Param('loop', False, 'start again at the end of the bag'),
    Param('publish_clock', True, 'publish /clock from the bag log times'),
    Param('clock_rate_hz', 100.0, '/clock rate between messages (0 = only at messages)', minimum=0.0),
    Param('start_offset_s', 0.0, 'skip this much of the bag at the start (bag seconds)', minimum=0.0),
    Param('topics', ['all'], "topics to play: 'all', exact names, or 're:<regex>'"),
    Param('wait_for_subscribers', 0, 'wait for this many subscriptions on every topic of wait_topics '
          'before playing', minimum=0, maximum=1000),
    Param('wait_topics', ['all'], "topics the wait applies to: 'all', exact names, or 're:<regex>' "
          '(e.g. only the sensor topics the graph consumes)'),
    Param('wait_timeout_s', 10.0, 'give up waiting for subscribers after this long (then play anyway)',
          minimum=0.0),
    Param('start_delay_s', 0.0, 'pause before the first message (after any wait for subscribers)',
          minimum=0.0),
    Param('exit_when_done', True, 'exit (code 0) when the bag has been played'),
    Param('queue_depth', 100, 'publisher history depth', minimum=1, maximum=100000),
)


class BagPlayer(Node):
    """Publishes a bag's messages from a worker thread; the executor thread serves the node."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (``cli_args``, ``parameter_overrides``, ``context``: composition, tests)."""
        super().__init__('bag_player', **node_kwargs)
        self._name = self.get_name()
        self.cfg = declare_params(self, PARAMS)
        if not self.cfg['bag']:
            raise ConfigError(f'{self.get_name()}.bag', 'required: the bag folder to play')
        self.info: BagInfo = bag_info(self.cfg['bag'])
        self.done = threading.Event()
        self._stop = threading.Event()
        self.diag = Diagnostics(self, 'player')
        self._pubs = {}
        for t in self.info.topics:
            if not topic_matches(t.topic, self.cfg['topics']):
                continue
            if t.topic == '/clock' and self.cfg['publish_clock']:
                continue                     # we publish our own /clock
            try:
                cls = message_class(t.msgtype)
            except (ImportError, AttributeError) as exc:
                self.get_logger().warning(f'not playing {t.topic}: type {t.msgtype} unavailable ({exc})')
                continue
            # A latched topic keeps all its recorded messages for late joiners (up to queue_depth).
            depth = min(max(t.count, 1), self.cfg['queue_depth']) if t.latched else self.cfg['queue_depth']
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                             reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL if t.latched else DurabilityPolicy.VOLATILE)
            # Relative: a namespaced player replays '/dev0/camera/image_raw' as '/<ns>/dev0/...'.
            self._pubs[t.topic] = self.create_publisher(cls, t.topic.lstrip('/'), qos)
        if not self._pubs:
            raise ConfigError(f'{self.get_name()}.topics', f'no playable topic in {self.cfg["bag"]}')
        self._clock_pub = (self.create_publisher(Clock, '/clock', QoSProfile(
            depth=1, reliability=ReliabilityPolicy.RELIABLE)) if self.cfg['publish_clock'] else None)
        self.published = 0
        self.failed = False
        self.get_logger().info(
            f'playing {self.cfg["bag"]}: {self.info.message_count} messages, {self.info.duration_s:.2f} s, '
            f'{len(self._pubs)} topics, rate {self.cfg["rate"]}, loop {self.cfg["loop"]}')

    def wait_for_subscribers(self) -> bool:
        """Block until every publisher has enough subscriptions (or the timeout); True if matched."""
        need = self.cfg['wait_for_subscribers']
        if need <= 0:
            return True
        watched = {t: p for t, p in self._pubs.items() if topic_matches(t, self.cfg['wait_topics'])}
        deadline = time.monotonic() + self.cfg['wait_timeout_s']
        while not self._stop.is_set() and time.monotonic() < deadline:
            if all(p.get_subscription_count() >= need for p in watched.values()):
                return True
            time.sleep(0.05)
        missing = [t for t, p in watched.items() if p.get_subscription_count() < need]
        if missing:
            self.get_logger().warning(f'playing without {need} subscriber(s) on {missing}')
        return not missing

    def play(self) -> None:
        """Play the bag once (or forever with loop) on this thread."""
        self.wait_for_subscribers()
        if self.cfg['start_delay_s'] > 0:
            self._stop.wait(self.cfg['start_delay_s'])
        try:
            while not self._stop.is_set():
                self._play_once()
                if not self.cfg['loop']:
                    break
            self._flush()
        except Exception as exc:  # noqa: BLE001 - a shutdown mid-publish is not an error
            if rclpy.ok() and not self._stop.is_set():
                self.get_logger().error(f'playback failed: {exc!r}')
                self.failed = True
        finally:
            self.done.set()

    def _play_once(self) -> None:
        rate = self.cfg['rate']
        start_ns = self.info.start_ns + int(self.cfg['start_offset_s'] * 1e9)
        clock_period = 1.0 / self.cfg['clock_rate_hz'] if self.cfg['clock_rate_hz'] > 0 else None
        t0_wall = time.monotonic()
        t0_bag: int | None = None
        for msg in read_messages(self.cfg['bag'], topics=list(self._pubs), start_ns=start_ns):
            if t0_bag is None:
                t0_bag = msg.timestamp_ns
            due = t0_wall + (msg.timestamp_ns - t0_bag) * 1e-9 / rate
            # Sleep until due; keep /clock moving meanwhile so sim-time nodes do not stall.
            while not self._stop.is_set():
                now = time.monotonic()
                if now >= due:
                    break
                if self._clock_pub is not None and clock_period is not None:
                    # Never run the clock past the message about to be published.
                    self._publish_clock(min(t0_bag + int((now - t0_wall) * rate * 1e9), msg.timestamp_ns))
                    self._stop.wait(min(clock_period, due - now))
                else:
                    self._stop.wait(due - now)
            if self._stop.is_set():
                return
            if self._clock_pub is not None:
                self._publish_clock(msg.timestamp_ns)
            self._pubs[msg.topic].publish(msg.data)      # raw CDR: identical bytes
            self.published += 1
            self.diag.tick('messages')
            self.diag.set('published', float(self.published))
            lateness = time.monotonic() - due
            self.diag.timing('lateness', max(0.0, lateness))

    def _publish_clock(self, ns: int) -> None:
        self._clock_pub.publish(Clock(clock=ns_to_msg(ns)))

    def _flush(self, timeout_s: float = 10.0) -> None:
        """Wait until reliable subscribers acknowledged everything (else a quick exit loses data)."""
        for topic, pub in self._pubs.items():
            if not pub.wait_for_all_acked(Duration(seconds=timeout_s)) and rclpy.ok():
                self.get_logger().warning(f'not every message on {topic} was acknowledged')

    def stop(self) -> None:
        """Ask the playback thread to stop."""
        self._stop.set()

    def close(self) -> None:
        """Final summary; called after destroy_node (see node_main), so it logs without the node."""
        rclpy.logging.get_logger(self._name).info(f'done: {self.published} messages published')


def _spin(node: BagPlayer) -> int:
    """Serve the node while the worker thread plays; return when done (if exit_when_done)."""
    worker = threading.Thread(target=node.play, name='bag_player', daemon=True)
    worker.start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not (node.done.is_set() and node.cfg['exit_when_done']):
            executor.spin_once(timeout_sec=0.1)
    finally:
        node.stop()
        worker.join(timeout=15.0)
    return 1 if node.failed else 0


def main(args: list[str] | None = None) -> int:
    """Entry point: play, then exit 0 (or keep serving until SIGINT with exit_when_done:=false)."""
    return run_node(BagPlayer, _spin, args=args, name='bag_player', params=PARAMS, doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
