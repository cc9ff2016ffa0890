"""link_node (simulation only): the wireless channel between every device and the aggregator.

For each configured device it subscribes to ``<device_id>/<input_topic>`` under its own namespace
(default ``/<dev>/semantic/feature``; ``/site1/<dev>/...`` in namespace ``site1``) and republishes on
``<device_id>/<output_topic>`` (default ``/<dev>/link/feature``) what the aggregator's radio would receive, using
:class:`disac_ros.core.link.LinkEmulator`: distance from the device pose in the message to the
aggregator position, SNR from the path-loss model (or fixed), packet loss (fixed and/or
SNR-dependent), Rayleigh/AWGN fading and noise on the symbols, re-quantisation, delay + jitter
and a token-bucket bandwidth cap, all seeded. The SNR and distance a receiver would know are
written into ``snr_db`` / ``distance_m``.

On real radios this node is left out and the aggregator subscribes to the devices directly.
The channel changes the symbols but nothing else (device id, seq, stamp, shape, pose): the tag is
forwarded unchanged, and devices that sign with ``auth_scope: header`` (the shipped fleet.yaml)
are verified behind it; a ``payload``-scope tag, which covers the symbols, cannot survive it.
"""
from __future__ import annotations

import heapq
import itertools
import sys
from typing import Any
import time

from rclpy.node import Node

from disac_interfaces.msg import SemanticFeature
from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.link import FADINGS, SNR_MODES, LinkConfig, LinkEmulator
from disac_ros.core.models.config import ChannelConfig
from disac_ros.nodes import feature_msgs as fm
from disac_ros.nodes.feature_msgs import device_topic
from disac_ros.nodes.diagnostics import Diagnostics, LogThrottle
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.params import Param, declare_params
from disac_ros.nodes.qos import qos_by_name

PARAMS = (
    Param('device_ids', ['auto'], "devices whose features cross this link; ['auto'] = every device that "
                                  'publishes <namespace>/<device_id>/<input_topic> (graph scanned every second)'),
    Param('input_topic', 'semantic/feature', 'per-device input topic, under <namespace>/<device_id>/'),
    Param('output_topic', 'link/feature', 'per-device output topic, under <namespace>/<device_id>/'),
    Param('qos', 'sensor_data', 'QoS of inputs and outputs', choices=('sensor_data', 'reliable')),
    Param('seed', 0, 'seed of every random draw (per device: seed + device id)', minimum=0),
    Param('aggregator_x', 0.0, 'aggregator (receiver) x in the world frame (m)'),
    Param('aggregator_y', 0.0, 'aggregator (receiver) y in the world frame (m)'),
    Param('fading', 'rayleigh', 'channel fading (none: symbols pass unchanged)', choices=FADINGS),
    Param('snr_mode', 'distance', 'SNR from the path-loss model or fixed', choices=SNR_MODES),
    Param('fixed_snr_db', 15.0, 'SNR when snr_mode is fixed (dB)'),
    Param('loss_probability', 0.0, 'fixed packet loss probability', minimum=0.0, maximum=1.0),
    Param('loss_snr_midpoint_db', 0.0, 'SNR with 50 % SNR-dependent loss (dB)'),
    Param('loss_snr_width_db', 0.0, 'logistic width of the SNR-dependent loss (dB); 0 = off', minimum=0.0),
    Param('delay_s', 0.005, 'one-way delay (s)', minimum=0.0),
    Param('jitter_s', 0.0, 'scale of the half-normal extra delay (s)', minimum=0.0),
    Param('bandwidth_bps', 0.0, 'per-device token-bucket rate (bit/s); 0 = unlimited', minimum=0.0),
    Param('bucket_bytes', 4096, 'token-bucket depth (bytes)', minimum=1, maximum=1 << 30),
    Param('bits', 8, 'receiver re-quantisation bits (0 = keep the sender\'s)', minimum=0, maximum=8),
    Param('tx_power_dbm', 23.0, 'transmit power of the path-loss model (dBm)'),
    Param('path_loss_exponent', 2.7, 'path-loss exponent', minimum=1.0, maximum=6.0),
    Param('poll_period_s', 0.002, 'delivery timer period (s)', minimum=0.0005),
)


