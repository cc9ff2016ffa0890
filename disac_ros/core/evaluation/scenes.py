"""Evaluate a model on many scenes at once: unseen scenes of a family, a held-out topology, or
one plain test split, pooled and per scene, side by side.

Per scene this runs the same deployed pipeline as :mod:`evaluate` (each device's own network on
its own test view, the channel, the receiver decoder, the aggregator, the merge and the
calibration for the number of present devices) through :func:`evaluate.run_condition`, and pools
the per-frame detections of every scene into one :class:`DetectionStats` per condition, so the
pooled accuracy is over all objects of all scenes (not a mean of scene means).

Conditions: every device present at Rayleigh ``snr`` dB for each of ``snr_db``; and the device
count sweep at the reference SNR: for k = 1 .. K, up to ``max_subsets`` of the k-device subsets
of each scene, pooled (so "more devices never score lower" can be read off per k).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path
import time
from typing import Any, Callable, Sequence

import numpy as np

from disac_ros.core.evaluation.evaluate import Condition, load_recipe_of, prepare, run_condition
from disac_ros.core.evaluation.metrics import DetectionStats
from disac_ros.core.types import OBJECT_CLASSES

SUMMARY_KEYS = ('accuracy', 'precision', 'recall', 'class_accuracy', 'position_rmse_m',
                'velocity_rmse_m', 'num_gt')


def _pooled_row(stats: DetectionStats) -> dict[str, Any]:
    s = stats.summary()
    row = {k: s[k] for k in SUMMARY_KEYS if k in s}
    per_class = stats.per_class()
    row['per_class_accuracy'] = per_class['per_class_accuracy']
    row['confusion'] = per_class['confusion']     # a miss (column 0) vs a wrong class
    return row


def evaluate_scenes(checkpoint: str | Path, scenes: Sequence[Any], *,
                    snr_db: Sequence[float] = (0.0, 10.0), fading: str = 'rayleigh',
                    max_subsets: int = 4, max_frames: int = 0, methods: Sequence[str] = ('disac',),
                    calibrated: bool = True, log: Callable[[str], None] = print,
                    recipe: Any = None, symbol_bits: Sequence[int] = (),
                    max_cells_per_device: int = 0, max_fused_cells: int = 0,
                    adapt_sensors: bool = True) -> dict[str, Any]:
    """
    Pooled and per-scene metrics of ``methods`` on ``scenes`` (objects from
    :func:`disac_ros.core.family_dataset.load_scenes`).

    :return: ``{'pooled': {method: {condition: row}}, 'scenes': [{name, topology, devices,
        method: {condition: row}}], 'k_sweep': {method: {k: row}}, 'frames', 'wall_s'}``;
        condition names are ``'all@<snr>dB'``, ``'k=<k>@<ref>dB'`` and, for each of
        ``symbol_bits``, ``'all@<snr>dB/<b>bit'`` (symbols quantised on the air to b bits).
    """
    from dataclasses import replace
    t0 = time.perf_counter()
    recipe = recipe or load_recipe_of(Path(checkpoint))
    if max_frames:
        recipe = replace(recipe, eval=replace(recipe.eval, max_frames=int(max_frames)))
    ref = recipe.eval.reference_snr_db
    gate = recipe.eval.match_gate_m
    pooled: dict[str, dict[str, DetectionStats]] = defaultdict(dict)
    per_scene = []
    frames = 0
    for sc in scenes:
        ctx = prepare(checkpoint, sc.dataset, recipe, log=lambda _m: None, digital=False,
                      adapt_sensors=adapt_sensors)
        for model in ctx.aggregators.values():       # TRAM's inference-time cell pruning
            if hasattr(model, 'max_cells_per_device'):
                model.max_cells_per_device = int(max_cells_per_device)
                model.max_fused_cells = int(max_fused_cells)
        k = len(ctx.device_ids)
        frames += len(ctx.frames)
        conds: dict[str, list[Condition]] = {}
        for s in snr_db:
            conds[f'all@{s:g}dB'] = [Condition('snr', float(s), fading, list(range(k)),
                                               recipe.eval.nominal_distance_m)]
            for bits in symbol_bits:
                conds[f'all@{s:g}dB/{bits}bit'] = [Condition('snr', float(s), fading, list(range(k)),
                                                             recipe.eval.nominal_distance_m, int(bits))]
        from disac_ros.core.training.generalist import subsets
        for size in range(1, k + 1):
            conds[f'k={size}@{ref:g}dB'] = [
                Condition('devices', ref, recipe.eval.reference_fading, list(sub),
                          recipe.eval.nominal_distance_m) for sub in subsets(k, size, max_subsets)]
        row: dict[str, Any] = {'name': sc.name, 'topology': getattr(sc, 'topology', ''),
                               'devices': list(ctx.device_ids), 'frames': int(len(ctx.frames))}
        for method in methods:
            row[method] = {}
            for cname, clist in conds.items():
                own = DetectionStats(gate)
                shared = pooled[method].setdefault(cname, DetectionStats(gate))
                ran = False
                for cond in clist:
                    def keep(fused: Any, gt: Any, own: DetectionStats = own,
                             shared: DetectionStats = shared) -> None:
                        for st in (own, shared):
                            st.add_frame((fused.class_index + 1).astype(np.int64),
                                         fused.position, fused.velocity, gt.classes,
                                         gt.position, gt.velocity)
                    res = run_condition(ctx, method, cond, calibrated=calibrated, on_frame=keep)
                    ran = ran or res is not None
                if ran:
                    row[method][cname] = _pooled_row(own)
        per_scene.append(row)
        acc = row[methods[0]].get(f'all@{ref:g}dB', {}).get('accuracy', float('nan'))
        log(f'{sc.name} ({row["topology"]}, {k} devices, {row["frames"]} frames): '
            f'{methods[0]} accuracy {acc:.3f} at {ref:g} dB ({time.perf_counter() - t0:.0f} s)')
    out_pooled = {m: {c: _pooled_row(st) for c, st in conds_.items() if st.num_gt}
                  for m, conds_ in pooled.items()}
    from disac_ros.core.packet import payload_bytes
    for rows_ in out_pooled.values():
        for c, r in rows_.items():      # payload per device-frame: 'all@10dB/4bit' -> 4 bits
            bits = int(c.split('/')[1][:-3]) if '/' in c else recipe.eval.symbol_bits
            r['bytes_per_device_frame'] = float(payload_bytes(recipe.encoder.num_symbols, bits))
    k_sweep = {m: {int(c.split('@')[0][2:]): r for c, r in rows.items() if c.startswith('k=')}
               for m, rows in out_pooled.items()}
    k_steps = {m: _k_steps(per_scene, m, ref) for m in methods}
    return {'pooled': out_pooled, 'k_sweep': k_sweep, 'k_steps': k_steps, 'scenes': per_scene,
            'num_scenes': len(scenes), 'frames': frames,
            'wall_s': round(time.perf_counter() - t0, 1)}


def _k_steps(per_scene: Sequence[dict[str, Any]], method: str, ref: float
             ) -> dict[int, dict[str, float]]:
    """Does adding a device help? For k -> k + 1: the mean over scenes (with >= k + 1 devices)
    of each scene's accuracy at k + 1 minus at k, so the scene mix is the same on both sides
    (the pooled K rows mix different scenes at different k)."""
    out = {}
    kmax = max((len(r['devices']) for r in per_scene), default=0)
    for k in range(1, kmax):
        diffs = []
        for r in per_scene:
            rows = r.get(method, {})
            a, b = rows.get(f'k={k}@{ref:g}dB'), rows.get(f'k={k + 1}@{ref:g}dB')
            if a and b and np.isfinite(a['accuracy']) and np.isfinite(b['accuracy']):
                diffs.append(b['accuracy'] - a['accuracy'])
        if diffs:
            out[k] = {'mean_gain': float(np.mean(diffs)), 'min_gain': float(np.min(diffs)),
                      'scenes': len(diffs)}
    return out


def _f(v: Any, nd: int = 3) -> str:
    return '—' if v is None or (isinstance(v, float) and not np.isfinite(v)) else f'{v:.{nd}f}'


def side_by_side(results: dict[str, dict[str, Any]], method: str = 'disac',
                 reference_snr_db: float = 10.0) -> str:
    """Markdown: one column per evaluated set (e.g. unseen scenes, held-out topology,
    default.yaml), rows = the paper's metrics at the reference condition, 0 dB, per class and
    the device-count sweep."""
    names = list(results)
    ref = f'all@{reference_snr_db:g}dB'
    # K keys are ints in memory and strings once read back from scenes.json
    sweep = {n: {int(k): v for k, v in results[n]['k_sweep'].get(method, {}).items()}
             for n in names}
    steps = {n: {int(k): v for k, v in results[n].get('k_steps', {}).get(method, {}).items()}
             for n in names}
    head = ['| | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
    rows: list[tuple[str, list[str]]] = []

    def get(name: str, cond: str) -> dict[str, Any]:
        return results[name]['pooled'].get(method, {}).get(cond, {})
    rows.append(('scenes / frames', [f'{results[n]["num_scenes"]} / {results[n]["frames"]}'
                                     for n in names]))
    rows.append((f'objects ({ref})', [str(get(n, ref).get('num_gt', '—')) for n in names]))
    for key, label in (('accuracy', 'accuracy'), ('precision', 'precision'),
                       ('recall', 'recall'), ('position_rmse_m', 'position RMSE (m)'),
                       ('velocity_rmse_m', 'velocity RMSE (m/s)')):
        rows.append((f'{label}, all devices, {reference_snr_db:g} dB',
                     [_f(get(n, ref).get(key), 2 if 'rmse' in key else 3) for n in names]))
    for c in _other_snrs(results, [method], ref):
        rows.append((f'accuracy, all devices, {c[4:]}', [_f(get(n, c).get('accuracy'))
                                                          for n in names]))
    quantised = sorted({c for n in names for c in results[n]['pooled'].get(method, {})
                        if c.startswith(ref + '/')}, key=lambda c: int(c.split('/')[1][:-3]))
    for c in quantised:
        nbytes = next((get(n, c).get('bytes_per_device_frame') for n in names if get(n, c)), None)
        size = f', {nbytes:.0f} B' if nbytes else ''
        rows.append((f'accuracy, all devices, {c[4:]} on the air{size}',
                     [_f(get(n, c).get('accuracy')) for n in names]))
    for cls in OBJECT_CLASSES:
        rows.append((f'{cls} accuracy ({reference_snr_db:g} dB)',
                     [_f(get(n, ref).get('per_class_accuracy', {}).get(cls)) for n in names]))

    def lost(name: str, c: int) -> str:     # a miss vs a wrong class: they need other fixes
        conf = get(name, ref).get('confusion')
        total = sum(conf[c]) if conf else 0
        if not total:
            return '—'
        return f'{conf[c][0] / total:.2f} / {(total - conf[c][0] - conf[c][c]) / total:.2f}'
    for c, cls in enumerate(OBJECT_CLASSES, start=1):     # class ids = the confusion's rows
        rows.append((f'{cls} missed / wrong class ({reference_snr_db:g} dB)',
                     [lost(n, c) for n in names]))
    kmax = max((max(sweep[n] or [0]) for n in names), default=0)
    for k in range(1, kmax + 1):
        rows.append((f'accuracy, K = {k} (subsets)', [
            _f(sweep[n].get(k, {}).get('accuracy')) for n in names]))
    for k in range(1, kmax):
        rows.append((f'gain K = {k} -> {k + 1} (mean over the same scenes)', [
            _f(steps[n].get(k, {}).get('mean_gain')) for n in names]))
    return '\n'.join(head + [f'| {label} | ' + ' | '.join(v) + ' |' for label, v in rows]) + '\n'


def _other_snrs(results: dict[str, dict[str, Any]], methods: Sequence[str], ref: str) -> list[str]:
    """The every-device conditions ('all@<snr>dB', not quantised) other than ``ref`` that any
    of ``methods`` ran on any set, by SNR."""
    return sorted({c for res in results.values() for m in methods for c in res['pooled'].get(m, {})
                   if c.startswith('all@') and c != ref and '/' not in c},
                  key=lambda c: float(c[4:-2]))


def methods_table(results: dict[str, dict[str, Any]], methods: Sequence[str],
                  reference_snr_db: float = 10.0) -> str:
    """Markdown: the paper's comparison on every set: accuracy, position and velocity RMSE (and
    precision / recall) of each method with every device present at the reference SNR and at
    0 dB. Empty when fewer than two methods ran."""
    names = list(results)
    ran = [m for m in methods if any(results[n]['pooled'].get(m) for n in names)]
    if len(ran) < 2:
        return ''
    ref = f'all@{reference_snr_db:g}dB'
    conds = [ref] + _other_snrs(results, ran, ref)
    lines = ['| method | metric | ' + ' | '.join(names) + ' |', '|---|---|' + '---|' * len(names)]
    for m in ran:
        for c in conds:
            snr = c[4:]
            metrics = (('accuracy', 'accuracy', 3), ('precision', 'precision', 3),
                       ('recall', 'recall', 3), ('position_rmse_m', 'position RMSE (m)', 2),
                       ('velocity_rmse_m', 'velocity RMSE (m/s)', 2)) if c == ref \
                else (('accuracy', 'accuracy', 3),)
            for key, label, nd in metrics:
                vals = [_f(results[n]['pooled'].get(m, {}).get(c, {}).get(key), nd) for n in names]
                lines.append(f'| {m} | {label}, {snr} | ' + ' | '.join(vals) + ' |')
    return '\n'.join(lines) + '\n'


def plot_bytes_curve(results: dict[str, dict[str, Any]], path: str | Path, method: str = 'disac') -> bool:
    """PNG of accuracy against payload bytes per device-frame (the ``.../<b>bit`` conditions), one
    line per set and SNR; False when there is nothing to plot."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for name, res in results.items():
        for cond, row in res['pooled'].get(method, {}).items():
            if '/' in cond and 'bytes_per_device_frame' in row:
                curves.setdefault(f'{name}, {cond.split("/")[0][4:]}', []).append(
                    (row['bytes_per_device_frame'], row['accuracy']))
    if not curves:
        return False
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, pts in sorted(curves.items()):
        pts.sort()
        ax.plot([b for b, _ in pts], [a for _, a in pts], marker='o', label=label)
    ax.set_xlabel('payload per device-frame (bytes)')
    ax.set_ylabel('accuracy')
    ax.set_title('accuracy vs bytes on the air (symbols quantised on the device)')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
