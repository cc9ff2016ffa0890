"""The simulated world: frame contents, determinism, occlusion semantics, Genesis rendering.

Most tests use ``renderer='none'`` (no Genesis: black images, everything else identical). The
tests marked ``genesis`` share the one session-scoped Genesis world from ``conftest.py``.
"""
from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest

from disac_ros.core import rf
from disac_ros.core.geometry import CameraPose
from disac_ros.core.geometry import count_occluders
from disac_ros.core.geometry import project
from disac_ros.core.scenario import parse_scenario
from disac_ros.core.scenario import Scenario
from disac_ros.core.types import WorldFrame
from disac_ros.core.world import World


def _world(scenario: Any, seed: int = 0) -> World:
    return World(scenario, seed=seed, renderer='none')


def test_skip_advances_the_traffic_without_sensing(default_scenario: Scenario) -> None:
    stepped, skipped = _world(default_scenario, seed=3), _world(default_scenario, seed=3)
    frames = [stepped.step() for _ in range(5)]
    skipped.step()
    skipped.skip(3)
    got = skipped.step()
    assert (got.step, got.time_s) == (4, pytest.approx(frames[4].time_s))
    assert [o.object_id for o in got.objects] == [o.object_id for o in frames[4].objects]
    for a, b in zip(got.objects, frames[4].objects):
        np.testing.assert_allclose(a.position, b.position)
    assert [d.pose for d in got.devices] == [d.pose for d in frames[4].devices]
    with pytest.raises(ValueError, match='steps'):
        skipped.skip(-1)


def test_step_returns_every_device_and_object_with_the_right_shapes(
        default_scenario: Scenario) -> None:
    world = _world(default_scenario)
    cfg = default_scenario.radar
    f0 = world.step()
    f1 = world.step()
    assert isinstance(f0, WorldFrame)
    assert (f0.step, f0.time_s, f1.step) == (0, 0.0, 1)
    assert f1.time_s == pytest.approx(world.dt) and world.time_s == pytest.approx(2 * world.dt)
    assert [d.device_id for d in f0.devices] == ['dev0', 'dev1', 'dev2', 'dev3']
    for obs in f0.devices:
        assert obs.image.shape == (128, 128, 3) and obs.image.dtype == np.uint8
        assert obs.rf.shape == (cfg.num_rx, cfg.num_chirps, cfg.num_samples)
        assert obs.rf.dtype == np.complex64
    assert len(f0.objects) == 10 == world.num_object_slots
    assert {o.class_name for o in f0.objects} == {'car', 'truck', 'pedestrian', 'cyclist'}
    for o in f0.objects:
        assert set(o.visible_camera) == set(o.in_rf_range) == set(world.device_ids)
        assert o.position.shape == (3,) and o.position[2] == pytest.approx(0.5 * o.size[2])


def test_vehicle_devices_are_cars_that_do_not_label_themselves(default_scenario: Scenario) -> None:
    world = _world(default_scenario)
    for _ in range(5):
        frame = world.step()
    for dev_id in ('dev0', 'dev1'):
        slot = world.traffic.device_movers[dev_id].slot
        own = frame.objects[slot]
        assert own.class_name == 'car'
        assert own.visible_camera[dev_id] is False and own.in_rf_range[dev_id] is False
        pose = frame.device(dev_id).pose
        np.testing.assert_allclose(own.position[:2], pose.position[:2])


def test_same_seed_gives_identical_frames_and_reset_replays(default_scenario: Scenario) -> None:
    def run(world: World, n: int = 3) -> list[WorldFrame]:
        return [world.step() for _ in range(n)]

    a, b = run(_world(default_scenario, 7)), run(_world(default_scenario, 7))
    other = _world(default_scenario, 8)
    c = run(other)
    for fa, fb, fc in zip(a, b, c):
        for da, db in zip(fa.devices, fb.devices):
            np.testing.assert_array_equal(da.rf, db.rf)
        assert [o.object_id for o in fa.objects] == [o.object_id for o in fb.objects]
        np.testing.assert_array_equal([o.position for o in fa.objects],
                                      [o.position for o in fb.objects])
        assert not np.array_equal(fa.devices[0].rf, fc.devices[0].rf)
    other.reset(7)
    for fa, fr in zip(a, run(other)):
        np.testing.assert_array_equal(fa.devices[2].rf, fr.devices[2].rf)
        assert fa.time_s == fr.time_s


def test_intrinsics_and_extrinsics_api(default_scenario: Scenario) -> None:
    world = _world(default_scenario)
    k = world.camera_intrinsics('dev2')
    assert k.shape == (3, 3) and k[0, 2] == pytest.approx(63.5)
    assert world.image_size == (128, 128)
    ext = world.sensor_extrinsics('dev2')
    xyz, q = ext['camera_optical']
    np.testing.assert_allclose(xyz, [0.3, 0.0, 6.0])
    assert np.linalg.norm(q) == pytest.approx(1.0)
    xyz, q = ext['radar']
    np.testing.assert_allclose(q, [0, 0, 0, 1])
    assert world.radar_config('dev0') is default_scenario.radar
    with pytest.raises(KeyError, match='nope'):
        world.camera_intrinsics('nope')


