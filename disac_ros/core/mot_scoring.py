"""Score a recorded tracking run against ground truth (CLEAR MOT, identity and class metrics).

Input is a sequence of :class:`ScoringFrame` (ground-truth objects and tracker output at one
instant) and, optionally, end-to-end latency samples. The standard metrics come from
``motmetrics`` (MOTA, MOTP, IDF1, ID switches, ...); we compute the distance matrices ourselves
(Euclidean, in metres, NaN beyond ``max_distance_m``) because ``motmetrics.distances`` still
calls ``np.asfarray``, which NumPy 2 removed.

Ground-truth objects that no device can see (``visible=False``) are treated as the MOT
challenge treats "ignore" objects: per frame, tracks that match one of them (within
``max_distance_m``, one-to-one, before the visible objects are scored) are dropped, and the
invisible objects are not counted. So a tracker is neither punished for missing what no sensor
sees nor for coasting a track through an occlusion. Set ``ignore_invisible=False`` to score
every object.

Extra metrics, all over the frames:

* ``accuracy``: fraction of motmetrics' matched (object, track) pairs whose class ids agree.
* ``position_rmse_m``: RMS distance of those matched pairs.
* ``tracked_fraction``: fraction of visible (object, frame) instances for which a track *of the
  right class* lies within ``max_distance_m`` (one-to-one per frame, optimal assignment that uses
  only same-class pairs). Independent of identities.
* ``latency_p50_ms`` / ``latency_p95_ms``: percentiles of the latency samples.

Undefined values (no ground truth, no matches, no latency samples) are NaN.
"""
from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Any, Sequence

import motmetrics as mm
import numpy as np
from scipy.optimize import linear_sum_assignment

from disac_ros.core.errors import ConfigError

_MOTMETRICS = ['mota', 'motp', 'idf1', 'idp', 'idr', 'precision', 'recall', 'num_switches',
               'num_false_positives', 'num_misses', 'num_matches', 'num_objects',
               'mostly_tracked', 'mostly_lost', 'num_fragmentations', 'num_unique_objects']


@dataclass(frozen=True)
class GtObject:
    """A ground-truth object in one frame (position: (2,) or (3,) metres, world frame)."""

    id: int
    class_id: int
    position: Sequence[float]
    visible: bool = True            # visible to at least one device


@dataclass(frozen=True)
class TrackedObject:
    """A tracker output object in one frame."""

    id: int
    class_id: int
    position: Sequence[float]


@dataclass(frozen=True)
class ScoringFrame:
    """Ground truth and tracks at one instant."""

    time_s: float
    gt: Sequence[GtObject]
    tracks: Sequence[TrackedObject]


def _positions(items: Sequence[Any], where: str) -> np.ndarray:
    """(N, 2) planar positions; z is ignored (the tracker works in the ground plane)."""
    if not items:
        return np.zeros((0, 2))
    try:
        pos = np.array([np.asarray(o.position, dtype=np.float64).reshape(-1)[:2] for o in items])
    except (TypeError, ValueError) as exc:
        raise ValueError(f'{where}: positions must be numeric vectors: {exc}') from None
    if pos.shape[1] != 2 or not np.all(np.isfinite(pos)):
        raise ValueError(f'{where}: positions must be finite with at least 2 components')
    return pos


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def _match(dist: np.ndarray, allowed: np.ndarray) -> list[tuple[int, int]]:
    """Minimum-distance one-to-one matching restricted to ``allowed`` pairs."""
    if dist.size == 0 or not allowed.any():
        return []
    cost = np.where(allowed, dist, 1e9)
    rows, cols = linear_sum_assignment(cost)
    return [(int(r), int(c)) for r, c in zip(rows, cols) if allowed[r, c]]


