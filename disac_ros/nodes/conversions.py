"""Messages <-> numpy / core types. No rclpy.init needed: only message classes are used.

Images are converted with numpy (cv_bridge is not available from PyPI; see DESIGN.md section 5):
encodings rgb8, bgr8, rgba8, bgra8 and mono8, with row padding (``step > width * channels``)
handled on the way in. RF cubes travel as interleaved float32 I/Q (see ``RfFrame.msg``).
"""
from __future__ import annotations

import array
import math
from typing import Iterable, Mapping, Sequence

import numpy as np

from builtin_interfaces.msg import Time
from disac_interfaces.msg import RfFrame, TrackedObject, TrackedObjectArray
from geometry_msgs.msg import Pose as PoseMsg
from geometry_msgs.msg import Quaternion, TransformStamped
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from disac_ros.core.errors import ConfigError
from disac_ros.core.rf_config import RadarConfig, SPEED_OF_LIGHT_MPS
from disac_ros.core.types import CLASS_IDS, CLASS_NAMES, SENSED_CAMERA, SENSED_RF, ObjectTruth, Pose

# encoding -> channels. All are 8-bit; other encodings raise ValueError naming the encoding.
ENCODING_CHANNELS: dict[str, int] = {'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1}
RF_DIMS: tuple[str, str, str] = ('rx', 'chirp', 'sample')

# Ground-truth covariances: the simulator knows the truth, so variances are tiny but non-zero
# (a zero covariance breaks consumers that invert it). Roll/pitch are unobserved -> large.
_GT_POSITION_VAR = 1e-4
_GT_YAW_VAR = 1e-4
_GT_VELOCITY_VAR = 1e-4
_UNOBSERVED_VAR = 1e6


# ---- time ---------------------------------------------------------------------------------------

def time_to_msg(t_s: float) -> Time:
    """Seconds (float) -> builtin_interfaces/Time, rounded to the nanosecond."""
    if not math.isfinite(t_s) or t_s < 0:
        raise ValueError(f'stamp: expected a finite time >= 0 s, got {t_s!r}')
    ns = int(round(t_s * 1e9))
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def ns_to_msg(ns: int) -> Time:
    """Integer nanoseconds -> builtin_interfaces/Time (exact)."""
    if ns < 0:
        raise ValueError(f'stamp: expected a time >= 0 ns, got {ns}')
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def msg_to_ns(stamp: Time) -> int:
    """builtin_interfaces/Time -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def msg_to_time(stamp: Time) -> float:
    """builtin_interfaces/Time -> seconds (float)."""
    return msg_to_ns(stamp) * 1e-9


def make_header(stamp: Time, frame_id: str) -> Header:
    """A std_msgs/Header with a copy of ``stamp``."""
    return Header(stamp=Time(sec=stamp.sec, nanosec=stamp.nanosec), frame_id=frame_id)


# ---- images -------------------------------------------------------------------------------------

def image_to_msg(image: np.ndarray, encoding: str = 'rgb8', stamp: Time | None = None,
                 frame_id: str = '') -> Image:
    """(H, W, C) or (H, W) uint8 array -> sensor_msgs/Image with a packed row (step = W * C)."""
    channels = _channels(encoding)
    a = np.asarray(image)
    if a.dtype != np.uint8:
        raise ValueError(f'image: expected dtype uint8 for {encoding}, got {a.dtype}')
    if a.ndim == 2 and channels == 1:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[2] != channels:
        raise ValueError(f'image: expected shape (H, W, {channels}) for {encoding}, got {a.shape}')
    a = np.ascontiguousarray(a)
    height, width = a.shape[:2]
    msg = Image()
    msg.header = make_header(stamp or Time(), frame_id)
    msg.height, msg.width = int(height), int(width)
    msg.encoding = encoding
    msg.is_bigendian = 0
    msg.step = int(width * channels)
    # array('B', bytes) is a memcpy; assigning a list/ndarray would go through per-element checks.
    msg.data = array.array('B', a.tobytes())
    return msg


def msg_to_image(msg: Image, desired_encoding: str | None = None) -> np.ndarray:
    """sensor_msgs/Image -> (H, W, C) uint8 array (a copy); mono8 gives (H, W).

    ``desired_encoding`` converts between rgb8/bgr8 (and rgba8/bgra8) by swapping channels.
    Row padding (``step > width * channels``) is stripped.
    """
    channels = _channels(msg.encoding)
    row = msg.width * channels
    if msg.step < row:
        raise ValueError(f'image.step: {msg.step} is smaller than width * channels = {row}')
    buf = np.frombuffer(memoryview(msg.data), dtype=np.uint8)
    if buf.size < msg.step * msg.height:
        raise ValueError(f'image.data: {buf.size} bytes, expected step * height = '
                         f'{msg.step * msg.height}')
    a = buf[:msg.step * msg.height].reshape(msg.height, msg.step)[:, :row]
    a = a.reshape(msg.height, msg.width, channels)
    target = desired_encoding or msg.encoding
    if target != msg.encoding:
        a = _convert_channels(a, msg.encoding, target)
    a = a.copy()
    return a[:, :, 0] if target == 'mono8' else a


def _channels(encoding: str) -> int:
    try:
        return ENCODING_CHANNELS[encoding]
    except KeyError:
        raise ValueError(f'image.encoding: unsupported {encoding!r}; expected one of '
                         f'{", ".join(ENCODING_CHANNELS)}') from None


def _convert_channels(a: np.ndarray, src: str, dst: str) -> np.ndarray:
    swaps = {('rgb8', 'bgr8'), ('bgr8', 'rgb8'), ('rgba8', 'bgra8'), ('bgra8', 'rgba8')}
    if (src, dst) in swaps:
        order = [2, 1, 0] + ([3] if a.shape[2] == 4 else [])
        return a[:, :, order]
    raise ValueError(f'desired_encoding: cannot convert {src} to {dst}')


def camera_info_msg(K: np.ndarray, width: int, height: int, stamp: Time | None = None,
                    frame_id: str = '') -> CameraInfo:
    """A pinhole CameraInfo from a 3x3 K: plumb_bob with zero distortion, P = [K | 0], R = I."""
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3):
        raise ValueError(f'K: expected a 3x3 matrix, got shape {K.shape}')
    msg = CameraInfo()
    msg.header = make_header(stamp or Time(), frame_id)
    msg.width, msg.height = int(width), int(height)
    msg.distortion_model = 'plumb_bob'
    msg.d = [0.0] * 5
    msg.k = [float(v) for v in K.reshape(-1)]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    P = np.zeros((3, 4))
    P[:, :3] = K
    msg.p = [float(v) for v in P.reshape(-1)]
    return msg


def camera_info_to_k(msg: CameraInfo) -> np.ndarray:
    """CameraInfo -> 3x3 K (float64)."""
    return np.array(msg.k, dtype=np.float64).reshape(3, 3)


# ---- RF -----------------------------------------------------------------------------------------

def rf_to_msg(cube: np.ndarray, *, device_id: str, seq: int, radar: object,
              stamp: Time | None = None, frame_id: str = '',
              dims: Sequence[str] = RF_DIMS) -> RfFrame:
    """Complex radar cube -> RfFrame. ``radar`` is a RadarConfig (waveform fields are copied)."""
    c = np.asarray(cube)
    if not np.iscomplexobj(c):
        raise ValueError(f'rf: expected a complex cube, got dtype {c.dtype}')
    if len(dims) != c.ndim:
        raise ValueError(f'rf.dims: {len(dims)} names for a {c.ndim}-d cube')
    c = np.ascontiguousarray(c, dtype=np.complex64)
    msg = RfFrame()
    msg.header = make_header(stamp or Time(), frame_id)
    msg.device_id = device_id
    msg.seq = int(seq)
    msg.dims = list(dims)
    msg.shape = array.array('I', [int(s) for s in c.shape])
    # complex64 is two float32 per element in memory: exactly the interleaved I/Q layout.
    msg.iq = array.array('f', c.view(np.float32).tobytes())
    msg.carrier_frequency_hz = float(radar.carrier_frequency_hz)
    msg.bandwidth_hz = float(radar.bandwidth_hz)
    msg.chirp_duration_s = float(radar.chirp_duration_s)
    msg.chirp_interval_s = float(radar.chirp_interval_s)
    msg.sample_rate_hz = float(radar.sample_rate_hz)
    spacing = getattr(radar, 'rx_spacing', None)
    msg.rx_spacing_m = float(spacing if spacing is not None else radar.rx_spacing_m)
    msg.noise_power_dbm = float(radar_noise_power_dbm(radar))
    return msg


def radar_noise_power_dbm(radar: object) -> float:
    """Thermal noise per complex sample: kT0 * sample_rate * noise figure, in dBm."""
    k_t0_dbm_per_hz = -173.975  # 10 log10(1.380649e-23 * 290 / 1e-3)
    return k_t0_dbm_per_hz + 10.0 * math.log10(float(radar.sample_rate_hz)) + float(
        getattr(radar, 'noise_figure_db', 0.0))


def msg_to_radar_config(msg: RfFrame) -> RadarConfig | None:
    """The waveform of an RfFrame as a RadarConfig (sizes from ``shape``, rx, chirp, sample);
    None when the waveform fields are unset (0, e.g. a hand-made message). ValueError when they
    are set but make no radar (the message names the field)."""
    fields = (msg.carrier_frequency_hz, msg.bandwidth_hz, msg.chirp_duration_s,
              msg.chirp_interval_s, msg.sample_rate_hz)
    if any(float(v) == 0.0 for v in fields) or len(msg.shape) != 3:
        return None
    rx, chirps, samples = (int(s) for s in msg.shape)
    slope = float(msg.bandwidth_hz) / float(msg.chirp_duration_s) if msg.chirp_duration_s else 0.0
    # Coverage is not part of the waveform: keep it inside the unambiguous range so the config
    # validates for a short-range radar too.
    unambiguous = (float(msg.sample_rate_hz) * SPEED_OF_LIGHT_MPS / (2.0 * slope)) if slope > 0 else 1.0
    try:
        return RadarConfig(carrier_frequency_hz=float(msg.carrier_frequency_hz),
                           bandwidth_hz=float(msg.bandwidth_hz), num_samples=samples,
                           num_chirps=chirps, num_rx=rx, sample_rate_hz=float(msg.sample_rate_hz),
                           chirp_duration_s=float(msg.chirp_duration_s),
                           chirp_interval_s=float(msg.chirp_interval_s),
                           rx_spacing_m=float(msg.rx_spacing_m) if msg.rx_spacing_m > 0 else None,
                           max_range_m=min(60.0, 0.999 * unambiguous))
    except (ConfigError, ValueError, TypeError) as exc:
        raise ValueError(f'RfFrame waveform: {exc}') from None


def rf_shape_problem(msg: RfFrame) -> str:
    """Why an RfFrame's data cannot be its cube ('' when it can)."""
    n = math.prod(int(s) for s in msg.shape) if len(msg.shape) else 0
    if len(msg.iq) != 2 * n:
        return f'rf.iq: {len(msg.iq)} floats, expected 2 * prod(shape {list(msg.shape)}) = {2 * n}'
    return ''


def msg_to_rf(msg: RfFrame) -> np.ndarray:
    """RfFrame -> complex64 cube of ``msg.shape`` (a copy)."""
    problem = rf_shape_problem(msg)
    if problem:
        raise ValueError(problem)
    iq = np.frombuffer(memoryview(msg.iq), dtype=np.float32)
    return iq.view(np.complex64).reshape(tuple(int(s) for s in msg.shape)).copy()


# ---- poses and tf -------------------------------------------------------------------------------

def quaternion_msg(xyzw: Sequence[float]) -> Quaternion:
    """(x, y, z, w) -> geometry_msgs/Quaternion."""
    x, y, z, w = (float(v) for v in xyzw)
    return Quaternion(x=x, y=y, z=z, w=w)


def yaw_from_quaternion(q: Quaternion) -> float:
    """Heading (rotation about +z) of a quaternion."""
    return math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))


