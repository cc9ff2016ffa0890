"""Accuracy by time into the simulated run: does a model hold up after the first seconds?

Run: ``python benchmarks/accuracy_over_run.py --data TEST_SPLIT [--models models/default DIR ...]
[--bins 0 4 8 12 16 20 30] [--methods disac rf_only camera_only] [--snr-db 10]
[--fading rayleigh]``.

Each frame of the split is put in a bin by its simulation time (``time_s``: seconds since its
seed's run started); every method of every model is then scored per bin exactly as ``disac-eval``
scores its reference condition (K = all devices, the given SNR and fading, 2 m gate), plus all
frames together. Why it exists: the vehicle devices drive through the intersection and respawn
at the road's start, so what they see depends on how far into the run a frame is; a training set
of short runs from t = 0 only ever shows them before the intersection (see the README, "Status").
Prints one table per model; medians are not needed (no timing).
"""
from __future__ import annotations

import argparse
from pathlib import Path
import sys

# Measure this checkout, not an older copy installed in the colcon workspace.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from disac_ros.core.dataset import DisacDataset  # noqa: E402
from disac_ros.core.evaluation import evaluate as ev  # noqa: E402


def time_bins(times: np.ndarray, edges: list[float]) -> list[tuple[str, np.ndarray]]:
    """(label, row indices) of each non-empty [edge_i, edge_i+1) bin, then 'all'."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        rows = np.flatnonzero((times >= lo) & (times < hi))
        if len(rows):
            out.append((f'{lo:g}-{hi:g} s', rows))
    out.append(('all', np.arange(len(times))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='a disac-dataset split (e.g. the test split)')
    p.add_argument('--models', nargs='+', default=['models/default'],
                   help='model folders (disac-train output or an exported model)')
    p.add_argument('--bins', nargs='+', type=float, default=[0, 4, 8, 12, 16, 20, 30],
                   help='bin edges in seconds since the run started')
    p.add_argument('--methods', nargs='+', default=['disac', 'rf_only', 'camera_only'],
                   choices=ev.METHODS)
    p.add_argument('--snr-db', type=float, default=10.0)
    p.add_argument('--fading', default='rayleigh', choices=('rayleigh', 'awgn'))
    args = p.parse_args(argv)
    if len(args.bins) < 2 or any(hi <= lo for lo, hi in zip(args.bins, args.bins[1:])):
        p.error('--bins: need at least two increasing edges')
    data = DisacDataset(args.data)
    for model in args.models:
        ctx = ev.prepare(model, data, log=lambda m: print(m, file=sys.stderr))
        times = np.array([data.labels(int(i))['time_s'] for i in ctx.frames])
        bins = time_bins(times, args.bins)
        cond = ev.Condition('snr', args.snr_db, args.fading, list(range(len(ctx.device_ids))),
                            ctx.recipe.eval.nominal_distance_m)
        print(f'\n{model} on {args.data} (K = {len(ctx.device_ids)}, {args.fading}, '
              f'{args.snr_db:g} dB): accuracy / precision [objects]')
        print('| method | ' + ' | '.join(label for label, _ in bins) + ' |')
        print('|---' * (len(bins) + 1) + '|')
        for method in args.methods:
            cells = []
            for _, rows in bins:
                row = ev.run_condition(ctx, method, cond, rows=rows)
                cells.append('–' if row is None else
                             f'{row["accuracy"]:.3f} / {row["precision"]:.2f} [{row["num_gt"]}]')
            print(f'| {method} | ' + ' | '.join(cells) + ' |', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
