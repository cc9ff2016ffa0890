"""Tests of tracking scores against ground truth (disac_ros.core.mot_scoring)."""
import math

import numpy as np
import pytest

from disac_ros.core.errors import ConfigError
from disac_ros.core.mot_scoring import GtObject, score_tracks, ScoringFrame, TrackedObject
from disac_ros.core.tracking import (
    class_distribution, Detection, MultiObjectTracker, TrackerConfig)

CAR, TRUCK, PEDESTRIAN = 1, 2, 3


def truth(k, n=3):
    """Objects 10 m apart moving along x, class (i % 3) + 1."""
    return [GtObject(id=100 + i, class_id=(i % 3) + 1, position=(float(k), 10.0 * i))
            for i in range(n)]


def perfect_tracks(gt, offset=0.0):
    return [TrackedObject(id=g.id - 99, class_id=g.class_id,
                          position=(g.position[0] + offset, g.position[1])) for g in gt]


def test_perfect_tracker_scores_one():
    frames = [ScoringFrame(0.1 * k, truth(k), perfect_tracks(truth(k), offset=0.1))
              for k in range(10)]
    s = score_tracks(frames)
    assert s['mota'] == 1.0 and s['idf1'] == 1.0
    assert s['id_switches'] == 0 and s['num_false_positives'] == 0 and s['num_misses'] == 0
    assert s['accuracy'] == 1.0 and s['tracked_fraction'] == 1.0
    assert s['position_rmse_m'] == pytest.approx(0.1)
    assert s['motp_m'] == pytest.approx(0.1)       # MOTP is a mean distance in metres here
    assert s['num_frames'] == 10 and s['num_objects'] == 30 and s['num_matches'] == 30


def test_swapped_ids_count_as_id_switches():
    frames = []
    for k in range(10):
        gt = truth(k, n=2)
        tracks = perfect_tracks(gt)
        if k >= 5:   # the tracker swaps its two ids halfway through
            tracks = [TrackedObject(3 - t.id, t.class_id, t.position) for t in tracks]
        frames.append(ScoringFrame(k, gt, tracks))
    s = score_tracks(frames)
    assert s['id_switches'] == 2
    assert s['mota'] == pytest.approx(1.0 - 2 / 20)
    assert s['idf1'] == pytest.approx(0.5)
    assert s['tracked_fraction'] == 1.0          # identity-free: every object was covered


def test_missed_objects_reduce_tracked_fraction_exactly():
    frames = []
    for k in range(10):
        gt = truth(k, n=4)
        tracks = perfect_tracks(gt)
        if k % 2 == 0:
            tracks = tracks[:3]                  # object 103 missed in 5 of 10 frames
        frames.append(ScoringFrame(k, gt, tracks))
    s = score_tracks(frames)
    assert s['tracked_fraction'] == 35 / 40
    assert s['num_misses'] == 5
    assert s['mota'] == pytest.approx(1.0 - 5 / 40)


def test_wrong_class_lowers_accuracy_and_tracked_fraction_not_mota():
    frames = []
    for k in range(4):
        gt = truth(k, n=2)                                   # classes CAR, TRUCK
        tracks = perfect_tracks(gt)
        tracks[1] = TrackedObject(tracks[1].id, PEDESTRIAN, tracks[1].position)
        frames.append(ScoringFrame(k, gt, tracks))
    s = score_tracks(frames)
    assert s['mota'] == 1.0
    assert s['accuracy'] == 0.5 and s['tracked_fraction'] == 0.5


def test_invisible_objects_are_ignored():
    frames = []
    for k in range(6):
        gt = truth(k, n=2)
        gt[1] = GtObject(gt[1].id, gt[1].class_id, gt[1].position, visible=False)
        tracks = perfect_tracks(gt)
        if k >= 3:
            tracks = tracks[:1]   # the tracker first coasts on the hidden object, then drops it
        frames.append(ScoringFrame(k, gt, tracks))
    s = score_tracks(frames)
    assert s['mota'] == 1.0 and s['num_false_positives'] == 0 and s['num_misses'] == 0
    assert s['num_objects'] == 6 and s['tracked_fraction'] == 1.0
    everything = score_tracks(frames, ignore_invisible=False)
    assert everything['num_objects'] == 12 and everything['num_misses'] == 3


def test_distance_threshold_is_configurable():
    frames = [ScoringFrame(k, truth(k, 1), perfect_tracks(truth(k, 1), offset=3.0))
              for k in range(3)]
    s = score_tracks(frames)               # 3 m > 2 m: a miss and a false positive per frame
    assert s['num_misses'] == 3 and s['num_false_positives'] == 3
    assert s['tracked_fraction'] == 0.0 and math.isnan(s['accuracy'])
    s = score_tracks(frames, max_distance_m=5.0)
    assert s['mota'] == 1.0 and s['position_rmse_m'] == pytest.approx(3.0)
    with pytest.raises(ConfigError, match='max_distance_m'):
        score_tracks(frames, max_distance_m=0.0)


def test_latency_percentiles():
    frames = [ScoringFrame(0, truth(0, 1), perfect_tracks(truth(0, 1)))]
    s = score_tracks(frames, [i / 1000 for i in range(1, 101)] + [math.nan])
    assert s['latency_p50_ms'] == pytest.approx(50.5)
    assert s['latency_p95_ms'] == pytest.approx(95.05)
    assert s['num_latency_samples'] == 100
    assert math.isnan(score_tracks(frames)['latency_p50_ms'])


def test_empty_inputs_give_nan_not_errors():
    s = score_tracks([])
    assert s['num_frames'] == 0 and math.isnan(s['mota']) and math.isnan(s['tracked_fraction'])
    s = score_tracks([ScoringFrame(0, [], [TrackedObject(1, CAR, (0, 0))])])
    assert s['num_false_positives'] == 1 and math.isnan(s['mota'])


def test_three_dimensional_positions_use_the_ground_plane():
    gt = [GtObject(1, CAR, (0.0, 0.0, 0.8))]
    s = score_tracks([ScoringFrame(0, gt, [TrackedObject(1, CAR, (0.3, 0.4))])])
    assert s['position_rmse_m'] == pytest.approx(0.5)


def test_bad_positions_name_the_frame():
    with pytest.raises(ValueError, match=r'frames\[0\]\.tracks'):
        score_tracks([ScoringFrame(0, [], [TrackedObject(1, CAR, (np.nan, 0.0))])])


def test_scores_a_real_tracker_run():
    rng = np.random.default_rng(5)
    trk = MultiObjectTracker(TrackerConfig(min_hits=3))
    frames = []
    for k in range(50):
        t = 0.1 * k
        gt = [GtObject(1, CAR, (-10 + 5 * t, -2 + t)),
              GtObject(2, PEDESTRIAN, (10 - 5 * t, -2 + t))]
        dets = [Detection(np.asarray(g.position) + rng.normal(0, 0.3, 2),
                          class_distribution(g.class_id, 0.8)) for g in gt]
        tracks = trk.update(t, dets)
        frames.append(ScoringFrame(t, gt, [TrackedObject(tr.id, tr.class_id, tr.position)
                                           for tr in tracks]))
    s = score_tracks(frames)
    # Only the two confirmation delays (2 frames each) count against the tracker.
    assert s['id_switches'] == 0 and s['num_misses'] == 4 and s['num_false_positives'] == 0
    assert s['mota'] == pytest.approx(1 - 4 / 100)
    assert s['accuracy'] == 1.0 and s['position_rmse_m'] < 0.3
