"""``disac-eval``: evaluate a trained model folder and every baseline on a test split.

Example::

    disac-eval --checkpoint models/default --data data/splits/test --out results/default
    disac-eval --checkpoint models/quick --out results/quick --quick

Writes ``OUT/metrics.json`` (``rows``: one object per method and condition with ``method``,
``K``, ``snr_db``, ``fading``, ``accuracy``, ``position_rmse_m``, ``velocity_rmse_m``,
``nmse_db``, ``bytes_per_device_frame`` and more; ``comparisons``: the paper's three
comparisons with their formulas; ``meta``), ``OUT/metrics.md`` and PNG plots.

Without ``--data``, the test split is ``--cache`` (default ``CHECKPOINT/test_cache``) if it
holds a dataset, else it is generated there first: the scenario the training data used (from
its manifest), unseen seeds (``--test-seeds``, default 900; seeds used for training or
validation are refused), ``--test-frames`` per seed, rendered by Genesis unless
``--renderer none``.

With ``--scenes NAME=DIR [NAME=DIR ...]`` (for a device-agnostic model) it scores the shipped
system on each set of scenes instead (a family folder from ``disac-dataset family`` or a plain
split), pooled over the scenes of each set, and writes ``OUT/scenes.json`` and
``OUT/scenes.md``: the sets side by side (accuracy, precision, recall, RMSE at 10 and 0 dB, per
class, and the device-count sweep over subsets), e.g.::

    disac-eval --checkpoint models/default --out results/gen --scenes \
        unseen=data/urban/test offset=data/urban/test_offset default=data/default/test

Exit status: 0 on success, 1 when evaluation fails, 2 on bad arguments.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
import json
from pathlib import Path
import sys
from typing import Sequence

from disac_ros.core.errors import ConfigError, DisacError

PROG = 'disac-eval'


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--checkpoint', required=True, help='model folder written by disac-train')
    p.add_argument('--out', required=True, help='output folder for metrics and plots')
    p.add_argument('--data', help='test split (a disac-dataset folder from unseen seeds)')
    p.add_argument('--quick', action='store_true',
                   help="use the quick recipe's sweeps (fewer SNRs, K and frames)")
    p.add_argument('--methods', nargs='+', help='subset of methods (default: all; with --scenes: '
                   'disac and these, e.g. rf_only camera_only, if the model folder has them)')
    p.add_argument('--max-frames', type=int, help='limit test frames (0 = all)')
    p.add_argument('--test-seeds', type=int, nargs='+', default=[900],
                   help='seeds for a generated test split when --data is absent')
    p.add_argument('--test-frames', type=int, default=60,
                   help='frames per seed of a generated test split')
    p.add_argument('--renderer', default='genesis', choices=('genesis', 'none'),
                   help='renderer of a generated test split')
    p.add_argument('--cache', help='folder of a generated test split')
    p.add_argument('--threads', type=int,
                   help="torch threads (default: the model recipe's 'threads')")
    p.add_argument('--uncalibrated', action='store_true',
                   help="ignore the aggregators' fitted class weights and thresholds "
                        "(stage2/*/calibration.json): the recipe's single score threshold")
    p.add_argument('--no-adapt-sensors', action='store_true',
                   help="feed each device's camera and radar to the model as they are instead of "
                        "resampling them to the model's sensors (device_node adapt_sensors:=false): "
                        'what adaptation is worth on scenes with other sensors')
    p.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    p.add_argument('--scenes', nargs='+', metavar='NAME=DIR',
                   help='score on these sets of scenes (family or plain dataset folders), side '
                        'by side, instead of one test split')
    p.add_argument('--snr', type=float, nargs='+', default=[0.0, 10.0],
                   help='with --scenes: the Rayleigh SNRs (dB) with every device present')
    p.add_argument('--symbol-bits', type=int, nargs='+', default=[], metavar='BITS',
                   help='with --scenes: also score each SNR with the symbols quantised on the air to '
                        'BITS (2-8) per I/Q component, as device_node\'s bits parameter (payload '
                        '= symbols x 2 x BITS / 8 bytes): the accuracy-vs-bytes curve')
    p.add_argument('--max-cells-per-device', type=int, default=0, metavar='M',
                   help='with --scenes: TRAM fuses only the M likeliest cells of each device (the '
                        'aggregator node\'s max_cells_per_device; 0 = every cell)')
    p.add_argument('--max-fused-cells', type=int, default=0, metavar='N',
                   help='with --scenes: TRAM fuses at most N cells over all devices, N // K of each '
                        'device (the aggregator node\'s max_fused_cells; 0 = no budget)')
    return p


def _test_data(args: argparse.Namespace, ckpt: Path) -> Path:
    """--data, else a cached or freshly generated split from unseen seeds."""
    if args.data:
        if not (Path(args.data) / 'manifest.json').is_file():
            raise ConfigError('--data', f'{args.data} is not a dataset folder (no manifest.json)')
        return Path(args.data)
    cache = Path(args.cache) if args.cache else ckpt / 'test_cache'
    if (cache / 'manifest.json').is_file():
        return cache
    stage1 = ckpt / 'stage1' / 'both'
    seeds_used: set[int] = set()
    scenario = None
    for meta in stage1.glob('*/checkpoint/metadata.json'):
        m = json.loads(meta.read_text())
        for key in ('train_data_seeds', 'val_data_seeds'):
            seeds_used |= set(m['seeds'].get(key) or [])
        scenario = m['data']['train']
    if scenario is None:
        raise ConfigError('--data', f'{ckpt}: no stage-1 metadata to find the training scenario')
    clash = sorted(seeds_used & set(args.test_seeds))
    if clash:
        raise ConfigError('--test-seeds', f'{clash} were used for training/validation')
    from disac_ros.core import dataset
    from disac_ros.core.dataset import DisacDataset
    from disac_ros.core.scenario import parse_scenario
    from disac_ros.core.world import World
    train_manifest = DisacDataset(scenario).manifest
    sc = parse_scenario(train_manifest['scenario'], source=f'{scenario}/manifest.json')
    world = World(sc, renderer=args.renderer)
    dataset.generate(world, cache, args.test_seeds, args.test_frames, split='test',
                     command=f'{PROG} (generated test split)')
    return cache


def _scenes(args: argparse.Namespace, ckpt: Path, recipe: object) -> int:
    """--scenes: each set scored pooled over its scenes; JSON + a side-by-side table."""
    from disac_ros.core.evaluation.scenes import (evaluate_scenes, methods_table,
                                                  plot_bytes_curve, side_by_side)
    from disac_ros.core.family_dataset import load_scenes
    # 'disac' always first: the side-by-side table, the calibration and the logs follow it.
    methods = ['disac'] + [m for m in (args.methods or []) if m != 'disac']
    sets = {}
    for item in args.scenes:
        name, sep, folder = item.partition('=')
        if not sep or not name or not folder:
            raise ConfigError('--scenes', f'expected NAME=DIR, got {item!r}')
        if not (Path(folder) / 'family.json').is_file() \
                and not (Path(folder) / 'manifest.json').is_file():
            raise ConfigError('--scenes', f'{folder}: neither a family nor a dataset folder')
        sets[name] = load_scenes(folder)
    results = {}
    for name, scenes in sets.items():
        print(f'{PROG}: {name}: {len(scenes)} scenes', file=sys.stderr)
        results[name] = evaluate_scenes(ckpt, scenes, snr_db=args.snr, symbol_bits=args.symbol_bits,
                                        max_cells_per_device=args.max_cells_per_device,
                                        max_fused_cells=args.max_fused_cells,
                                        max_frames=args.max_frames or 0,
                                        calibrated=not args.uncalibrated, recipe=recipe,
                                        methods=methods, adapt_sensors=not args.no_adapt_sensors,
                                        log=lambda m: print(f'  {m}', file=sys.stderr))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'scenes.json').write_text(json.dumps(results, indent=1, default=float))
    table = side_by_side(results, reference_snr_db=getattr(recipe, 'eval').reference_snr_db)
    compare = methods_table(results, methods, getattr(recipe, 'eval').reference_snr_db)
    missing = [m for m in methods if not any(r['pooled'].get(m) for r in results.values())]
    if missing:
        print(f'{PROG}: no models for {missing} in {ckpt} (skipped)', file=sys.stderr)
    (out / 'scenes.md').write_text(f'# {ckpt} on {", ".join(results)}\n\n'
                                   f'## Generalisation (sets side by side; pooled over each '
                                   f'set\'s scenes)\n\n' + table
                                   + (f'\n## Methods (every device present)\n\n{compare}'
                                      if compare else ''))
    if plot_bytes_curve(results, out / 'bytes_curve.png'):
        print(f'{PROG}: accuracy vs bytes plotted in {out / "bytes_curve.png"}', file=sys.stderr)
    print(table)
    if compare:
        print(compare)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``disac-eval``; returns the exit status."""
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        from disac_ros.core.dataset import DisacDataset
        from disac_ros.core.evaluation.evaluate import evaluate, load_recipe_of, METHODS
        from disac_ros.core.evaluation.report import write_report
        from disac_ros.core.training.recipes import quick_recipe
        ckpt = Path(args.checkpoint)
        recipe = load_recipe_of(ckpt)
        if args.quick:
            recipe = replace(recipe, eval=replace(quick_recipe().eval, seed=recipe.eval.seed))
        if args.threads is not None:
            if args.threads < 1:
                raise ConfigError('--threads', f'must be >= 1, got {args.threads}')
            recipe = replace(recipe, threads=args.threads)
        if args.max_frames is not None:
            recipe = replace(recipe, eval=replace(recipe.eval, max_frames=args.max_frames))
        bad_bits = [b for b in args.symbol_bits if not 2 <= b <= 8]
        if bad_bits:
            raise ConfigError('--symbol-bits', f'each must be in 2..8, got {bad_bits}')
        if args.max_cells_per_device < 0:
            raise ConfigError('--max-cells-per-device', f'must be >= 0, got {args.max_cells_per_device}')
        if args.max_fused_cells < 0:
            raise ConfigError('--max-fused-cells', f'must be >= 0, got {args.max_fused_cells}')
        if args.symbol_bits and not args.scenes:
            raise ConfigError('--symbol-bits', 'needs --scenes')
        bad = sorted(set(args.methods or []) - set(METHODS))
        if bad:
            raise ConfigError('--methods', f'unknown {bad}; known: {list(METHODS)}')
        if args.scenes:
            return _scenes(args, ckpt, recipe)
        methods = args.methods or list(METHODS)
        test = DisacDataset(_test_data(args, ckpt))
        result = evaluate(ckpt, test, recipe, methods, show_progress=not args.no_progress,
                          calibrations=not args.uncalibrated)
        files = write_report(result, args.out)
        print(f'{PROG}: {len(result["rows"])} rows in {result["meta"]["wall_s"]} s -> '
              + ', '.join(str(p) for p in files.values()))
    except ConfigError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 2
    except DisacError as err:
        print(f'{PROG}: error: {err}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
