"""Scenario YAML loading and strict validation: every error names the offending field."""
from __future__ import annotations

from pathlib import Path
from typing import Any
from typing import Callable

from conftest import DEFAULT_SCENARIO
from conftest import SMALL_SCENARIO
import pytest
import yaml

from disac_ros.core.errors import ScenarioError
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.scenario import load_scenario
from disac_ros.core.scenario import parse_scenario


def test_default_scenario_has_four_devices_two_kinds_and_four_classes() -> None:
    sc = load_scenario(DEFAULT_SCENARIO)
    assert sc.device_ids == ['dev0', 'dev1', 'dev2', 'dev3']
    assert [d.kind for d in sc.devices] == ['vehicle', 'vehicle', 'rsu', 'rsu']
    assert set(sc.objects.mix) == {'car', 'truck', 'pedestrian', 'cyclist'}
    assert sum(sc.objects.mix.values()) == 8
    assert isinstance(sc.radar, RadarConfig)
    assert (sc.camera.width, sc.camera.height) == (128, 128)
    assert len(sc.world.buildings) == 4
    assert sc.dt == pytest.approx(0.1)


def test_second_scenario_loads_without_code_changes() -> None:
    sc = load_scenario(SMALL_SCENARIO)
    assert sc.name == 't_junction_small'
    assert len(sc.devices) == 3
    assert (sc.camera.width, sc.camera.height) == (96, 72)
    assert sc.radar.num_chirps == 16
    assert sc.objects.explicit[0].class_name == 'truck'


def test_to_dict_round_trips() -> None:
    sc = load_scenario(DEFAULT_SCENARIO)
    again = parse_scenario(sc.to_dict())
    assert again.to_dict() == sc.to_dict()


def test_num_devices_keeps_the_first_k() -> None:
    sc = load_scenario(DEFAULT_SCENARIO, num_devices=2)
    assert sc.device_ids == ['dev0', 'dev1']


@pytest.mark.parametrize('k', [0, 5, -1])
def test_num_devices_out_of_range_is_rejected(k: int) -> None:
    with pytest.raises(ScenarioError) as e:
        load_scenario(DEFAULT_SCENARIO, num_devices=k)
    assert e.value.field == 'num_devices'


def _set(path: list[Any], value: Any) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        d[path[-1]] = value
    return apply


def _delete(path: list[Any]) -> Callable[[dict[str, Any]], None]:
    def apply(d: dict[str, Any]) -> None:
        for key in path[:-1]:
            d = d[key]
        del d[path[-1]]
    return apply


BAD_CASES = [
    ('unknown class in mix', _set(['objects', 'mix', 'bus'], 2), 'objects.mix.bus'),
    ('negative rate', _set(['rate_hz'], -5), 'rate_hz'),
    ('zero rate', _set(['rate_hz'], 0), 'rate_hz'),
    ('rate as string', _set(['rate_hz'], 'fast'), 'rate_hz'),
    ('missing camera width', _delete(['camera', 'width']), 'camera.width'),
    ('missing world', _delete(['world']), 'world'),
    ('missing devices', _delete(['devices']), 'devices'),
    ('wrong type width', _set(['camera', 'width'], 12.5), 'camera.width'),
    ('unknown top-level key', _set(['weather'], 'rain'), 'weather'),
    ('unknown camera key', _set(['camera', 'zoom'], 2), 'camera.zoom'),
    ('negative count', _set(['objects', 'mix', 'car'], -1), 'objects.mix.car'),
    ('negative class speed', _set(['classes', 'car', 'speed_mps'], [-1.0, 5.0]),
     'classes.car.speed_mps[0]'),
    ('unknown class under classes', _set(['classes', 'tram'], {'speed_mps': [1, 2],
                                                               'paths': ['lane']}),
     'classes.tram'),
    ('unknown path kind for class', _set(['classes', 'car', 'paths'], ['rail']),
     'classes.car.paths[0]'),
    ('unknown radar key', _set(['radar', 'antennas'], 8), 'radar.antennas'),
    ('bad radar value', _set(['radar', 'num_rx'], 0), 'radar.num_rx'),
    ('building negative size', _set(['world', 'buildings', 0, 'size'], [10, -1, 5]),
     'world.buildings[0].size[1]'),
    ('colour out of range', _set(['world', 'buildings', 1, 'color'], [2.0, 0, 0]),
     'world.buildings[1].color[0]'),
    ('bad device kind', _set(['devices', 1, 'kind'], 'drone'), 'devices[1].kind'),
    ('device on unknown path', _set(['devices', 0, 'path'], 'nowhere'), 'devices[0].path'),
    ('duplicate device id', _set(['devices', 1, 'id'], 'dev0'), 'devices[1].id'),
    ('device id not a ROS name', _set(['devices', 1, 'id'], 'dev 1'), 'devices[1].id'),
    ('rsu without pose', _delete(['devices', 2, 'position']), 'devices[2].position'),
    ('vehicle speed zero', _set(['devices', 0, 'speed_mps'], 0), 'devices[0].speed_mps'),
    ('path with one point', _set(['world', 'paths', 'lane_eb', 'points'], [[0, 0]]),
     'world.paths.lane_eb.points'),
    ('unknown path kind', _set(['world', 'paths', 'lane_eb', 'kind'], 'rail'),
     'world.paths.lane_eb.kind'),
    ('mount pitch too steep', _set(['mounts', 'rsu', 'camera', 'pitch_deg'], 95),
     'mounts.rsu.camera.pitch_deg'),
    ('explicit object unknown class',
     _set(['objects', 'list'], [{'class': 'bus', 'path': 'lane_eb', 'speed_mps': 3}]),
     'objects.list[0].class'),
    ('explicit object missing speed',
     _set(['objects', 'list'], [{'class': 'car', 'path': 'lane_eb'}]),
     'objects.list[0].speed_mps'),
    ('far before near', _set(['camera', 'far_m'], 0.05), 'camera.far_m'),
    ('lighting unknown key', _set(['lighting', 'fog'], True), 'lighting.fog'),
]


@pytest.mark.parametrize('label,mutate,field', BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_scenario_error_names_the_field(scenario_dict: dict[str, Any], label: str,
                                            mutate: Callable[[dict[str, Any]], None],
                                            field: str) -> None:
    mutate(scenario_dict)
    with pytest.raises(ScenarioError) as e:
        parse_scenario(scenario_dict)
    assert e.value.field == field, f'{label}: {e.value}'
    assert str(e.value).startswith(f'{field}:')


def test_error_from_file_names_the_file_and_field(tmp_path: Path,
                                                  scenario_dict: dict[str, Any]) -> None:
    scenario_dict['objects']['mix']['bus'] = 1
    path = tmp_path / 'bad.yaml'
    path.write_text(yaml.safe_dump(scenario_dict), encoding='utf-8')
    with pytest.raises(ScenarioError, match=r'bad\.yaml: objects\.mix\.bus: unknown class'):
        load_scenario(path)


def test_malformed_yaml_and_missing_file_are_scenario_errors(tmp_path: Path) -> None:
    bad = tmp_path / 'broken.yaml'
    bad.write_text('name: [unclosed\n', encoding='utf-8')
    with pytest.raises(ScenarioError, match='malformed YAML'):
        load_scenario(bad)
    with pytest.raises(ScenarioError, match='cannot read'):
        load_scenario(tmp_path / 'absent.yaml')
