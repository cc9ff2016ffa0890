"""Family datasets: one standard dataset folder per procedurally generated scene.

Layout of a family dataset folder::

    family.json          {"format": "disac-family", "format_version": 1, "family": name,
                          "family_source": path, "family_spec": normalised family mapping,
                          "split": ..., "scenes": [{"name": "scene_00042", "seed": 42,
                          "topology": "four_way", "centre": [x, y] (junction centre),
                          "devices": [{"id", "kind"}], "object_slots": M, "frames": N}]}
                         -- deterministic (no wall-clock values), rewritten after every scene
    timing.json          world-build and generation seconds per scene (differs between runs)
    scene_00042/         a standard dataset folder (dataset.generate output) whose manifest
                         holds the normalised scenario, so any frame can be re-simulated
    scene_00042/scenario.yaml   the concrete scenario (SceneFamily.scenario_dict of the seed)

Each scene's frames come from one World built for its scenario and run with the scene's seed
(traffic and RF noise), so the scene seed decides both the street layout and the traffic.
:func:`load_scenes` reads a family folder or a plain dataset folder (one scene, topology
``'fixed'``), so consumers can take either.
"""
from __future__ import annotations

from dataclasses import dataclass
import json
import os
from pathlib import Path
import platform
import time
from typing import Any
from typing import Callable
from typing import Sequence

import yaml

from disac_ros.core.dataset import DisacDataset
from disac_ros.core.dataset import generate
from disac_ros.core.dataset import MANIFEST
from disac_ros.core.dataset import verify as dataset_verify
from disac_ros.core.errors import DatasetError
from disac_ros.core.errors import ScenarioError
from disac_ros.core.scenario import parse_scenario
from disac_ros.core.scene_family import load_family
from disac_ros.core.scene_family import parse_family
from disac_ros.core.scene_family import SceneFamily

FAMILY_FORMAT = 'disac-family'
FAMILY_FORMAT_VERSION = 1
FAMILY_JSON = 'family.json'
FAMILY_TIMING = 'timing.json'
SCENARIO_YAML = 'scenario.yaml'
FIXED_TOPOLOGY = 'fixed'


def scene_name(seed: int) -> str:
    """Folder name of a scene: ``scene_00042``."""
    return f'scene_{int(seed):05d}'


class _NoAliasDumper(yaml.SafeDumper):
    """Writes repeated values out in full (no &id001 anchors): scenario files are for people."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_scenario_yaml(d: dict[str, Any]) -> str:
    """A concrete scenario as YAML (leaf lists in flow style: points read as [x, y])."""
    return yaml.dump(d, Dumper=_NoAliasDumper, sort_keys=False, default_flow_style=None,
                     width=100)


@dataclass
class SceneData:
    """One scene of a (family) dataset: its name, seed, topology and dataset reader.

    ``seed`` is None for a plain dataset folder (it may hold several seeds; see its manifest).
    """

    name: str
    seed: int | None
    topology: str
    dataset: DisacDataset
    path: Path

    @property
    def device_ids(self) -> list[str]:
        """The scene's device ids, in dataset order."""
        return list(self.dataset.device_ids)

    @property
    def scenario(self) -> Any:
        """The scene's validated Scenario, from the manifest (re-simulate with World)."""
        return parse_scenario(self.dataset.manifest['scenario'], source=str(self.path))


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + '\n', encoding='utf-8')
    os.replace(tmp, path)


