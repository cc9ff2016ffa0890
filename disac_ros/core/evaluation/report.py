"""Evaluation report: ``metrics.json``, ``metrics.md`` (tables) and PNG plots (matplotlib Agg).

The paper's three comparisons, at the reference condition (all K devices, reference fading and
SNR of the recipe), of the shipped system ``disac`` against each unimodal baseline ``b`` in
{``rf_only``, ``camera_only``}, at the same K and at K = 1 (single-device unimodal)::

    relative accuracy gain (%)  = 100 * (acc_disac - acc_b) / acc_b
    RMSE reduction (%)          = 100 * (rmse_b - rmse_disac) / rmse_b        (position, m)
    NMSE reduction (%)          = 100 * (nmse_b - nmse_disac) / nmse_b        (linear NMSE,
                                                                               nmse = 10^(dB/10))

plus their mean over the two unimodal baselines (the paper reports such averages).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from disac_ros.core.types import OBJECT_CLASSES

FORMULAS = {
    'relative_accuracy_gain_pct': '100 * (acc_disac - acc_baseline) / acc_baseline',
    'rmse_reduction_pct': '100 * (rmse_baseline - rmse_disac) / rmse_baseline (position RMSE, m)',
    'nmse_reduction_pct': '100 * (nmse_baseline - nmse_disac) / nmse_baseline with linear '
                          'nmse = 10^(nmse_db/10)',
    'accuracy': 'objects matched (Hungarian on position, 2 m gate) with the correct class / '
                'ground-truth objects seen by camera or radar of at least one of the K devices',
}
TABLE_COLUMNS = ('method', 'sweep', 'K', 'fading', 'snr_db', 'distance_m', 'accuracy',
                 'precision', 'recall', 'position_rmse_m', 'velocity_rmse_m', 'nmse_db',
                 'bytes_per_device_frame', 'delivered_fraction', 'frames')


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _pct(new: float, base: float, lower_is_better: bool) -> float | None:
    if not (_finite(new) and _finite(base)) or base == 0:
        return None
    return 100.0 * ((base - new) if lower_is_better else (new - base)) / abs(base)


def _find(rows: Sequence[dict], method: str, sweep: str, k: int, fading: str,
          snr: float) -> dict | None:
    for r in rows:
        if (r['method'] == method and r['sweep'] == sweep and r['K'] == k
                and r['fading'] == fading and abs(r['snr_db'] - snr) < 1e-6):
            return r
    return None


def comparisons(rows: Sequence[dict], ev: Any, kmax: int) -> dict[str, Any]:
    """The paper's three comparisons (see module doc), with formulas."""
    out: dict[str, Any] = {'formulas': FORMULAS,
                           'reference': {'K': kmax, 'fading': ev.reference_fading,
                                         'snr_db': ev.reference_snr_db}}
    ours = (_find(rows, 'disac', 'snr', kmax, ev.reference_fading, ev.reference_snr_db)
            or _find(rows, 'disac', 'devices', kmax, ev.reference_fading, ev.reference_snr_db))
    if ours is None:
        out['error'] = 'no disac row at the reference condition'
        return out
    for label, k_base in (('same_K', kmax), ('single_device_K1', 1)):
        per: dict[str, Any] = {}
        for base in ('rf_only', 'camera_only'):
            b = (_find(rows, base, 'devices', k_base, ev.reference_fading, ev.reference_snr_db)
                 or _find(rows, base, 'snr', k_base, ev.reference_fading, ev.reference_snr_db))
            if b is None:
                continue
            nmse_o = 10 ** (ours['nmse_db'] / 10) if _finite(ours['nmse_db']) else float('nan')
            nmse_b = 10 ** (b['nmse_db'] / 10) if _finite(b['nmse_db']) else float('nan')
            per[base] = {
                'relative_accuracy_gain_pct': _pct(ours['accuracy'], b['accuracy'], False),
                'rmse_reduction_pct': _pct(ours['position_rmse_m'], b['position_rmse_m'], True),
                'nmse_reduction_pct': _pct(nmse_o, nmse_b, True),
                'baseline': {k: b[k] for k in ('K', 'accuracy', 'position_rmse_m', 'nmse_db')},
            }
        if per:
            mean = {}
            for key in ('relative_accuracy_gain_pct', 'rmse_reduction_pct', 'nmse_reduction_pct'):
                vals = [v[key] for v in per.values() if v[key] is not None]
                mean[key] = sum(vals) / len(vals) if vals else None
            per['mean_over_unimodal'] = mean
        out[label] = per
    out['disac'] = {k: ours[k] for k in ('K', 'accuracy', 'position_rmse_m', 'nmse_db')}
    return out


def _fmt(v: Any) -> str:
    if v is None:      # a NaN read back from metrics.json (written there as null)
        return '–'
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return '–'
        return f'{v:.3f}' if abs(v) < 100 else f'{v:.0f}'
    return str(v)


DECODER_METHODS = ('disac', 'device_decoder', 'mlp_decoder', 'llm_decoder',
                   'llm_no_channel_tokens')


