"""Per-class calibration (core/training/calibration.py): fitting on synthetic detections, storage."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from disac_ros.core.errors import ModelError
from disac_ros.core.training.calibration import (Calibration, FrameDetections, fit_class_thresholds,
                                                 fit_class_weights, load_calibration,
                                                 save_calibration, score_frames)


def biased_posteriors(n: int = 2000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Fake matched detections: true classes 1..4, posteriors that under-rate class 2 (trucks)
    by a factor 3, as a model trained on few trucks would."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(1, 5, n)
    logits = rng.normal(0.0, 1.0, (n, 4))
    logits[np.arange(n), gt - 1] += 1.5
    probs = np.exp(logits)
    probs[:, 1] /= 3.0
    return probs / probs.sum(1, keepdims=True), gt


def test_fitted_weights_undo_a_class_prior_bias_and_never_lose() -> None:
    probs, gt = biased_posteriors()
    weights, before, after = fit_class_weights(probs, gt)
    assert weights[0] == 1.0 and 2.0 < weights[1] < 4.5          # about the factor 3 removed
    assert all(0.6 < w < 1.6 for w in (weights[2], weights[3]))
    assert after > before
    # Held-out draws from the same model gain too (the fit is not noise).
    p2, g2 = biased_posteriors(seed=1)
    right = lambda w: int(((np.argmax(p2 * np.asarray(w), 1) + 1) == g2).sum())  # noqa: E731
    assert right(weights) > right((1.0, 1.0, 1.0, 1.0))
    # Unbiased posteriors keep weights of 1 (ties go to 1).
    clean = np.eye(4)[gt - 1] * 0.7 + 0.075
    assert fit_class_weights(clean, gt)[0] == (1.0, 1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match='M = len'):
        fit_class_weights(probs[:5], gt)


def timid_cyclists(frames: int = 60, seed: int = 0) -> list[FrameDetections]:
    """Fake frames: one car (confident) and one cyclist (confidence ~0.4) per frame, plus a car
    false alarm at 0.45 far from everything."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(frames):
        car, cyc = rng.uniform(-40, 40, 2), rng.uniform(-40, 40, 2) + 100
        out.append(FrameDetections(
            score=np.array([0.9, rng.uniform(0.33, 0.48), 0.45]),
            class_probs=np.array([[0.9, 0.05, 0.03, 0.02], [0.1, 0.05, 0.15, 0.7],
                                  [0.8, 0.1, 0.05, 0.05]]),
            position=np.array([car, cyc, car + 300]),
            gt_classes=np.array([1, 4]), gt_position=np.array([car, cyc])))
    return out


def test_fitted_thresholds_keep_timid_classes_without_losing_precision() -> None:
    frames = timid_cyclists()
    ones = np.ones(4)
    thresholds, before, after = fit_class_thresholds(frames, ones, 0.5, 2.0)
    assert before == pytest.approx({'accuracy': 0.5, 'precision': 1.0})     # cyclists all missed
    assert after['accuracy'] == 1.0 and after['precision'] == 1.0
    assert thresholds[3] <= 0.3 and thresholds[0] > 0.45     # lenient on cyclists, not on cars
    correct, matched, dets, objects = score_frames(frames, ones, np.asarray(thresholds), 2.0)
    assert (correct, matched, dets, objects) == (120, 120, 120, 120)
    # Nothing to gain: the single threshold stays.
    easy = [FrameDetections(f.score[:1], f.class_probs[:1], f.position[:1], f.gt_classes[:1],
                            f.gt_position[:1]) for f in frames]
    assert fit_class_thresholds(easy, ones, 0.5, 2.0)[0] == (0.5, 0.5, 0.5, 0.5)


def test_calibration_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    assert load_calibration(tmp_path) == Calibration()                  # none: uncalibrated
    cal = Calibration((1.0, 2.0, 0.5, 1.0), (0.6, 0.3, 0.4, 0.3))
    path = save_calibration(tmp_path, cal, {'seeds': [100]})
    assert load_calibration(tmp_path) == cal and json.loads(path.read_text())['seeds'] == [100]
    for bad in ('{not json', '{"class_weights": [1, -2, 1, 1]}', '{"weights": []}',
                '{"class_weights": [1, 1, 1, 1], "class_thresholds": [0, 1, 1, 1]}', '[]',
                '{"class_weights": [1, 1, 1, 1], "by_devices": {"one": {"class_weights": [1, 1, 1, 1]}}}',
                '{"class_weights": [1, 1, 1, 1], "by_devices": {"0": {"class_weights": [1, 1, 1, 1]}}}'):
        path.write_text(bad)
        with pytest.raises(ModelError, match='calibration.json.*disac-train calibrate'):
            load_calibration(tmp_path)


def test_fast_threshold_scoring_equals_the_exact_matching() -> None:
    from disac_ros.core.training.calibration import _ThresholdScorer
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(40):          # crowded frames: several detections compete for one object
        g, d = rng.integers(0, 6), rng.integers(0, 9)
        gt_pos = rng.uniform(0, 8, (g, 2))
        frames.append(FrameDetections(rng.uniform(0.3, 1.0, d), rng.dirichlet(np.ones(4), d),
                                      rng.uniform(0, 8, (d, 2)), rng.integers(1, 5, g), gt_pos))
    weights = np.array([1.0, 2.0, 0.7, 1.0])
    fast = _ThresholdScorer(frames, weights, 2.0)
    for thr in rng.choice([0.3, 0.5, 0.7, 0.9], (30, 4)):
        assert fast(thr) == score_frames(frames, weights, thr, 2.0)[:3]


def test_fits_for_fewer_devices_apply_by_the_number_present(tmp_path: Path) -> None:
    from disac_ros.core.detection_fusion import FusionConfig
    one = Calibration((1.0, 1.2, 1.0, 1.0), (0.5, 0.4, 0.5, 0.45))
    cal = Calibration((1.0, 2.0, 0.5, 1.0), (0.7, 0.3, 0.45, 0.3), {1: one})
    assert cal.for_devices(1) == one and cal.for_devices(4) == cal.for_devices(2) == cal
    base = FusionConfig('weighted', 2.5)
    assert cal.fusion(base, 1).class_thresholds == one.class_thresholds
    assert cal.fusion(base, 4).radius_m == 2.5 and cal.fusion(base, 4).class_weights == cal.class_weights
    # An override replaces that correction for every device count, the other is kept.
    flat = cal.overridden((), None)
    assert flat.for_devices(1).class_weights == flat.for_devices(4).class_weights == ()
    assert flat.for_devices(1).class_thresholds == one.class_thresholds
    save_calibration(tmp_path, cal, {'seeds': [100]}, {1: {'accuracy_after': 0.7}})
    assert load_calibration(tmp_path) == cal
    data = json.loads((tmp_path / 'calibration.json').read_text())
    assert data['by_devices']['1']['accuracy_after'] == 0.7