class LinkNode(Node):
    """Emulates every device's wireless link (see module doc)."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (``cli_args``, ``parameter_overrides``, ``context``: composition, tests)."""
        super().__init__('link', **node_kwargs)
        cfg = declare_params(self, PARAMS)
        self.cfg = cfg
        try:
            channel = ChannelConfig(tx_power_dbm=cfg['tx_power_dbm'], path_loss_exponent=cfg['path_loss_exponent'])
            link_cfg = LinkConfig(
                fading=cfg['fading'], snr_mode=cfg['snr_mode'], fixed_snr_db=cfg['fixed_snr_db'],
                loss_probability=cfg['loss_probability'], loss_snr_midpoint_db=cfg['loss_snr_midpoint_db'],
                loss_snr_width_db=cfg['loss_snr_width_db'], delay_s=cfg['delay_s'], jitter_s=cfg['jitter_s'],
                bandwidth_bps=cfg['bandwidth_bps'], bucket_bytes=cfg['bucket_bytes'], bits=cfg['bits'],
                aggregator_xy=(cfg['aggregator_x'], cfg['aggregator_y']), channel=channel)
        except ConfigError as exc:
            raise ConfigError(f'{self.get_name()}.{exc.field.split(".")[-1]}', exc.problem) from None
        self.link = LinkEmulator(link_cfg, seed=cfg['seed'])
        qos = qos_by_name(cfg['qos'])
        self._pubs = {}
        self._queue: list[tuple[float, int, str, SemanticFeature]] = []
        self._order = itertools.count()
        self.diag = Diagnostics(self, 'link')
        self._qos = qos
        self._warn = LogThrottle(self).warning   # bad streams must not flood the log
        self.discover = cfg['device_ids'] == ['auto']
        if self.discover:
            self._scan()
            self.create_timer(1.0, self._scan)
        else:
            for dev in cfg['device_ids']:
                self._add_device(dev)
        # The delivery timer runs only while packets wait (an idle 2 ms timer costs ~20 % of a core).
        self._timer = self.create_timer(cfg['poll_period_s'], self._deliver)
        self._timer.cancel()

    def _add_device(self, dev: str) -> None:
        src = device_topic(dev, self.cfg['input_topic'])
        dst = device_topic(dev, self.cfg['output_topic'])
        self._pubs[dev] = self.create_publisher(SemanticFeature, dst, self._qos)
        self.create_subscription(SemanticFeature, src, lambda m, d=dev: self._on_feature(d, m), self._qos)
        for key in ('in', 'out', 'loss', 'snr', 'bandwidth', 'bad'):
            self.diag.set(f'{dev}.{key}', 0.0)
        self.get_logger().info(f'link for {dev}: {src} -> {dst}')

    def _scan(self) -> None:
        """Start a link for every new <namespace>/<device_id>/<input_topic> publisher."""
        suffix = '/' + self.cfg['input_topic'].strip('/')
        prefix = self.get_namespace().rstrip('/') + '/'
        for topic, types in self.get_topic_names_and_types():
            if not topic.endswith(suffix) or not topic.startswith(prefix) \
                    or 'disac_interfaces/msg/SemanticFeature' not in types:
                continue
            dev = topic[len(prefix):-len(suffix)]
            if dev and '/' not in dev and dev not in self._pubs and self.count_publishers(topic) > 0:
                self._add_device(dev)

    def _on_feature(self, dev: str, msg: SemanticFeature) -> None:
        now = time.monotonic()
        self.diag.count(f'{dev}.in')
        if msg.device_id != dev:
            self.diag.count(f'{dev}.bad')
            return self._warn(f'{dev}: message claims device_id {msg.device_id!r}; dropped')
        try:
            payload = fm.msg_payload(msg)
            outcome = self.link.transmit(dev, payload, (msg.device_pose.position.x, msg.device_pose.position.y), now)
        except (DisacError, ValueError) as exc:
            self.diag.count(f'{dev}.bad')
            return self._warn(f'{dev}: bad packet dropped: {exc}')
        self.diag.set(f'{dev}.snr_db', outcome.snr_db)
        self.diag.set(f'{dev}.distance_m', outcome.distance_m)
        if not outcome.delivered:
            self.diag.count(f'{dev}.{outcome.reason}')
            return
        fm.set_payload(msg, outcome.payload)
        msg.snr_db = float(outcome.snr_db)
        msg.distance_m = float(outcome.distance_m)
        heapq.heappush(self._queue, (outcome.deliver_at_s, next(self._order), dev, msg))
        if self._timer.is_canceled():
            self._timer.reset()

    def _deliver(self) -> None:
        now = time.monotonic()
        while self._queue and self._queue[0][0] <= now:
            _, _, dev, msg = heapq.heappop(self._queue)
            self._pubs[dev].publish(msg)
            self.diag.count(f'{dev}.out')
        self.diag.set('queued', float(len(self._queue)))
        if not self._queue:
            self._timer.cancel()



def main(args: list[str] | None = None) -> int:
    """Entry point: run until SIGINT/SIGTERM; exit 2 on a configuration error."""
    return run_node(LinkNode, args=args, name='link_node', params=PARAMS, doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
