"""Merging of per-device reports into detections (core/detection_fusion.py)."""
from __future__ import annotations

import numpy as np
import pytest

from disac_ros.core.detection_fusion import fuse_detections, FusionConfig
from disac_ros.core.errors import ConfigError
from disac_ros.core.geometry import nms_keep

# Two devices report one car near (10, 0); a pedestrian at (30, 5) is seen once.
SCORE = np.array([0.8, 0.6, 0.9])
PROBS = np.array([[0.8, 0.1, 0.05, 0.05], [0.2, 0.6, 0.1, 0.1], [0.0, 0.05, 0.9, 0.05]])
POS = np.array([[10.0, 0.0], [11.0, 0.0], [30.0, 5.0]])
VEL = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 1.0]])


def test_weighted_fusion_averages_by_score_and_combines_confidence_by_noisy_or() -> None:
    fused = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig('weighted', 2.5))
    assert len(fused) == 2
    # most confident seed first: the pedestrian, then the car cluster
    np.testing.assert_allclose(fused.position[0], [30.0, 5.0])
    np.testing.assert_allclose(fused.position[1], [(0.8 * 10 + 0.6 * 11) / 1.4, 0.0])
    np.testing.assert_allclose(fused.velocity[1], [(0.8 * 2 + 0.6 * 4) / 1.4, 0.0])
    assert fused.score[1] == pytest.approx(1 - 0.2 * 0.4)
    expected = (0.8 * PROBS[0] + 0.6 * PROBS[1]) / 1.4
    np.testing.assert_allclose(fused.class_probs[1], expected)
    assert fused.class_index.tolist() == [2, 0]
    np.testing.assert_allclose(fused.class_probs.sum(axis=1), 1.0)


def test_agreeing_weak_reports_make_a_detection_that_nms_would_drop() -> None:
    score = np.array([0.4, 0.4])
    pos = np.array([[0.0, 0.0], [1.0, 1.0]])
    weighted = fuse_detections(score, PROBS[:2], pos, VEL[:2], 0.5, FusionConfig('weighted'))
    assert len(weighted) == 1 and weighted.score[0] == pytest.approx(0.64)
    assert len(fuse_detections(score, PROBS[:2], pos, VEL[:2], 0.5, FusionConfig('nms'))) == 0
    # ... but not when they are farther apart than the radius
    far = fuse_detections(score, PROBS[:2], pos * 10, VEL[:2], 0.5, FusionConfig('weighted'))
    assert len(far) == 0


def test_reports_below_min_score_are_ignored() -> None:
    score = np.array([0.45, 0.2])
    out = fuse_detections(score, PROBS[:2], POS[:2], VEL[:2], 0.4,
                          FusionConfig('weighted', 2.5, min_score=0.3))
    assert len(out) == 1 and out.score[0] == pytest.approx(0.45)
    np.testing.assert_allclose(out.position[0], POS[0])


def test_radius_zero_keeps_every_confident_report() -> None:
    for method in ('weighted', 'nms'):
        out = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig(method, 0.0))
        assert len(out) == 3 and sorted(out.score.tolist()) == sorted(SCORE.tolist())


def test_nms_method_is_nms_keep() -> None:
    out = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig('nms', 1.5))
    keep = nms_keep(SCORE, POS, 0.5, 1.5)
    np.testing.assert_allclose(out.position, POS[keep])
    np.testing.assert_allclose(out.score, SCORE[keep])


def test_no_reports_give_no_detections() -> None:
    out = fuse_detections(np.zeros(0), np.zeros((0, 4)), np.zeros((0, 2)), np.zeros((0, 2)), 0.5)
    assert len(out) == 0 and out.class_probs.shape == (0, 4) and out.class_index.shape == (0,)


@pytest.mark.parametrize('kwargs, field', [({'method': 'mean'}, 'method'),
                                           ({'radius_m': -1.0}, 'radius_m'),
                                           ({'radius_m': float('nan')}, 'radius_m'),
                                           ({'min_score': 0.0}, 'min_score')])
