"""
Time the FMCW radar synthesis: cubes for 4 radars x {10, 50} scatterers, radar_features, and
what a device with other sensors adds (sensor_adapt.py: its radar maps on the model's axes, its
image in the model's camera).

Run: ``python benchmarks/bench_rf.py [--repeat 20] [--threads 1]``. Prints the median over
``repeat`` runs after a warm-up, in milliseconds per cube and per 4-radar frame.
"""
import argparse
import os
from pathlib import Path
import statistics
import sys
import time
from typing import Callable

# Time the working tree, not an older copy installed by colcon.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` in ms over ``repeat`` runs, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the timings, print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--repeat', type=int, default=20)
    parser.add_argument('--threads', type=int, default=1,
                        help='BLAS/OpenMP threads (set before numpy is imported)')
    args = parser.parse_args(argv)
    for var in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
        os.environ[var] = str(args.threads)

    import numpy as np   # noqa: I100 - after the thread variables on purpose

    from disac_ros.core.rf import object_scatterers
    from disac_ros.core.rf import radar_features
    from disac_ros.core.rf import RadarConfig
    from disac_ros.core.rf import Scatterer
    from disac_ros.core.rf import synthesize_cube

    cfg = RadarConfig()
    rng = np.random.default_rng(0)
    # Four radars around a 60 m crossing, all looking at its centre.
    radars = [(np.array([x, y, 1.5]), float(np.arctan2(-y, -x)))
              for x, y in ((-30.0, 0.0), (30.0, 0.0), (0.0, -30.0), (0.0, 30.0))]
    print(f'numpy {np.__version__}, {args.threads} thread(s), cube '
          f'{cfg.num_rx}x{cfg.num_chirps}x{cfg.num_samples}, median of {args.repeat}')
    for count in (10, 20, 50):
        scatterers = [Scatterer(np.array([rng.uniform(-15, 15), rng.uniform(-15, 15), 1.0]),
                                np.array([rng.uniform(-10, 10), rng.uniform(-10, 10), 0.0]),
                                float(rng.uniform(0.5, 10.0)))
                      for _ in range(count)]

        def frame(scatterers: list[Scatterer] = scatterers) -> None:
            for pos, yaw in radars:
                synthesize_cube(cfg, pos, yaw, scatterers, rng)

        ms = median_ms(frame, args.repeat)
        print(f'synthesize_cube  4 radars x {count:2d} scatterers: {ms:7.2f} ms per frame, '
              f'{ms / 4:6.2f} ms per cube')
    cube = synthesize_cube(cfg, *radars[0], scatterers, rng)
    print(f'radar_features   one cube:                    '
          f'{median_ms(lambda: radar_features(cube, cfg), args.repeat):6.2f} ms per call')
    import dataclasses
    from disac_ros.core import sensor_adapt as sa
    for name, other in (('16 chirps', dataclasses.replace(cfg, num_chirps=16)),
                        ('256 samples x 8 rx', dataclasses.replace(
                            cfg, num_samples=256, sample_rate_hz=10e6, bandwidth_hz=600e6,
                            num_rx=8))):
        oc = synthesize_cube(other, *radars[0], scatterers, rng)
        ms = median_ms(lambda: sa.resampled_radar_features(oc, other, cfg), args.repeat)
        print(f'resampled from {name:18s}:        {ms:6.2f} ms per call')
    target = sa.default_sensors().camera
    for w, h, fov in ((96, 72, 50.0), (320, 240, 45.0)):
        cam = sa.CameraModel.from_fov(w, h, fov)
        img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        ms = median_ms(lambda: sa.resample_image(img, cam, target), args.repeat)
        print(f'resample_image   {w}x{h} -> 128x128:        {ms:6.2f} ms per call')
    ms = median_ms(lambda: object_scatterers('pedestrian', [5.0, 1.0, 0.9], [1.4, 0.0, 0.0], 0.3,
                                             (0.5, 0.6, 1.8), 0.37), args.repeat)
    print(f'object_scatterers one pedestrian:             {ms:6.3f} ms per call')
    return 0


if __name__ == '__main__':
    sys.exit(main())
