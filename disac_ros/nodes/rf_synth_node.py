"""rf_synth_node: RF for simulators without an RF sensor (e.g. Gazebo): RfFrame from object poses.

Object poses come from either or both of:

* a TrackedObjectArray on ``objects_topic`` (e.g. ``/world/ground_truth``): one RF frame per
  device per message, stamped with the message's stamp;
* /tf: ``object_frames`` entries ``'<tf frame>:<class>'`` (e.g. ``'car_1:car'``; a Gazebo pose
  bridge publishes world -> model frames), velocity by finite differences, sizes from the class;
  one RF frame per device every ``1 / rate_hz`` seconds, stamped with the newest object pose.

Each device's pose comes from /tf (``world_frame`` -> ``<device_id>/base_link``) or a fixed
``static_poses`` entry. Each frame is one FMCW radar cube per device on
``/<device_id>/<rf_topic>``, synthesised by :func:`disac_ros.core.rf.synthesize_cube` from each
object's class-dependent point scatterers (:func:`disac_ros.core.rf.object_scatterers`) with
micro-Doppler and receiver noise. The radar sits ``radar_forward_m`` ahead of and
``radar_height_m`` above base_link, looking along its x axis. There is no occlusion model here
(no building geometry): every object in range and field of view reflects.

Noise draws come from a ``numpy.random.Generator`` seeded with ``seed``.
"""
from __future__ import annotations

import math
import sys
from typing import Any
import time

import numpy as np
from rclpy.node import Node
from tf2_msgs.msg import TFMessage

from disac_interfaces.msg import RfFrame, TrackedObjectArray
from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.rf import object_scatterers, synthesize_cube
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.types import CLASS_NAMES
from disac_ros.nodes import conversions as cv
from disac_ros.nodes import feature_msgs as fm
from disac_ros.nodes.diagnostics import Diagnostics, LogThrottle
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.params import Param, declare_params
from disac_ros.nodes.qos import qos_by_name, reliable_qos

PARAMS = (
    Param('device_ids', ['dev0'], 'devices to synthesise RF for'),
    Param('objects_topic', 'world/ground_truth', 'TrackedObjectArray of the objects (world frame)'),
    Param('rf_topic', 'rf/frame', 'output topic under /<device_id>/'),
    Param('world_frame', 'world', 'frame of the objects and device poses'),
    Param('static_poses', [''], "per device 'dev x y z yaw' for devices without /tf (roadside units)"),
    Param('pose_tolerance_s', 0.5, 'max |tf stamp - objects stamp| (s)', minimum=0.0),
    Param('radar_forward_m', 2.25, 'radar position ahead of base_link (m)'),
    Param('radar_height_m', 0.6, 'radar height above base_link (m)'),
    Param('num_rx', 4, 'receive antennas', minimum=1, maximum=64),
    Param('num_chirps', 16, 'chirps per frame', minimum=2, maximum=1024),
    Param('num_samples', 64, 'ADC samples per chirp', minimum=8, maximum=4096),
    Param('qos', 'sensor_data', 'QoS of the RF output', choices=('sensor_data', 'reliable')),
    Param('seed', 0, 'seed of the receiver noise', minimum=0),
    Param('object_frames', [''], "objects from /tf: '<frame>:<class>' entries (class: car, truck, "
                                 "pedestrian, cyclist); empty = none"),
    Param('rate_hz', 10.0, 'RF rate for /tf objects (Hz)', minimum=0.0, exclusive_minimum=True),
)

# Box (length, width, height) per class for objects known only by a tf frame.
_CLASS_SIZE = {'car': (4.5, 1.9, 1.5), 'truck': (8.0, 2.5, 3.2), 'pedestrian': (0.6, 0.6, 1.8),
               'cyclist': (1.8, 0.6, 1.7)}


