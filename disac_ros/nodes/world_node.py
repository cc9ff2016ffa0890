"""world_node: the simulated world (disac_ros.core.world.World) on ROS topics.

Per device ``<dev>`` (topics relative to the node namespace, so a fleet namespace prefixes them):

==============================  ============================  ==========================================
topic                           type                          notes
==============================  ============================  ==========================================
``<dev>/camera/image_raw``      sensor_msgs/Image             rgb8, step 3W, frame ``<dev>/camera_optical``
``<dev>/camera/camera_info``    sensor_msgs/CameraInfo        K, P = [K|0], plumb_bob zeros, same stamp
``<dev>/rf/frame``              disac_interfaces/RfFrame      rx x chirp x sample cube, frame ``<dev>/radar``
``world/ground_truth``          disac_interfaces/TrackedObjectArray   in ``world_frame``
``/tf``                         tf2_msgs/TFMessage            world -> ``<dev>/base_link`` every step
``/tf_static``                  tf2_msgs/TFMessage            base_link -> camera_optical, radar (latched)
``/clock``                      rosgraph_msgs/Clock           when publish_clock (auto: use_sim_time)
``/diagnostics``                diagnostic_msgs/DiagnosticArray  step/publish time, rate, overruns
==============================  ============================  ==========================================

Timing: a wall-clock timer steps the world at ``rate_hz``; each step advances simulation time by
``dt = 1 / rate_hz``. A step that overruns its period is counted (``overruns``), never queued.
Stamps are simulation time: with ``use_sim_time`` they are the world time itself (and /clock
carries it); without, they are the world time plus the wall time at which stepping started
(moved on by the whole periods a first step lost, e.g. compiling kernels), so they look like
(and stay close to) wall time while the world keeps up. Each overrun makes the
stamps trail wall time a little more; ``/diagnostics`` reports it as ``stamp_lag_s``. (On this
2-core CPU machine, 2 devices at 5 Hz keep up; 4 devices at 10 Hz do not.)
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
import sys
from typing import Any
import time

from rclpy.clock import Clock, ClockType
from rclpy.node import Node
from rosgraph_msgs.msg import Clock as ClockMsg
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from disac_interfaces.msg import RfFrame, TrackedObjectArray
from disac_ros.nodes import conversions as cv
from disac_ros.nodes.diagnostics import Diagnostics
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.params import Param, declare_params, use_sim_time
from disac_ros.nodes.qos import latched_qos, qos_by_name, reliable_qos

PARAMS = (
    Param('scenario', '', 'scenario YAML path; empty = config/scenarios/default.yaml of the installed '
                          'package (ament index), else of the source tree'),
    Param('seed', 0, 'random seed of the world (object placement, RF noise)', minimum=0),
    Param('num_devices', 0, 'use the first K devices of the scenario; 0 = all', minimum=0, maximum=1024),
    Param('rate_hz', 0.0, 'step and publish rate (Hz); 0 = the scenario rate_hz. Sim time advances '
                          '1/rate_hz per step', minimum=0.0, maximum=1000.0),
    Param('world_frame', 'world', 'fixed frame of tf, poses and ground truth'),
    Param('publish_clock', 'auto', 'publish /clock with the world time; auto = when use_sim_time is true',
          choices=('auto', 'true', 'false')),
    Param('sensor_qos', 'sensor_data', 'QoS of camera and RF topics: sensor_data (best effort) or reliable',
          choices=('sensor_data', 'reliable')),
    Param('renderer', 'genesis', "camera renderer: genesis, or none (black images; RF and ground truth "
                                 "unchanged, no Genesis start-up)", choices=('genesis', 'none')),
)


def default_scenario_path() -> Path:
    """config/scenarios/default.yaml: installed share directory first, then the source tree."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            p = Path(get_package_share_directory('disac_ros')) / 'config' / 'scenarios' / 'default.yaml'
            if p.is_file():
                return p
        except PackageNotFoundError:
            pass
    except ImportError:
        pass
    return Path(__file__).resolve().parents[2] / 'config' / 'scenarios' / 'default.yaml'


def stall_catch_up_s(lost_s: float, period_s: float) -> float:
    """Seconds to move the stamps on after a stalled first step: the whole periods lost (a part
    period is normal jitter and moving by it would bias every later stamp late)."""
    return math.floor(max(lost_s, 0.0) / period_s) * period_s