def test_bad_fusion_config_names_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        FusionConfig(**kwargs)


def test_wrong_shapes_are_named_and_nan_scores_are_never_detections() -> None:
    with pytest.raises(ValueError, match='position'):
        fuse_detections(SCORE, PROBS, POS[:2], VEL, 0.5)
    score = np.array([np.nan, 0.9])
    out = fuse_detections(score, PROBS[:2], POS[:2], VEL[:2], 0.5)
    assert len(out) == 1 and out.score[0] == pytest.approx(0.9)


def test_for_method_takes_the_radius_of_the_chosen_method() -> None:
    assert FusionConfig.for_method('weighted', 2.5, 1.5, 0.3) == FusionConfig('weighted', 2.5, 0.3)
    assert FusionConfig.for_method('nms', 2.5, 1.5, 0.3) == FusionConfig('nms', 1.5, 0.3)


def test_class_weights_move_only_the_class_choice() -> None:
    plain = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig('weighted', 2.5))
    # The car cluster's fused distribution is ~(0.54, 0.31, ...): weighting trucks x2 flips it.
    cfg = FusionConfig('weighted', 2.5, class_weights=(1.0, 2.0, 1.0, 1.0))
    weighted = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, cfg)
    assert plain.class_index.tolist() == [2, 0] and weighted.class_index.tolist() == [2, 1]
    np.testing.assert_allclose(weighted.score, plain.score)          # confidences unchanged
    np.testing.assert_allclose(weighted.position, plain.position)
    np.testing.assert_allclose(weighted.class_probs.sum(axis=1), 1.0)
    expected = plain.class_probs[1] * [1, 2, 1, 1]
    np.testing.assert_allclose(weighted.class_probs[1], expected / expected.sum())


def test_class_thresholds_replace_the_single_threshold_per_class() -> None:
    # car cluster confidence 0.92, pedestrian 0.9; a lone cyclist report at 0.35.
    score = np.append(SCORE, 0.35)
    probs = np.vstack((PROBS, [0.1, 0.1, 0.1, 0.7]))
    pos = np.vstack((POS, [50.0, 0.0]))
    vel = np.vstack((VEL, [1.0, 0.0]))
    assert len(fuse_detections(score, probs, pos, vel, 0.5, FusionConfig())) == 2
    cfg = FusionConfig(class_thresholds=(0.95, 0.5, 0.5, 0.3))     # strict on cars, lenient on cyclists
    for method in ('weighted', 'nms'):
        fused = fuse_detections(score, probs, pos, vel, 0.5, FusionConfig(method, 2.5, 0.3, (),
                                                                          cfg.class_thresholds))
        assert sorted(fused.class_index.tolist()) == [2, 3], method   # the car is dropped


def test_per_class_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match='class_weights'):
        FusionConfig(class_weights=(1.0, 0.0, 1.0, 1.0))
    with pytest.raises(ConfigError, match='class_weights'):
        FusionConfig(class_weights=(1.0, float('nan'), 1.0, 1.0))
    with pytest.raises(ConfigError, match='class_thresholds'):
        FusionConfig(class_thresholds=(0.5, 1.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match='class_thresholds'):
        FusionConfig(class_thresholds='high')
    with pytest.raises(ValueError, match='3 class weights for 4 classes'):
        fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig(class_weights=(1.0, 1.0, 1.0)))


def test_detections_name_the_sources_of_their_reports() -> None:
    source = np.array([0, 1, 1])            # the car by devices 0 and 1, the pedestrian by 1
    fused = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig('weighted', 2.5), source)
    assert fused.sources == (frozenset({1}), frozenset({0, 1}))
    nms = fuse_detections(SCORE, PROBS, POS, VEL, 0.5, FusionConfig('nms', 2.5), source)
    assert nms.sources == (frozenset({1}), frozenset({0}))
    assert fuse_detections(SCORE, PROBS, POS, VEL, 0.5).sources == ()
    with pytest.raises(ValueError, match='source'):
        fuse_detections(SCORE, PROBS, POS, VEL, 0.5, None, np.array([0, 1]))