def _one_rsu_scenario(base: dict[str, Any], with_wall: bool, target_x: float = 30.0) -> Any:
    """An RSU at the origin looking +x at a car parked-ish (slowly moving) at x = target_x."""
    d = copy.deepcopy(base)
    d['world']['surfaces'] = []
    d['world']['buildings'] = ([{'name': 'wall', 'center': [15.0, 0.0],
                                 'size': [2.0, 12.0, 10.0]}] if with_wall else [])
    d['world']['paths'] = {'line': {'kind': 'lane',
                                    'points': [[target_x, -50.0], [target_x, 50.0]]}}
    d['mounts']['rsu'] = {'camera': {'forward_m': 0.0, 'height_m': 1.5, 'pitch_deg': 0.0},
                          'radar': {'forward_m': 0.0, 'height_m': 1.0}}
    d['devices'] = [{'id': 'rsu', 'kind': 'rsu', 'position': [0.0, 0.0], 'yaw_deg': 0.0}]
    d['objects'] = {'list': [{'class': 'car', 'path': 'line', 'speed_mps': 0.5,
                              'start_m': 50.0}]}
    return parse_scenario(d)


def _peak_db_near(cube: np.ndarray, cfg: rf.RadarConfig, range_m: float) -> float:
    rd = rf.range_doppler_map(cube, cfg)
    axis = rf.range_axis_m(cfg)
    near = np.abs(axis - range_m) <= 2.0
    return 10.0 * math.log10(float(rd[:, near].max()))


def test_building_blinds_the_camera_but_only_attenuates_rf(scenario_dict: dict[str, Any]) -> None:
    open_ = _world(_one_rsu_scenario(scenario_dict, with_wall=False)).step()
    walled = _world(_one_rsu_scenario(scenario_dict, with_wall=True)).step()
    car_open, car_walled = open_.objects[0], walled.objects[0]
    np.testing.assert_allclose(car_open.position[:2], [30.0, 0.0], atol=1e-9)
    assert car_open.visible_camera['rsu'] and not car_walled.visible_camera['rsu']
    assert car_open.in_rf_range['rsu'] and car_walled.in_rf_range['rsu']
    cfg = _one_rsu_scenario(scenario_dict, False).radar
    drop = (_peak_db_near(open_.devices[0].rf, cfg, 30.0)
            - _peak_db_near(walled.devices[0].rf, cfg, 30.0))
    # One building on the path: occlusion_loss_db (15 dB), give or take the noise.
    assert abs(drop - cfg.occlusion_loss_db) < 4.0, drop


def test_objects_behind_or_beyond_range_are_not_sensed(scenario_dict: dict[str, Any]) -> None:
    behind = _world(_one_rsu_scenario(scenario_dict, False, target_x=-30.0)).step().objects[0]
    assert not behind.visible_camera['rsu'] and not behind.in_rf_range['rsu']
    far = _world(_one_rsu_scenario(scenario_dict, False, target_x=59.0)).step().objects[0]
    # 59 m: inside the radar's 60 m, but the 1.5 m tall car is 2.8 px tall on a 128 px image,
    # below camera.min_object_px (3 px); at 70 m it is beyond both ranges.
    assert far.in_rf_range['rsu'] and not far.visible_camera['rsu']
    near = _world(_one_rsu_scenario(scenario_dict, False, target_x=50.0)).step().objects[0]
    assert near.in_rf_range['rsu'] and near.visible_camera['rsu']
    gone = _world(_one_rsu_scenario(scenario_dict, False, target_x=70.0)).step().objects[0]
    assert not gone.visible_camera['rsu'] and not gone.in_rf_range['rsu']


# ----------------------------------------------------------------------------------------------
# Genesis (one shared build per session)
# ----------------------------------------------------------------------------------------------
@pytest.mark.genesis
def test_rendered_images_are_rgb_not_blank_and_differ_between_devices(
        genesis_world: World) -> None:
    genesis_world.reset(0)
    frame = genesis_world.step()
    imgs = [d.image for d in frame.devices]
    for img in imgs:
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
        assert img.std() > 10.0
    for i in range(len(imgs)):
        for j in range(i + 1, len(imgs)):
            assert np.abs(imgs[i].astype(int) - imgs[j].astype(int)).mean() > 5.0


