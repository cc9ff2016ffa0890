"""SemanticFeature messages <-> the packet codec, and a tiny /tf pose cache (no tf2_ros on PyPI).

Used by device_node (build + sign), link_node (read, re-quantise) and aggregator_node (read,
verify). No rclpy.init needed: only message classes are used.
"""
from __future__ import annotations

import array
from bisect import bisect_left
from collections import deque
import math

import numpy as np

from builtin_interfaces.msg import Time
from disac_interfaces.msg import SemanticFeature
from geometry_msgs.msg import Pose as PoseMsg
from tf2_msgs.msg import TFMessage

from disac_ros.core.packet import CODEC_VERSION, KeyRing, PacketFields, QuantizedPayload, validate_payload
from disac_ros.nodes import conversions as cv


def feature_msg(device_id: str, seq: int, stamp: Time, frame_id: str, pose: PoseMsg | None,
                payload: QuantizedPayload, keyring: KeyRing | None = None,
                codec_version: int = CODEC_VERSION, auth_scope: str = 'payload') -> SemanticFeature:
    """A SemanticFeature with unknown link fields (NaN), signed when ``keyring`` is given
    (``auth_scope``: what the tag covers, see :mod:`disac_ros.core.packet`)."""
    msg = SemanticFeature()
    msg.header = cv.make_header(stamp, frame_id)
    msg.device_id = device_id
    msg.seq = int(seq)
    msg.codec_version = int(codec_version)
    if pose is not None:
        msg.device_pose = pose
    msg.distance_m = math.nan
    msg.snr_db = math.nan
    set_payload(msg, payload)
    if keyring is not None:
        msg.auth_tag = array.array('B', keyring.sign(packet_fields(msg), auth_scope))
    return msg


def set_payload(msg: SemanticFeature, payload: QuantizedPayload) -> None:
    """Write the payload fields of ``msg``."""
    msg.shape = array.array('I', [int(s) for s in payload.shape])
    msg.scale = float(payload.scale)
    msg.zero_point = int(payload.zero_point)
    msg.bits_per_element = int(payload.bits)
    msg.payload = array.array('B', bytes(payload.payload))


def _quantized(msg: SemanticFeature) -> QuantizedPayload:
    return QuantizedPayload(shape=tuple(int(s) for s in msg.shape), scale=float(msg.scale),
                            zero_point=int(msg.zero_point), bits=int(msg.bits_per_element),
                            payload=bytes(msg.payload))


def msg_payload(msg: SemanticFeature) -> QuantizedPayload:
    """The payload of a received message; CodecError names a malformed field."""
    p = _quantized(msg)
    validate_payload(p)
    return p


def packet_fields(msg: SemanticFeature) -> PacketFields:
    """Every field the authentication tag may cover (the scope picks, see core.packet)."""
    q, t = msg.device_pose.orientation, msg.device_pose.position
    return PacketFields(device_id=msg.device_id, seq=int(msg.seq), codec_version=int(msg.codec_version),
                        stamp_sec=int(msg.header.stamp.sec), stamp_nanosec=int(msg.header.stamp.nanosec),
                        payload=_quantized(msg), pose=(t.x, t.y, t.z, q.x, q.y, q.z, q.w))


def pose_xyyaw(msg: PoseMsg) -> tuple[float, float, float]:
    """geometry_msgs/Pose -> (x, y, yaw)."""
    return (float(msg.position.x), float(msg.position.y), cv.yaw_from_quaternion(msg.orientation))


def load_keyring(key_file: str, shared_secret: str) -> KeyRing | None:
    """A KeyRing from a key file or a 'hex:'/'base64:' shared secret; None when both are empty."""
    if key_file:
        return KeyRing.from_file(key_file)
    if shared_secret:
        return KeyRing.from_mapping({'shared_secret': shared_secret}, source='shared_secret parameter')
    return None


class PoseCache:
    """Recent world-frame poses of one child frame from /tf messages, looked up by stamp."""

    def __init__(self, parent: str, child: str, depth: int = 200) -> None:
        self.parent = parent
        self.child = child
        self._stamps: deque[float] = deque(maxlen=depth)
        self._poses: deque[PoseMsg] = deque(maxlen=depth)

    def add_tf(self, msg: TFMessage) -> None:
        """Keep the transforms parent -> child of a /tf message."""
        for t in msg.transforms:
            if t.child_frame_id.lstrip('/') != self.child or t.header.frame_id.lstrip('/') != self.parent:
                continue
            stamp = cv.msg_to_time(t.header.stamp)
            if self._stamps and stamp < self._stamps[-1]:
                self._stamps.clear()            # time went back (bag loop): start over
                self._poses.clear()
            pose = PoseMsg()
            pose.position.x = t.transform.translation.x
            pose.position.y = t.transform.translation.y
            pose.position.z = t.transform.translation.z
            pose.orientation = t.transform.rotation
            self._stamps.append(stamp)
            self._poses.append(pose)

    def latest(self) -> tuple[float, PoseMsg] | None:
        """(stamp, pose) of the newest transform, None before the first."""
        return (self._stamps[-1], self._poses[-1]) if self._stamps else None

    def velocity(self) -> tuple[float, float]:
        """Planar velocity from the two newest poses (0 before two distinct stamps)."""
        if len(self._stamps) < 2 or self._stamps[-1] <= self._stamps[-2]:
            return (0.0, 0.0)
        dt = self._stamps[-1] - self._stamps[-2]
        a, b = self._poses[-2].position, self._poses[-1].position
        return ((b.x - a.x) / dt, (b.y - a.y) / dt)

    def lookup(self, stamp_s: float, tolerance_s: float = 0.5) -> PoseMsg | None:
        """The pose nearest to ``stamp_s`` within ``tolerance_s``; None if there is none."""
        if not self._stamps:
            return None
        stamps = list(self._stamps)
        i = bisect_left(stamps, stamp_s)
        best = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - stamp_s))
        return self._poses[best] if abs(stamps[best] - stamp_s) <= tolerance_s else None


def static_pose(values: list[float]) -> PoseMsg:
    """[x, y, z, yaw] -> geometry_msgs/Pose."""
    x, y, z, yaw = (float(v) for v in values)
    from disac_ros.core.types import Pose
    return cv.pose_to_msg(Pose((x, y, z), yaw))


def payload_array(msg: SemanticFeature) -> np.ndarray:
    """Dequantised (L, 2) symbols of a message (CodecError if malformed)."""
    from disac_ros.core.packet import dequantize
    return dequantize(msg_payload(msg))


def device_topic(device_id: str, topic: str) -> str:
    """'<device_id>/<topic>', relative so it resolves under the node's namespace (a topic
    starting with '/' is used as is)."""
    return topic if topic.startswith('/') else f'{device_id}/{topic}'
