"""Shared pytest fixtures: scenario paths and ONE Genesis world per test session.

Building a Genesis scene costs seconds (minutes on a machine that has never compiled Genesis
kernels), so every test marked ``genesis`` shares the session-scoped ``genesis_world``. Tests
that use it call ``world.reset(seed)`` first and must not rely on its state otherwise.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from typing import Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCENARIO_DIR = REPO / 'config' / 'scenarios'
DEFAULT_SCENARIO = SCENARIO_DIR / 'default.yaml'
SMALL_SCENARIO = SCENARIO_DIR / 'intersection_small.yaml'


def make_tiny_splits(tmp_path_factory: pytest.TempPathFactory, frames_per_seed: int,
                     shard_size: int) -> Path:
    """Train/val/test splits of the default scenario with 32x32 black images (no Genesis needed).

    RF and labels are real; the small images keep the CNNs cheap while the data path stays the same.
    """
    from disac_ros.tools import dataset_cli
    out = tmp_path_factory.mktemp('splits')
    scen = yaml.safe_load(DEFAULT_SCENARIO.read_text(encoding='utf-8'))
    scen['camera'].update(width=32, height=32)
    scenario = tmp_path_factory.mktemp('scenario') / 'scenario.yaml'
    scenario.write_text(yaml.safe_dump(scen))
    assert dataset_cli.main(['splits', '--scenario', str(scenario), '--out', str(out),
                             '--frames-per-seed', str(frames_per_seed), '--train-seeds', '0',
                             '--val-seeds', '100', '--test-seeds', '200',
                             '--shard-size', str(shard_size), '--renderer', 'none',
                             '--no-progress']) == 0
    return out


@pytest.fixture(scope='session')
def default_scenario_dict() -> dict[str, Any]:
    """The default scenario YAML as a plain mapping (tests must copy before mutating)."""
    return yaml.safe_load(DEFAULT_SCENARIO.read_text(encoding='utf-8'))


@pytest.fixture
def scenario_dict(default_scenario_dict: dict[str, Any]) -> dict[str, Any]:
    """A fresh, mutable deep copy of the default scenario mapping."""
    return copy.deepcopy(default_scenario_dict)


@pytest.fixture(scope='session')
def default_scenario():  # noqa: ANN201 - Scenario, imported lazily
    """The validated default scenario."""
    from disac_ros.core.scenario import load_scenario
    return load_scenario(DEFAULT_SCENARIO)


@pytest.fixture(scope='session')
def genesis_world(default_scenario) -> Iterator[Any]:  # noqa: ANN001
    """One Genesis-rendered World of the default scenario, built once per session."""
    pytest.importorskip('genesis')
    from disac_ros.core.world import World
    world = World(default_scenario, seed=0, renderer='genesis')
    try:
        yield world
    finally:
        world.close()
