"""Detection, classification, localisation and feature metrics.

Per frame, detections (queries whose best object-class probability is >= ``threshold``, merged
by :mod:`detection_fusion`: several devices report one object) are matched one-to-one to the
ground-truth objects by the Hungarian algorithm on Euclidean position distance; pairs farther
apart than ``gate_m`` (default 2 m) are never matched. Over all frames::

    precision        = matched / detections
    recall           = matched / ground-truth objects
    accuracy         = matched with the correct class / ground-truth objects
                       (a missed object counts as misclassified: detection AND classification)
    class_accuracy   = matched with the correct class / matched      (classification alone)
    position_rmse_m  = sqrt(mean over matched pairs of |p_hat - p|^2)  (2-D, metres)
    velocity_rmse_m  = sqrt(mean over matched pairs of |v_hat - v|^2)  (2-D, m/s)
    nmse_db          = 10 log10(sum |f_hat - f|^2 / sum |f|^2)        (decoded vs sent feature)

Per class (:meth:`DetectionStats.per_class`): a confusion matrix, rows = ground-truth class id,
columns = the class of the detection matched to it (column 0 = missed), and each class's accuracy
(its diagonal / its row), so a miss and a wrong class are told apart.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment
import torch

from disac_ros.core.detection_fusion import fuse_detections, FusedDetections, FusionConfig
from disac_ros.core.models.heads import SetPrediction
from disac_ros.core.models.losses import SetTargets
from disac_ros.core.types import CLASS_NAMES

_BIG = 1e9


def fused_from_prediction(pred: SetPrediction, threshold: float,
                          fusion: FusionConfig | Sequence[FusionConfig] | None = None
                          ) -> list[FusedDetections]:
    """Per frame, the detections :func:`fuse_detections` makes of the queries (``fusion``: one
    config, or one per frame; None = no merging at all)."""
    fusion = fusion or FusionConfig(method='nms', radius_m=0.0)
    # Scored on the CPU, wherever the model ran.
    probs = pred.logits.detach().float().softmax(-1)[..., 1:].cpu().numpy()
    per_frame = [fusion] * probs.shape[0] if isinstance(fusion, FusionConfig) else list(fusion)
    if len(per_frame) != probs.shape[0]:
        raise ValueError(f'fused_from_prediction: {len(per_frame)} fusion configs for '
                         f'{probs.shape[0]} frames')
    return [fuse_detections(probs[b].max(-1), probs[b],
                            pred.position[b].detach().float().cpu().numpy(),
                            pred.velocity[b].detach().float().cpu().numpy(), threshold, per_frame[b])
            for b in range(probs.shape[0])]


def detections_from_prediction(pred: SetPrediction, threshold: float,
                               fusion: FusionConfig | None = None
                               ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per frame (classes (D,), positions (D, 2), velocities (D, 2)) of
    :func:`fused_from_prediction`."""
    return [((f.class_index + 1).astype(np.int64), f.position, f.velocity)
            for f in fused_from_prediction(pred, threshold, fusion)]


