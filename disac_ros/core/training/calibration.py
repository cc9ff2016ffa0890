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

Stored as ``stage2/<variant>_<aggregator>[_<kind>]/calibration.json`` next to the checkpoint;
``disac-eval``, :class:`~disac_ros.core.inference.AggregatorPipeline` (so the aggregator node)
and the exporter read it. A model without the file runs uncalibrated.
"""
from __future__ import annotations

from dataclasses import dataclass
import itertools
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from disac_ros.core.detection_fusion import (check_class_thresholds, check_class_weights,
                                             FusedDetections)
from disac_ros.core.errors import ConfigError, ModelError
from disac_ros.core.evaluation.metrics import match

CALIBRATION_FILE = 'calibration.json'
WEIGHTS = tuple(float(w) for w in np.exp(np.linspace(-1.5, 1.5, 31)))   # e^-1.5 .. e^1.5
THRESHOLDS = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6, 0.65, 0.7)


@dataclass(frozen=True)
class Calibration:
    """An aggregator's per-class corrections; empty tuples = none."""

    class_weights: tuple[float, ...] = ()
    class_thresholds: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, 'class_weights', check_class_weights(self.class_weights))
        object.__setattr__(self, 'class_thresholds', check_class_thresholds(self.class_thresholds))


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


def save_calibration(folder: str | Path, calibration: Calibration, info: dict[str, Any]) -> Path:
    """Write an aggregator's calibration and how it was fitted."""
    from disac_ros.core.training.common import write_json
    path = calibration_path(folder)
    write_json(path, {'class_weights': list(calibration.class_weights),
                      'class_thresholds': list(calibration.class_thresholds), **info})
    return path


def load_calibration(folder: str | Path) -> Calibration:
    """An aggregator folder's calibration (empty when it has none). ModelError when the file is
    unreadable or invalid (refit it with ``disac-train calibrate`` or delete it)."""
    path = calibration_path(folder)
    if not path.is_file():
        return Calibration()
    try:
        data = json.loads(path.read_text())
        return Calibration(tuple(data['class_weights']), tuple(data.get('class_thresholds', ())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, ConfigError) as err:
        raise ModelError(f'{path}: not a valid calibration file ({err}); refit it with '
                         f'`disac-train calibrate` or delete it to run uncalibrated') from None


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
    cond = ev.Condition('calibration', rec.reference_snr_db, rec.reference_fading,
                        list(range(len(ctx.device_ids))), rec.nominal_distance_m)
    floor = max(rec.fusion_min_score, THRESHOLDS[0])
    grid = tuple(t for t in THRESHOLDS if t >= floor) or (floor,)
    done: dict[tuple[str, str, str], dict[str, Any]] = {}
    for method in methods or [m for m in ev.METHODS if m not in ('single_device', 'digital_jpeg')]:
        key = ev.method_aggregator(ctx, method)
        if key is None or key in done:
            continue
        frames: list[FrameDetections] = []

        def keep(fused: FusedDetections, gt: Any) -> None:
            frames.append(FrameDetections(fused.score, fused.class_probs, fused.position,
                                          np.asarray(gt.classes, np.int64),
                                          np.asarray(gt.position, np.float64).reshape(-1, 2)))
        if ev.run_condition(ctx, method, cond, calibrated=False,
                            threshold=min(grid[0], rec.score_threshold), on_frame=keep) is None:
            continue
        probs, gt = [], []
        for f in frames:         # matched detections at the recipe's single threshold
            sel = f.score >= rec.score_threshold
            rows, cols = match(f.position[sel], f.gt_position, rec.match_gate_m)
            probs.append(f.class_probs[sel][rows])
            gt.append(f.gt_classes[cols])
        weights, _, _ = fit_class_weights(np.concatenate(probs), np.concatenate(gt))
        thresholds, before, after = fit_class_thresholds(frames, weights, rec.score_threshold,
                                                         rec.match_gate_m, grid)
        unweighted = score_frames(frames, np.ones(len(weights)),
                                  np.full(len(weights), rec.score_threshold), rec.match_gate_m)
        cal = Calibration(weights, thresholds)
        info = {'fitted_on': str(val.root), 'seeds': val.manifest.get('seeds'),
                'method': method, 'snr_db': rec.reference_snr_db, 'fading': rec.reference_fading,
                'distance_m': rec.nominal_distance_m, 'objects': unweighted[3],
                'score_threshold': rec.score_threshold,
                'accuracy_before': unweighted[0] / max(unweighted[3], 1),
                'accuracy_weights_only': before['accuracy'],
                'accuracy_after': after['accuracy'],
                'precision_before': unweighted[1] / max(unweighted[2], 1),
                'precision_after': after['precision']}
        path = save_calibration(ctx.aggregator_dirs[key], cal, info)
        done[key] = {'folder': str(path.parent), 'class_weights': list(cal.class_weights),
                     'class_thresholds': list(cal.class_thresholds), **info}
        log(f'calibrated {path.parent.name} ({method}): weights '
            f'{", ".join(f"{w:.3f}" for w in weights)}, thresholds '
            f'{", ".join(f"{t:.2f}" for t in thresholds)}; validation accuracy '
            f'{info["accuracy_before"]:.4f} -> {info["accuracy_weights_only"]:.4f} (weights) -> '
            f'{info["accuracy_after"]:.4f}, precision {info["precision_before"]:.3f} -> '
            f'{info["precision_after"]:.3f}')
    if not done:
        raise ConfigError('out', f'{model_dir}: no aggregator to calibrate')
    return list(done.values())
