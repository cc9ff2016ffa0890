"""Plain data types shared by the simulator, the dataset, the models and the ROS adapters.

Conventions (REP 103): metres, seconds, radians; world frame x east, y north, z up; a device's
body frame has x forward, y left, z up. Yaw is the rotation about +z from world x to body x.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Object classes. The order matches disac_interfaces/msg/TrackedObject CLASS_* constants, so a class
# id is the same number in the core, the dataset and on the wire.
CLASS_NAMES: tuple[str, ...] = ('unknown', 'car', 'truck', 'pedestrian', 'cyclist')
NUM_OBJECT_CLASSES = len(CLASS_NAMES) - 1   # without 'unknown'
CLASS_IDS: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
OBJECT_CLASSES: tuple[str, ...] = CLASS_NAMES[1:]   # classes the simulator can spawn

# Bit flags for how a device senses an object (TrackedObject.SENSED_*).
SENSED_CAMERA = 1
SENSED_RF = 2


@dataclass(frozen=True)
class Pose:
    """A planar-heading pose: position (x, y, z) in metres and yaw in radians."""

    position: tuple[float, float, float]
    yaw: float = 0.0

    def as_array(self) -> np.ndarray:
        """Return (x, y, z, yaw) as float64."""
        return np.array([*self.position, self.yaw], dtype=np.float64)

    def quaternion_xyzw(self) -> tuple[float, float, float, float]:
        """Return the yaw rotation as a unit quaternion (x, y, z, w)."""
        half = 0.5 * self.yaw
        return (0.0, 0.0, float(np.sin(half)), float(np.cos(half)))


@dataclass
class ObjectTruth:
    """Ground truth for one object at one instant, with per-device sensing flags."""

    object_id: int
    class_name: str
    position: np.ndarray            # (3,) world frame, centre of the bounding box
    velocity: np.ndarray            # (3,) world frame
    yaw: float
    size: tuple[float, float, float]  # length, width, height
    # device_id -> True when the object is inside the camera frustum and not occluded
    visible_camera: dict[str, bool] = field(default_factory=dict)
    # device_id -> True when the object is within the radar's range and field of view
    in_rf_range: dict[str, bool] = field(default_factory=dict)

    @property
    def class_id(self) -> int:
        """Class as the integer used on the wire."""
        return CLASS_IDS[self.class_name]

    def sensed_by(self, device_id: str) -> int:
        """SENSED_* bit flags of this object for one device."""
        return (SENSED_CAMERA if self.visible_camera.get(device_id) else 0) | (
            SENSED_RF if self.in_rf_range.get(device_id) else 0)


@dataclass
class DeviceObservation:
    """What one sensing device measures at one instant."""

    device_id: str
    kind: str                       # 'vehicle' or 'rsu'
    pose: Pose                      # device body pose in the world frame
    image: np.ndarray               # (H, W, 3) uint8 RGB
    rf: np.ndarray                  # complex64 radar cube (num_rx, num_chirps, num_samples)


@dataclass
class WorldFrame:
    """One simulation step: every device's observation and the ground truth."""

    step: int
    time_s: float                   # simulation time of the sensor sample
    devices: list[DeviceObservation]
    objects: list[ObjectTruth]

    def device(self, device_id: str) -> DeviceObservation:
        """Return the observation of one device; KeyError names the unknown id."""
        for obs in self.devices:
            if obs.device_id == device_id:
                return obs
        raise KeyError(f'unknown device {device_id!r}; known: {[d.device_id for d in self.devices]}')
