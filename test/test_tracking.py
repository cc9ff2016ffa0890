"""Tests of the multi-object tracker (disac_ros.core.tracking)."""
import math

import numpy as np
import pytest

from disac_ros.core.errors import ConfigError
from disac_ros.core.tracking import (
    class_distribution, Detection, MultiObjectTracker, TrackerConfig, TrackState)

CAR, TRUCK, PEDESTRIAN = 1, 2, 3
DT = 0.1


def det(pos, class_id=CAR, conf=0.9, **kw) -> Detection:
    return Detection(position=np.asarray(pos, float),
                     class_probabilities=class_distribution(class_id, conf), **kw)


def run_targets(tracker, starts, velocities, classes, steps, rng=None, noise=0.0,
                t0=0.0, with_velocity=False):
    """Feed linear-motion targets; return the list of per-step outputs."""
    outs = []
    for k in range(steps):
        t = t0 + k * DT
        dets = []
        for p0, v, c in zip(starts, velocities, classes):
            p = np.asarray(p0, float) + np.asarray(v, float) * t
            if noise:
                p = p + rng.normal(0.0, noise, 2)
            extra = {'velocity': np.asarray(v, float)} if with_velocity else {}
            dets.append(det(p, c, **extra))
        outs.append(tracker.update(t, dets))
    return outs


def test_single_noisy_target_converges_with_right_velocity():
    rng = np.random.default_rng(1)
    trk = MultiObjectTracker(TrackerConfig(accel_psd=0.05, position_std_m=0.3))
    v = np.array([4.0, -1.5])
    outs = run_targets(trk, [(10.0, 5.0)], [v], [CAR], 100, rng, noise=0.3)
    (track,) = outs[-1]
    truth = np.array([10.0, 5.0]) + v * 99 * DT
    assert track.state is TrackState.CONFIRMED
    assert track.class_id == CAR
    assert np.linalg.norm(track.position - truth) < 0.3
    assert np.linalg.norm(track.velocity - v) < 0.25
    # The reported covariance is consistent with the error (within 3 sigma per axis).
    assert np.all(np.abs(track.velocity - v) < 3 * np.sqrt(np.diag(track.velocity_cov)))
    assert track.position_cov.shape == (2, 2) and track.velocity_cov.shape == (2, 2)
    assert np.allclose(track.covariance, track.covariance.T)
    assert track.hits == 100 and track.age == 100 and track.first_seen_s == 0.0
    assert track.existence_probability > 0.95


def test_velocity_measurement_is_used_immediately():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    (track,) = trk.update(0.0, [det((0.0, 0.0), velocity=np.array([2.0, 1.0]))])
    assert np.allclose(track.velocity, [2.0, 1.0])
    assert track.velocity_cov[0, 0] == pytest.approx(1.0)   # velocity_std_mps ** 2


def test_tentative_confirmed_after_min_hits():
    trk = MultiObjectTracker(TrackerConfig(min_hits=3, confirm_window=5))
    assert trk.update(0.0, [det((0, 0))]) == []
    assert trk.update(0.1, [det((0, 0))]) == []
    assert [t.state for t in trk.tracks(include_tentative=True)] == [TrackState.TENTATIVE]
    (track,) = trk.update(0.2, [det((0, 0))])
    assert track.state is TrackState.CONFIRMED and track.id == 1


def _truth_index(tracks, starts, velocities, t):
    """Map track id -> index of the nearest true target at time t."""
    truth = [np.asarray(p, float) + np.asarray(v, float) * t for p, v in zip(starts, velocities)]
    return {tr.id: int(np.argmin([np.linalg.norm(tr.position - p) for p in truth]))
            for tr in tracks}


