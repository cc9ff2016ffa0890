"""QoS profiles used by the nodes, by name, so a parameter or a YAML can pick one.

- ``sensor_data``: best effort, keep last 5, volatile. Camera/RF streams: a late frame is worth
  nothing, and a slow subscriber must not stall the publisher. A best-effort subscriber to a
  640x480 image needs the enlarged FastDDS shared-memory segment (config/fastdds_shm.xml).
- ``reliable``: reliable, keep last 10, volatile. Ground truth, tracks, features in tests.
- ``latched``: reliable, keep last 1, transient local. /tf_static and other "state" topics.
- ``clock``: best effort, keep last 1. What ROS uses for /clock.
"""
from __future__ import annotations

from rclpy.qos import (DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy,
                       qos_profile_sensor_data)

QOS_NAMES: tuple[str, ...] = ('sensor_data', 'reliable', 'latched', 'clock')


def sensor_qos(depth: int = 5) -> QoSProfile:
    """Best effort, keep last ``depth``, volatile."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def reliable_qos(depth: int = 10) -> QoSProfile:
    """Reliable, keep last ``depth``, volatile."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def latched_qos(depth: int = 1) -> QoSProfile:
    """Reliable + transient local: late joiners get the last ``depth`` messages (/tf_static)."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)


def clock_qos() -> QoSProfile:
    """The /clock profile: best effort, keep last 1."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                      reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)


def qos_by_name(name: str, depth: int | None = None) -> QoSProfile:
    """One of QOS_NAMES -> a profile; ValueError names the parameter value."""
    if name == 'sensor_data':
        return sensor_qos(depth or qos_profile_sensor_data.depth)
    if name == 'reliable':
        return reliable_qos(depth or 10)
    if name == 'latched':
        return latched_qos(depth or 1)
    if name == 'clock':
        return clock_qos()
    raise ValueError(f'qos: unknown profile {name!r}; expected one of {", ".join(QOS_NAMES)}')


def describe(qos: QoSProfile) -> str:
    """Short human-readable form, for logs: 'best_effort/volatile/keep_last(5)'."""
    rel = 'reliable' if qos.reliability == ReliabilityPolicy.RELIABLE else 'best_effort'
    dur = 'transient_local' if qos.durability == DurabilityPolicy.TRANSIENT_LOCAL else 'volatile'
    hist = f'keep_last({qos.depth})' if qos.history == HistoryPolicy.KEEP_LAST else 'keep_all'
    return f'{rel}/{dur}/{hist}'
