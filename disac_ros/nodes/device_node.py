"""device_node: one sensing device (vehicle or roadside unit): camera + RF -> SemanticFeature.

Subscribes (sensor_data QoS by default) to ``camera_topic`` (sensor_msgs/Image) and ``rf_topic``
(disac_interfaces/RfFrame), pairs them by stamp (approximate time: the nearest RF frame within
``slop_s`` of an image), runs RVFN + the semantic encoder of the model folder on the CPU
(``threads`` torch threads) and publishes a quantised, optionally signed SemanticFeature on
``feature_topic`` with best-effort QoS and a lifespan (``lifespan_s``): a feature older than that
is worthless to the aggregator, so DDS may discard it.

The device pose sent with each feature comes from /tf (``world_frame`` -> ``base_frame``, nearest
stamp; tf2_ros is not on PyPI, so a small cache reads /tf directly) or from ``static_pose``
("x y z yaw", for a roadside unit without tf).

Each device's sensors are resampled to the ones the model was trained with
(``disac_ros/core/sensor_adapt.py``): the camera from ``camera_info_topic``'s intrinsics
(``camera_intrinsics``: K for a raw image, P for a rectified one), the radar from the waveform
every RfFrame carries; ``adapt_sensors:=false`` feeds them as they are.

Processing never queues: callbacks only pair frames; a short timer processes the newest pair and
counts the ones it skipped (``dropped``), so a slow CPU lowers the output rate instead of growing
latency. Diagnostics: input/output rates, pipeline latency, paired/unpaired/dropped frames, bad
input. Bad input (wrong encoding/shape, NaN) is logged (throttled), counted, and skipped.
"""
from __future__ import annotations

from collections import deque
import math
from pathlib import Path
import sys
import time
from typing import Any

import numpy as np
from rclpy.duration import Duration
from rclpy.qos import QoSProfile
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from disac_interfaces.msg import RfFrame, SemanticFeature
from disac_ros.core.errors import ConfigError, DisacError
from disac_ros.core.packet import AUTH_SCOPES, CODEC_VERSION, quantize
from disac_ros.nodes import conversions as cv
from disac_ros.nodes import feature_msgs as fm
from disac_ros.nodes.diagnostics import Diagnostics, LogThrottle
from disac_ros.nodes.model_loading import RetryingModelLoader
from disac_ros.nodes.node_main import run_node
from disac_ros.nodes.managed import AUTOSTART, ManagedNode
from disac_ros.nodes.params import Param, declare_params, on_parameter_change
from disac_ros.nodes.qos import qos_by_name, reliable_qos