def score_tracks(frames: Sequence[ScoringFrame], latency_samples_s: Sequence[float] = (), *,
                 max_distance_m: float = 2.0, ignore_invisible: bool = True) -> dict[str, float]:
    """Score a run; returns a plain dict (see the module docstring for each metric).

    Keys: mota, motp_m, idf1, idp, idr, precision, recall, id_switches, num_false_positives,
    num_misses, num_matches, num_objects, mostly_tracked, mostly_lost, num_fragmentations,
    num_unique_objects, accuracy, position_rmse_m, tracked_fraction, latency_p50_ms,
    latency_p95_ms, num_latency_samples, num_frames.
    """
    if not (isinstance(max_distance_m, (int, float)) and math.isfinite(max_distance_m)
            and max_distance_m > 0):
        raise ConfigError('max_distance_m', f'must be a number > 0, got {max_distance_m!r}')
    acc = mm.MOTAccumulator(auto_id=True)
    # Per frame id: gt id -> class, track id -> class, for the matched pairs scored below.
    classes: dict[int, tuple[dict[int, int], dict[int, int]]] = {}
    visible_total = 0
    tracked_ok = 0
    for k, frame in enumerate(frames):
        gt_all = list(frame.gt)
        tracks = list(frame.tracks)
        gt_pos = _positions(gt_all, f'frames[{k}].gt')
        tr_pos = _positions(tracks, f'frames[{k}].tracks')
        dist = _distances(gt_pos, tr_pos)
        visible = np.array([bool(g.visible) for g in gt_all], dtype=bool)
        keep_tracks = np.ones(len(tracks), dtype=bool)
        if ignore_invisible and (~visible).any():
            # Tracks on objects nobody can see are neither false positives nor scored.
            for r, c in _match(dist, (dist <= max_distance_m) & ~visible[:, None]):
                keep_tracks[c] = False
            gt_rows = np.flatnonzero(visible)
        else:
            gt_rows = np.arange(len(gt_all))
        tr_cols = np.flatnonzero(keep_tracks)
        d = dist[np.ix_(gt_rows, tr_cols)]
        d = np.where(d <= max_distance_m, d, np.nan)
        gt_ids = [gt_all[i].id for i in gt_rows]
        tr_ids = [tracks[j].id for j in tr_cols]
        frame_id = acc.update(gt_ids, tr_ids, d)
        classes[frame_id] = ({gt_all[i].id: gt_all[i].class_id for i in gt_rows},
                             {tracks[j].id: tracks[j].class_id for j in tr_cols})
        # tracked_fraction: visible objects with a same-class track within the threshold.
        vis_rows = np.flatnonzero(visible)
        visible_total += len(vis_rows)
        if len(vis_rows) and len(tracks):
            same_class = np.array([[gt_all[i].class_id == t.class_id for t in tracks]
                                   for i in vis_rows])
            tracked_ok += len(_match(dist[vis_rows], same_class
                                     & (dist[vis_rows] <= max_distance_m)))

    # Class accuracy and RMSE over the pairs motmetrics matched (read once: mot_events is
    # rebuilt on every access).
    class_hits = 0
    sq_err: list[float] = []
    if len(frames):
        events = acc.mot_events
        matched = events[events.Type.isin(['MATCH', 'SWITCH'])]
        for fid, oid, hid, dd in zip(matched.index.get_level_values('FrameId'), matched.OId,
                                     matched.HId, matched.D):
            gt_class, tr_class = classes[int(fid)]
            class_hits += int(gt_class[oid] == tr_class[hid])
            sq_err.append(float(dd) ** 2)

    result: dict[str, float] = {'num_frames': len(frames)}
    if len(frames):
        summary = mm.metrics.create().compute(acc, metrics=_MOTMETRICS, name='run')
        row = summary.loc['run']
        for name in _MOTMETRICS:
            result[name] = float(row[name])
    else:
        result.update({name: math.nan for name in _MOTMETRICS})
    for name in ('num_switches', 'num_false_positives', 'num_misses', 'num_matches',
                 'num_objects', 'mostly_tracked', 'mostly_lost', 'num_fragmentations',
                 'num_unique_objects'):
        if not math.isnan(result[name]):
            result[name] = int(result[name])
    result['id_switches'] = result.pop('num_switches')
    result['motp_m'] = result.pop('motp')
    if not result.get('num_objects'):
        # MOTA and the recall-type scores are undefined without ground truth.
        for name in ('mota', 'idf1', 'idr', 'recall'):
            result[name] = math.nan
    result['accuracy'] = class_hits / len(sq_err) if sq_err else math.nan
    result['position_rmse_m'] = math.sqrt(float(np.mean(sq_err))) if sq_err else math.nan
    result['tracked_fraction'] = tracked_ok / visible_total if visible_total else math.nan
    lat = np.asarray(list(latency_samples_s), dtype=np.float64)
    lat = lat[np.isfinite(lat)]
    result['num_latency_samples'] = int(lat.size)
    result['latency_p50_ms'] = float(np.percentile(lat, 50) * 1e3) if lat.size else math.nan
    result['latency_p95_ms'] = float(np.percentile(lat, 95) * 1e3) if lat.size else math.nan
    return result


__all__ = ['GtObject', 'ScoringFrame', 'TrackedObject', 'score_tracks']