def count_id_swaps(cfg, classes, with_velocity, starts, velocities, noise, seeds=range(10)):
    """Runs (one per seed) in which the two tracks do not follow the same targets at the end."""
    swaps = 0
    for seed in seeds:
        trk = MultiObjectTracker(cfg)
        outs = run_targets(trk, starts, velocities, classes, 41, np.random.default_rng(seed),
                           noise=noise, with_velocity=with_velocity)
        before = _truth_index(outs[10], starts, velocities, 10 * DT)
        after = _truth_index(outs[-1], starts, velocities, 40 * DT)
        swaps += int(before != after or len(before) != 2 or trk.stats.tracks_born != 2)
    return swaps


# Two targets 2 m apart converging at a shallow angle, crossing at t = 2 s, 0.3 m noise: a
# nearest-neighbour tracker swaps their ids in most runs (see the control test below).
SHALLOW = dict(starts=[(-10.0, -1.0), (-10.0, 1.0)], velocities=[(5.0, 0.5), (5.0, -0.5)],
               noise=0.3)
# Head-on crossing at ~22 degrees with 0.5 m noise.
HEAD_ON = dict(starts=[(-10.0, -2.0), (10.0, -2.0)], velocities=[(5.0, 1.0), (-5.0, 1.0)],
               noise=0.5)
NAIVE = TrackerConfig(accel_psd=1000.0, class_mismatch_cost=0.0)


@pytest.mark.parametrize('scenario, classes, with_velocity', [
    (SHALLOW, (CAR, PEDESTRIAN), False),   # different classes: the class cost separates them
    (SHALLOW, (CAR, CAR), True),           # same class, measured velocity separates them
    (HEAD_ON, (CAR, CAR), False),          # same class, position only: the motion model
])
def test_crossing_targets_keep_their_ids(scenario, classes, with_velocity):
    assert count_id_swaps(TrackerConfig(), classes, with_velocity, **scenario) == 0


@pytest.mark.parametrize('scenario', [SHALLOW, HEAD_ON])
def test_crossing_scenarios_fool_a_nearest_neighbour_tracker(scenario):
    # Control: without a motion model or class cost the same runs do swap ids.
    assert count_id_swaps(NAIVE, (CAR, PEDESTRIAN), False, **scenario) >= 2


def test_crossing_track_ends_at_the_right_place():
    trk = MultiObjectTracker(TrackerConfig())
    outs = run_targets(trk, SHALLOW['starts'], SHALLOW['velocities'], (CAR, PEDESTRIAN), 41,
                       np.random.default_rng(0), noise=0.3)
    final = {t.class_id: t for t in outs[-1]}
    assert np.allclose(final[CAR].position, (10.0, 1.0), atol=0.5)
    assert np.allclose(final[PEDESTRIAN].position, (10.0, -1.0), atol=0.5)
    assert final[CAR].id == 1 and final[PEDESTRIAN].id == 2


def test_disappearing_target_deleted_after_max_misses_and_new_one_gets_fresh_id():
    trk = MultiObjectTracker(TrackerConfig(max_misses=3, max_age_s=10.0))
    outs = run_targets(trk, [(0.0, 0.0)], [(1.0, 0.0)], [CAR], 10)
    (old,) = outs[-1]
    # Target gone: the track coasts for max_misses - 1 updates, then it is deleted.
    coasted = [trk.update(1.0 + k * DT, []) for k in range(3)]
    assert [len(c) for c in coasted] == [1, 1, 0]
    assert coasted[0][0].coasting and coasted[1][0].misses == 2
    assert coasted[0][0].position[0] > old.position[0]     # prediction moves on
    assert trk.last_deleted_ids == [old.id]
    # It comes back at the same place: a new track with a fresh, larger id.
    outs = run_targets(trk, [(0.0, 0.0)], [(1.0, 0.0)], [CAR], 5, t0=2.0)
    (new,) = outs[-1]
    assert new.id > old.id
    assert trk.stats.tracks_deleted == 1


def test_track_deleted_after_max_age_without_update():
    trk = MultiObjectTracker(TrackerConfig(max_misses=100, max_age_s=0.5))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 5)
    assert len(trk.update(0.9, [])) == 1      # 0.5 s after the last hit at 0.4 s
    assert trk.update(1.0, []) == []          # 0.6 s > max_age_s


