"""Per-class calibration of a trained aggregator, fitted on the validation split.

Why: an aggregator's class posteriors carry its training set's class frequencies. The classes it
confuses (trucks called cars, cyclists called pedestrians) lose to the frequent one more often
than they should, and it is confident about some classes (cars) and timid about others
(cyclists), so one detection threshold keeps too many of the first and too few of the second.
Two corrections, applied after merging (:mod:`disac_ros.core.detection_fusion`):

* ``class_weights``: one weight per real class on each detection's class distribution
  (renormalised): moves only the class choice;
* ``class_thresholds``: one detection threshold per real class, replacing the single one.

Fit, on the validation split at the evaluation's reference condition (all devices,
``eval.reference_snr_db``, ``eval.reference_fading``, nominal distance): the aggregator's
detections are collected once down to the lowest threshold of ``THRESHOLDS`` (not below the
fusion's ``min_score``, so the merged clusters are exactly those the calibrated system forms
with weighted fusion), then

1. the weights: coordinate ascent over a log grid (``WEIGHTS``), first real class fixed at 1
   (only ratios matter), maximising accuracy (matched with the right class / objects) of the
   detections at the recipe's ``score_threshold``; among equal scores the weight nearest 1 wins;
2. the thresholds: every combination of ``THRESHOLDS`` per class, maximising accuracy subject to
   precision no lower than at the recipe's single threshold (with the weights), ties to the
   higher precision; the recipe's threshold for every class stays when nothing beats it.

The same two steps run again for every smaller number of present devices k (the validation frames
of every k-device subset pooled), since a fusion of fewer devices is less sure of itself: the fit
for all devices applied to one device alone cost 0.02 accuracy on the test split. At run time the
fit for the number of devices present in a group (frame) applies, the all-device fit where there
is none.

Stored as ``stage2/<variant>_<aggregator>[_<kind>]/calibration.json`` next to the checkpoint;
``disac-eval``, :class:`~disac_ros.core.inference.AggregatorPipeline` (so the aggregator node)
and the exporter read it. A model without the file runs uncalibrated.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from disac_ros.core.detection_fusion import (check_class_thresholds, check_class_weights,
                                             FusedDetections, FusionConfig)
from disac_ros.core.errors import ConfigError, ModelError
from disac_ros.core.evaluation.metrics import match

CALIBRATION_FILE = 'calibration.json'
WEIGHTS = tuple(float(w) for w in np.exp(np.linspace(-1.5, 1.5, 31)))   # e^-1.5 .. e^1.5
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


@dataclass(frozen=True)
class Calibration:
    """An aggregator's per-class corrections (empty tuples = none) for all its devices, and
    ``by_devices``: the corrections for groups of fewer devices, by their number."""

    class_weights: tuple[float, ...] = ()
    class_thresholds: tuple[float, ...] = ()
    by_devices: Mapping[int, 'Calibration'] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, 'class_weights', check_class_weights(self.class_weights))
        object.__setattr__(self, 'class_thresholds', check_class_thresholds(self.class_thresholds))
        for k, sub in self.by_devices.items():
            if not isinstance(k, int) or k < 1 or not isinstance(sub, Calibration) or sub.by_devices:
                raise ConfigError('by_devices', f'expected device counts >= 1 -> calibrations, got '
                                                f'{k!r}: {sub!r}')

    def for_devices(self, k: int) -> Calibration:
        """The corrections for a group of ``k`` present devices."""
        return self.by_devices.get(int(k), self) if self.by_devices else self

    def fusion(self, base: FusionConfig, k: int) -> FusionConfig:
        """``base`` with the corrections for ``k`` present devices."""
        cal = self.for_devices(k)
        return replace(base, class_weights=cal.class_weights, class_thresholds=cal.class_thresholds)

    def overridden(self, class_weights: Sequence[float] | None,
                   class_thresholds: Sequence[float] | None) -> Calibration:
        """This calibration with either correction replaced for every device count (None = keep)."""
        def one(cal: Calibration) -> Calibration:
            return Calibration(cal.class_weights if class_weights is None else tuple(class_weights),
                               cal.class_thresholds if class_thresholds is None
                               else tuple(class_thresholds))
        top = one(self)
        return Calibration(top.class_weights, top.class_thresholds,
                           {k: one(sub) for k, sub in self.by_devices.items()})


@dataclass
class FrameDetections:
    """One validation frame: merged detections (uncalibrated) and the ground truth."""

    score: np.ndarray          # (D,)
    class_probs: np.ndarray    # (D, C)
    position: np.ndarray       # (D, 2)
    gt_classes: np.ndarray     # (G,) class ids 1..C
    gt_position: np.ndarray    # (G, 2)


def score_frames(frames: Sequence[FrameDetections], weights: np.ndarray,
                 thresholds: np.ndarray, gate_m: float) -> tuple[int, int, int, int]:
    """(correct, matched, detections, objects) of the frames under weights and per-class
    thresholds (the metrics' matching: Hungarian on distance within ``gate_m``)."""
    correct = matched = dets = objects = 0
    for f in frames:
        cls = np.argmax(f.class_probs * weights, axis=1) if len(f.score) else np.zeros(0, np.int64)
        keep = f.score >= thresholds[cls]
        rows, cols = match(f.position[keep], f.gt_position, gate_m)
        objects += len(f.gt_classes)
        dets += int(keep.sum())
        matched += len(rows)
        correct += int(((cls[keep][rows] + 1) == f.gt_classes[cols]).sum())
    return correct, matched, dets, objects


def fit_class_weights(probs: np.ndarray, gt: np.ndarray, passes: int = 3,
                      grid: Sequence[float] = WEIGHTS) -> tuple[tuple[float, ...], int, int]:
    """
    Class weights that maximise the correct classes among matched detections (module doc).

    :param probs: (M, C) class distributions of M matched detections (real classes only).
    :param gt: (M,) their ground-truth class ids, 1..C.
    :return: (weights (C,), correct before, correct after).
    """
    probs = np.asarray(probs, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.int64).reshape(-1)
    if probs.ndim != 2 or probs.shape[0] != gt.shape[0]:
        raise ValueError(f'fit_class_weights: probs must be (M, C) with M = len(gt), got '
                         f'{probs.shape} and {gt.shape}')

    def correct(w: np.ndarray) -> int:
        return int(((np.argmax(probs * w, axis=1) + 1) == gt).sum()) if len(gt) else 0

    weights = np.ones(probs.shape[1])
    before = best = correct(weights)
    order = sorted(grid, key=lambda w: abs(np.log(w)))     # ties -> the weight nearest 1
    for _ in range(passes):
        changed = False
        for k in range(1, probs.shape[1]):
            scores = [correct(np.where(np.arange(len(weights)) == k, w, weights)) for w in order]
            top = int(np.argmax(scores))
            if scores[top] > best:
                best, weights[k], changed = scores[top], order[top], True
        if not changed:
            break
    return tuple(float(w) for w in weights), before, best


class _ThresholdScorer:
    """:func:`score_frames` for many threshold sets over fixed frames and weights, fast.

    The gated Hungarian matching splits into independent groups (detections linked through a
    ground-truth object within the gate). A detection alone in its group is matched to its
    nearest object whenever it is kept: counted with numpy. Groups of several detections are
    matched per set of kept members, remembered across threshold sets."""

    def __init__(self, frames: Sequence[FrameDetections], weights: np.ndarray, gate_m: float):
        self.gate_m = gate_m
        scores, classes, single_hit, single_right, groups = [], [], [], [], []
        offset = 0
        for f in frames:
            n = len(f.score)
            cls = np.argmax(f.class_probs * weights, axis=1) if n else np.zeros(0, np.int64)
            near = (np.linalg.norm(f.position[:, None, :2] - f.gt_position[None, :, :2], axis=-1)
                    <= gate_m) if n and len(f.gt_classes) else np.zeros((n, 0), bool)
            group = list(range(n))                      # union-find over shared objects

            def root(i: int) -> int:
                while group[i] != i:
                    i = group[i]
                return i
            for g in range(near.shape[1]):
                members = np.flatnonzero(near[:, g])
                for m in members[1:]:
                    group[root(int(m))] = root(int(members[0]))
            roots = [root(i) for i in range(n)]
            hit, right = np.zeros(n, bool), np.zeros(n, bool)
            for r in set(roots):
                idx = [i for i in range(n) if roots[i] == r]
                if len(idx) == 1:
                    i = idx[0]
                    if near[i].any():
                        d = np.linalg.norm(f.gt_position[:, :2] - f.position[i, :2], axis=-1)
                        g = int(np.argmin(np.where(near[i], d, np.inf)))
                        hit[i], right[i] = True, cls[i] + 1 == f.gt_classes[g]
                else:
                    objs = np.flatnonzero(near[idx].any(axis=0))
                    groups.append((offset + np.asarray(idx), f.position[idx], cls[idx] + 1,
                                   f.gt_position[objs], f.gt_classes[objs], {}))
                    hit[idx] = False                    # counted per group below
            scores.append(f.score)
            classes.append(cls)
            single_hit.append(hit)
            single_right.append(right)
            offset += n
        self.score = np.concatenate(scores) if scores else np.zeros(0)
        self.cls = np.concatenate(classes) if classes else np.zeros(0, np.int64)
        self.hit = np.concatenate(single_hit) if single_hit else np.zeros(0, bool)
        self.right = np.concatenate(single_right) if single_right else np.zeros(0, bool)
        self.groups = groups

    def __call__(self, thresholds: np.ndarray) -> tuple[int, int, int]:
        """(correct, matched, detections) under per-class ``thresholds``."""
        keep = self.score >= thresholds[self.cls]
        matched = int((keep & self.hit).sum())
        correct = int((keep & self.right).sum())
        for idx, pos, cls, gt_pos, gt_cls, memo in self.groups:
            k = keep[idx]
            key = k.tobytes()
            if key not in memo:
                rows, cols = match(pos[k], gt_pos, self.gate_m)
                memo[key] = (len(rows), int((cls[k][rows] == gt_cls[cols]).sum()))
            matched += memo[key][0]
            correct += memo[key][1]
        return correct, matched, int(keep.sum())


def fit_class_thresholds(frames: Sequence[FrameDetections], weights: Sequence[float],
                         default: float, gate_m: float, grid: Sequence[float] = THRESHOLDS
                         ) -> tuple[tuple[float, ...], dict[str, float], dict[str, float]]:
    """
    Per-class thresholds (module doc, step 2).

    :return: (thresholds, {accuracy, precision} at ``default`` for every class, the same at
        the thresholds found), both measured with :func:`score_frames`.
    """
    w = np.asarray(weights, dtype=np.float64)
    c = len(w)
    objects = max(sum(len(f.gt_classes) for f in frames), 1)
    fast = _ThresholdScorer(frames, w, gate_m)

    def metrics(thr: Sequence[float], exact: bool = False) -> dict[str, float]:
        if exact:
            correct, matched, dets, _ = score_frames(frames, w, np.asarray(thr), gate_m)
        else:
            correct, matched, dets = fast(np.asarray(thr))
        return {'accuracy': correct / objects, 'precision': matched / max(dets, 1)}

    base_thr = (float(default),) * c
    base = metrics(base_thr)
    best_thr, best = base_thr, base
    for thr in itertools.product(grid, repeat=c):
        m = metrics(thr)
        if m['precision'] < base['precision']:
            continue
        if (m['accuracy'], m['precision']) > (best['accuracy'], best['precision']):
            best_thr, best = tuple(float(t) for t in thr), m
    return best_thr, metrics(base_thr, exact=True), metrics(best_thr, exact=True)


def calibration_path(folder: str | Path) -> Path:
    """The calibration file of an aggregator folder (``stage2/<name>``)."""
    return Path(folder) / CALIBRATION_FILE


def _calibration_dict(cal: Calibration) -> dict[str, Any]:
    return {'class_weights': list(cal.class_weights), 'class_thresholds': list(cal.class_thresholds)}


def save_calibration(folder: str | Path, calibration: Calibration, info: dict[str, Any],
                     by_devices_info: Mapping[int, dict[str, Any]] | None = None) -> Path:
    """Write an aggregator's calibration and how it was fitted (``by_devices_info``: the same for
    each smaller device count)."""
    from disac_ros.core.training.common import write_json
    path = calibration_path(folder)
    extra = by_devices_info or {}
    data = {**_calibration_dict(calibration), **info}
    if calibration.by_devices:
        data['by_devices'] = {str(k): {**_calibration_dict(sub), **extra.get(k, {})}
                              for k, sub in sorted(calibration.by_devices.items())}
    write_json(path, data)
    return path


def load_calibration(folder: str | Path) -> Calibration:
    """An aggregator folder's calibration (empty when it has none). ModelError when the file is
    unreadable or invalid (refit it with ``disac-train calibrate`` or delete it)."""
    path = calibration_path(folder)
    if not path.is_file():
        return Calibration()
    try:
        data = json.loads(path.read_text())

        def one(d: dict[str, Any]) -> Calibration:
            return Calibration(tuple(d['class_weights']), tuple(d.get('class_thresholds', ())))
        by = {int(k): one(v) for k, v in (data.get('by_devices') or {}).items()}
        top = one(data)
        return Calibration(top.class_weights, top.class_thresholds, by)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as err:
        raise ModelError(f'{path}: not a valid calibration file ({err}); refit it with '
                         f'`disac-train calibrate` or delete it to run uncalibrated') from None


def _fit(frames: Sequence[FrameDetections], rec: Any, grid: Sequence[float]
         ) -> tuple[Calibration, dict[str, Any]]:
    """Weights, then thresholds, on collected frames (module doc); the calibration and metrics."""
    probs, gt = [], []
    for f in frames:             # matched detections at the recipe's single threshold
        sel = f.score >= rec.score_threshold
        rows, cols = match(f.position[sel], f.gt_position, rec.match_gate_m)
        probs.append(f.class_probs[sel][rows])
        gt.append(f.gt_classes[cols])
    weights, _, _ = fit_class_weights(np.concatenate(probs), np.concatenate(gt))
    thresholds, before, after = fit_class_thresholds(frames, weights, rec.score_threshold,
                                                     rec.match_gate_m, grid)
    plain = score_frames(frames, np.ones(len(weights)), np.full(len(weights), rec.score_threshold),
                         rec.match_gate_m)
    return Calibration(weights, thresholds), {
        'objects': plain[3], 'accuracy_before': plain[0] / max(plain[3], 1),
        'accuracy_weights_only': before['accuracy'], 'accuracy_after': after['accuracy'],
        'precision_before': plain[1] / max(plain[2], 1), 'precision_after': after['precision']}


def _threshold_grid(rec: Any) -> tuple[float, ...]:
    """The per-class thresholds searched: THRESHOLDS from the fusion's min_score up."""
    floor = max(rec.fusion_min_score, THRESHOLDS[0])
    return tuple(t for t in THRESHOLDS if t >= floor) or (floor,)


def calibrate_model(model_dir: str | Path, val: Any, methods: Sequence[str] | None = None,
                    recipe: Any = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """
    Fit and store the calibration of every aggregator of a model folder on a validation split.

    :param val: the validation split (a DisacDataset).
    :param methods: evaluation methods whose aggregators to calibrate (default: every method with
        its own aggregator: disac, rf_only, camera_only, mean_pool and the decoder rows').
    :param recipe: the recipe to run with (default: the one stored in the folder).
    :return: one summary per aggregator calibrated (folder, calibration, metrics before/after).
    """
    from disac_ros.core.evaluation import evaluate as ev
    ctx = ev.prepare(model_dir, val, recipe, log=log, calibrations=False)   # refits a bad file too
    rec = ctx.recipe.eval
    kmax = len(ctx.device_ids)
    grid = _threshold_grid(rec)
    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    for method in methods or [m for m in ev.METHODS if m not in ('single_device', 'digital_jpeg')]:
        key = ev.method_aggregator(ctx, method)
        if key is None or key in done:
            continue
        fits: dict[int, tuple[Calibration, dict[str, Any]]] = {}
        for k in range(kmax, 0, -1):
            frames: list[FrameDetections] = []

            def keep(fused: FusedDetections, gt: Any) -> None:
                frames.append(FrameDetections(fused.score, fused.class_probs, fused.position,
                                              np.asarray(gt.classes, np.int64),
                                              np.asarray(gt.position, np.float64).reshape(-1, 2)))
            for subset in itertools.combinations(range(kmax), k):
                cond = ev.Condition('calibration', rec.reference_snr_db, rec.reference_fading,
                                    list(subset), rec.nominal_distance_m)
                ev.run_condition(ctx, method, cond, calibrated=False,
                                 threshold=min(grid[0], rec.score_threshold), on_frame=keep)
            fits[k] = _fit(frames, rec, grid)
        top, info = fits[kmax]
        cal = Calibration(top.class_weights, top.class_thresholds,
                          {k: fits[k][0] for k in fits if k < kmax})
        info = {'fitted_on': str(val.root), 'seeds': val.manifest.get('seeds'), 'method': method,
                'snr_db': rec.reference_snr_db, 'fading': rec.reference_fading,
                'distance_m': rec.nominal_distance_m, 'score_threshold': rec.score_threshold,
                'devices': kmax, **info}
        path = save_calibration(ctx.aggregator_dirs[key], cal, info,
                                {k: fits[k][1] for k in fits if k < kmax})
        done[key] = {'folder': str(path.parent), 'class_weights': list(cal.class_weights),
                     'class_thresholds': list(cal.class_thresholds), **info}
        for k in sorted(fits, reverse=True):
            c, m = fits[k]
            log(f'calibrated {path.parent.name} ({method}), {k} of {kmax} devices: weights '
                f'{", ".join(f"{w:.3f}" for w in c.class_weights)}, thresholds '
                f'{", ".join(f"{t:.2f}" for t in c.class_thresholds)}; validation accuracy '
                f'{m["accuracy_before"]:.4f} -> {m["accuracy_weights_only"]:.4f} (weights) -> '
                f'{m["accuracy_after"]:.4f}, precision {m["precision_before"]:.3f} -> '
                f'{m["precision_after"]:.3f}')
    if not done:
        raise ConfigError('out', f'{model_dir}: no aggregator to calibrate')
    return list(done.values())


def calibrate_scenes(model_dir: str | Path, scenes: Sequence[Any], recipe: Any = None,
                     max_subsets: int = 4, log: Callable[[str], None] = print,
                     method: str = 'disac') -> dict[str, Any]:
    """
    :func:`calibrate_model` for a device-agnostic model on many validation scenes (each with
    its own devices, any number): the frames of every scene are pooled, per number of present
    devices k (up to ``max_subsets`` of each scene's k-device subsets), and fitted as above. The
    fit with every device of each scene present is the top level; each smaller k gets its own.
    ``method`` picks the aggregator: the shipped system's (``stage2/both_tram``, 'disac') or a
    unimodal baseline's ('rf_only', 'camera_only').
    """
    from disac_ros.core.evaluation import evaluate as ev
    from disac_ros.core.training.generalist import subsets
    pooled: dict[int | str, list[FrameDetections]] = {}
    rec = None
    key = None
    folder = None
    for sc in scenes:
        ctx = ev.prepare(model_dir, sc.dataset, recipe, log=lambda _m: None, calibrations=False,
                         digital=False)
        rec = ctx.recipe.eval
        key = ev.method_aggregator(ctx, method)
        if key is None:
            raise ConfigError('out', f'{model_dir}: no {method} aggregator to calibrate')
        folder = ctx.aggregator_dirs[key]
        grid = _threshold_grid(rec)
        kmax = len(ctx.device_ids)
        for k in range(1, kmax + 1):
            slot: int | str = 'all' if k == kmax else k
            frames = pooled.setdefault(slot, [])

            def keep(fused: FusedDetections, gt: Any, frames: list = frames) -> None:
                frames.append(FrameDetections(fused.score, fused.class_probs, fused.position,
                                              np.asarray(gt.classes, np.int64),
                                              np.asarray(gt.position, np.float64).reshape(-1, 2)))
            for subset in (subsets(kmax, k, max_subsets) if k < kmax else [tuple(range(kmax))]):
                cond = ev.Condition('calibration', rec.reference_snr_db, rec.reference_fading,
                                    list(subset), rec.nominal_distance_m)
                ev.run_condition(ctx, method, cond, calibrated=False,
                                 threshold=min(grid[0], rec.score_threshold), on_frame=keep)
    if rec is None or folder is None or 'all' not in pooled:
        raise ConfigError('val', 'no validation scenes to calibrate on')
    fits = {k: _fit(frames, rec, _threshold_grid(rec)) for k, frames in pooled.items() if frames}
    top, info = fits['all']
    by_k = {int(k): fits[k][0] for k in fits if k != 'all'}
    cal = Calibration(top.class_weights, top.class_thresholds, by_k)
    info = {'fitted_on': [str(sc.dataset.root) for sc in scenes], 'method': method,
            'snr_db': rec.reference_snr_db, 'fading': rec.reference_fading,
            'distance_m': rec.nominal_distance_m, 'score_threshold': rec.score_threshold,
            'devices': 'all of each scene', 'scenes': len(scenes), **info}
    path = save_calibration(folder, cal, info, {int(k): fits[k][1] for k in fits if k != 'all'})
    for k in sorted(fits, key=str):
        c, m = fits[k]
        log(f'calibrated {path.parent.name}, {k} devices: weights '
            f'{", ".join(f"{w:.3f}" for w in c.class_weights)}, thresholds '
            f'{", ".join(f"{t:.2f}" for t in c.class_thresholds)}; validation accuracy '
            f'{m["accuracy_before"]:.4f} -> {m["accuracy_after"]:.4f}, precision '
            f'{m["precision_before"]:.3f} -> {m["precision_after"]:.3f}')
    return {'folder': str(path.parent), 'class_weights': list(cal.class_weights),
            'class_thresholds': list(cal.class_thresholds), **info}
