"""Benchmark MultiObjectTracker.update: median wall time per update for N tracks and detections.

Run: ``python benchmarks/bench_tracking.py [--sizes 10 50] [--steps 300]``. N targets move on
straight lines with 0.3 m measurement noise at 10 Hz; the tracker is warmed up until all tracks
are confirmed, then every update (N detections, N live tracks) is timed. Single-threaded BLAS is
forced so the figure does not depend on the machine's other load.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
import statistics
import sys
import time

# Measure this checkout, not an older copy installed in the colcon workspace.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault('OMP_NUM_THREADS', '1')
os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')
os.environ.setdefault('MKL_NUM_THREADS', '1')

import numpy as np  # noqa: E402

from disac_ros.core.tracking import (  # noqa: E402
    class_distribution, Detection, MultiObjectTracker, TrackerConfig)


def bench(num: int, steps: int, seed: int = 0, warmup: int = 10) -> dict[str, float]:
    """Time ``steps`` updates with ``num`` targets; return median/p95 in milliseconds."""
    rng = np.random.default_rng(seed)
    # Targets on a grid 15 m apart so they stay separable, random headings at 2-15 m/s.
    side = int(np.ceil(np.sqrt(num)))
    starts = np.array([(15.0 * (i % side), 15.0 * (i // side)) for i in range(num)])
    speed = rng.uniform(2.0, 15.0, num)
    heading = rng.uniform(0.0, 2 * np.pi, num)
    vel = np.stack([speed * np.cos(heading), speed * np.sin(heading)], axis=1) * 0.05
    classes = rng.integers(1, 5, num)
    probs = [class_distribution(int(c), 0.8) for c in classes]
    tracker = MultiObjectTracker(TrackerConfig())
    times = []
    for k in range(warmup + steps):
        t = 0.1 * k
        pos = starts + vel * t + rng.normal(0.0, 0.3, (num, 2))
        dets = [Detection(pos[i], probs[i]) for i in range(num)]
        t0 = time.perf_counter()
        out = tracker.update(t, dets)
        elapsed = time.perf_counter() - t0
        if k >= warmup:
            times.append(elapsed)
    assert len(out) == num, f'expected {num} confirmed tracks, got {len(out)}'
    times_ms = np.array(times) * 1e3
    return {'median_ms': statistics.median(times_ms),
            'p95_ms': float(np.percentile(times_ms, 95)),
            'born': tracker.stats.tracks_born}


def main() -> None:
    """Print one line per size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', type=int, nargs='+', default=[10, 50])
    parser.add_argument('--steps', type=int, default=300)
    args = parser.parse_args()
    print(f'{"tracks x detections":>20} {"median ms":>10} {"p95 ms":>8} {"tracks born":>12}')
    for n in args.sizes:
        r = bench(n, args.steps)
        print(f'{f"{n} x {n}":>20} {r["median_ms"]:10.3f} {r["p95_ms"]:8.3f} {r["born"]:12d}')


if __name__ == '__main__':
    main()