def test_a_link_outage_ages_tracks_only_by_outage_gap_s():
    # Hits every 0.1 s until 0.4 s, then nothing at all for 2.6 s (an outage), then an update
    # without the target: with outage_gap_s = 0.5 the gap ages the track 0.5 s, not 2.6 s.
    for gap, alive in ((0.0, False), (0.5, True)):
        trk = MultiObjectTracker(TrackerConfig(max_misses=100, max_age_s=1.0, outage_gap_s=gap))
        run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 5)
        assert len(trk.update(3.0, [])) == int(alive), gap
    # Gaps up to outage_gap_s count in full: 0.4 s between updates is no outage.
    trk = MultiObjectTracker(TrackerConfig(max_misses=100, max_age_s=1.0, outage_gap_s=0.5))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 5)
    assert [len(trk.update(t, [])) for t in (0.8, 1.2, 1.6)] == [1, 1, 0]
    # The credit is for the outage, not for later updates: after it, time counts again.
    trk = MultiObjectTracker(TrackerConfig(max_misses=100, max_age_s=1.0, outage_gap_s=0.5))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 5)
    assert len(trk.update(3.0, [])) == 1          # aged 0.5 s
    assert len(trk.update(3.4, [])) == 1          # 0.9 s
    assert trk.update(3.6, []) == []              # 1.1 s > max_age_s
    with pytest.raises(ConfigError, match='outage_gap_s'):
        TrackerConfig(outage_gap_s=-1.0)


def test_false_alarms_never_become_confirmed_tracks():
    rng = np.random.default_rng(3)
    trk = MultiObjectTracker(TrackerConfig(min_hits=3, confirm_window=5))
    for k in range(200):
        # One real target plus three clutter detections anywhere in a 200 m square.
        clutter = [det(rng.uniform(-100, 100, 2), int(rng.integers(1, 5)), 0.5)
                   for _ in range(3)]
        out = trk.update(k * DT, [det((5.0 + 0.5 * k * DT, 0.0))] + clutter)
        assert len(out) <= 1
    assert len(out) == 1 and out[0].id == 1
    assert trk.stats.tracks_born > 500     # clutter did start tentative tracks...
    assert trk.stats.tracks_confirmed == 1  # ...none of which was confirmed


def test_gating_rejects_far_detections():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 20)
    out = trk.update(2.0, [det((8.0, 0.0))])   # 8 m away: far outside the gate
    ids = sorted(t.id for t in out)
    assert ids == [1, 2]
    first = next(t for t in out if t.id == 1)
    assert first.misses == 1 and np.linalg.norm(first.position) < 0.1


def test_class_mismatch_cost_picks_matching_class():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1, class_mismatch_cost=20.0))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [TRUCK], 10)
    # Two candidates equally far: the truck wins despite the pedestrian being listed first.
    out = trk.update(1.0, [det((0.3, 0.0), PEDESTRIAN), det((-0.3, 0.0), TRUCK)])
    track1 = next(t for t in out if t.id == 1)
    assert track1.position[0] < 0.0 and track1.class_id == TRUCK
    assert sorted(t.class_id for t in out) == [TRUCK, PEDESTRIAN]


def test_class_is_decayed_vote():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1, class_decay=0.5))
    for k in range(5):
        (track,) = trk.update(k * DT, [det((0, 0), CAR, 0.7)])
    assert track.class_id == CAR and track.class_confidence == pytest.approx(0.7)
    for k in range(5, 12):
        (track,) = trk.update(k * DT, [det((0, 0), TRUCK, 0.9)])
    assert track.class_id == TRUCK
    assert track.class_probabilities.sum() == pytest.approx(1.0)
    assert track.class_probabilities[0] == 0.0