def match(det_pos: np.ndarray, gt_pos: np.ndarray, gate_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Hungarian matching on distance with a gate: (detection indices, gt indices)."""
    if len(det_pos) == 0 or len(gt_pos) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    d = np.linalg.norm(det_pos[:, None, :2] - gt_pos[None, :, :2], axis=-1)
    cost = np.where(d <= gate_m, d, _BIG)
    rows, cols = linear_sum_assignment(cost)
    ok = cost[rows, cols] < _BIG
    return rows[ok].astype(np.int64), cols[ok].astype(np.int64)


class DetectionStats:
    """Accumulates matches over frames; :meth:`summary` gives the metrics of the module doc."""

    def __init__(self, gate_m: float = 2.0, fusion: FusionConfig | None = None) -> None:
        self.gate_m = float(gate_m)
        self.fusion = fusion
        self.num_gt = 0
        self.num_det = 0
        self.matched = 0
        self.correct = 0
        self.pos_sq = 0.0
        self.vel_sq = 0.0
        n = len(CLASS_NAMES)
        self.confusion = np.zeros((n, n), dtype=np.int64)   # gt class x matched class (0 = missed)

    def _confuse(self, gt_cls: np.ndarray, got: np.ndarray) -> None:
        gt = np.asarray(gt_cls, dtype=np.int64).reshape(-1)
        got = np.asarray(got, dtype=np.int64).reshape(-1)
        n = len(CLASS_NAMES)
        ok = (gt >= 0) & (gt < n) & (got >= 0) & (got < n)   # ids beyond the table are not counted
        np.add.at(self.confusion, (gt[ok], got[ok]), 1)

    def add_frame(self, det_cls: np.ndarray, det_pos: np.ndarray, det_vel: np.ndarray,
                  gt_cls: np.ndarray, gt_pos: np.ndarray, gt_vel: np.ndarray) -> None:
        """Add one frame's detections and ground truth (arrays, any frame of reference)."""
        rows, cols = match(np.asarray(det_pos, dtype=np.float64).reshape(-1, 2),
                           np.asarray(gt_pos, dtype=np.float64).reshape(-1, 2), self.gate_m)
        self.num_gt += len(gt_cls)
        self.num_det += len(det_cls)
        self.matched += len(rows)
        got = np.zeros(len(gt_cls), dtype=np.int64)
        if len(rows):
            got[cols] = np.asarray(det_cls, dtype=np.int64)[rows]
        self._confuse(gt_cls, got)
        if len(rows):
            self.correct += int((np.asarray(det_cls)[rows] == np.asarray(gt_cls)[cols]).sum())
            dp = np.asarray(det_pos)[rows, :2] - np.asarray(gt_pos)[cols, :2]
            dv = np.asarray(det_vel)[rows, :2] - np.asarray(gt_vel)[cols, :2]
            self.pos_sq += float((dp ** 2).sum())
            self.vel_sq += float((dv ** 2).sum())

    def add_missed(self, gt_cls: np.ndarray) -> None:
        """A frame with no output at all (e.g. every packet lost): all its objects are missed."""
        self.num_gt += len(gt_cls)
        self._confuse(gt_cls, np.zeros(len(gt_cls), dtype=np.int64))

    def add_batch(self, pred: SetPrediction, targets: SetTargets, threshold: float) -> None:
        """Add a batch of head predictions against padded SetTargets (same frame)."""
        dets = detections_from_prediction(pred, threshold, self.fusion)
        for b, (dc, dp, dv) in enumerate(dets):
            valid = (targets.classes[b] > 0).numpy()
            self.add_frame(dc, dp, dv, targets.classes[b].numpy()[valid],
                           targets.position[b].numpy()[valid], targets.velocity[b].numpy()[valid])

    def summary(self) -> dict[str, Any]:
        """Metrics dict (NaN where undefined, e.g. RMSE with no match)."""
        nan = float('nan')
        return {
            'accuracy': self.correct / self.num_gt if self.num_gt else nan,
            'class_accuracy': self.correct / self.matched if self.matched else nan,
            'precision': self.matched / self.num_det if self.num_det else nan,
            'recall': self.matched / self.num_gt if self.num_gt else nan,
            'position_rmse_m': math.sqrt(self.pos_sq / self.matched) if self.matched else nan,
            'velocity_rmse_m': math.sqrt(self.vel_sq / self.matched) if self.matched else nan,
            'num_gt': self.num_gt, 'num_detections': self.num_det, 'num_matched': self.matched,
        }

    def per_class(self) -> dict[str, Any]:
        """``per_class_accuracy`` {class name: accuracy, NaN without objects of that class} and
        ``confusion`` (rows = ground-truth class id, columns = matched class id, 0 = missed)."""
        acc = {}
        for c, name in enumerate(CLASS_NAMES):
            if c == 0:
                continue
            total = int(self.confusion[c].sum())
            acc[name] = float(self.confusion[c, c] / total) if total else float('nan')
        return {'per_class_accuracy': acc, 'confusion': self.confusion.tolist()}


class FeatureError:
    """Accumulates sum |f_hat - f|^2 and sum |f|^2 for the NMSE in dB."""

    def __init__(self) -> None:
        self.err = 0.0
        self.ref = 0.0

    def add(self, estimate: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch of decoded vs transmitted features."""
        e = np.asarray(estimate, dtype=np.float64)
        t = np.asarray(target, dtype=np.float64)
        self.err += float(((e - t) ** 2).sum())
        self.ref += float((t ** 2).sum())

    def nmse_db(self) -> float:
        """10 log10(err / ref); NaN if nothing was added."""
        if self.ref <= 0:
            return float('nan')
        return 10.0 * math.log10(max(self.err / self.ref, 1e-30))