class WorldNode(Node):
    """Steps a World on a wall timer and publishes its sensors, poses and ground truth."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node (``cli_args``, ``parameter_overrides``, ``context``: composition, tests)."""
        super().__init__('world', **node_kwargs)
        cfg = declare_params(self, PARAMS)
        self.cfg = cfg
        # Imported here: the simulator pulls in Genesis, which is slow to import; fail on params first.
        from disac_ros.core.scenario import load_scenario
        from disac_ros.core.world import World

        path = Path(cfg['scenario']) if cfg['scenario'] else default_scenario_path()
        scenario = load_scenario(path, num_devices=cfg['num_devices'] or None)
        if cfg['rate_hz'] > 0:
            scenario = dataclasses.replace(scenario, rate_hz=cfg['rate_hz'])
        self.scenario = scenario
        self.sim_time = use_sim_time(self)
        self.publish_clock = cfg['publish_clock'] == 'true' or (cfg['publish_clock'] == 'auto' and self.sim_time)
        self.frame = cfg['world_frame']
        t0 = time.monotonic()
        self.get_logger().info(f'building world {scenario.name!r} from {path} '
                               f'({len(scenario.device_ids)} devices, seed {cfg["seed"]})')
        self.world = World(scenario, seed=cfg['seed'], renderer=cfg['renderer'])
        self.get_logger().info(f'world ready in {time.monotonic() - t0:.1f} s')
        self.devices = list(self.world.device_ids)
        self.period = self.world.dt

        sensor_qos = qos_by_name(cfg['sensor_qos'])
        self._image_pubs = {d: self.create_publisher(Image, f'{d}/camera/image_raw', sensor_qos) for d in self.devices}
        self._info_pubs = {d: self.create_publisher(CameraInfo, f'{d}/camera/camera_info', sensor_qos)
                           for d in self.devices}
        self._rf_pubs = {d: self.create_publisher(RfFrame, f'{d}/rf/frame', sensor_qos) for d in self.devices}
        self._gt_pub = self.create_publisher(TrackedObjectArray, 'world/ground_truth', reliable_qos(10))
        self._tf_pub = self.create_publisher(TFMessage, '/tf', reliable_qos(100))
        self._tf_static_pub = self.create_publisher(TFMessage, '/tf_static', latched_qos(1))
        self._clock_pub = self.create_publisher(ClockMsg, '/clock', reliable_qos(1)) if self.publish_clock else None

        width, height = self.world.image_size
        self._camera_info = {d: cv.camera_info_msg(self.world.camera_intrinsics(d), width, height,
                                                   frame_id=f'{d}/camera_optical') for d in self.devices}
        self._radar = {d: self.world.radar_config(d) for d in self.devices}
        self._first_seen: dict[int, object] = {}
        self._publish_static_tf()

        self.steps = 0
        self.overruns = 0
        # Offset that turns world time into wall-like stamps when not on sim time; set at the first
        # step so the scene build and warm-up do not count as lag.
        self._stamp_offset: float | None = 0.0 if self.sim_time else None
        self.diag = Diagnostics(self, 'world', warn_if=self._warning)
        self.diag.set('devices', float(len(self.devices)))
        self.diag.set('rate_hz_target', 1.0 / self.period)
        # A steady (wall) timer: a ROS-time timer would wait for the /clock this node publishes.
        self._timer = self.create_timer(self.period, self._step, clock=Clock(clock_type=ClockType.STEADY_TIME))
        self.get_logger().info(
            f'publishing {self.devices} at {1.0 / self.period:g} Hz '
            f'({"sim" if self.sim_time else "wall-offset"} stamps, clock {"on" if self._clock_pub else "off"}, '
            f'sensor QoS {cfg["sensor_qos"]})')

    def _warning(self, values: dict) -> str | None:
        return f'{self.overruns} step(s) overran the {self.period * 1e3:.0f} ms period' if self.overruns else None

    def _publish_static_tf(self) -> None:
        transforms = []
        for d in self.devices:
            for child, (xyz, quat) in self.world.sensor_extrinsics(d).items():
                transforms.append(cv.transform_msg(xyz, quat, f'{d}/base_link', f'{d}/{child}'))
        self._tf_static_pub.publish(TFMessage(transforms=transforms))

    def _step(self) -> None:
        t_start = time.monotonic()
        if self._stamp_offset is None:
            self._stamp_offset = time.time() - self.world.time_s
        elif self.steps == 1 and not self.sim_time:
            # The first step may stall compiling the renderer's kernels (seconds on a fresh
            # install): move the stamps on by the whole periods it lost, so that every later stamp
            # does not trail wall time by the stall (a normal first step loses none).
            lost = time.time() - (self.world.time_s + self._stamp_offset)
            self._stamp_offset += stall_catch_up_s(lost, self.period)
        frame = self.world.step()
        t_stepped = time.monotonic()
        stamp = cv.time_to_msg(frame.time_s + self._stamp_offset)
        if self._clock_pub is not None:
            self._clock_pub.publish(ClockMsg(clock=stamp))
        transforms = []
        for obs in frame.devices:
            d = obs.device_id
            self._image_pubs[d].publish(cv.image_to_msg(obs.image, 'rgb8', stamp, f'{d}/camera_optical'))
            info = self._camera_info[d]
            info.header.stamp = stamp
            self._info_pubs[d].publish(info)
            self._rf_pubs[d].publish(cv.rf_to_msg(obs.rf, device_id=d, seq=self.steps, radar=self._radar[d],
                                                  stamp=stamp, frame_id=f'{d}/radar'))
            transforms.append(cv.pose_to_transform(obs.pose, self.frame, f'{d}/base_link', stamp))
        self._tf_pub.publish(TFMessage(transforms=transforms))
        for o in frame.objects:
            self._first_seen.setdefault(o.object_id, stamp)
        self._gt_pub.publish(cv.objects_to_msg(frame.objects, stamp, self.frame, self.devices, self._first_seen))
        t_end = time.monotonic()
        self.steps += 1
        if t_end - t_start > self.period:
            self.overruns += 1
        self.diag.timing('step', t_stepped - t_start)
        timing = getattr(self.world, 'last_timing', None)
        if timing is not None:
            self.diag.timing('render', timing.render)
            self.diag.timing('rf', timing.rf)
        self.diag.timing('publish', t_end - t_stepped)
        self.diag.tick('published')
        self.diag.set('steps', float(self.steps))
        self.diag.set('overruns', float(self.overruns))
        self.diag.set('sim_time_s', float(frame.time_s))
        if not self.sim_time:
            # How far the stamps trail wall time: grows by one period per overrun (documented).
            self.diag.set('stamp_lag_s', time.time() - (frame.time_s + self._stamp_offset))

    def close(self) -> None:
        """Release the simulator."""
        self.world.close()


def main(args: list[str] | None = None) -> int:
    """Entry point: run until SIGINT/SIGTERM; exit 2 on a configuration error."""
    return run_node(WorldNode, args=args, name='world_node', params=PARAMS, doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