def pose_to_msg(pose: Pose) -> PoseMsg:
    """core Pose (position + yaw) -> geometry_msgs/Pose."""
    msg = PoseMsg()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in pose.position)
    msg.orientation = quaternion_msg(pose.quaternion_xyzw())
    return msg


def msg_to_pose(msg: PoseMsg) -> Pose:
    """geometry_msgs/Pose -> core Pose (roll and pitch are dropped)."""
    return Pose((msg.position.x, msg.position.y, msg.position.z), yaw_from_quaternion(msg.orientation))


def transform_msg(translation: Sequence[float], rotation_xyzw: Sequence[float], parent: str,
                  child: str, stamp: Time | None = None) -> TransformStamped:
    """A TransformStamped parent -> child."""
    msg = TransformStamped()
    msg.header = make_header(stamp or Time(), parent)
    msg.child_frame_id = child
    t = msg.transform.translation
    t.x, t.y, t.z = (float(v) for v in translation)
    msg.transform.rotation = quaternion_msg(rotation_xyzw)
    return msg


def pose_to_transform(pose: Pose, parent: str, child: str, stamp: Time | None = None) -> TransformStamped:
    """core Pose of ``child`` in ``parent`` -> TransformStamped."""
    return transform_msg(pose.position, pose.quaternion_xyzw(), parent, child, stamp)


