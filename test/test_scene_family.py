"""Procedural scene families: deterministic per seed, valid for every topology, strict YAML,
per-device sensor mounts, family datasets and the ``disac-dataset family`` commands.

Everything here runs without Genesis (``renderer='none'``) and with a handful of frames.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path
import re
from typing import Any

from conftest import REPO
import numpy as np
import pytest
import yaml

from disac_ros.core.dataset import DisacDataset
from disac_ros.core.errors import DatasetError
from disac_ros.core.errors import ScenarioError
from disac_ros.core.family_dataset import generate_family_dataset
from disac_ros.core.family_dataset import load_scenes
from disac_ros.core.family_dataset import verify_family
from disac_ros.core.geometry import CameraPose
from disac_ros.core.geometry import intrinsics
from disac_ros.core.geometry import project
from disac_ros.core.motion import Polyline
from disac_ros.core.scenario import parse_scenario
from disac_ros.core.scene_family import FamilyError
from disac_ros.core.scene_family import load_family
from disac_ros.core.scene_family import parse_family
from disac_ros.core.scene_family import SceneFamily
from disac_ros.core.scene_family import TOPOLOGIES
from disac_ros.core.world import World
from disac_ros.tools.dataset_cli import main

FAMILY_DIR = REPO / 'config' / 'families'
URBAN = FAMILY_DIR / 'urban.yaml'
_ID_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')


@pytest.fixture(scope='module')
def urban() -> SceneFamily:
    return load_family(URBAN)


@pytest.fixture
def family_dict() -> dict[str, Any]:
    return yaml.safe_load(URBAN.read_text(encoding='utf-8'))


def test_same_seed_gives_the_identical_scenario_and_seeds_differ(urban: SceneFamily) -> None:
    a = urban.scenario_dict(42)
    assert a == urban.scenario_dict(42) == load_family(URBAN).scenario_dict(42)
    assert json.loads(json.dumps(a)) == a           # plain YAML/JSON types only
    assert a['name'] == f'urban_{urban.topology_of(42)}_42'
    others = [urban.scenario_dict(s) for s in range(5)]
    assert len({json.dumps(o, sort_keys=True) for o in others}) == 5
    assert len({json.dumps(o['world']['buildings']) for o in others}) == 5
    # Forcing the seed's own topology changes nothing: the draw has its own random stream.
    assert urban.scenario_dict(42, urban.topology_of(42)) == a
    # The verbatim blocks are the family's.
    fam = yaml.safe_load(URBAN.read_text(encoding='utf-8'))
    for key in ('camera', 'mounts', 'radar', 'classes'):
        assert a[key] == fam[key]


@pytest.mark.parametrize('topology', TOPOLOGIES)
def test_every_topology_yields_valid_varied_scenarios(urban: SceneFamily, topology: str) -> None:
    cam = urban.to_dict()['camera']
    k = intrinsics(cam['width'], cam['height'], cam['fov_deg'])
    ids_seen: set[str] = set()
    for seed in range(30):
        d = urban.scenario_dict(seed, topology)
        layout = urban.layout(seed, topology)
        assert layout['topology'] == topology and max(map(abs, layout['centre'])) <= 3.0
        assert len(layout['junctions']) == {'straight': 0, 'offset': 2}.get(topology, 1)
        sc = parse_scenario(copy.deepcopy(d))
        assert sc.name == f'urban_{topology}_{seed}'
        rsus = [x for x in sc.devices if x.kind == 'rsu']
        vehicles = [x for x in sc.devices if x.kind == 'vehicle']
        assert 1 <= len(rsus) <= 3 and 1 <= len(vehicles) <= 3
        assert 2 <= sum(sc.objects.mix.values()) <= 16
        assert len(set(sc.device_ids)) == len(sc.device_ids)
        assert all(_ID_RE.match(i) for i in sc.device_ids)
        ids_seen.update(sc.device_ids)
        gx, gy = sc.world.ground_size
        assert (gx, gy) == (120.0, 120.0)
        w = sc.world
        for b in w.buildings:
            assert 6.0 <= b.size[2] <= 30.0
            assert abs(b.center[0]) + 0.5 * b.size[0] <= 60.0
            assert abs(b.center[1]) + 0.5 * b.size[1] <= 60.0
        assert len(w.buildings) >= 1
        # No path (lane, bike, sidewalk, crossing) runs through a building.
        lo = np.array([b.box_min[:2] for b in w.buildings])
        hi = np.array([b.box_max[:2] for b in w.buildings])
        for name, p in w.paths.items():
            pl = Polyline(p.points, p.closed, p.corner_radius)
            pts, _ = pl.at(np.linspace(0.0, pl.length, 200, endpoint=False))
            inside = ((pts[:, None] > lo[None]) & (pts[:, None] < hi[None])).all(-1)
            assert not inside.any(), f'{sc.name}: path {name} enters a building'
        if sc.objects.mix.get('cyclist'):
            assert any(p.kind == 'bike' for p in w.paths.values())
        for r in rsus:
            m = sc.mount_of(r)
            assert 4.0 <= m.camera.height_m <= 8.0 and 10.0 <= m.camera.pitch_deg <= 25.0
            # The RSU camera sees the junction centre (the stand-alone centre of the map).
            pose = CameraPose.from_mount(np.array([*r.position, 0.0]), math.radians(r.yaw_deg),
                                         m.camera.forward_m, m.camera.height_m,
                                         m.camera.pitch_deg)
            centre = layout['centre']
            uv, depth = project(k, pose, np.array([[centre[0], centre[1], 0.0]]))
            assert depth[0] > 0 and 0 <= uv[0, 0] <= cam['width']
            assert 0 <= uv[0, 1] <= cam['height'], f'{sc.name}: {r.id} does not see the centre'
            assert 6.0 <= math.dist(r.position, centre) <= 20.5
        for v in vehicles:
            m = sc.mount_of(v)
            assert abs(m.camera.height_m - 1.5) <= 0.1 + 1e-9
            assert abs(m.camera.pitch_deg - 3.0) <= 1.0 + 1e-9
            assert w.paths[v.path].kind == 'lane'
    assert len(ids_seen) > 20          # ids vary across seeds


def test_topology_weights_and_filter(urban: SceneFamily) -> None:
    assert urban.topologies == ('straight', 't_junction', 'four_way', 'skewed')
    drawn = {urban.topology_of(s) for s in range(200)}
    assert drawn == set(urban.topologies)           # offset has weight 0: held out
    assert {urban.topology_of(s, ('offset',)) for s in range(20)} == {'offset'}
    both = [urban.topology_of(s, ['four_way', 'skewed']) for s in range(60)]
    assert set(both) == {'four_way', 'skewed'}
    assert urban.scenario(3, 'offset').name == 'urban_offset_3'
    with pytest.raises(FamilyError, match=r"topologies\[1\]: unknown topology 'bogus'"):
        urban.topology_of(0, ['four_way', 'bogus'])
    with pytest.raises(FamilyError, match='topology'):
        urban.scenario_dict(0, 'roundabout')
    with pytest.raises(FamilyError, match='seed'):
        urban.scenario_dict(-1)


def _drop(d: dict[str, Any], *path: str) -> None:
    for k in path[:-1]:
        d = d[k]
    del d[path[-1]]


@pytest.mark.parametrize('label, mutate, field', [
    ('unknown top-level key', lambda d: d.update(bogus=1), 'family.bogus'),
    ('unknown topology', lambda d: d['topologies'].update(bogus=1.0), 'family.topologies.bogus'),
    ('all weights zero', lambda d: d.update(topologies={'four_way': 0}), 'family.topologies'),
    ('bad range', lambda d: d['rsus'].update(count=[5, 2]), 'family.rsus.count'),
    ('bad float range', lambda d: d['buildings'].update(height_m=[30.0, 6.0]),
     'family.buildings.height_m'),
    ('unknown section key', lambda d: d['roads'].update(lanes=2), 'family.roads.lanes'),
    ('lanes out of range', lambda d: d['roads'].update(lanes_per_direction=[1, 9]),
     'family.roads.lanes_per_direction[1]'),
    ('bad colour range',
     lambda d: d['lighting'].update(ambient=[[0.5, 0.5, 0.5], [0.1, 0.5, 0.5]]),
     'family.lighting.ambient'),
    ('probability > 1', lambda d: d['roads'].update(bike_lane_probability=1.5),
     'family.roads.bike_lane_probability'),
    ('verbatim camera', lambda d: d['camera'].update(width=2), 'family.camera.width'),
    ('verbatim mounts', lambda d: d['mounts']['rsu']['camera'].update(pitch_deg=95),
     'family.mounts.rsu.camera.pitch_deg'),
    ('unknown weight class', lambda d: d['objects']['class_weights'].update(bus=1),
     'family.objects.class_weights.bus'),
    ('weighted class without entry', lambda d: _drop(d, 'classes', 'cyclist'),
     'family.objects.class_weights.cyclist'),
    ('missing camera', lambda d: _drop(d, 'camera'), 'family.camera'),
    ('no devices possible', lambda d: (d['rsus'].update(count=[0, 1]),
                                       d['vehicles'].update(count=[0, 2])), 'family.rsus.count'),
    ('empty sensor choices', lambda d: d.update(sensor_choices=[]), 'family.sensor_choices'),
    ('sensor choice camera', lambda d: d.update(sensor_choices=[{'camera': {'width': 2}}]),
     'family.sensor_choices[0].camera.width'),
    ('sensor choice radar', lambda d: d.update(sensor_choices=[{'radar': {'num_chirps': 2}}]),
     'family.sensor_choices[0].radar.num_chirps'),
    ('sensor choice key', lambda d: d.update(sensor_choices=[{'lidar': {}}]),
     'family.sensor_choices[0].lidar'),
])
def test_bad_family_errors_name_the_field(family_dict: dict[str, Any], label: str,
                                          mutate: Any, field: str) -> None:
    mutate(family_dict)
    with pytest.raises(FamilyError) as e:
        parse_family(family_dict, source='f.yaml')
    assert e.value.field == field, (label, str(e.value))
    assert str(e.value).startswith(f'f.yaml: {field}: ')
    assert isinstance(e.value, ScenarioError)        # the CLIs' exit-2 handler catches it


def test_family_file_errors_and_normalised_round_trip(tmp_path: Path, urban: SceneFamily) -> None:
    with pytest.raises(FamilyError, match='cannot read family'):
        load_family(tmp_path / 'missing.yaml')
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: [unclosed\n')
    with pytest.raises(FamilyError, match='malformed YAML'):
        load_family(bad)
    spec = urban.to_dict()
    assert spec['rsus']['count'] == [1, 3] and spec['topologies']['offset'] == 0.0
    again = parse_family(spec)
    assert again.to_dict() == spec and again.scenario_dict(5) == urban.scenario_dict(5)
    # Optional sections take their defaults.
    minimal = {k: spec[k] for k in ('name', 'rate_hz', 'topologies', 'camera', 'mounts',
                                    'classes')}
    fam = parse_family(minimal)
    assert fam.to_dict()['buildings']['height_m'] == [6.0, 30.0]
    parse_scenario(fam.scenario_dict(1))


def test_sensor_choices_give_each_seed_one_make_deterministically(family_dict: dict[str, Any],
                                                                  urban: SceneFamily) -> None:
    family_dict['sensor_choices'] = [
        {'camera': {'width': 96, 'height': 72, 'fov_deg': 50.0}, 'radar': {'num_chirps': 16}},
        {'camera': {'width': 160, 'height': 120}, 'weight': 3.0}]
    fam = parse_family(family_dict)
    drawn = [fam.layout(s)['sensor_choice'] for s in range(40)]
    assert drawn == [parse_family(family_dict).layout(s)['sensor_choice'] for s in range(40)]
    assert 4 <= drawn.count(0) <= 18 and set(drawn) == {0, 1}          # weights 1 : 3
    for seed, k in enumerate(drawn[:6]):
        sc = fam.scenario(seed)
        assert sc.camera.width == (96, 160)[k] and sc.radar.num_chirps == (16, 32)[k]
        assert sc.camera.fov_deg == (50.0, 60.0)[k]          # the rest stays the family's
    # A family without choices is unchanged (same spec, same random streams, same scenes), and
    # the choices change only the sensors: the same seed is the same scene, seen otherwise.
    assert 'sensor_choices' not in urban.to_dict() and 'sensor_choice' not in urban.layout(3)
    one = fam.scenario_dict(1)
    for key in ('camera', 'radar'):
        one.pop(key, None)
    base = urban.scenario_dict(1)
    for key in ('camera', 'radar'):
        base.pop(key, None)
    assert one == base


def test_urban_sensors_is_urban_seen_through_other_sensors() -> None:
    urban = yaml.safe_load(URBAN.read_text(encoding='utf-8'))
    other = yaml.safe_load((FAMILY_DIR / 'urban_sensors.yaml').read_text(encoding='utf-8'))
    assert len(other.pop('sensor_choices')) == 4
    assert other.pop('name') == 'urban_sensors' and urban.pop('name') == 'urban'
    assert other == urban, 'regenerate config/families/urban_sensors.yaml from urban.yaml'


def test_second_family_loads(tmp_path: Path) -> None:
    for path in sorted(FAMILY_DIR.glob('*.yaml')):
        fam = load_family(path)
        for t in TOPOLOGIES:
            fam.scenario(0, t)


# ----------------------------------------------------------------------------------------------
# Per-device mounts
# ----------------------------------------------------------------------------------------------
def test_per_device_mount_overrides_round_trips_and_moves_the_camera(
        scenario_dict: dict[str, Any]) -> None:
    base = parse_scenario(copy.deepcopy(scenario_dict))
    old = World(base, renderer='none')
    assert all('mount' not in d for d in base.to_dict()['devices'])
    scenario_dict['devices'][2]['mount'] = {'camera': {'height_m': 7.5, 'pitch_deg': 22.0},
                                            'radar': {'height_m': 7.0}}
    scenario_dict['devices'][0]['mount'] = {'camera': {'yaw_deg': 90.0}}
    sc = parse_scenario(scenario_dict)
    m = sc.mount_of('dev2')
    assert (m.camera.forward_m, m.camera.height_m, m.camera.pitch_deg) == (0.3, 7.5, 22.0)
    assert (m.radar.forward_m, m.radar.height_m) == (0.3, 7.0)
    assert sc.mount_of(sc.devices[3]) is sc.mounts['rsu']
    assert sc.mount_of('dev0').camera.yaw_deg == 90.0
    again = parse_scenario(sc.to_dict())
    assert again.to_dict() == sc.to_dict() and again.mount_of('dev2') == m
    assert sc.to_dict()['devices'][2]['mount']['camera'] == {
        'forward_m': 0.3, 'height_m': 7.5, 'pitch_deg': 22.0, 'yaw_deg': 0.0}
    new = World(sc, renderer='none')
    xyz, q = new.sensor_extrinsics('dev2')['camera_optical']
    np.testing.assert_allclose(xyz, [0.3, 0.0, 7.5])
    assert not np.allclose(q, old.sensor_extrinsics('dev2')['camera_optical'][1])
    np.testing.assert_allclose(new.sensor_extrinsics('dev2')['radar'][0], [0.3, 0.0, 7.0])
    for dev in ('dev1', 'dev3'):          # no mount: exactly the old extrinsics
        for key, (a_xyz, a_q) in old.sensor_extrinsics(dev).items():
            b_xyz, b_q = new.sensor_extrinsics(dev)[key]
            assert np.array_equal(a_xyz, b_xyz) and np.array_equal(a_q, b_q)
    # A 90 degree yaw turns the optical axis from body +x to body +y.
    from scipy.spatial.transform import Rotation
    q0 = new.sensor_extrinsics('dev0')['camera_optical'][1]
    z_axis = Rotation.from_quat(q0).apply([0.0, 0.0, 1.0])
    assert z_axis[1] > 0.99
    # The world reports frames with the new camera (visibility changes) and the same traffic.
    fa, fb = old.step(), new.step()
    assert [o.position.tolist() for o in fa.objects] == [o.position.tolist() for o in fb.objects]


@pytest.mark.parametrize('mount, field, problem', [
    ({'camera': {'pitch_deg': 95}}, 'devices[2].mount.camera.pitch_deg', 'must be <= 80.0'),
    ({'camera': {'roll_deg': 1}}, 'devices[2].mount.camera.roll_deg', 'unknown key'),
    ({'lidar': {}}, 'devices[2].mount.lidar', 'unknown key'),
    ({'radar': {'height_m': -1}}, 'devices[2].mount.radar.height_m', 'must be > 0'),
    ('high', 'devices[2].mount', 'expected a mapping'),
])
def test_bad_device_mount_names_the_field(scenario_dict: dict[str, Any], mount: Any, field: str,
                                          problem: str) -> None:
    scenario_dict['devices'][2]['mount'] = mount
    with pytest.raises(ScenarioError) as e:
        parse_scenario(scenario_dict)
    assert e.value.field == field and problem in e.value.problem


# ----------------------------------------------------------------------------------------------
# Family datasets and the CLI
# ----------------------------------------------------------------------------------------------
def test_family_dataset_writes_scenes_and_loads_back(tmp_path: Path, urban: SceneFamily) -> None:
    out = tmp_path / 'fam'
    doc = generate_family_dataset(urban, out, [3, 8], frames_per_seed=2, frame_stride=2,
                                  renderer='none', shard_size=1)
    on_disk = json.loads((out / 'family.json').read_text())
    assert {k: v for k, v in doc.items() if k != 'timing'} == on_disk
    assert on_disk['format'] == 'disac-family' and on_disk['format_version'] == 1
    assert on_disk['family'] == 'urban' and on_disk['family_source'] == str(URBAN)
    assert on_disk['family_spec'] == urban.to_dict() and on_disk['split'] == 'train'
    assert [s['name'] for s in on_disk['scenes']] == ['scene_00003', 'scene_00008']
    scenes = load_scenes(out)
    assert [(s.name, s.seed) for s in scenes] == [('scene_00003', 3), ('scene_00008', 8)]
    for entry, scene in zip(on_disk['scenes'], scenes):
        seed = entry['seed']
        assert entry['topology'] == scene.topology == urban.topology_of(seed)
        assert entry['frames'] == len(scene.dataset) == 2
        concrete = yaml.safe_load((out / scene.name / 'scenario.yaml').read_text())
        assert concrete == urban.scenario_dict(seed)
        assert scene.dataset.manifest['scenario'] == urban.scenario(seed).to_dict()
        assert scene.dataset.manifest['seeds'] == [seed]
        assert [d['id'] for d in entry['devices']] == scene.device_ids == \
            urban.scenario(seed).device_ids
        assert scene.scenario.name == urban.scenario(seed).name
        frame = scene.dataset.frame(1)
        assert frame['step'] == 2 and frame['images'].shape[0] == len(scene.device_ids)
    assert verify_family(out) == []
    # A plain dataset folder loads as one scene.
    single = load_scenes(out / 'scene_00003')
    assert len(single) == 1
    assert (single[0].name, single[0].seed, single[0].topology) == ('scene_00003', None, 'fixed')
    assert len(single[0].dataset) == 2
    with pytest.raises(DatasetError, match='neither'):
        load_scenes(tmp_path)
    # Same seeds -> byte-identical index and shards.
    generate_family_dataset(urban, tmp_path / 'again', [3, 8], frames_per_seed=2,
                            frame_stride=2, renderer='none', shard_size=1)
    assert (tmp_path / 'again' / 'family.json').read_bytes() == (out / 'family.json').read_bytes()
    for shard in (out / 'scene_00008').glob('shard_*.npz'):
        assert shard.read_bytes() == (tmp_path / 'again' / 'scene_00008' / shard.name).read_bytes()
    # Tampering is detected per scene.
    shard = sorted((out / 'scene_00008').glob('shard_*.npz'))[0]
    shard.write_bytes(shard.read_bytes()[:-10])
    assert any(p.startswith('scene_00008/') for p in verify_family(out))


def test_held_out_topology_split(tmp_path: Path, urban: SceneFamily) -> None:
    doc = generate_family_dataset(urban, tmp_path, [0, 1], frames_per_seed=1,
                                  topologies=('offset',), renderer='none', split='test')
    assert [s['topology'] for s in doc['scenes']] == ['offset', 'offset']
    assert doc['split'] == 'test' and doc['topologies'] == ['offset']
    assert DisacDataset(tmp_path / 'scene_00000').manifest['split'] == 'test'
    with pytest.raises(FamilyError, match='bogus'):
        generate_family_dataset(urban, tmp_path / 'x', [0], 1, topologies=['bogus'],
                                renderer='none')
    with pytest.raises(ValueError, match='duplicates'):
        generate_family_dataset(urban, tmp_path / 'x', [0, 0], 1, renderer='none')


def test_cli_family_and_family_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / 'ds'
    base = ['family', '--family', str(URBAN), '--frames-per-seed', '2', '--renderer', 'none',
            '--no-progress']
    assert main([*base, '--out', str(out), '--seed-range', '5', '2',
                 '--topologies', 'four_way', 'skewed']) == 0
    text = capsys.readouterr().out
    assert 'frames/s' in text and 'device-views/s' in text
    doc = json.loads((out / 'family.json').read_text())
    assert [s['seed'] for s in doc['scenes']] == [5, 6]
    assert {s['topology'] for s in doc['scenes']} <= {'four_way', 'skewed'}
    assert 'DIR' in (out / 'scene_00005' / 'DATASET_CARD.md').read_text()
    assert main(['verify', str(out)]) == 0
    assert main(['info', str(out)]) == 0
    info = capsys.readouterr().out
    assert 'scene_00005' in info and 'scene_00006' in info
    # A non-empty folder needs --overwrite, which keeps files it did not write.
    (out / 'notes.txt').write_text('mine')
    assert main([*base, '--out', str(out), '--seeds', '7']) == 2
    assert 'not empty' in capsys.readouterr().err
    assert main([*base, '--out', str(out), '--seeds', '7', '--overwrite']) == 0
    assert sorted(p.name for p in out.iterdir()) == ['family.json', 'notes.txt', 'scene_00007',
                                                     'timing.json']
    # Bad input: exit 2 with the field named.
    assert main([*base, '--out', str(tmp_path / 'b'), '--seeds', '1',
                 '--topologies', 'bogus']) == 2
    assert "--topologies[0]: unknown topology 'bogus'" in capsys.readouterr().err
    broken = tmp_path / 'broken.yaml'
    broken.write_text(URBAN.read_text().replace('count: [1, 3]', 'count: [3, 1]', 1))
    assert main([*base, '--family', str(broken), '--out', str(tmp_path / 'c'),
                 '--seeds', '1']) == 2
    assert 'family.rsus.count: expected [min, max]' in capsys.readouterr().err
    # family-show prints the concrete scenario; it loads as a scenario.
    assert main(['family-show', '--family', str(URBAN), '--seed', '7']) == 0
    shown = capsys.readouterr().out
    assert shown.startswith("# family 'urban'")
    assert yaml.safe_load(shown) == load_family(URBAN).scenario_dict(7)
    assert main(['family-show', '--family', str(URBAN), '--seed', '7',
                 '--topology', 'offset']) == 0
    assert 'urban_offset_7' in capsys.readouterr().out
    assert main(['family-show', '--family', str(URBAN), '--seed', '7',
                 '--topology', 'bogus']) == 2
    assert "--topology: unknown topology 'bogus'" in capsys.readouterr().err
