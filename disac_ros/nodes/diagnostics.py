"""Publish a node's health on /diagnostics (diagnostic_msgs/DiagnosticArray) at a fixed period.

A node owns one ``Diagnostics``; its callbacks update named values (``set``), count events
(``count``), time sections (``timing``) and tick rates (``tick``); a wall timer publishes one
DiagnosticStatus per period named ``<node fully-qualified name>: <name>``. The level is WARN when a
``warn_if`` predicate holds (e.g. overruns grew), OK otherwise.
"""
from __future__ import annotations

from collections import deque
import time
from typing import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.clock import Clock, ClockType
from rclpy.node import Node

from disac_ros.nodes.qos import reliable_qos


class RateMeter:
    """Ticks per second over a sliding window of the last ``window`` ticks (wall clock)."""

    def __init__(self, window: int = 50) -> None:
        self._times: deque[float] = deque(maxlen=window)

    def tick(self, now: float | None = None) -> None:
        """Record one event."""
        self._times.append(time.monotonic() if now is None else now)

    @property
    def rate_hz(self) -> float:
        """Mean rate over the window; 0 before two ticks."""
        if len(self._times) < 2 or self._times[-1] <= self._times[0]:
            return 0.0
        return (len(self._times) - 1) / (self._times[-1] - self._times[0])


class LogThrottle:
    """Log a warning at most once per period per key, so a bad input stream cannot flood the log."""

    def __init__(self, node: Node, period_s: float = 2.0):
        self._logger = node.get_logger()
        self._period_s = period_s
        self._last: dict[str, float] = {}

    def warning(self, text: str, key: str = '') -> None:
        """Log ``text`` unless a warning with the same key was logged less than a period ago."""
        now = time.monotonic()
        if now - self._last.get(key, -float('inf')) > self._period_s:
            self._last[key] = now
            self._logger.warning(text)


class Diagnostics:
    """Collects values and publishes them on /diagnostics every ``period_s`` (wall time)."""

    def __init__(self, node: Node, name: str, period_s: float = 1.0,
                 hardware_id: str = '', warn_if: Callable[[dict[str, float]], str | None] | None = None):
        self._node = node
        self._name = f'{node.get_fully_qualified_name()}: {name}'
        self._hardware_id = hardware_id
        self._warn_if = warn_if
        self._values: dict[str, float | str] = {}
        self._timings: dict[str, deque[float]] = {}
        self._rates: dict[str, RateMeter] = {}
        # Absolute topic: diagnostics aggregate across namespaces.
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', reliable_qos(10))
        # Wall clock so diagnostics keep flowing when /clock stalls (paused bag, sim time).
        self._timer = node.create_timer(period_s, self.publish, clock=Clock(clock_type=ClockType.STEADY_TIME))

    def set(self, key: str, value: float | str) -> None:
        """Set a named value."""
        self._values[key] = value

    def count(self, key: str, n: int = 1) -> None:
        """Increment a counter."""
        self._values[key] = float(self._values.get(key, 0)) + n

    def timing(self, key: str, seconds: float) -> None:
        """Record a duration; the published value is the mean and max over the last 100."""
        self._timings.setdefault(key, deque(maxlen=100)).append(seconds)

    def tick(self, key: str) -> None:
        """Record one event of a rate (e.g. a published frame)."""
        self._rates.setdefault(key, RateMeter()).tick()

    def snapshot(self) -> dict[str, float | str]:
        """Current values: set/counted values, '<key>_ms_mean/_max' timings, '<key>_hz' rates."""
        out: dict[str, float | str] = dict(self._values)
        for key, d in self._timings.items():
            if d:
                out[f'{key}_ms_mean'] = 1e3 * sum(d) / len(d)
                out[f'{key}_ms_max'] = 1e3 * max(d)
        for key, r in self._rates.items():
            out[f'{key}_hz'] = r.rate_hz
        return out

    def publish(self) -> None:
        """Publish one DiagnosticArray now."""
        values = self.snapshot()
        status = DiagnosticStatus(name=self._name, hardware_id=self._hardware_id)
        problem = self._warn_if(values) if self._warn_if else None
        status.level = DiagnosticStatus.WARN if problem else DiagnosticStatus.OK
        status.message = problem or 'ok'
        status.values = [KeyValue(key=k, value=f'{v:.4g}' if isinstance(v, float) else str(v))
                         for k, v in sorted(values.items())]
        msg = DiagnosticArray()
        msg.header.stamp = self._node.get_clock().now().to_msg()
        msg.status = [status]
        self._pub.publish(msg)