@pytest.mark.parametrize('bad', [
    {'position': np.array([np.nan, 0.0])},
    {'position': np.array([np.inf, 0.0])},
    {'position': np.array([1.0, 2.0, 3.0])},
    {'class_probabilities': np.array([0.0, np.nan, 0.0, 0.0, 0.0])},
    {'class_probabilities': np.zeros(5)},
    {'class_probabilities': np.array([0.0, 1.0])},
    {'velocity': np.array([0.0, np.inf])},
    {'position_cov': np.array([[1.0, 0.0], [0.0, -1.0]])},
    {'position_cov': np.full((2, 2), np.nan)},
    {'confidence': math.nan},
])
def test_invalid_detection_is_rejected_and_counted(bad):
    fields = {'position': np.zeros(2), 'class_probabilities': class_distribution(CAR)}
    fields.update(bad)
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    out = trk.update(0.0, [Detection(**fields), det((50.0, 50.0))])
    assert len(out) == 1 and out[0].position[0] == 50.0
    assert trk.stats.invalid_detections == 1
    assert 'detection' in trk.stats.last_rejection


def test_old_and_nonfinite_timestamps_are_ignored_and_counted():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    trk.update(1.0, [det((0, 0))])
    before = trk.tracks()[0]
    assert [t.id for t in trk.update(0.5, [det((3, 3))])] == [1]
    assert [t.id for t in trk.update(math.nan, [det((3, 3))])] == [1]
    after = trk.tracks()[0]
    assert after.hits == before.hits and trk.last_time_s == 1.0
    stats = trk.stats
    assert (stats.stale_updates, stats.invalid_time_updates, stats.updates) == (1, 1, 1)
    trk.update(0.9, [])
    assert 'older' in trk.stats.last_rejection


def test_irregular_dt_and_equal_timestamps():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1, accel_psd=0.01))
    times = [0.0, 0.05, 0.3, 0.31, 0.31, 0.9, 1.0]
    for t in times:
        (track,) = trk.update(t, [det((2.0 * t, 0.0))])
    assert track.velocity[0] == pytest.approx(2.0, abs=0.3)
    assert track.hits == len(times)


def test_ids_increase_across_reset():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    (a,) = trk.update(0.0, [det((0, 0))])
    trk.reset()
    (b,) = trk.update(0.0, [det((0, 0))])     # time may go back after a reset
    assert b.id == a.id + 1


def test_contributing_devices_come_from_last_detection():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    trk.update(0.0, [det((0, 0), devices=frozenset({'rsu_0', 'veh_1'}))])
    (track,) = trk.update(0.1, [det((0, 0), devices=frozenset({'veh_2'}))])
    assert track.contributing_devices == ('veh_2',)


def test_tracker_is_deterministic():
    def run():
        rng = np.random.default_rng(11)
        trk = MultiObjectTracker(TrackerConfig())
        outs = run_targets(trk, [(-10, -2), (10, -2), (0, 5)], [(5, 1), (-5, 1), (0, -1)],
                           [CAR, CAR, PEDESTRIAN], 40, rng, noise=0.3)
        return [(t.id, t.class_id, *t.position, *t.velocity, *t.covariance.ravel())
                for out in outs for t in out]
    assert run() == run()


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match='tracker.min_hits'):
        TrackerConfig(min_hits=0)
    with pytest.raises(ConfigError, match='tracker.min_hits.*confirm_window'):
        TrackerConfig(min_hits=6, confirm_window=5)
    with pytest.raises(ConfigError, match='tracker.gate_probability'):
        TrackerConfig(gate_probability=1.0)
    with pytest.raises(ConfigError, match='tracker.max_misses'):
        TrackerConfig(max_misses=2.5)
    with pytest.raises(ConfigError, match='tracker.output_tentative'):
        TrackerConfig(output_tentative='yes')


def test_config_from_dict():
    cfg = TrackerConfig.from_dict({'min_hits': 2, 'accel_psd': 1})
    assert cfg.min_hits == 2 and cfg.accel_psd == 1
    with pytest.raises(ConfigError, match=r'cfg.yaml: tracker.min_hit: unknown key'):
        TrackerConfig.from_dict({'min_hit': 2}, source='cfg.yaml')
    with pytest.raises(ConfigError, match=r'cfg.yaml: tracker.accel_psd'):
        TrackerConfig.from_dict({'accel_psd': -1.0}, source='cfg.yaml')