PARAMS = (
    Param('device_id', 'dev0', 'this device\'s id (must be configured at the aggregator)'),
    Param('camera_topic', 'camera/image_raw', 'sensor_msgs/Image input (relative to the namespace)'),
    Param('rf_topic', 'rf/frame', 'disac_interfaces/RfFrame input'),
    Param('camera_info_topic', 'camera/camera_info', 'sensor_msgs/CameraInfo of the camera (its '
          'intrinsics, for adapt_sensors); empty = none'),
    Param('camera_intrinsics', 'K', "which CameraInfo matrix describes the images: K (camera_topic "
          "is the raw image; lens distortion is not removed) or P (a rectified image, e.g. image_proc's "
          'image_rect)', choices=('K', 'P')),
    Param('adapt_sensors', True, "resample the camera (from camera_info) and the radar (from each "
          "RfFrame's waveform) to the sensors the model was trained with; false = feed them as they "
          'are', read_only=False),
    Param('feature_topic', 'semantic/feature', 'SemanticFeature output'),
    Param('model_dir', '', 'trained model folder; empty = $DISAC_MODEL_DIR or the installed models/default'),
    Param('model_device_id', '', "use this device's stage-1 weights (empty = device_id)"),
    Param('threads', 1, 'torch CPU threads', minimum=1, maximum=64),
    Param('warm_up', True, 'run the model once on a blank frame after loading, so the first real '
                           'frame is not slowed by first-call costs'),
    Param('slop_s', 0.05, 'max |image stamp - RF stamp| for a pair (s)', minimum=0.0, read_only=False),
    Param('sensor_qos', 'sensor_data', 'QoS of the camera and RF subscriptions', choices=('sensor_data', 'reliable')),
    Param('feature_qos', 'sensor_data', "QoS of the published features (a reliable link_node or aggregator "
          "input needs 'reliable')", choices=('sensor_data', 'reliable')),
    Param('lifespan_s', 1.0, 'lifespan of published features (s); 0 = infinite', minimum=0.0),
    Param('bits', 4, 'quantisation bits per I/Q component on the air (4: 256 B per feature, as accurate '
          'as 8 bits: see docs/models.md)', minimum=2, maximum=8, read_only=False),
    Param('world_frame', 'world', 'frame of the device pose'),
    Param('base_frame', '', 'tf child frame of the device; empty = <device_id>/base_link'),
    Param('static_pose', '', "'x y z yaw' fixed device pose (roadside unit without tf); empty = from /tf"),
    Param('pose_tolerance_s', 0.5, 'max |tf stamp - image stamp| for the pose (s)', minimum=0.0,
          read_only=False),
    Param('pose_wait_s', 0.05, 'wait up to this long for the /tf of a frame\'s instant (s)', minimum=0.0,
          read_only=False),
    Param('key_file', '', 'KeyRing file (YAML/JSON) to sign features; empty = no key file'),
    Param('shared_secret', '', "'hex:...'/'base64:...' fleet secret to sign features; empty = unsigned "
          '(prefer key_file: a parameter value shows in ros2 param get)'),
    Param('auth_scope', 'payload', "what the tag covers: payload (every field: bit-exact digital links) or "
          "header (all but the symbol values, which an analog channel or link_node changes)",
          choices=AUTH_SCOPES),
    Param('process_period_s', 0.01, 'retry period while a paired frame waits for its /tf (s); a pair '
          'is processed as soon as it is complete (no polling while idle)', minimum=0.001),
)