class RfSynthNode(Node):
    """Synthesises one radar cube per device per objects message (see module doc)."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (``cli_args``, ``parameter_overrides``, ``context``: composition, tests)."""
        super().__init__('rf_synth', **node_kwargs)
        cfg = declare_params(self, PARAMS)
        self.cfg = cfg
        try:
            self.radar = RadarConfig(num_rx=cfg['num_rx'], num_chirps=cfg['num_chirps'],
                                     num_samples=cfg['num_samples'])
        except ConfigError as exc:
            raise ConfigError(f'{self.get_name()}.{exc.field}', exc.problem) from None
        self.rng = np.random.default_rng(cfg['seed'])
        self.static: dict[str, object] = {}
        for entry in cfg['static_poses']:
            if not entry.strip():
                continue
            parts = entry.replace(',', ' ').split()
            try:
                self.static[parts[0]] = fm.static_pose([float(v) for v in parts[1:]])
            except (ValueError, IndexError, TypeError):
                raise ConfigError(f'{self.get_name()}.static_poses',
                                  f"expected 'dev x y z yaw', got {entry!r}") from None
        self.caches = {d: fm.PoseCache(cfg['world_frame'], f'{d}/base_link') for d in cfg['device_ids']}
        self.create_subscription(TFMessage, '/tf', self._on_tf, reliable_qos(100))
        self.tf_objects: list[tuple[str, str, fm.PoseCache]] = []
        self._last_tf_stamp = -math.inf
        for entry in cfg['object_frames']:
            if not entry.strip():
                continue
            frame, _, cls = entry.partition(':')
            if cls not in _CLASS_SIZE or not frame:
                raise ConfigError(f'{self.get_name()}.object_frames',
                                  f"expected '<frame>:<{'|'.join(_CLASS_SIZE)}>', got {entry!r}")
            self.tf_objects.append((frame, cls, fm.PoseCache(cfg['world_frame'], frame, depth=20)))
        if cfg['objects_topic']:
            self.create_subscription(TrackedObjectArray, cfg['objects_topic'], self._on_objects, reliable_qos(10))
        if self.tf_objects:
            self.create_timer(1.0 / cfg['rate_hz'], self._on_tf_timer)
        qos = qos_by_name(cfg['qos'])
        self.pubs = {d: self.create_publisher(RfFrame, fm.device_topic(d, cfg['rf_topic']), qos)
                     for d in cfg['device_ids']}
        self.seq = {d: 0 for d in cfg['device_ids']}
        self.diag = Diagnostics(self, 'rf_synth')
        self._warn = LogThrottle(self).warning   # bad streams must not flood the log
        self.get_logger().info(f'RF for {cfg["device_ids"]} from {cfg["objects_topic"]} '
                               f'({cfg["num_rx"]}x{cfg["num_chirps"]}x{cfg["num_samples"]} cube)')

    def _on_tf(self, msg: TFMessage) -> None:
        for cache in self.caches.values():
            cache.add_tf(msg)
        for _, _, cache in self.tf_objects:
            cache.add_tf(msg)

    def _on_tf_timer(self) -> None:
        """One RF frame from the /tf objects, at their newest stamp."""
        newest = [c.latest() for _, _, c in self.tf_objects]
        stamps = [n[0] for n in newest if n is not None]
        if not stamps:
            return
        stamp = max(stamps)
        if stamp == self._last_tf_stamp:
            return                               # no new pose since the last frame
        self._last_tf_stamp = stamp
        scatterers = []
        for (frame, cls, cache), latest in zip(self.tf_objects, newest):
            if latest is None or stamp - latest[0] > self.cfg['pose_tolerance_s']:
                continue
            vel = cache.velocity()
            x, y, yaw = fm.pose_xyyaw(latest[1])
            size = _CLASS_SIZE[cls]
            scatterers += object_scatterers(cls, (x, y, latest[1].position.z), (vel[0], vel[1], 0.0), yaw, size,
                                            stamp, gait_phase=float(sum(map(ord, frame)) % 7))
        self._publish(stamp, cv.time_to_msg(stamp), scatterers)

    def _on_objects(self, msg: TrackedObjectArray) -> None:
        t0 = time.monotonic()
        stamp = cv.msg_to_time(msg.header.stamp)
        scatterers = []
        for o in msg.objects:
            cls = CLASS_NAMES[o.classification] if o.classification < len(CLASS_NAMES) else 'unknown'
            if cls == 'unknown':
                continue
            p = o.pose.pose.position
            v = o.twist.twist.linear
            size = (o.dimensions.x, o.dimensions.y, o.dimensions.z)
            if min(size) <= 0:
                continue
            try:
                scatterers += object_scatterers(cls, (p.x, p.y, p.z), (v.x, v.y, v.z),
                                                cv.yaw_from_quaternion(o.pose.pose.orientation), size, stamp,
                                                gait_phase=float(o.id % 7))
            except (DisacError, ValueError) as exc:
                self.diag.count('bad_objects')
                self._warn(f'object {o.id} skipped: {exc}')
        self._publish(stamp, msg.header.stamp, scatterers)
        self.diag.timing('synth', time.monotonic() - t0)

    def _publish(self, stamp: float, stamp_msg, scatterers: list) -> None:
        for dev, pub in self.pubs.items():
            pose = self.static.get(dev) or self.caches[dev].lookup(stamp, self.cfg['pose_tolerance_s'])
            if pose is None:
                self.diag.count(f'{dev}.no_pose')
                self._warn(f'{dev}: no pose near {stamp:.3f}; no RF frame')
                continue
            x, y, yaw = fm.pose_xyyaw(pose)
            fwd, h = self.cfg['radar_forward_m'], self.cfg['radar_height_m']
            radar_pos = (x + fwd * math.cos(yaw), y + fwd * math.sin(yaw), pose.position.z + h)
            cube = synthesize_cube(self.radar, radar_pos, yaw, scatterers, self.rng)
            pub.publish(cv.rf_to_msg(cube, device_id=dev, seq=self.seq[dev], radar=self.radar,
                                     stamp=stamp_msg, frame_id=f'{dev}/radar'))
            self.seq[dev] += 1
            self.diag.tick(f'{dev}.rf_out')



def main(args: list[str] | None = None) -> int:
    """Entry point: run until SIGINT/SIGTERM; exit 2 on a configuration error."""
    return run_node(RfSynthNode, args=args, name='rf_synth_node', params=PARAMS, doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