def decoder_table(rows: Sequence[dict], train_channel: dict | None = None) -> list[str]:
    """Markdown lines: accuracy / NMSE (dB) of every decoder method against SNR, one table per
    fading (the SNR sweep's rows, compact). Empty when no decoder rows exist."""
    sel = [r for r in rows if r['sweep'] == 'snr' and r['method'] in DECODER_METHODS]
    if not sel:
        return []
    snrs = sorted({r['snr_db'] for r in sel})
    out = ['## Decoder comparison (SNR sweep; accuracy / NMSE dB)', '']
    if train_channel and train_channel.get('snr_db'):
        lo, hi = train_channel['snr_db']
        out += [f'Decoders and TRAM were trained on SNR {lo:g} to {hi:g} dB; columns outside '
                'are beyond the training range.', '']
    for fading in dict.fromkeys(r['fading'] for r in sel):
        out += [f'{fading}:', '',
                '| method | decoder | TRAM trained on | frames | '
                + ' | '.join(f'{s:g} dB' for s in snrs) + ' |',
                '|' + '---|' * (4 + len(snrs))]
        for method in DECODER_METHODS:
            mine = {r['snr_db']: r for r in sel if r['method'] == method and r['fading'] == fading}
            if not mine:
                continue
            any_row = next(iter(mine.values()))
            cells = [f"{_fmt(mine[s]['accuracy'])} / {_fmt(mine[s]['nmse_db'])}" if s in mine
                     else '–' for s in snrs]
            out.append(f"| {method} | {any_row.get('decoder')} | "
                       f"{any_row.get('aggregator_trained_on', '?')} | {any_row.get('frames')} | "
                       + ' | '.join(cells) + ' |')
        out.append('')
    return out


def per_class_table(rows: Sequence[dict], reference: dict | None) -> list[str]:
    """Markdown lines: each method's accuracy per object class at the reference condition (all
    K devices), and the confusion matrix of ``disac`` there (a miss vs a wrong class). Empty when
    the rows carry no per-class counts (results written before they existed)."""
    if not reference:
        return []
    k, fading = reference.get('K'), reference.get('fading')
    snr = float(reference.get('snr_db', 0.0))
    sel = {}
    for method in dict.fromkeys(r['method'] for r in rows if r.get('per_class_accuracy')):
        r = (_find(rows, method, 'snr', k, fading, snr)
             or _find(rows, method, 'devices', k, fading, snr))
        if r is not None and r.get('per_class_accuracy'):
            sel[method] = r
    if not sel:
        return []
    # Class-id order (the confusion matrix's), not the dict's: metrics.json sorts its keys.
    names = list(OBJECT_CLASSES)
    out = [f"## Per class (K = {reference.get('K')}, {reference.get('fading')}, "
           f"{reference.get('snr_db')} dB)", '',
           'Accuracy per ground-truth class (matched with the right class / objects of it).', '',
           '| method | ' + ' | '.join(names) + ' | frames |', '|' + '---|' * (len(names) + 2)]
    for method, r in sel.items():
        acc = r['per_class_accuracy']
        out.append(f'| {method} | ' + ' | '.join(_fmt(acc.get(n)) for n in names)
                   + f" | {r.get('frames')} |")
    ours = sel.get('disac')
    if ours is not None and ours.get('confusion'):
        conf = ours['confusion']
        out += ['', '`disac`: ground truth (rows) against the class it was detected as (counts; '
                '"missed" = no detection within the gate).', '',
                '| ground truth | missed | ' + ' | '.join(names) + ' |',
                '|' + '---|' * (len(names) + 2)]
        for c, name in enumerate(names, start=1):
            out.append(f'| {name} | ' + ' | '.join(str(v) for v in conf[c][:len(names) + 1])
                       + ' |')
    out.append('')
    return out


