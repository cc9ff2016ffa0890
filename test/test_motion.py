"""Motion: deterministic per seed, velocity consistent with positions, smooth headings,
vehicles queue and wait instead of driving through each other."""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from disac_ros.core.motion import ID_STRIDE
from disac_ros.core.motion import MoverState
from disac_ros.core.motion import Polyline
from disac_ros.core.motion import TrafficModel
from disac_ros.core.scenario import parse_scenario
from disac_ros.core.scenario import Scenario


def _run(model: TrafficModel, steps: int, dt: float = 0.1) -> list[list[MoverState]]:
    out = []
    for _ in range(steps):
        out.append(model.object_states())
        model.advance(dt)
    return out


def _snapshot(model: TrafficModel, steps: int = 250) -> np.ndarray:
    return np.array([[np.r_[s.position, s.velocity, s.yaw] for s in frame]
                     for frame in _run(model, steps)])


def test_same_seed_same_motion_other_seed_other_motion(default_scenario: Scenario) -> None:
    a = _snapshot(TrafficModel(default_scenario, 4))
    b = _snapshot(TrafficModel(default_scenario, 4))
    c = _snapshot(TrafficModel(default_scenario, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_slot_classes_do_not_depend_on_the_seed(default_scenario: Scenario) -> None:
    classes = {tuple(m.class_name for m in TrafficModel(default_scenario, s).objects)
               for s in range(5)}
    assert len(classes) == 1
    (names,) = classes
    # 8 scenario objects then the two vehicle devices as cars.
    assert names == ('car',) * 3 + ('truck',) + ('pedestrian',) * 2 + ('cyclist',) * 2 + (
        'car', 'car')


def test_free_flow_velocity_is_the_time_derivative_of_position(
        default_scenario: Scenario) -> None:
    model = TrafficModel(default_scenario, 11)
    h = 1e-4
    for t in np.linspace(0.0, 30.0, 61):
        for m in model.objects:
            before, now, after = m.state(t - h), m.state(t), m.state(t + h)
            if before.lap != after.lap:
                continue   # respawn instant: position jumps by design
            fd = (after.position - before.position) / (2 * h)
            # Rounded corners are polygons of 5-degree chords: at a chord vertex the difference
            # quotient mixes two directions. Straight paths must match to rounding error.
            tol = 0.1 if len(m.path.points) > 2 else 1e-5
            assert np.linalg.norm(fd - now.velocity) <= tol * np.linalg.norm(now.velocity) + 1e-6


def test_stepped_positions_advance_by_velocity_times_dt(default_scenario: Scenario) -> None:
    model = TrafficModel(default_scenario, 3)
    dt = 0.1
    frames = _run(model, 300, dt)
    checked = 0
    for now, nxt in zip(frames, frames[1:]):
        for m, a, b in zip(model.objects, now, nxt):
            if a.lap != b.lap:
                continue
            step = b.position - a.position
            # On a rounded corner one step spans a bend of up to ~10 degrees.
            tol = 0.15 if len(m.path.points) > 2 else 1e-9
            assert np.linalg.norm(step - a.velocity * dt) <= tol * np.linalg.norm(step) + 1e-9
            checked += 1
    assert checked > 2500


def test_speeds_never_exceed_the_desired_profile(default_scenario: Scenario) -> None:
    model = TrafficModel(default_scenario, 2)
    frames = _run(model, 300)
    for m in model.objects:
        if m.device_id is not None:
            continue
        lo, hi = default_scenario.classes[m.class_name].speed_mps
        assert lo <= m.speed_mps <= hi
    for k, frame in enumerate(frames):
        for m, st in zip(model.objects, frame):
            desired = m.arc_length(0.1 * k)[1]
            assert -1e-9 <= np.linalg.norm(st.velocity) <= desired + 1e-6


def test_heading_turns_smoothly_on_a_rounded_corner(default_scenario: Scenario) -> None:
    model = TrafficModel(default_scenario, 0)
    turners = [i for i, m in enumerate(model.objects) if m.path_name.startswith('turn_')]
    assert turners, 'the default scenario should put at least one vehicle on a turning path'
    frames = _run(model, 400, 0.05)
    for i in turners:
        yaws = [f[i].yaw for f in frames]
        laps = [f[i].lap for f in frames]
        steps = [abs((b - a + math.pi) % (2 * math.pi) - math.pi)
                 for a, b, la, lb in zip(yaws, yaws[1:], laps, laps[1:]) if la == lb]
        # 11 m/s over a 7 m radius is ~1.6 rad/s: <= ~0.1 rad per 50 ms, no 90-degree snaps.
        assert max(steps) < 0.2


def _two_movers(scenario_dict: dict[str, Any], first: dict[str, Any],
                second: dict[str, Any], paths: dict[str, Any]) -> TrafficModel:
    d = copy.deepcopy(scenario_dict)
    d['world']['paths'] = paths
    d['devices'] = [{'id': 'rsu', 'kind': 'rsu', 'position': [0.0, -30.0], 'yaw_deg': 90.0}]
    d['objects'] = {'list': [first, second]}
    for c in d['classes'].values():
        c['speed_wobble'] = 0.0
    d['classes']['pedestrian']['paths'] = ['crossing', 'sidewalk']
    return TrafficModel(parse_scenario(d), 0)


def test_a_fast_car_queues_behind_a_slow_one(scenario_dict: dict[str, Any]) -> None:
    model = _two_movers(scenario_dict,
                        {'class': 'car', 'path': 'lane', 'speed_mps': 2.0, 'start_m': 40.0},
                        {'class': 'car', 'path': 'lane', 'speed_mps': 10.0, 'start_m': 0.0},
                        {'lane': {'kind': 'lane', 'points': [[-60.0, 0.0], [60.0, 0.0]]}})
    frames = _run(model, 200)
    gaps = [f[0].position[0] - f[1].position[0] - 4.4 for f in frames]
    assert min(gaps) >= 2.0 - 0.5          # MIN_GAP_M, give or take one step
    # Free flow would have the follower pass within 5 s; instead it matches the leader's speed.
    assert np.linalg.norm(frames[-1][1].velocity) == pytest.approx(2.0, abs=0.2)


def test_a_car_waits_for_a_pedestrian_on_the_crossing(scenario_dict: dict[str, Any]) -> None:
    paths = {'lane': {'kind': 'lane', 'points': [[-60.0, 0.0], [60.0, 0.0]]},
             'zebra': {'kind': 'crossing', 'points': [[0.0, -6.0], [0.0, 6.0]]}}
    model = _two_movers(scenario_dict,
                        {'class': 'pedestrian', 'path': 'zebra', 'speed_mps': 1.0,
                         'start_m': 3.0},
                        {'class': 'car', 'path': 'lane', 'speed_mps': 10.0, 'start_m': 40.0},
                        paths)
    frames = _run(model, 90)
    for f in frames:
        dx, dy = np.abs(f[0].position[:2] - f[1].position[:2])
        assert dx > 2.2 + 0.25 or dy > 0.9 + 0.25, 'the car drove into the pedestrian'
    assert min(np.linalg.norm(f[1].velocity) for f in frames) < 0.5   # it stopped
    assert frames[-1][1].position[0] > 10.0   # and drove on once the crossing was clear


def test_rounded_corner_is_shorter_and_stays_near_the_corner() -> None:
    sharp = Polyline([[0, 0], [10, 0], [10, 10]])
    round_ = Polyline([[0, 0], [10, 0], [10, 10]], corner_radius=3.0)
    assert sharp.length == pytest.approx(20.0)
    # Replaces 2 * 3 m of legs by a quarter circle of radius 3.
    assert round_.length == pytest.approx(20.0 - 6.0 + 0.5 * math.pi * 3.0, rel=2e-3)
    xy, tan = round_.at(round_.length / 2)
    assert np.linalg.norm(xy - np.array([10 - 3 + 3 * math.cos(math.pi / 4),
                                         3 - 3 * math.sin(math.pi / 4)])) < 0.05
    np.testing.assert_allclose(np.linalg.norm(tan), 1.0)


def test_closed_path_loops_and_open_path_respawns_with_a_new_id(
        default_scenario: Scenario) -> None:
    loop = Polyline([[0, 0], [10, 0], [10, 10], [0, 10]], closed=True)
    assert loop.length == pytest.approx(40.0)
    np.testing.assert_allclose(loop.at(41.0)[0], [1.0, 0.0])
    model = TrafficModel(default_scenario, 0)
    m = next(m for m in model.objects if m.class_name == 'car' and m.device_id is None)
    t_end = (m.path.length - m.start_m) / m.speed_mps * 1.5 + 5.0   # well past the end
    lap0, lap1 = m.state(0.0).lap, m.state(t_end).lap
    assert lap0 == 0 and lap1 >= 1
    assert m.object_id(lap1) == m.object_id(0) + lap1 * ID_STRIDE


def test_vehicle_devices_move_and_rsus_do_not(default_scenario: Scenario) -> None:
    model = TrafficModel(default_scenario, 0)
    p0, _, v0 = model.device_pose('dev0')
    r0, yaw, rv = model.device_pose('dev2')
    for _ in range(10):
        model.advance(0.1)
    p1, _, _ = model.device_pose('dev0')
    r1, _, _ = model.device_pose('dev2')
    assert 0.0 < np.linalg.norm(p1 - p0) <= 7.0 + 1e-9   # at most 7 m/s for 1 s
    assert p0[2] == 0.0 and np.linalg.norm(v0) <= 7.0 + 1e-9
    np.testing.assert_array_equal(r0, r1)
    assert yaw == pytest.approx(math.radians(150.0)) and not rv.any()
    assert model.time_s == pytest.approx(1.0)
    with pytest.raises(KeyError, match='dev9'):
        model.device_pose('dev9')


def test_vehicles_on_one_entry_start_apart(default_scenario: Scenario) -> None:
    for seed in range(10):
        model = TrafficModel(default_scenario, seed)
        starts: dict[tuple[float, float], list[float]] = {}
        for m in model.objects:
            if m.class_name in ('car', 'truck'):
                starts.setdefault(tuple(m.path.points[0]), []).append(m.start_m)
        for s in starts.values():
            s.sort()
            assert all(b - a >= 10.0 for a, b in zip(s, s[1:])), (seed, s)