# ---- objects ------------------------------------------------------------------------------------

def object_to_msg(obj: ObjectTruth, device_ids: Iterable[str] | None = None,
                  first_seen: Time | None = None) -> TrackedObject:
    """Ground-truth ObjectTruth -> TrackedObject (confidence 1, tiny covariances).

    ``contributing_devices`` lists the devices (in ``device_ids`` order, default: the order of the
    object's flags) that sense the object, with their SENSED_* bits in ``sensed_by_modalities``.
    """
    msg = TrackedObject()
    msg.id = int(obj.object_id)
    msg.classification = int(CLASS_IDS[obj.class_name])
    msg.class_confidence = 1.0
    probs = [0.0] * len(CLASS_NAMES)
    probs[msg.classification] = 1.0
    msg.class_probabilities = array.array('f', probs)
    msg.existence_probability = 1.0
    p = np.asarray(obj.position, dtype=np.float64).reshape(3)
    v = np.asarray(obj.velocity, dtype=np.float64).reshape(3)
    msg.pose.pose = pose_to_msg(Pose((float(p[0]), float(p[1]), float(p[2])), float(obj.yaw)))
    msg.pose.covariance = _diag6([_GT_POSITION_VAR] * 3 + [_UNOBSERVED_VAR] * 2 + [_GT_YAW_VAR])
    msg.twist.twist.linear.x, msg.twist.twist.linear.y, msg.twist.twist.linear.z = (float(x) for x in v)
    msg.twist.covariance = _diag6([_GT_VELOCITY_VAR] * 3 + [_UNOBSERVED_VAR] * 3)
    msg.dimensions.x, msg.dimensions.y, msg.dimensions.z = (float(s) for s in obj.size)
    if device_ids is None:
        device_ids = list(dict.fromkeys([*obj.visible_camera, *obj.in_rf_range]))
    devices, bits = [], []
    for dev in device_ids:
        b = obj.sensed_by(dev)
        if b:
            devices.append(dev)
            bits.append(b)
    msg.contributing_devices = devices
    msg.sensed_by_modalities = array.array('B', bits)
    if first_seen is not None:
        msg.first_seen = Time(sec=first_seen.sec, nanosec=first_seen.nanosec)
    msg.hits = 0
    return msg