def markdown(result: dict[str, Any]) -> str:
    """Markdown tables of every row, grouped by sweep, plus the comparisons."""
    meta = result.get('meta', {})
    lines = ['# DiSAC evaluation', '',
             f"Checkpoint `{meta.get('checkpoint')}`, test data `{meta.get('test_data')}` "
             f"(seeds {meta.get('test_seeds')}, {meta.get('frames')} frames), devices "
             f"{meta.get('devices')}, shipped decoder `{meta.get('shipped_decoder')}`.", '',
             'Accuracy = ' + FORMULAS['accuracy'] + '. RMSE over matched objects. NMSE of the '
             'decoded vs transmitted feature. Bytes = payload per device per frame.', '']
    pairs = {(r['method'], r.get('decoder'), r.get('aggregator_trained_on'))
             for r in result['rows'] if r.get('aggregator_trained_on')}
    if pairs:
        lines += ['Decoder / aggregator of each method (the aggregator was trained on that '
                  'decoder\'s output unless they differ): ' + ', '.join(
                      f'{m}: {d} / TRAM on {t}' for m, d, t in sorted(pairs)) + '.', '']
    kmax = max((r['K'] for r in result['rows']), default=0)
    calibrated = sorted({(r['method'], tuple(r['class_weights']), tuple(r.get('class_thresholds', ())))
                         for r in result['rows'] if r.get('class_weights') and r['K'] == kmax})
    if calibrated:
        lines += ['Per-class calibration fitted on the validation split (`disac-train calibrate`; '
                  f'class weights / detection thresholds for car, truck, pedestrian, cyclist at K = '
                  f'{kmax}; fewer devices use their own fits, in each row of metrics.json): '
                  + ', '.join(f'{m}: {[round(w, 3) for w in cw]} / {list(ct) or "single"}'
                              for m, cw, ct in calibrated) + '.', '']
    elif meta.get('calibrated') is False:
        lines += ['Uncalibrated (`--uncalibrated`): every aggregator at the single score threshold.', '']
    for sweep, title in (('snr', 'SNR sweep (all devices, SNR set directly)'),
                         ('devices', 'Number of devices K (reference SNR and fading)'),
                         ('distance', 'Distance sweep (SNR from the link budget)')):
        rows = [r for r in result['rows'] if r['sweep'] == sweep]
        if not rows:
            continue
        lines += [f'## {title}', '', '| ' + ' | '.join(TABLE_COLUMNS[:1] + TABLE_COLUMNS[2:])
                  + ' |', '|' + '---|' * (len(TABLE_COLUMNS) - 1)]
        for r in rows:
            lines.append('| ' + ' | '.join(_fmt(r.get(c)) for c in TABLE_COLUMNS
                                           if c != 'sweep') + ' |')
        lines.append('')
    lines += decoder_table(result['rows'], meta.get('train_channel'))
    comp = result.get('comparisons', {})
    lines += per_class_table(result['rows'], comp.get('reference'))
    lines += ['## Comparisons with the unimodal baselines', '']
    for key, formula in FORMULAS.items():
        lines.append(f'- `{key}` = {formula}')
    lines.append('')
    ref = comp.get('reference', {})
    lines.append(f"Reference condition: K = {ref.get('K')}, {ref.get('fading')}, "
                 f"{ref.get('snr_db')} dB.")
    lines.append('')
    lines += ['| against | baseline | accuracy gain % | RMSE reduction % | NMSE reduction % |',
              '|---|---|---|---|---|']
    for label in ('same_K', 'single_device_K1'):
        per = comp.get(label, {})
        # The order comparisons() writes, also for a result read back from sorted-key JSON.
        order = ('rf_only', 'camera_only', 'mean_over_unimodal')
        for base in sorted(per, key=lambda name: (order + (name,)).index(name)):
            v = per[base]
            lines.append(f"| {label} | {base} | {_fmt(v.get('relative_accuracy_gain_pct'))} | "
                         f"{_fmt(v.get('rmse_reduction_pct'))} | "
                         f"{_fmt(v.get('nmse_reduction_pct'))} |")
    lines.append('')
    return '\n'.join(lines)


def plots(result: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots: metrics vs SNR (per fading), vs K, vs distance; one line per method."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    rows = result['rows']
    metrics = (('accuracy', 'accuracy'), ('position_rmse_m', 'position RMSE (m)'),
               ('nmse_db', 'feature NMSE (dB)'))
    written = []
    specs = [(f'vs_snr_{fad}', 'snr', 'snr_db', 'SNR (dB)', lambda r, f=fad: r['fading'] == f)
             for fad in sorted({r['fading'] for r in rows if r['sweep'] == 'snr'})]
    specs += [('vs_devices', 'devices', 'K', 'number of devices K', lambda r: True),
              ('vs_distance', 'distance', 'distance_m', 'distance to aggregator (m)',
               lambda r: True)]
    for name, sweep, xkey, xlabel, pick in specs:
        sel = [r for r in rows if r['sweep'] == sweep and pick(r)]
        if not sel:
            continue
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        for method in dict.fromkeys(r['method'] for r in sel):
            pts = sorted((r[xkey], r) for r in sel if r['method'] == method)
            xs = [p[0] for p in pts]
            for ax, (key, label) in zip(axes, metrics):
                ys = [p[1][key] if _finite(p[1][key]) else float('nan') for p in pts]
                ax.plot(xs, ys, marker='o', label=method)
                ax.set_xlabel(xlabel)
                ax.set_ylabel(label)
                ax.grid(True, alpha=0.3)
        axes[0].legend(fontsize=7)
        fig.suptitle(name.replace('_', ' '))
        fig.tight_layout()
        path = out / f'{name}.png'
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def _clean(o: Any) -> Any:
    """NaN/inf -> None so metrics.json is strict JSON."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_report(result: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """Write metrics.json, metrics.md and the PNG plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / 'metrics.json'
    jpath.write_text(json.dumps(_clean(result), indent=1, sort_keys=True, allow_nan=False))
    mpath = out / 'metrics.md'
    mpath.write_text(markdown(result), encoding='utf-8')
    files = {'json': jpath, 'markdown': mpath}
    for p in plots(result, out):
        files[p.stem] = p
    return files