class DeviceNode(ManagedNode):
    """Pairs camera + RF frames, encodes them, publishes SemanticFeature (see module doc); a
    lifecycle node (configure = load the model and subscribe, activate = encode and publish)."""

    def __init__(self, **node_kwargs: Any) -> None:
        """``node_kwargs`` go to rclpy's Node, e.g. ``cli_args`` for a node sharing a process."""
        super().__init__('device_node', **node_kwargs)
        cfg = declare_params(self, PARAMS + (AUTOSTART,))
        self.cfg = cfg
        self.device_id = cfg['device_id']
        self.base_frame = cfg['base_frame'] or f'{self.device_id}/base_link'
        self.static_pose = None
        if cfg['static_pose']:
            try:
                vals = [float(v) for v in cfg['static_pose'].replace(',', ' ').split()]
            except ValueError:
                vals = []
            if len(vals) != 4:
                raise ConfigError(f'{self.get_name()}.static_pose', f"expected 'x y z yaw', got {cfg['static_pose']!r}")
            self.static_pose = fm.static_pose(vals)
        self.keyring = fm.load_keyring(cfg['key_file'], cfg['shared_secret'])
        self.pipeline = None
        self.model: RetryingModelLoader | None = None
        self._images: deque[tuple[float, Image]] = deque(maxlen=10)
        self._rf: deque[tuple[float, RfFrame]] = deque(maxlen=10)
        self._pending: tuple[float, Image, RfFrame] | None = None
        self._camera: Any = None          # CameraModel of the latest valid camera_info
        self._last_paired_stamp = -math.inf
        self._paired_at = 0.0
        self.poses = fm.PoseCache(cfg['world_frame'], self.base_frame)
        self.seq = 0
        self.diag = Diagnostics(self, 'device', hardware_id=self.device_id,
                                warn_if=self._warning)
        for key in ('paired', 'unpaired', 'dropped', 'published', 'bad_input', 'no_pose', 'processing_errors',
                    'bad_camera_info', 'bad_rf_waveform'):
            self.diag.set(key, 0.0)
        self.diag.set('camera_model', 'none yet')
        self.diag.set('radar_model', 'none yet')
        self._warn = LogThrottle(self).warning   # bad streams must not flood the log
        out_qos = qos_by_name(cfg['feature_qos'], depth=5)
        if cfg['lifespan_s'] > 0:
            out_qos = QoSProfile(history=out_qos.history, depth=out_qos.depth, reliability=out_qos.reliability,
                                 durability=out_qos.durability, lifespan=Duration(seconds=cfg['lifespan_s']))
        self.pub = self.create_publisher(SemanticFeature, cfg['feature_topic'], out_qos)
        on_parameter_change(self, PARAMS, self.cfg, lambda changed: None)   # read where used
        self.start(cfg['autostart'])

    def configure_io(self) -> None:
        """Lifecycle configure: load the model, then subscribe (see ManagedNode)."""
        cfg = self.cfg
        # A missing or corrupt model must not kill the device: keep reporting and retry. Loaded
        # before the subscriptions exist, so a matched subscription means a ready device.
        self.model = RetryingModelLoader(
            self, self.diag, 'device model', cfg['model_dir'],
            build=self._build_pipeline, on_loaded=self._on_model_loaded)
        qos_in = qos_by_name(cfg['sensor_qos'])
        self.track(self.create_subscription(Image, cfg['camera_topic'], self._on_image, qos_in))
        self.track(self.create_subscription(RfFrame, cfg['rf_topic'], self._on_rf, qos_in))
        if cfg['camera_info_topic']:
            self.track(self.create_subscription(CameraInfo, cfg['camera_info_topic'],
                                                self._on_camera_info, qos_in))
        if self.static_pose is None:
            # Absolute, as tf is; a namespaced fleet remaps it (/tf:=/<namespace>/tf).
            self.track(self.create_subscription(TFMessage, '/tf', self._on_tf, reliable_qos(100)))
        # Event-driven: a new pair (or the /tf it waits for) wakes the processing through a guard
        # condition; the retry timer runs only while a frame waits for its pose. (A 100 Hz polling
        # timer cost ~0.1 core per idle device on this machine.)
        self._wake = self.track(self.create_guard_condition(self._process))
        self._retry = self.track(self.create_timer(cfg['process_period_s'], self._process))
        self._retry.cancel()
        self.get_logger().info(f'{self.device_id}: {self.get_namespace()}/{cfg["camera_topic"]} + '
                               f'{cfg["rf_topic"]} -> {self.pub.topic_name} '
                               f'({"signed" if self.keyring else "unsigned"}, {cfg["bits"]} bits, '
                               f'slop {cfg["slop_s"]} s)')

    def cleanup_io(self) -> None:
        """Lifecycle cleanup: drop the model and any frame in flight."""
        if self.model is not None:
            self.model.cancel()
        self.model, self.pipeline, self._pending = None, None, None
        self._images.clear()
        self._rf.clear()

    def _warning(self, values: dict) -> str | None:
        if self.model is None:
            return 'not configured (ros2 lifecycle set <node> configure)'
        return f'no model: {self.model.error}' if self.model.error else None

    def _build_pipeline(self, model_dir: Path) -> DevicePipeline:
        from disac_ros.core.inference import DevicePipeline    # torch: imported when first needed
        return DevicePipeline(model_dir, self.device_id, threads=self.cfg['threads'],
                              model_device_id=self.cfg['model_device_id'])

    def _on_model_loaded(self, pipeline: DevicePipeline, model_dir: Path, load_s: float) -> None:
        warm = pipeline.warm_up() if self.cfg['warm_up'] else 0.0
        self.pipeline = pipeline
        self.get_logger().info(f'loaded device models from {model_dir} in {load_s:.2f} s'
                               f'{f" (+{warm:.2f} s warm-up)" if warm else ""}')


    def _on_image(self, msg: Image) -> None:
        self.diag.tick('image_in')
        from disac_ros.core.inference import image_size_problem
        problem = image_size_problem(msg.height, msg.width) or (
            '' if len(msg.data) == msg.step * msg.height else f'{len(msg.data)} bytes, not step x height')
        if problem:
            # Refused on arrival: it must not displace a good frame waiting for its RF partner.
            self.diag.count('bad_input')
            return self._warn(f'image refused: {problem}', key='image')
        self._images.append((cv.msg_to_time(msg.header.stamp), msg))
        self._pair()

    def _on_camera_info(self, msg: CameraInfo) -> None:
        from disac_ros.core.sensor_adapt import CameraModel
        try:
            k = (cv.camera_info_to_k(msg) if self.cfg['camera_intrinsics'] == 'K'
                 else np.asarray(msg.p, dtype=np.float64).reshape(3, 4)[:, :3])
            camera = CameraModel.from_k(k, int(msg.width), int(msg.height))
        except (ValueError, DisacError) as exc:
            self.diag.count('bad_camera_info')
            return self._warn(f'camera_info refused: {exc}', key='camera_info')
        if camera != self._camera:
            self._camera = camera
            self.diag.set('camera_model', f'{camera.width}x{camera.height}, horizontal field of '
                                          f'view {camera.hfov_deg:.1f} deg')

    def _sensors_of(self, img_msg: Image, rf_msg: RfFrame) -> tuple[Any, Any]:
        """(CameraModel or None, RadarConfig or None) of a pair, for the pipeline to resample."""
        camera = self._camera
        if camera is not None and (camera.width, camera.height) != (img_msg.width, img_msg.height):
            self._warn(f'camera_info says {camera.width}x{camera.height} but the image is '
                       f'{img_msg.width}x{img_msg.height}: image used as it is', key='camera_size')
            camera = None
        try:
            radar = cv.msg_to_radar_config(rf_msg)
        except ValueError as exc:
            self.diag.count('bad_rf_waveform')
            self._warn(f'{exc}; assuming the default timing for its shape', key='rf_waveform')
            radar = None
        if radar is not None:
            self.diag.set('radar_model', f'{radar.num_chirps} chirps x {radar.num_samples} samples x '
                                         f'{radar.num_rx} rx, {radar.range_resolution_m:.2f} m bins')
        return camera, radar

    def _on_rf(self, msg: RfFrame) -> None:
        self.diag.tick('rf_in')
        problem = cv.rf_shape_problem(msg) or ('' if len(msg.shape) == 3 else f'shape {list(msg.shape)}, '
                                                                               'expected (rx, chirp, sample)')
        if problem:
            self.diag.count('bad_input')
            return self._warn(f'RfFrame refused: {problem}', key='rf')
        self._rf.append((cv.msg_to_time(msg.header.stamp), msg))
        self._pair()

    def _pair(self) -> None:
        """Pair the newest image with the nearest RF frame within the slop; count the losers."""
        if not self._images or not self._rf:
            return
        slop = self.cfg['slop_s']
        if self._images[-1][0] < self._last_paired_stamp - 1.0:
            # Time went backwards (a bag looped, the simulator restarted): start pairing afresh.
            self._last_paired_stamp = -math.inf
            self._images = deque([self._images[-1]], maxlen=self._images.maxlen)
            self._rf = deque([r for r in self._rf if abs(r[0] - self._images[-1][0]) < 1.0],
                             maxlen=self._rf.maxlen)
            if not self._rf:
                return
        for i in range(len(self._images) - 1, -1, -1):
            t_img, img = self._images[i]
            j, (t_rf, rf) = min(enumerate(self._rf), key=lambda e: abs(e[1][0] - t_img))
            if abs(t_rf - t_img) <= slop and t_img > self._last_paired_stamp:
                # Every older image that never found a partner is unpaired for good.
                older = [t for t, _ in list(self._images)[:i] if t > self._last_paired_stamp]
                if older:
                    self.diag.count('unpaired', len(older))
                for _ in range(i + 1):
                    self._images.popleft()
                for _ in range(j + 1):
                    self._rf.popleft()
                if self._pending is not None:
                    self.diag.count('dropped')       # the CPU did not keep up: keep the newest
                self._pending = (t_img, img, rf)
                self._paired_at = time.monotonic()
                self._last_paired_stamp = t_img
                self.diag.count('paired')
                self._wake.trigger()
                return

    def _on_tf(self, msg: TFMessage) -> None:
        self.poses.add_tf(msg)
        if self._pending is not None:
            self._wake.trigger()             # the pose a paired frame waits for may be here

    def _pose(self, stamp_s: float):
        if self.static_pose is not None:
            return self.static_pose
        return self.poses.lookup(stamp_s, self.cfg['pose_tolerance_s'])

    def _process(self) -> None:
        if self._pending is None or self.pipeline is None:
            self._retry.cancel()
            return
        if not self.active:
            self._pending = None          # deactivated: drop, publish nothing
            return self.diag.count('inactive_dropped')
        t_img, img_msg, rf_msg = self._pending
        newest = self.poses.latest()
        if self.static_pose is None and (newest is None or newest[0] < t_img - 1e-3) \
                and time.monotonic() - self._paired_at < self.cfg['pose_wait_s']:
            if self._retry.is_canceled():
                self._retry.reset()     # the /tf of this instant is usually a few ms behind: wait a little
            return
        self._retry.cancel()
        self._pending = None
        pose = self._pose(t_img)
        if pose is None:
            # Without a pose the aggregator cannot place the feature in the world: skip it.
            self.diag.count('no_pose')
            self._warn(f'no pose {self.cfg["world_frame"]} -> {self.base_frame} within '
                       f'{self.cfg["pose_tolerance_s"]} s of {t_img:.3f}; frame skipped '
                       f'(is /tf published? else set static_pose)')
            return
        t0 = time.monotonic()
        try:
            image = cv.msg_to_image(img_msg, 'rgb8')
            cube = cv.msg_to_rf(rf_msg)
            self.pipeline.adapt_sensors = self.cfg['adapt_sensors']
            camera, radar = self._sensors_of(img_msg, rf_msg)
            out = self.pipeline.run([image], [cube], [camera], [radar])
            payload = quantize(out.symbols[0], self.cfg['bits'])
        except (ValueError, DisacError) as exc:
            self.diag.count('bad_input')
            self._warn(f'skipping frame at {t_img:.3f}: {exc}')
            return
        except Exception as exc:       # e.g. a torch RuntimeError: one frame must not kill the device
            self.diag.count('processing_errors')
            self._warn(f'skipping frame at {t_img:.3f}: processing failed: {exc!r}', key='processing')
            return
        msg = fm.feature_msg(self.device_id, self.seq, img_msg.header.stamp, self.cfg['world_frame'], pose,
                             payload, self.keyring, CODEC_VERSION, self.cfg['auth_scope'])
        self.pub.publish(msg)
        self.seq += 1
        self.diag.count('published')
        self.diag.tick('feature_out')
        self.diag.timing('pipeline', time.monotonic() - t0)
        self.diag.set('sensor_to_publish_s', time.time() - t_img)


def main(args: list[str] | None = None) -> int:
    """Entry point: run until SIGINT/SIGTERM; exit 2 on a configuration error, 1 on a bad model."""
    return run_node(DeviceNode, args=args, name='device_node', params=PARAMS + (AUTOSTART,), doc=__doc__)


if __name__ == '__main__':
    sys.exit(main())