def generate_family_dataset(family: SceneFamily | str | Path, out_dir: str | Path,
                            seeds: Sequence[int], frames_per_seed: int, frame_stride: int = 1,
                            topologies: Sequence[str] | None = None, renderer: str = 'genesis',
                            split: str | None = 'train',
                            on_frame: Callable[[], None] | None = None, shard_size: int = 50,
                            command: str | None = None,
                            on_scene: Callable[[dict[str, Any]], None] | None = None
                            ) -> dict[str, Any]:
    """
    Write one dataset folder per seed under ``out_dir`` plus ``family.json``; return its dict
    with a ``timing`` entry added (also written to ``timing.json``).

    ``topologies`` restricts each seed's topology draw to those (re-weighted; a weight-0
    topology such as a held-out one can be named), e.g. ``('offset',)`` for a held-out split.
    ``on_scene`` is called after each scene with its timing record (``world_build_s``...).

    Raises
    ------
        FamilyError: an unknown topology in ``topologies`` or an invalid seed.
        ValueError: duplicate seeds or bad counts.

    """
    from disac_ros.core.world import World

    fam = family if isinstance(family, SceneFamily) else load_family(family)
    allowed = fam.check_topologies(topologies)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError('seeds: at least one seed is required')
    if len(set(seeds)) != len(seeds):
        raise ValueError(f'seeds: duplicates in {seeds}')
    if frames_per_seed < 1 or frame_stride < 1:
        raise ValueError('frames_per_seed and frame_stride must be >= 1')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Plan first: an invalid seed or infeasible family fails before anything is simulated.
    plan = []
    for seed in seeds:
        topo = fam.topology_of(seed, allowed)
        plan.append((seed, topo, fam.scenario_dict(seed, topo), fam.layout(seed, topo)))
    doc: dict[str, Any] = {
        'format': FAMILY_FORMAT, 'format_version': FAMILY_FORMAT_VERSION,
        'family': fam.name, 'family_source': fam.source, 'family_spec': fam.to_dict(),
        'split': split, 'topologies': list(allowed) if allowed else None,
        'frames_per_seed': int(frames_per_seed), 'frame_stride': int(frame_stride),
        'renderer': renderer, 'scenes': [],
    }
    timing: dict[str, Any] = {'scenes': [], 'host': platform.node()}
    t_all = time.perf_counter()
    for seed, topo, sd, layout in plan:
        name = scene_name(seed)
        folder = out / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SCENARIO_YAML).write_text(dump_scenario_yaml(sd), encoding='utf-8')
        scenario = parse_scenario(sd, source=str(folder / SCENARIO_YAML))
        t0 = time.perf_counter()
        world = World(scenario, seed=seed, renderer=renderer)
        t1 = time.perf_counter()
        try:
            man = generate(world, folder, [seed], frames_per_seed, shard_size=shard_size,
                           split=split, command=command, on_frame=on_frame,
                           frame_stride=frame_stride)
        finally:
            world.close()
        t2 = time.perf_counter()
        doc['scenes'].append({'name': name, 'seed': seed, 'topology': topo,
                              'scenario_name': scenario.name, 'centre': layout['centre'],
                              'devices': [{'id': d.id, 'kind': d.kind} for d in scenario.devices],
                              'object_slots': man['object_slots'], 'frames': man['frames']})
        _write_json(out / FAMILY_JSON, doc)      # a partial run leaves a consistent folder
        rec = {'name': name, 'world_build_s': round(t1 - t0, 3),
               'generate_s': round(t2 - t1, 3), 'frames': man['frames'],
               'devices': len(scenario.devices)}
        timing['scenes'].append(rec)
        if on_scene is not None:
            on_scene(rec)
    wall = time.perf_counter() - t_all
    frames = sum(s['frames'] for s in doc['scenes'])
    views = sum(s['frames'] * len(s['devices']) for s in doc['scenes'])
    timing.update({'frames': frames, 'device_views': views, 'wall_time_s': round(wall, 3),
                   'world_build_s': round(sum(r['world_build_s'] for r in timing['scenes']), 3),
                   'frames_per_s': round(frames / wall, 3) if wall > 0 else None,
                   'created_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})
    _write_json(out / FAMILY_TIMING, timing)
    return {**doc, 'timing': timing}


def is_family_folder(path: str | Path) -> bool:
    """True when ``path`` holds a family.json."""
    return (Path(path) / FAMILY_JSON).is_file()


def read_family_json(path: str | Path) -> dict[str, Any]:
    """The family.json of a family folder (DatasetError when missing or not one)."""
    p = Path(path) / FAMILY_JSON
    try:
        doc = json.loads(p.read_text(encoding='utf-8'))
    except (OSError, ValueError) as e:
        raise DatasetError(f'{p}: unreadable family index: {e}') from None
    if not isinstance(doc, dict) or doc.get('format') != FAMILY_FORMAT:
        raise DatasetError(f'{p}: not a {FAMILY_FORMAT} index')
    if doc.get('format_version') != FAMILY_FORMAT_VERSION:
        raise DatasetError(f'{p}: format_version {doc.get("format_version")} is not supported '
                           f'(expected {FAMILY_FORMAT_VERSION})')
    return doc


def load_scenes(path: str | Path) -> list[SceneData]:
    """
    The scenes of a family folder (family.json order), or one scene for a plain dataset folder
    (name = folder name, seed None, topology ``'fixed'``).

    Raises
    ------
        DatasetError: neither a family folder nor a dataset folder, or a scene is missing.

    """
    root = Path(path)
    if is_family_folder(root):
        doc = read_family_json(root)
        return [SceneData(s['name'], int(s['seed']), s['topology'],
                          DisacDataset(root / s['name']), root / s['name'])
                for s in doc['scenes']]
    if (root / MANIFEST).is_file():
        return [SceneData(root.name, None, FIXED_TOPOLOGY, DisacDataset(root), root)]
    raise DatasetError(f'{root}: neither a family dataset ({FAMILY_JSON}) nor a dataset '
                       f'folder ({MANIFEST})')


def verify_family(path: str | Path) -> list[str]:
    """Check every scene of a family folder (shards, frame counts, scenario.yaml against the
    manifest); return the problems (empty = OK)."""
    root = Path(path)
    doc = read_family_json(root)
    problems: list[str] = []
    try:
        parse_family(doc['family_spec'])
    except (ScenarioError, KeyError) as e:
        problems.append(f'{FAMILY_JSON}: family_spec invalid: {e}')
    for s in doc.get('scenes', []):
        folder = root / s['name']
        if not (folder / MANIFEST).is_file():
            problems.append(f'{s["name"]}: missing (no {MANIFEST})')
            continue
        try:
            problems += [f'{s["name"]}/{p}' for p in dataset_verify(folder)]
            man = DisacDataset(folder).manifest
        except DatasetError as e:
            problems.append(f'{s["name"]}: {e}')
            continue
        if man['frames'] != s['frames']:
            problems.append(f'{s["name"]}: {man["frames"]} frames, {FAMILY_JSON} says '
                            f'{s["frames"]}')
        if [d['id'] for d in man['devices']] != [d['id'] for d in s['devices']]:
            problems.append(f'{s["name"]}: devices differ from {FAMILY_JSON}')
        sy = folder / SCENARIO_YAML
        try:
            concrete = parse_scenario(yaml.safe_load(sy.read_text(encoding='utf-8')),
                                      source=str(sy)).to_dict()
            if concrete != man['scenario']:
                problems.append(f'{s["name"]}/{SCENARIO_YAML}: differs from the manifest scenario')
        except (OSError, yaml.YAMLError, ScenarioError) as e:
            problems.append(f'{s["name"]}/{SCENARIO_YAML}: {e}')
    return problems


def family_summary(path: str | Path) -> str:
    """A short human-readable summary of a family folder, one line per scene."""
    root = Path(path)
    doc = read_family_json(root)
    scenes = doc['scenes']
    topo: dict[str, int] = {}
    for s in scenes:
        topo[s['topology']] = topo.get(s['topology'], 0) + 1
    frames = sum(s['frames'] for s in scenes)
    lines = [f'{root}: {doc["format"]} v{doc["format_version"]}, family {doc["family"]!r}'
             + (f', split {doc["split"]}' if doc.get('split') else '')
             + f'; {len(scenes)} scene(s), {frames} frames; topologies {topo}']
    for s in scenes:
        devs = ', '.join(f'{d["id"]}({d["kind"]})' for d in s['devices'])
        lines.append(f'  {s["name"]}: seed {s["seed"]}, {s["topology"]}, {s["frames"]} frames, '
                     f'{s.get("object_slots", "?")} object slots; devices {devs}')
    timing = root / FAMILY_TIMING
    if timing.is_file():
        t = json.loads(timing.read_text(encoding='utf-8'))
        lines.append(f'  generated in {t["wall_time_s"]} s ({t["frames_per_s"]} frames/s, '
                     f'world builds {t["world_build_s"]} s in total)')
    return '\n'.join(lines)