@pytest.mark.genesis
def test_rendering_is_deterministic_after_reset(genesis_world: World) -> None:
    genesis_world.reset(3)
    a = [genesis_world.step() for _ in range(2)]
    genesis_world.reset(3)
    b = [genesis_world.step() for _ in range(2)]
    for fa, fb in zip(a, b):
        for da, db in zip(fa.devices, fb.devices):
            np.testing.assert_array_equal(da.image, db.image)
            np.testing.assert_array_equal(da.rf, db.rf)


def _camera_poses(world: World, frame: WorldFrame) -> dict[str, CameraPose]:
    cams = {}
    for obs in frame.devices:
        m = world.scenario.mount_of(obs.device_id).camera
        cams[obs.device_id] = CameraPose.from_mount(np.array(obs.pose.position), obs.pose.yaw,
                                                    m.forward_m, m.height_m, m.pitch_deg)
    return cams


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(int) - b.astype(int)).sum(-1) > 0


@pytest.mark.genesis
def test_visible_objects_are_drawn_at_their_projected_pixel(genesis_world: World) -> None:
    """Remove one object at a time and see which pixels change.

    An object labelled visible must change pixels within 2 px of its projected centre or upper
    point: the reported intrinsics and visibility labels match what Genesis draws.
    """
    world = genesis_world
    renderer = world._renderer
    k = world.camera_intrinsics('dev0')
    checked = 0
    for seed, n_steps in ((0, 1), (1, 40), (2, 80)):
        world.reset(seed)
        for _ in range(n_steps):
            frame = world.step()
        pos = np.array([o.position for o in frame.objects])
        yaw = np.array([o.yaw for o in frame.objects])
        cams = _camera_poses(world, frame)
        renderer.set_object_poses(pos, yaw)
        base = renderer.render(cams)
        for i, obj in enumerate(frame.objects):
            if not any(obj.visible_camera.values()):
                continue
            moved = pos.copy()
            moved[i, 2] = -100.0
            renderer.set_object_poses(moved, yaw)
            imgs = renderer.render(cams)
            for dev, cam in cams.items():
                if not obj.visible_camera[dev]:
                    continue
                ys, xs = np.nonzero(_changed(imgs[dev], base[dev]))
                assert len(xs), f'seed {seed} {dev}: visible {obj.class_name} not drawn'
                pts = np.array([obj.position, obj.position + [0, 0, 0.3 * obj.size[2]]])
                uv, _ = project(k, cam, pts)
                d = np.min(np.hypot(xs[:, None] - uv[None, :, 0], ys[:, None] - uv[None, :, 1]))
                assert d <= 2.0, f'seed {seed} {dev} {obj.class_name}: {d:.1f} px off'
                checked += 1
    assert checked >= 10


@pytest.mark.genesis
def test_objects_labelled_hidden_behind_buildings_are_not_drawn(genesis_world: World) -> None:
    """Place a pedestrian where the labels say a building hides it from a camera that looks
    that way; removing it must change (almost) no pixel of that camera."""
    world = genesis_world
    renderer = world._renderer
    world.reset(0)
    frame = world.step()
    pos = np.array([o.position for o in frame.objects])
    yaw = np.array([o.yaw for o in frame.objects])
    size = np.array([o.size for o in frame.objects])
    slot = next(i for i, o in enumerate(frame.objects) if o.class_name == 'pedestrian')
    cams = _camera_poses(world, frame)
    k = world.camera_intrinsics('dev0')
    grid = [(x, y) for x in np.arange(-55.0, 56.0, 5.0) for y in np.arange(-55.0, 56.0, 5.0)]
    checked = 0
    for dev, cam in cams.items():
        found = 0
        for x, y in grid:
            trial = pos.copy()
            trial[slot] = [x, y, 0.5 * size[slot, 2]]
            if world._camera_visibility(cam, trial, yaw, size)[slot]:
                continue
            pts = np.array([trial[slot], trial[slot] + [0, 0, 0.3 * size[slot, 2]]])
            uv, depth = project(k, cam, pts)
            in_view = ((depth > 1.0) & (uv[:, 0] >= 2) & (uv[:, 0] < 126) & (uv[:, 1] >= 2)
                       & (uv[:, 1] < 126) & (np.linalg.norm(pts - cam.t_wc, axis=1) < 50.0))
            behind = count_occluders(np.repeat(cam.t_wc[None], 2, 0), pts, world._bld_centers,
                                     world._bld_half) > 0
            if not (in_view.all() and behind.all()):
                continue
            renderer.set_object_poses(trial, yaw)
            with_obj = renderer.render(cams)[dev]
            gone = trial.copy()
            gone[slot, 2] = -100.0
            renderer.set_object_poses(gone, yaw)
            without = renderer.render(cams)[dev]
            n = int(_changed(with_obj, without).sum())
            assert n <= 2, f'{dev}: pedestrian at ({x}, {y}) labelled hidden but changes {n} px'
            found += 1
            checked += 1
            if found == 2:
                break
    renderer.set_object_poses(pos, yaw)
    assert checked >= 2, checked