def objects_to_msg(objects: Iterable[ObjectTruth], stamp: Time | None = None, frame_id: str = 'world',
                   device_ids: Iterable[str] | None = None,
                   first_seen: Mapping[int, Time] | None = None) -> TrackedObjectArray:
    """A list of ObjectTruth -> TrackedObjectArray in ``frame_id``."""
    ids = list(device_ids) if device_ids is not None else None
    msg = TrackedObjectArray()
    msg.header = make_header(stamp or Time(), frame_id)
    msg.objects = [object_to_msg(o, ids, (first_seen or {}).get(o.object_id)) for o in objects]
    return msg


def msg_to_object(msg: TrackedObject) -> ObjectTruth:
    """TrackedObject -> ObjectTruth; sensing flags are rebuilt for the contributing devices."""
    if msg.classification >= len(CLASS_NAMES):
        raise ValueError(f'object.classification: {msg.classification} is not a CLASS_* value')
    pose = msg_to_pose(msg.pose.pose)
    lin = msg.twist.twist.linear
    visible = {d: bool(b & SENSED_CAMERA) for d, b in zip(msg.contributing_devices, msg.sensed_by_modalities)}
    in_rf = {d: bool(b & SENSED_RF) for d, b in zip(msg.contributing_devices, msg.sensed_by_modalities)}
    return ObjectTruth(
        object_id=int(msg.id), class_name=CLASS_NAMES[msg.classification],
        position=np.array(pose.position, dtype=np.float64),
        velocity=np.array([lin.x, lin.y, lin.z], dtype=np.float64), yaw=pose.yaw,
        size=(float(msg.dimensions.x), float(msg.dimensions.y), float(msg.dimensions.z)),
        visible_camera=visible, in_rf_range=in_rf)


def msg_to_objects(msg: TrackedObjectArray) -> list[ObjectTruth]:
    """TrackedObjectArray -> list of ObjectTruth."""
    return [msg_to_object(o) for o in msg.objects]


def _diag6(diag: Sequence[float]) -> np.ndarray:
    # Fixed-size float64[36] fields are numpy arrays in rclpy messages.
    return np.diag(np.asarray(diag, dtype=np.float64)).reshape(36)
