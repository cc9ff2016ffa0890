"""disac-fleet-status: a live one-line status of a running fleet (devices up, tracks, latency).

    python -m disac_ros.tools.fleet_status [--duration S] [--devices dev0 dev1 ...]

Subscribes to /aggregator/tracks and /aggregator/weights and rewrites one terminal line per
second::

    [  42.0 s] devices 4/4 up (dev0 dev1 dev2 dev3) | tracks 6 | latency p50 95 ms p95 160 ms | 5.0 Hz

"devices up" are those fused into a group during the last 2 s (TRAM weights). Latency is receive
time minus the tracks' sensor stamp over the last 10 s. Exits 0 after ``--duration`` seconds (0 =
until SIGINT/SIGTERM); with ``--wait W`` those seconds count from the first tracks, or from W s
after the start if none came (a fleet's first start on a fresh install compiles Genesis kernels).
"""
from __future__ import annotations

import argparse
from collections import deque
import signal
import sys
import time
from typing import Sequence


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line arguments."""
    p = argparse.ArgumentParser(prog='disac-fleet-status', description=__doc__.split('\n\n')[0])
    p.add_argument('--duration', type=float, default=0.0, help='seconds to run (0 = until Ctrl-C)')
    p.add_argument('--devices', nargs='*', default=[], help='expected device ids (for the N/K count)')
    p.add_argument('--period', type=float, default=1.0, help='status period (s)')
    p.add_argument('--wait', type=float, default=0.0,
                   help='count --duration from the first tracks, waiting at most this long for '
                        'them (s; 0 = count from the start)')
    args = p.parse_args(argv)
    for name in ('duration', 'period', 'wait'):
        value = getattr(args, name)
        if not (value >= 0.0 and value < float('inf')) or (name == 'period' and value == 0.0):
            p.error(f'--{name}: must be a finite number >= 0 (> 0 for --period), got {value}')
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = parse_args(argv)
    import numpy as np
    import rclpy
    from rclpy.executors import ExternalShutdownException
    from disac_interfaces.msg import AggregationWeights, TrackedObjectArray

    from disac_ros.nodes.qos import reliable_qos
    rclpy.init()
    node = rclpy.create_node('fleet_status')
    lat: deque[tuple[float, float]] = deque(maxlen=500)
    seen: dict[str, float] = {}
    state = {'tracks': 0, 'first': None, 'count': deque(maxlen=200)}
    t_start = time.monotonic()
    count_from = None if args.wait > 0 else t_start     # when --duration starts counting

    def on_tracks(msg: TrackedObjectArray) -> None:
        now = time.monotonic()
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        lat.append((now, node.get_clock().now().nanoseconds * 1e-9 - stamp))
        state['tracks'] = len(msg.objects)
        state['count'].append(now)
        if msg.objects and state['first'] is None:
            state['first'] = now - t_start

    def on_weights(msg: AggregationWeights) -> None:
        now = time.monotonic()
        for d in msg.device_ids:
            seen[d] = now

    node.create_subscription(TrackedObjectArray, '/aggregator/tracks', on_tracks, reliable_qos(50))
    node.create_subscription(AggregationWeights, '/aggregator/weights', on_weights, reliable_qos(50))
    stop = {'flag': False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    next_print = time.monotonic()
    try:
        while rclpy.ok() and not stop['flag']:
            rclpy.spin_once(node, timeout_sec=0.05)
            now = time.monotonic()
            if count_from is None and (state['first'] is not None or now - t_start >= args.wait):
                count_from = now
            if args.duration and count_from is not None and now - count_from >= args.duration:
                break
            if now < next_print:
                continue
            next_print = now + args.period
            up = sorted(d for d, t in seen.items() if now - t <= 2.0)
            total = len(args.devices) or len(seen)
            recent = [v for t, v in lat if now - t <= 10.0]
            if recent:
                p50, p95 = np.percentile(recent, [50, 95]) * 1e3
                latency = f'latency p50 {p50:.0f} ms p95 {p95:.0f} ms'
            else:
                latency = 'latency -'
            rate = sum(1 for t in state['count'] if now - t <= 5.0) / 5.0
            first = f' | first tracks at {state["first"]:.1f} s' if state['first'] is not None else ''
            if count_from is None:
                first = ' | waiting for the first tracks (a first start compiles kernels)'
            line = (f'[{now - t_start:6.1f} s] devices {len(up)}/{total} up ({" ".join(up)}) | '
                    f'tracks {state["tracks"]} | {latency} | {rate:.1f} Hz{first}')
            sys.stdout.write('\r' + line.ljust(110) if sys.stdout.isatty() else line + '\n')
            sys.stdout.flush()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass                                 # Ctrl-C: the demo goes on to stop and score
    finally:
        if sys.stdout.isatty():
            sys.stdout.write('\n')
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