def test_class_distribution_helper():
    p = class_distribution(PEDESTRIAN, 0.7)
    assert p[0] == 0.0 and p[PEDESTRIAN] == 0.7 and p.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match='class_id'):
        class_distribution(0)


def test_duplicate_detection_of_confirmed_track_starts_no_new_track():
    trk = MultiObjectTracker(TrackerConfig(min_hits=1))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 10)
    out = trk.update(1.0, [det((0.2, 0.0)), det((-0.3, 0.1))])    # the car seen twice
    assert [t.id for t in out] == [1]
    trk2 = MultiObjectTracker(TrackerConfig(min_hits=1, suppress_birth_in_gate=False))
    run_targets(trk2, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 10)
    assert len(trk2.update(1.0, [det((0.2, 0.0)), det((-0.3, 0.1))])) == 2


def test_merge_radius_coalesces_one_object_reported_twice():
    # Two devices report one object 1.5 m apart with different classes, every update: without
    # merging that is two confirmed tracks; with merge_radius_m = 2 the younger one is dropped
    # and no new track is born next to the survivor.
    def feed(cfg):
        trk = MultiObjectTracker(cfg)
        outs = []
        for k in range(20):
            t = k * DT
            dets = [det((0.0, 0.0), CAR)]
            if k >= 3:
                dets.append(det((1.5, 0.0), TRUCK))
            outs.append(trk.update(t, dets))
        return trk, outs

    _, outs = feed(TrackerConfig(min_hits=2))
    assert len(outs[-1]) == 2
    trk, outs = feed(TrackerConfig(min_hits=2, merge_radius_m=2.0))
    assert [t.id for t in outs[-1]] == [1] and trk.stats.tracks_born == 1
    # Confirmed tracks farther apart than the radius are left alone; once one of them comes
    # within the radius of a track with more hits, it is deleted.
    trk = MultiObjectTracker(TrackerConfig(min_hits=2, merge_radius_m=2.0))
    run_targets(trk, [(0.0, 0.0)], [(0.0, 0.0)], [CAR], 3)
    outs = run_targets(trk, [(0.0, 0.0), (3.3, 0.0)], [(0.0, 0.0), (-1.0, 0.0)], [CAR, TRUCK],
                       20, t0=0.3)
    assert [t.id for t in outs[5]] == [1, 2]                 # 2.7 m apart
    assert [t.id for t in outs[-1]] == [1] and trk.stats.tracks_deleted == 1   # 1.4 m apart


def test_merge_radius_is_validated():
    with pytest.raises(ConfigError, match='merge_radius_m'):
        TrackerConfig(merge_radius_m=-1.0)


def test_uncorroborated_detection_needs_a_higher_confidence_to_start_a_track():
    # One of two present devices reports an object at confidence 0.7: no track with the rule at
    # 0.9; the same report by both devices, or by the only device present, starts one.
    both, one = frozenset({'a', 'b'}), frozenset({'a'})
    cfg = TrackerConfig(min_hits=1, uncorroborated_birth_confidence=0.9)
    cases = [(one, both, 0), (both, both, 1), (one, one, 1), (one, frozenset(), 1)]
    for devices, present, tracks in cases:
        trk = MultiObjectTracker(cfg)
        d = Detection(np.zeros(2), class_distribution(CAR, 0.9), confidence=0.7, devices=devices,
                      present_devices=present)
        assert len(trk.update(0.0, [d])) == tracks, (devices, present)
    # ... and a confident lone report starts one.
    trk = MultiObjectTracker(cfg)
    assert len(trk.update(0.0, [Detection(np.zeros(2), class_distribution(CAR, 0.9), confidence=0.95,
                                          devices=one, present_devices=both)])) == 1
    with pytest.raises(ConfigError, match='uncorroborated_birth_confidence'):
        TrackerConfig(uncorroborated_birth_confidence=1.5)
