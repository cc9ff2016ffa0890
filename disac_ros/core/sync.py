"""Group the devices' packets by sensor time, for the aggregator (ROS-free).

Packets arrive from K devices over lossy, delayed links, possibly out of order. The aggregator
fuses the packets that describe the same instant, so :class:`FeatureSynchronizer`:

* puts a packet into the open group whose anchor stamp is within ``window_s / 2`` of its sensor
  stamp (the nearest one), else opens a new group anchored at the packet's stamp. A group holds
  at most one packet per device (a second one from the same device keeps the one closer to the
  anchor; the other is counted as a ``duplicate``);
* emits groups in stamp order. A group is *ready* when every **active** device is in it (active =
  heard from within ``active_timeout_s`` of receive time), or when it has waited ``max_wait_s``
  since its first packet arrived, or when a newer group is ready (older groups never wait behind
  newer ones);
* refuses packets whose stamp is not newer than the last emitted group's anchor plus half a window
  (``late``: their instant has been fused already) and packets from devices it was not configured
  with (``unknown``);
* tracks per-device staleness: receive time minus sensor stamp of the last packet (link latency
  as the receiver sees it) and time since the device was last heard from.

All times are seconds; the caller passes ``now`` (a wall or monotonic clock, the same one as the
packets' ``received_s``), so the class is deterministic and testable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
from typing import Any, Iterable

from disac_ros.core.errors import ConfigError

ADD_RESULTS = ('accepted', 'late', 'duplicate', 'unknown')


@dataclass(frozen=True)
class TimedPacket:
    """A received packet: device, sensor stamp, receive time and an opaque payload."""

    device_id: str
    stamp_s: float
    received_s: float
    data: Any = None


@dataclass
class PacketGroup:
    """Packets of several devices describing one instant (``stamp_s``: the anchor stamp)."""

    stamp_s: float
    first_received_s: float
    packets: dict[str, TimedPacket] = field(default_factory=dict)

    @property
    def device_ids(self) -> list[str]:
        """Devices in the group, sorted."""
        return sorted(self.packets)


@dataclass
class SyncStats:
    """Counters for diagnostics."""

    accepted: int = 0
    late: int = 0
    duplicate: int = 0
    unknown: int = 0
    groups_emitted: int = 0
    groups_timed_out: int = 0      # emitted before every active device arrived


class FeatureSynchronizer:
    """Approximate-time grouping of per-device packets (see the module docstring)."""

    def __init__(self, device_ids: Iterable[str], window_s: float = 0.1, max_wait_s: float = 0.3,
                 active_timeout_s: float = 1.0) -> None:
        self.device_ids = list(device_ids)
        if not self.device_ids:
            raise ConfigError('device_ids', 'at least one device is needed')
        for name, v in (('window_s', window_s), ('max_wait_s', max_wait_s),
                        ('active_timeout_s', active_timeout_s)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ConfigError(name, f'must be a finite number > 0, got {v!r}')
        self.window_s = float(window_s)
        self.max_wait_s = float(max_wait_s)
        self.active_timeout_s = float(active_timeout_s)
        self._known = set(self.device_ids)
        self._open: list[PacketGroup] = []          # sorted by stamp
        self._last_emitted_stamp: float | None = None
        self._last_heard: dict[str, float] = {}
        self._last_latency: dict[str, float] = {}
        self._last_stamp: dict[str, float] = {}
        self.stats = SyncStats()

    # ---- input ------------------------------------------------------------------------------

    def add(self, packet: TimedPacket) -> str:
        """Offer a packet; returns one of ADD_RESULTS."""
        dev = packet.device_id
        if dev not in self._known:
            self.stats.unknown += 1
            return 'unknown'
        if not (math.isfinite(packet.stamp_s) and math.isfinite(packet.received_s)):
            self.stats.late += 1
            return 'late'
        self._last_heard[dev] = max(packet.received_s, self._last_heard.get(dev, -math.inf))
        self._last_latency[dev] = packet.received_s - packet.stamp_s
        self._last_stamp[dev] = max(packet.stamp_s, self._last_stamp.get(dev, -math.inf))
        half = 0.5 * self.window_s
        if self._last_emitted_stamp is not None and packet.stamp_s <= self._last_emitted_stamp + half:
            self.stats.late += 1
            return 'late'
        best: PacketGroup | None = None
        for g in self._open:
            gap = abs(g.stamp_s - packet.stamp_s)
            if gap <= half and (best is None or gap < abs(best.stamp_s - packet.stamp_s)):
                best = g
        if best is None:
            best = PacketGroup(stamp_s=packet.stamp_s, first_received_s=packet.received_s)
            self._open.append(best)
            self._open.sort(key=lambda g: g.stamp_s)
        old = best.packets.get(dev)
        if old is not None:
            self.stats.duplicate += 1
            if abs(old.stamp_s - best.stamp_s) <= abs(packet.stamp_s - best.stamp_s):
                return 'duplicate'
        best.packets[dev] = packet
        best.first_received_s = min(best.first_received_s, packet.received_s)
        self.stats.accepted += 1
        return 'accepted'

    # ---- output -----------------------------------------------------------------------------

    def active_devices(self, now: float) -> list[str]:
        """Devices heard from within ``active_timeout_s`` of ``now``."""
        return [d for d in self.device_ids
                if d in self._last_heard and now - self._last_heard[d] <= self.active_timeout_s]

    def has_complete(self, now: float) -> bool:
        """Whether an open group holds a packet of every active device (``pop_ready`` would emit it)."""
        active = set(self.active_devices(now))
        return any(active <= set(g.packets) for g in self._open)

    def pop_ready(self, now: float) -> list[PacketGroup]:
        """Remove and return the ready groups, oldest first (see the module docstring)."""
        active = set(self.active_devices(now))
        last_ready = -1
        for i, g in enumerate(self._open):
            complete = active <= set(g.packets)
            waited = now - g.first_received_s >= self.max_wait_s
            if complete or waited:
                last_ready = i
        if last_ready < 0:
            return []
        ready, self._open = self._open[:last_ready + 1], self._open[last_ready + 1:]
        for g in ready:
            if not active <= set(g.packets):
                self.stats.groups_timed_out += 1
        self.stats.groups_emitted += len(ready)
        self._last_emitted_stamp = ready[-1].stamp_s
        return ready

    def flush(self) -> list[PacketGroup]:
        """Remove and return every open group (e.g. at shutdown)."""
        out, self._open = self._open, []
        if out:
            self._last_emitted_stamp = out[-1].stamp_s
            self.stats.groups_emitted += len(out)
        return out

    @property
    def pending(self) -> int:
        """Number of open groups (a growing number means a backlog)."""
        return len(self._open)

    def staleness(self, now: float) -> dict[str, dict[str, float]]:
        """Per configured device: ``since_heard_s`` (NaN if never), ``latency_s`` (receive - stamp
        of the last packet, NaN if never)."""
        out: dict[str, dict[str, float]] = {}
        for d in self.device_ids:
            heard = self._last_heard.get(d)
            out[d] = {'since_heard_s': math.nan if heard is None else now - heard,
                      'latency_s': self._last_latency.get(d, math.nan)}
        return out

    def reset(self) -> None:
        """Forget open groups and the emitted-stamp horizon (e.g. when a bag loops)."""
        self._open = []
        self._last_emitted_stamp = None
