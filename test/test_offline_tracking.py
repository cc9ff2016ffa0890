"""benchmarks/offline_tracking.py: tracker replay and config parsing on synthetic detections
(the model part needs a dataset and a trained model; that is the benchmark's job)."""
from pathlib import Path
import sys

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'benchmarks'))
import offline_tracking as ot  # noqa: E402

from disac_ros.core.errors import ConfigError  # noqa: E402
from disac_ros.core.mot_scoring import GtObject  # noqa: E402
from disac_ros.core.tracking import class_distribution, Detection  # noqa: E402


def _frames(noise_m=0.2, ghost_conf=0.4, seed=0):
    """Two objects moving at 5 m/s for 10 s at 10 Hz, noisy detections, one low-score ghost."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(100):
        t = 0.1 * i
        gt_pos = [np.array([5.0 * t, 0.0]), np.array([0.0, 20.0 - 5.0 * t])]
        gt = [GtObject(k, 1 + k, tuple(p), True) for k, p in enumerate(gt_pos)]
        dets = [Detection(position=p + rng.normal(0, noise_m, 2),
                          class_probabilities=class_distribution(1 + k, 0.9), confidence=0.9)
                for k, p in enumerate(gt_pos)]
        dets.append(Detection(position=rng.uniform(-50, 50, 2),
                              class_probabilities=class_distribution(1, 0.9), confidence=ghost_conf))
        frames.append({'seed': 7, 'time_s': t, 'gt': gt, 'detections': dets})
    return frames


def test_replay_tracks_both_objects_and_the_threshold_drops_the_ghost():
    frames = _frames()
    s = ot.run_tracker(frames, ot.parse_config('default'), threshold=0.5, warmup_s=1.0)
    assert s['tracked_fraction'] > 0.95 and s['id_switches'] == 0
    assert s['num_false_positives'] == 0
    low = ot.run_tracker(frames, ot.parse_config('default'), threshold=0.3, warmup_s=1.0)
    assert low['tracked_fraction'] > 0.95   # random ghosts rarely confirm, but may cost precision
    assert low['num_false_positives'] >= s['num_false_positives']


def test_config_strings_override_the_defaults_and_bad_keys_fail():
    cfg = ot.parse_config('min_hits=2;confirm_window=3;max_misses=8')
    assert (cfg.min_hits, cfg.confirm_window, cfg.max_misses) == (2, 3, 8)
    with pytest.raises(ConfigError):
        ot.parse_config('min_hits=9;confirm_window=3')
