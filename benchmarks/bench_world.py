"""Benchmark the simulated world: build time and per-step costs.

Usage::

    python benchmarks/bench_world.py [--scenario FILE] [--steps 40] [--cold]

Reports the Genesis import/initialisation time, the World build time (``--cold`` points the
Genesis/Quadrants kernel caches at an empty temporary folder first, to measure a first build on
a new machine), and medians over ``--steps`` steps (after 3 warm-up steps) of: motion + ground
truth, the render of all cameras, the RF synthesis of all radars, and whole steps per second.
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import tempfile
import time

REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a JSON summary."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--scenario', default=str(REPO / 'config' / 'scenarios' / 'default.yaml'))
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--renderer', choices=('genesis', 'none'), default='genesis')
    p.add_argument('--cold', action='store_true',
                   help='use empty kernel caches (measures the first build on a new machine)')
    args = p.parse_args(argv)
    if args.cold:
        tmp = tempfile.mkdtemp(prefix='disac_bench_cache_')
        # Both Genesis and its Quadrants JIT put their caches under XDG_CACHE_HOME.
        os.environ['XDG_CACHE_HOME'] = tmp
        os.environ['GS_CACHE_FILE_PATH'] = os.path.join(tmp, 'genesis')

    sys.path.insert(0, str(REPO))
    from disac_ros.core.scenario import load_scenario
    from disac_ros.core.world import World

    scenario = load_scenario(args.scenario)
    result: dict[str, object] = {'scenario': scenario.name, 'devices': len(scenario.devices),
                                 'image': [scenario.camera.width, scenario.camera.height],
                                 'renderer': args.renderer, 'cold_cache': args.cold}
    if args.renderer == 'genesis':
        t0 = time.perf_counter()
        from disac_ros.core.render_genesis import init_genesis
        init_genesis()
        result['genesis_import_init_s'] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    world = World(scenario, seed=args.seed, renderer=args.renderer)
    result['world_build_s'] = round(time.perf_counter() - t0, 2)
    result['object_slots'] = world.num_object_slots
    for _ in range(3):
        world.step()
    motion, render, rf, total = [], [], [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        world.step()
        total.append(time.perf_counter() - t0)
        motion.append(world.last_timing.motion_gt)
        render.append(world.last_timing.render)
        rf.append(world.last_timing.rf)
    world.close()

    def ms(xs: list[float]) -> float:
        return round(1e3 * statistics.median(xs), 2)

    result.update({
        'steps': args.steps,
        'median_ms_motion_and_ground_truth': ms(motion),
        'median_ms_render_all_cameras': ms(render),
        'median_ms_rf_all_radars': ms(rf),
        'median_ms_step': ms(total),
        'steps_per_s': round(args.steps / sum(total), 2),
    })
    print(json.dumps(result, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
