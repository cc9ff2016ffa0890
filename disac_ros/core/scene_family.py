"""Procedural scene families: a family YAML of distributions -> one concrete scenario per seed.

A *family* describes many street scenes at once: road topologies with weights, lane counts,
building sizes, roadside-unit placement, traffic mix and lighting as ranges. Each integer seed
becomes one concrete scenario mapping (``SceneFamily.scenario_dict``) that
:func:`~disac_ros.core.scenario.parse_scenario` validates, so the world, the RF synthesis and the
dataset writer work on it unchanged. The same family and seed always give the same mapping: every
draw comes from ``np.random.default_rng`` seeded with ``[seed, hash of the normalised family]``
(no global random state), so editing the family changes its scenes, and nothing else does.

Topologies (the junction is near the origin; the whole layout is turned by a random multiple of
90 degrees when ``ground.rotate`` is true, which keeps the buildings axis-aligned):

* ``straight``: one road across the map, with a mid-block crossing;
* ``t_junction``: a through road and one side road;
* ``four_way``: two roads crossing at right angles;
* ``offset``: a staggered crossing, two T-junctions whose side roads leave on opposite sides of
  the through road ``roads.offset_m`` apart (10-20 m);
* ``skewed``: a four-way crossing whose second road is rotated ``roads.skew_deg`` (20-40 deg)
  away from the perpendicular.

Family YAML (``config/families/urban.yaml`` is a commented example). A *range* is ``[min, max]``
(uniform) or one number (fixed); an *int range* the same with integers (both ends included); a
*colour range* is ``[[r, g, b], [r, g, b]]`` (per channel min and max) or one ``[r, g, b]``::

    name: str                              # scenario names are <name>_<topology>_<seed>
    rate_hz: float > 0
    topologies: {straight|t_junction|four_way|offset|skewed: weight >= 0}
        # drawn by weight; weight 0 = never drawn unless asked for by name (a held-out
        # topology; in a filter it counts with the mean of the positive weights)
    ground?: {size: [x, y], color: colour range, junction_jitter_m, max_arm_m, rotate: bool}
    roads?: {lanes_per_direction: int range (1-3), lane_width_m, bike_lane_probability (0-1),
             bike_lane_width_m, sidewalk_width_m, crossing_width_m, corner_radius_m, offset_m,
             skew_deg, road_color, sidewalk_color, crossing_color, marking_color, divider_color,
             bike_lane_color}
    buildings?: {count: int range, frontage_m, depth_m, height_m, setback_m, spacing_m,
                 near_junction_fraction (0-1), color: colour range}
    rsus?: {count: int range, distance_m, height_m, pitch_deg, yaw_jitter_deg, min_spacing_m,
            roadside_m}
    vehicles?: {count: int range, speed_mps, start_m, height_jitter_m, pitch_jitter_deg}
    objects?: {count: int range, class_weights: {car|truck|pedestrian|cyclist: weight >= 0}}
    lighting?: {ambient: colour range, background: colour range, sun_dir: [[x,y,z],[x,y,z]],
                sun_intensity: range, shadows: bool}
    camera: {...}     # copied verbatim into every scenario (a model's sensors; see sensor_choices)
    mounts: {...}     # the kinds' default mounts, verbatim; each device gets its own mount
    radar?: {...}     # verbatim
    classes: {...}    # verbatim
    sensor_choices?:  # optional: each seed draws one (by weight) and overrides camera / radar
      - {camera?: {camera fields}, radar?: {radar fields}, weight?: > 0 (default 1)}

Every missing optional key takes the default in ``_SCHEMA`` below; the normalised mapping
(``SceneFamily.to_dict``) has them all filled in. Errors name the dotted field, e.g.
``family.topologies.bogus: unknown topology 'bogus'; expected one of straight, ...``.

What a scene contains: roads (lanes each way, a centre line, lane dividers, bike lanes on some
roads), sidewalks along both sides clipped at the other roads, zebra crossings on every arm,
lane paths for every entry/exit pair (straight on and turning, ``corner_radius``), bike paths
(straight on and right turns), sidewalk and crossing paths (and a pedestrian loop around a single
junction), axis-aligned buildings on the road frontages (never on a road or sidewalk corridor),
1-3 roadside units 6-12 m from the junction centre beside the road looking at it, 1-3 vehicle
devices on random lanes, 2-16 objects of a random class mix and random lighting. Every device has
its own ``mount`` (RSU pole height and pitch drawn; vehicle mounts jittered). Device ids are
drawn per seed from several naming styles (``veh_3``, ``car_kq``, ``rsu_ne``, ``unit7``...) and
the device order is shuffled, so consumers cannot rely on fixed ids or kinds-first ordering.

A draw that cannot be realised (e.g. no room for an RSU or too few buildings) is retried with a
deterministic sub-seed (``attempt`` 1, 2, ...), never by crashing.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
import hashlib
import json
import math
from pathlib import Path
import string
from typing import Any
from typing import Mapping
from typing import Sequence

import numpy as np
import yaml

from disac_ros.core.errors import ScenarioError
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.scenario import _Ctx
from disac_ros.core.scenario import _parse_camera
from disac_ros.core.scenario import _parse_classes
from disac_ros.core.scenario import _parse_mounts
from disac_ros.core.scenario import parse_scenario
from disac_ros.core.scenario import Scenario
from disac_ros.core.types import OBJECT_CLASSES

TOPOLOGIES: tuple[str, ...] = ('straight', 't_junction', 'four_way', 'offset', 'skewed')
MAX_ATTEMPTS = 12          # deterministic re-draws of an infeasible scene before giving up
_ROOT = 'family'


class FamilyError(ScenarioError):
    """A family YAML (or a request to it: a topology, a seed) is invalid."""


class _Infeasible(Exception):
    """This draw cannot be realised; the caller re-draws with the next sub-seed."""


# ----------------------------------------------------------------------------------------------
# Schema: section -> key -> (type, default, options). Types: range, int_range, number, prob,
# bool, color_range, vec3_range, vec2, weights.
# ----------------------------------------------------------------------------------------------
_GREY = [[0.45, 0.45, 0.45], [0.78, 0.74, 0.68]]
_SCHEMA: dict[str, dict[str, tuple[str, Any, dict[str, Any]]]] = {
    'ground': {
        'size': ('vec2', [120.0, 120.0], {'lo': 40.0, 'hi': 400.0}),
        'color': ('color_range', [[0.26, 0.32, 0.22], [0.36, 0.42, 0.32]], {}),
        'junction_jitter_m': ('number', 3.0, {'lo': 0.0, 'hi': 20.0}),
        'max_arm_m': ('number', 60.0, {'lo': 20.0, 'hi': 200.0}),
        'rotate': ('bool', True, {}),
    },
    'roads': {
        'lanes_per_direction': ('int_range', [1, 2], {'lo': 1, 'hi': 3}),
        'lane_width_m': ('range', [3.0, 3.5], {'lo': 2.5, 'hi': 5.0}),
        'bike_lane_probability': ('prob', 0.5, {}),
        'bike_lane_width_m': ('range', [1.2, 1.6], {'lo': 0.8, 'hi': 3.0}),
        'sidewalk_width_m': ('range', [2.5, 3.5], {'lo': 1.0, 'hi': 6.0}),
        'crossing_width_m': ('range', [2.0, 3.0], {'lo': 1.0, 'hi': 5.0}),
        'corner_radius_m': ('range', [5.0, 8.0], {'lo': 0.0, 'hi': 20.0}),
        'offset_m': ('range', [10.0, 20.0], {'lo': 4.0, 'hi': 60.0}),
        'skew_deg': ('range', [20.0, 40.0], {'lo': 5.0, 'hi': 60.0}),
        'road_color': ('color_range', [[0.15, 0.15, 0.16], [0.22, 0.22, 0.23]], {}),
        'sidewalk_color': ('color_range', [[0.55, 0.54, 0.5], [0.68, 0.66, 0.62]], {}),
        'crossing_color': ('color_range', [[0.78, 0.78, 0.76], [0.86, 0.86, 0.84]], {}),
        'marking_color': ('color_range', [[0.92, 0.85, 0.25], [0.97, 0.92, 0.35]], {}),
        'divider_color': ('color_range', [[0.88, 0.88, 0.88], [0.95, 0.95, 0.95]], {}),
        'bike_lane_color': ('color_range', [[0.42, 0.2, 0.17], [0.52, 0.26, 0.22]], {}),
    },
    'buildings': {
        'count': ('int_range', [6, 14], {'lo': 0, 'hi': 64}),
        'frontage_m': ('range', [10.0, 30.0], {'lo': 2.0, 'hi': 100.0}),
        'depth_m': ('range', [10.0, 25.0], {'lo': 2.0, 'hi': 100.0}),
        'height_m': ('range', [6.0, 30.0], {'lo': 1.0, 'hi': 200.0}),
        'setback_m': ('range', [0.5, 4.0], {'lo': 0.5, 'hi': 30.0}),
        'spacing_m': ('number', 1.0, {'lo': 0.0, 'hi': 30.0}),
        'near_junction_fraction': ('prob', 0.5, {}),
        'color': ('color_range', _GREY, {}),
    },
    'rsus': {
        'count': ('int_range', [1, 3], {'lo': 0, 'hi': 8}),
        'distance_m': ('range', [6.0, 12.0], {'lo': 1.0, 'hi': 60.0}),
        'height_m': ('range', [4.0, 8.0], {'lo': 1.0, 'hi': 30.0}),
        'pitch_deg': ('range', [10.0, 25.0], {'lo': -80.0, 'hi': 80.0}),
        'yaw_jitter_deg': ('number', 15.0, {'lo': 0.0, 'hi': 90.0}),
        'min_spacing_m': ('number', 5.0, {'lo': 0.0, 'hi': 50.0}),
        'roadside_m': ('number', 2.0, {'lo': 0.0, 'hi': 30.0}),
    },
    'vehicles': {
        'count': ('int_range', [1, 3], {'lo': 0, 'hi': 8}),
        'speed_mps': ('range', [5.0, 10.0], {'lo': 0.1, 'hi': 40.0}),
        'start_m': ('range', [0.0, 40.0], {'lo': 0.0, 'hi': 500.0}),
        'height_jitter_m': ('number', 0.1, {'lo': 0.0, 'hi': 1.0}),
        'pitch_jitter_deg': ('number', 1.0, {'lo': 0.0, 'hi': 10.0}),
    },
    'objects': {
        'count': ('int_range', [2, 16], {'lo': 0, 'hi': 64}),
        'class_weights': ('weights', {'car': 3.0, 'truck': 1.0, 'pedestrian': 2.0,
                                      'cyclist': 1.5}, {}),
    },
    'lighting': {
        'ambient': ('color_range', [[0.28, 0.28, 0.28], [0.45, 0.45, 0.45]], {}),
        'background': ('color_range', [[0.45, 0.6, 0.8], [0.7, 0.8, 0.95]], {}),
        'sun_dir': ('vec3_range', [[-0.7, -0.7, -1.0], [0.7, 0.7, -0.5]], {}),
        'sun_intensity': ('range', [3.0, 5.0], {'lo': 0.0, 'hi': 50.0}),
        'shadows': ('bool', False, {}),
    },
}
_TOP_KEYS = ('name', 'rate_hz', 'topologies', *_SCHEMA, 'camera', 'mounts', 'radar', 'classes',
             'sensor_choices')
_TOP_REQUIRED = ('name', 'rate_hz', 'topologies', 'camera', 'mounts', 'classes')


def _fail(c: _Ctx, field: str, problem: str) -> FamilyError:
    return FamilyError(field, problem, c.source)


def _parse_value(c: _Ctx, kind: str, raw: Any, f: str, opt: Mapping[str, Any]) -> Any:
    lo, hi = opt.get('lo'), opt.get('hi')
    if kind == 'number':
        return c.number(raw, f, lo=lo, hi=hi)
    if kind == 'prob':
        return c.number(raw, f, lo=0.0, hi=1.0)
    if kind == 'bool':
        return c.boolean(raw, f)
    if kind == 'vec2':
        return list(c.vec(raw, f, 2, lo=lo, hi=hi))
    if kind in ('range', 'int_range'):
        pair = list(raw) if isinstance(raw, (list, tuple)) else [raw, raw]
        if len(pair) != 2:
            raise _fail(c, f, f'expected [min, max] or one value, got {raw!r}')
        if kind == 'int_range':
            vals = [c.integer(v, f'{f}[{i}]', lo=-(1 << 31)) for i, v in enumerate(pair)]
            for i, v in enumerate(vals):
                if (lo is not None and v < lo) or (hi is not None and v > hi):
                    raise _fail(c, f'{f}[{i}]', f'must be in [{lo}, {hi}], got {v}')
        else:
            vals = [c.number(v, f'{f}[{i}]', lo=lo, hi=hi) for i, v in enumerate(pair)]
        if vals[1] < vals[0]:
            raise _fail(c, f, f'expected [min, max] with min <= max, got {list(pair)}')
        return vals
    if kind in ('color_range', 'vec3_range'):
        if (isinstance(raw, (list, tuple)) and len(raw) == 2
                and all(isinstance(r, (list, tuple)) for r in raw)):
            pair = [list(raw[0]), list(raw[1])]
        else:
            pair = [raw, raw]
        num_kw = {'lo': 0.0, 'hi': 1.0} if kind == 'color_range' else {}
        vals = [list(c.vec(p, f'{f}[{i}]', 3, **num_kw)) for i, p in enumerate(pair)]
        for j in range(3):
            if vals[1][j] < vals[0][j]:
                raise _fail(c, f, f'expected [[min...], [max...]] with min <= max per '
                                  f'component, got {pair}')
        return vals
    if kind == 'weights':
        m = c.mapping(raw, f)
        out = {}
        for k, v in m.items():
            c.choice(k, f'{f}.{k}', OBJECT_CLASSES, 'class')
            out[str(k)] = c.number(v, f'{f}.{k}', non_negative=True)
        return {k: out.get(k, 0.0) for k in OBJECT_CLASSES}
    raise AssertionError(kind)


def parse_family(data: Any, source: str | None = None) -> 'SceneFamily':
    """
    Validate a family mapping (as loaded from YAML) and return a :class:`SceneFamily`.

    Raises
    ------
        FamilyError: naming the dotted field (``family.<section>.<key>``) of the first problem.

    """
    c = _Ctx(source)
    if not isinstance(data, Mapping):
        raise _fail(c, _ROOT, f'expected a mapping, got {type(data).__name__}')
    for key in data:
        if key not in _TOP_KEYS:
            raise _fail(c, f'{_ROOT}.{key}',
                        f'unknown key; expected one of {", ".join(_TOP_KEYS)}')
    for key in _TOP_REQUIRED:
        if key not in data:
            raise _fail(c, f'{_ROOT}.{key}', 'missing required field')
    spec: dict[str, Any] = {}
    try:
        name = c.string(data['name'], f'{_ROOT}.name')
        spec['name'] = name
        spec['rate_hz'] = c.number(data['rate_hz'], f'{_ROOT}.rate_hz', positive=True)
        topo = c.mapping(data['topologies'], f'{_ROOT}.topologies')
        weights = {}
        for t, w in topo.items():
            c.choice(t, f'{_ROOT}.topologies.{t}', TOPOLOGIES, 'topology')
            weights[str(t)] = c.number(w, f'{_ROOT}.topologies.{t}', non_negative=True)
        if not any(w > 0 for w in weights.values()):
            raise _fail(c, f'{_ROOT}.topologies', 'at least one topology needs a weight > 0')
        spec['topologies'] = {t: weights.get(t, 0.0) for t in TOPOLOGIES}
        for section, fields in _SCHEMA.items():
            f = f'{_ROOT}.{section}'
            raw = data.get(section, {}) or {}
            m = c.mapping(raw, f, known=tuple(fields))
            spec[section] = {key: _parse_value(c, kind, m.get(key, copy.deepcopy(default)),
                                               f'{f}.{key}', opt)
                             for key, (kind, default, opt) in fields.items()}
    except FamilyError:
        raise
    except ScenarioError as e:        # _Ctx raises ScenarioError: keep its field, change type
        raise FamilyError(e.field, e.problem, source) from None
    # The verbatim blocks are checked with the scenario parsers (same rules, family.* names).
    verbatim = {k: copy.deepcopy(data[k]) for k in ('camera', 'mounts', 'radar', 'classes')
                if k in data}
    try:
        _parse_camera(c, verbatim['camera'])
        _parse_mounts(c, verbatim['mounts'])
        RadarConfig.from_dict(verbatim.get('radar') or {}, where='radar')
        classes = _parse_classes(c, verbatim['classes'])
    except ScenarioError as e:
        raise FamilyError(f'{_ROOT}.{e.field}', e.problem, source) from None
    for cls, w in spec['objects']['class_weights'].items():
        if w > 0 and cls not in classes:
            raise _fail(c, f'{_ROOT}.objects.class_weights.{cls}',
                        f'class {cls!r} has no entry under classes')
    if spec['rsus']['count'][0] + spec['vehicles']['count'][0] < 1:
        raise _fail(c, f'{_ROOT}.rsus.count',
                    'rsus.count and vehicles.count may not both allow zero devices')
    spec.update(verbatim)
    if 'sensor_choices' in data:       # absent: the spec (and so every seed's stream) unchanged
        try:
            spec['sensor_choices'] = _parse_sensor_choices(c, data['sensor_choices'], verbatim)
        except FamilyError:
            raise
        except ScenarioError as e:
            raise FamilyError(e.field, e.problem, source) from None
    return SceneFamily(spec, source)


def _parse_sensor_choices(c: _Ctx, raw: Any, verbatim: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Each choice's camera and radar overrides, checked merged into the verbatim blocks."""
    f = f'{_ROOT}.sensor_choices'
    if not isinstance(raw, list) or not raw:
        raise _fail(c, f, f'expected a non-empty list of {{camera, radar, weight}}, got {raw!r}')
    out = []
    for i, item in enumerate(raw):
        fi = f'{f}[{i}]'
        m = c.mapping(item, fi, known=('camera', 'radar', 'weight'))
        choice = {'camera': dict(c.mapping(m.get('camera') or {}, f'{fi}.camera')),
                  'radar': dict(c.mapping(m.get('radar') or {}, f'{fi}.radar')),
                  'weight': c.number(m.get('weight', 1.0), f'{fi}.weight', positive=True)}
        try:
            _parse_camera(c, {**verbatim['camera'], **choice['camera']})
        except ScenarioError as e:
            raise FamilyError(f'{fi}.{e.field}', e.problem, c.source) from None
        RadarConfig.from_dict({**(verbatim.get('radar') or {}), **choice['radar']},
                              where=f'{fi}.radar')
        out.append(choice)
    return out


def load_family(path: str | Path) -> 'SceneFamily':
    """Read and validate a family YAML file (FamilyError for unreadable or invalid files)."""
    p = Path(path)
    try:
        text = p.read_text(encoding='utf-8')
    except OSError as e:
        raise FamilyError('<file>', f'cannot read family: {e}', str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise FamilyError('<yaml>', f'malformed YAML: {e}', str(p)) from None
    return parse_family(data, source=str(p))


# ----------------------------------------------------------------------------------------------
# The family
# ----------------------------------------------------------------------------------------------
class SceneFamily:
    """A validated family: ``scenario_dict(seed)`` / ``scenario(seed)`` make its scenes."""

    def __init__(self, spec: dict[str, Any], source: str | None = None):
        self._spec = spec
        self.source = source
        self.name: str = spec['name']
        # The sensors are left out: a seed's scene and traffic do not depend on what sees them,
        # so the same family with other sensor_choices gives the same scenes, seen otherwise.
        blob = json.dumps({k: v for k, v in spec.items() if k != 'sensor_choices'},
                          sort_keys=True, separators=(',', ':')).encode()
        # Part of every seed's entropy: two families never share a random stream.
        self.hash: int = int(hashlib.sha256(blob).hexdigest()[:16], 16)

    @property
    def weights(self) -> dict[str, float]:
        """Topology weights (every topology, 0 for those not drawn by default)."""
        return dict(self._spec['topologies'])

    @property
    def topologies(self) -> tuple[str, ...]:
        """Topologies drawn by default (weight > 0), in ``TOPOLOGIES`` order."""
        return tuple(t for t in TOPOLOGIES if self._spec['topologies'][t] > 0)

    def to_dict(self) -> dict[str, Any]:
        """The normalised family mapping (every default filled in); parse_family round-trips."""
        return copy.deepcopy(self._spec)

    def check_topologies(self, topologies: Sequence[str] | None,
                         field: str = 'topologies') -> tuple[str, ...] | None:
        """Validate a topology filter (any known topology, weight 0 included); a request, not
        the file, is wrong, so the error names ``field`` without the family's source."""
        if topologies is None:
            return None
        single = isinstance(topologies, str)
        if single:
            topologies = (topologies,)    # type: ignore[assignment]
        out: list[str] = []
        for i, t in enumerate(topologies):    # type: ignore[arg-type]
            if t not in TOPOLOGIES:
                raise FamilyError(field if single else f'{field}[{i}]',
                                  f'unknown topology {t!r}; expected one of '
                                  f'{", ".join(TOPOLOGIES)}')
            if t not in out:
                out.append(t)
        if not out:
            raise FamilyError(field, 'at least one topology is required')
        return tuple(out)

    def topology_of(self, seed: int, topologies: Sequence[str] | None = None) -> str:
        """
        The topology of ``seed``: drawn by weight from the seed (its own random stream, so the
        rest of the scene does not depend on how the topology was chosen). ``topologies``
        restricts the draw to those, re-weighted; a weight-0 (held-out) topology named there
        counts with the mean of the positive weights.
        """
        seed = _check_seed(seed, self.source)
        allowed = self.check_topologies(topologies) or self.topologies
        weights = self._spec['topologies']
        # A weight-0 topology named in the filter is wanted: give it the mean positive weight.
        mean = float(np.mean([w for w in weights.values() if w > 0]))
        w = np.array([weights[t] if weights[t] > 0 else mean for t in allowed],
                     dtype=np.float64)
        u = float(np.random.default_rng([seed, self.hash, 1]).random())
        idx = int(np.searchsorted(np.cumsum(w) / w.sum(), u, side='right'))
        return allowed[min(idx, len(allowed) - 1)]

    def scenario_dict(self, seed: int, topology: str | None = None) -> dict[str, Any]:
        """The concrete scenario mapping of ``seed`` (``topology`` forces one; default: drawn
        by :meth:`topology_of`). Same arguments, identical mapping. Validated by
        parse_scenario before it is returned."""
        return self._generate(seed, topology)[0]

    def layout(self, seed: int, topology: str | None = None) -> dict[str, Any]:
        """What the scenario mapping does not say about the scene: ``topology``,
        ``centre`` (the junction centre the RSUs look at; mid-block point of ``straight``,
        midpoint between the two junctions of ``offset``), ``junctions`` and ``attempt``
        (the sub-seed that gave a feasible draw)."""
        return self._generate(seed, topology)[1]

    def _generate(self, seed: int, topology: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        seed = _check_seed(seed, self.source)
        if topology is None:
            topology = self.topology_of(seed)
        else:
            topology = self.check_topologies(topology, 'topology')[0]  # type: ignore[index]
        last: Exception | None = None
        for attempt in range(MAX_ATTEMPTS):
            entropy = np.random.SeedSequence([seed, self.hash, 2, attempt])
            builder = _SceneBuilder(self._spec, topology, entropy)
            try:
                d = builder.build(f'{self.name}_{topology}_{seed}')
            except _Infeasible as e:
                last = e
                continue
            sensors = self._sensor_choice(seed, d)
            parse_scenario(copy.deepcopy(d), source=f'{self.name} seed {seed}')
            info = {'topology': topology, 'centre': _pt(builder.centre),
                    'junctions': [_pt(j) for j in builder.junctions], 'attempt': attempt,
                    **({'sensor_choice': sensors} if sensors is not None else {})}
            return d, info
        raise FamilyError('family', f'seed {seed} ({topology}): no feasible scene in '
                                    f'{MAX_ATTEMPTS} attempts (last: {last})', self.source)

    def _sensor_choice(self, seed: int, d: dict[str, Any]) -> int | None:
        """Apply the seed's draw from ``sensor_choices`` (its own random stream) to the
        scenario mapping ``d``; the index drawn, or None for a family without choices."""
        choices = self._spec.get('sensor_choices')
        if not choices:
            return None
        w = np.array([ch['weight'] for ch in choices], dtype=np.float64)
        u = float(np.random.default_rng([seed, self.hash, 3]).random())
        idx = min(int(np.searchsorted(np.cumsum(w) / w.sum(), u, side='right')), len(w) - 1)
        d['camera'] = {**d['camera'], **copy.deepcopy(choices[idx]['camera'])}
        if choices[idx]['radar'] or 'radar' in d:
            d['radar'] = {**(d.get('radar') or {}), **copy.deepcopy(choices[idx]['radar'])}
        return idx

    def scenario(self, seed: int, topology: str | None = None) -> Scenario:
        """``parse_scenario(scenario_dict(seed, topology))``."""
        d = self.scenario_dict(seed, topology)
        return parse_scenario(d, source=f'{self.source or self.name} seed {seed}')


def _check_seed(seed: Any, source: str | None) -> int:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise FamilyError('seed', f'expected an integer >= 0, got {seed!r}')
    return int(seed)


# ----------------------------------------------------------------------------------------------
# Plane geometry helpers
# ----------------------------------------------------------------------------------------------
def _unit(angle: float) -> np.ndarray:
    return np.array([math.cos(angle), math.sin(angle)])


def _left(u: np.ndarray) -> np.ndarray:
    return np.array([-u[1], u[0]])


def _cross(a: np.ndarray, b: np.ndarray) -> float:
    return float(a[0] * b[1] - a[1] * b[0])


def _intersect(p: np.ndarray, u: np.ndarray, q: np.ndarray, v: np.ndarray) -> np.ndarray | None:
    """Intersection of the lines p + s u and q + t v (None when parallel)."""
    den = _cross(u, v)
    if abs(den) < 1e-9:
        return None
    s = _cross(q - p, v) / den
    return p + s * u


@dataclass(frozen=True)
class _Rect:
    """An oriented rectangle: centre, unit axis ``u``, half length along u, half width across."""

    c: np.ndarray
    u: np.ndarray
    half_len: float
    half_w: float

    def contains(self, pts: np.ndarray) -> np.ndarray:
        d = pts - self.c
        along = d @ self.u
        lat = d @ _left(self.u)
        return (np.abs(along) <= self.half_len) & (np.abs(lat) < self.half_w)

    def overlaps(self, o: '_Rect') -> bool:
        """Separating-axis test."""
        axes = (self.u, _left(self.u), o.u, _left(o.u))
        d = o.c - self.c
        for ax in axes:
            r1 = self.half_len * abs(self.u @ ax) + self.half_w * abs(_left(self.u) @ ax)
            r2 = o.half_len * abs(o.u @ ax) + o.half_w * abs(_left(o.u) @ ax)
            if abs(d @ ax) >= r1 + r2:
                return False
        return True


def _aabb(center: np.ndarray, sx: float, sy: float) -> _Rect:
    return _Rect(np.asarray(center, dtype=np.float64), np.array([1.0, 0.0]), 0.5 * sx, 0.5 * sy)


def _compass(v: np.ndarray) -> str:
    names = ('e', 'ne', 'n', 'nw', 'w', 'sw', 's', 'se')
    a = math.degrees(math.atan2(v[1], v[0])) % 360.0
    return names[int(((a + 22.5) % 360.0) // 45.0)]


def _runs(free: np.ndarray, t: np.ndarray, min_len: float) -> list[tuple[float, float]]:
    """Maximal runs of True in ``free`` as (t0, t1) of at least ``min_len``."""
    out = []
    i, n = 0, len(free)
    while i < n:
        if not free[i]:
            i += 1
            continue
        j = i
        while j + 1 < n and free[j + 1]:
            j += 1
        if t[j] - t[i] >= min_len:
            out.append((float(t[i]), float(t[j])))
        i = j + 1
    return out


@dataclass
class _Road:
    """A straight road from ``a`` to ``b`` (lanes each way, optional bike lane each side)."""

    name: str
    a: np.ndarray
    b: np.ndarray
    lanes: int
    lane_w: float
    bike_w: float       # 0 = no bike lane
    sidewalk_w: float

    @property
    def length(self) -> float:
        return float(np.linalg.norm(self.b - self.a))

    @property
    def u(self) -> np.ndarray:
        return (self.b - self.a) / self.length

    @property
    def hw(self) -> float:
        """Half width of the carriageway (lanes plus bike lane, one side)."""
        return self.lanes * self.lane_w + self.bike_w

    def rect(self, half_w: float) -> _Rect:
        return _Rect(0.5 * (self.a + self.b), self.u, 0.5 * self.length, half_w)

    def point(self, t: float, lateral: float = 0.0) -> np.ndarray:
        return self.a + t * self.u + lateral * _left(self.u)


def _r(x: float, nd: int = 3) -> float:
    v = round(float(x), nd)
    return 0.0 if v == 0 else v       # no '-0.0' in the YAML


def _pt(p: np.ndarray) -> list[float]:
    return [_r(p[0]), _r(p[1])]


# ----------------------------------------------------------------------------------------------
# One scene
# ----------------------------------------------------------------------------------------------
_LETTERS = string.ascii_lowercase


class _SceneBuilder:
    """Draws one scene of a family; every component has its own child random stream."""

    def __init__(self, spec: Mapping[str, Any], topology: str, entropy: np.random.SeedSequence):
        self.s = spec
        self.topology = topology
        kids = entropy.spawn(8)
        (self.rng_layout, self.rng_rsu, self.rng_bld, self.rng_veh, self.rng_obj,
         self.rng_light, self.rng_ids, self.rng_misc) = [np.random.default_rng(k) for k in kids]
        gx, gy = spec['ground']['size']
        self.half = np.array([0.5 * gx, 0.5 * gy])

    # -- draws ----------------------------------------------------------------------------
    @staticmethod
    def _u(rng: np.random.Generator, rng_pair: Sequence[float]) -> float:
        lo, hi = rng_pair
        return float(lo) if hi <= lo else float(rng.uniform(lo, hi))

    @staticmethod
    def _i(rng: np.random.Generator, rng_pair: Sequence[int]) -> int:
        return int(rng.integers(rng_pair[0], rng_pair[1] + 1))

    @staticmethod
    def _color(rng: np.random.Generator, cr: Sequence[Sequence[float]]) -> list[float]:
        return [_r(rng.uniform(lo, hi) if hi > lo else lo) for lo, hi in zip(cr[0], cr[1])]

    # -- layout ---------------------------------------------------------------------------
    def _arm_end(self, p: np.ndarray, u: np.ndarray) -> np.ndarray:
        """Where the ray p + t u leaves the ground; a diagonal (skewed) arm stops at
        ground.max_arm_m, so devices stay as far from the origin as on the straight roads."""
        ts = [self.s['ground']['max_arm_m']] if min(abs(u[0]), abs(u[1])) > 1e-6 else []
        for k in range(2):
            if abs(u[k]) > 1e-9:
                ts.append((math.copysign(self.half[k], u[k]) - p[k]) / u[k])
        return p + min(ts) * u

    def _layout(self) -> None:
        rng, rs = self.rng_layout, self.s['roads']
        jit = self.s['ground']['junction_jitter_m']
        self.centre = np.array([self._u(rng, (-jit, jit)), self._u(rng, (-jit, jit))])
        k = int(rng.integers(4)) if self.s['ground']['rotate'] else 0
        m = _unit(0.5 * math.pi * k)             # direction of the through road
        side = _left(m)
        c = self.centre
        self.corner_radius = self._u(rng, rs['corner_radius_m'])

        def road(name: str, a: np.ndarray, b: np.ndarray) -> _Road:
            bike = rng.random() < rs['bike_lane_probability']
            return _Road(name, a, b, self._i(rng, rs['lanes_per_direction']),
                         self._u(rng, rs['lane_width_m']),
                         self._u(rng, rs['bike_lane_width_m']) if bike else 0.0,
                         self._u(rng, rs['sidewalk_width_m']))

        main = road('main', self._arm_end(c, -m), self._arm_end(c, m))
        self.roads = [main]
        self.junctions: list[np.ndarray] = []
        t = self.topology
        if t == 't_junction':
            self.roads.append(road('side', c, self._arm_end(c, side)))
            self.junctions = [c]
        elif t == 'four_way':
            self.roads.append(road('cross', self._arm_end(c, -side), self._arm_end(c, side)))
            self.junctions = [c]
        elif t == 'skewed':
            skew = math.radians(self._u(rng, rs['skew_deg'])) * (1 if rng.random() < 0.5 else -1)
            v = _unit(math.atan2(side[1], side[0]) + skew)
            self.roads.append(road('cross', self._arm_end(c, -v), self._arm_end(c, v)))
            self.junctions = [c]
        elif t == 'offset':
            off = self._u(rng, rs['offset_m'])
            flip = 1.0 if rng.random() < 0.5 else -1.0      # mirror image of the stagger
            a, b = c - 0.5 * off * m, c + 0.5 * off * m
            self.roads.append(road('side_a', a, self._arm_end(a, -flip * side)))
            self.roads.append(road('side_b', b, self._arm_end(b, flip * side)))
            self.junctions = [a, b]
        # straight: no junction; the mid-block crossing sits near the centre.
        self.sw = {r.name: r.sidewalk_w for r in self.roads}

    def _others(self, road: _Road, extra: float = 0.0) -> list[_Rect]:
        return [o.rect(o.hw + extra) for o in self.roads if o is not road]

    # -- routing --------------------------------------------------------------------------
    def _graph(self) -> None:
        """Vertices: road ends and junctions; edges: road pieces between them (a tree)."""
        verts: list[np.ndarray] = []

        def vid(p: np.ndarray) -> int:
            for i, q in enumerate(verts):
                if np.linalg.norm(p - q) < 1e-6:
                    return i
            verts.append(p)
            return len(verts) - 1

        adj: dict[int, list[tuple[int, _Road]]] = {}
        for r in self.roads:
            on = [r.a, r.b] + [j for j in self.junctions
                               if abs(_cross(r.u, j - r.a)) < 1e-6
                               and -1e-6 <= float((j - r.a) @ r.u) <= r.length + 1e-6]
            on.sort(key=lambda p: float((p - r.a) @ r.u))
            ids = []
            for p in on:
                i = vid(p)
                if not ids or ids[-1] != i:
                    ids.append(i)
            for i, j in zip(ids[:-1], ids[1:]):
                adj.setdefault(i, []).append((j, r))
                adj.setdefault(j, []).append((i, r))
        self.verts = verts
        self.adj = adj
        junction_ids = {vid(j) for j in self.junctions}
        ref = self.centre
        self.ends = {}
        for i in sorted(adj):
            if len(adj[i]) == 1 and i not in junction_ids:
                self.ends[i] = _compass(verts[i] - ref)
        if len(set(self.ends.values())) != len(self.ends):      # cannot happen; be safe
            self.ends = {i: f'{n}{k}' for k, (i, n) in enumerate(self.ends.items())}

    def _route(self, s: int, t: int) -> list[tuple[int, int, _Road]]:
        prev: dict[int, tuple[int, _Road] | None] = {s: None}
        todo = [s]
        while todo:
            i = todo.pop(0)
            for j, r in self.adj[i]:
                if j not in prev:
                    prev[j] = (i, r)
                    todo.append(j)
        out = []
        cur = t
        while prev[cur] is not None:
            i, r = prev[cur]              # type: ignore[misc]
            out.append((i, cur, r))
            cur = i
        return out[::-1]

    def _offset_line(self, route: list[tuple[int, int, _Road]],
                     offsets: list[float]) -> tuple[list[np.ndarray], list[int], float]:
        """Points of the route shifted ``offsets[k]`` to the right of each edge; the turn signs
        (+1 left, -1 right) and the largest corner radius that keeps a right turn off the kerb."""
        pts: list[np.ndarray] = []
        turns: list[int] = []
        radius_cap = math.inf
        lines = []
        for (i, j, _r_), d in zip(route, offsets):
            p, q = self.verts[i], self.verts[j]
            u = (q - p) / np.linalg.norm(q - p)
            right = -_left(u)
            lines.append((p + d * right, q + d * right, u))
        pts.append(lines[0][0])
        for k in range(1, len(lines)):
            (_, q0, u0), (p1, _, u1) = lines[k - 1], lines[k]
            x = _intersect(q0, u0, p1, u1)
            if x is None:
                continue                  # straight on
            sign = 1 if _cross(u0, u1) > 0 else -1
            turns.append(sign)
            if sign < 0:
                # Right turn: the fillet cuts toward the kerb corner; keep a 1 m margin.
                inner = math.pi - math.acos(float(np.clip(u0 @ u1, -1.0, 1.0)))
                sh = math.sin(0.5 * inner)
                road_in, road_out = route[k - 1][2], route[k][2]
                gap = min(road_in.hw - offsets[k - 1], road_out.hw - offsets[k])
                # Arc midpoint: r (1/sin - 1) from the vertex along the bisector; the kerb
                # corner (gap - margin) / sin away: r <= (gap - margin) / (1 - sin).
                radius_cap = min(radius_cap, max(0.5, (gap - 1.0) / max(1e-6, 1.0 - sh)))
            pts.append(x)
        pts.append(lines[-1][1])
        return pts, turns, radius_cap

    def _paths(self) -> dict[str, dict[str, Any]]:
        paths: dict[str, dict[str, Any]] = {}
        ends = sorted(self.ends)
        self.lane_paths: list[str] = []
        for s in ends:
            for t in ends:
                if s == t:
                    continue
                route = self._route(s, t)
                base = f'{self.ends[s]}_{self.ends[t]}'
                # The first turn decides the lane: left turns from the inner lane, right turns
                # from the outer one, straight on from every lane.
                _, turns, _ = self._offset_line(route, [0.0] * len(route))
                first = turns[0] if turns else 0
                n0 = route[0][2].lanes
                starts = [0] if first > 0 else [n0 - 1] if first < 0 else list(range(n0))
                for lane in starts:
                    offs, cur, k_turn = [], lane, 0
                    for k, (_, _, r) in enumerate(route):
                        if k:
                            i_prev, j_prev, _ = route[k - 1]
                            u0 = self.verts[j_prev] - self.verts[i_prev]
                            u1 = self.verts[route[k][1]] - self.verts[route[k][0]]
                            scale = float(np.linalg.norm(u0) * np.linalg.norm(u1))
                            if abs(_cross(u0, u1)) > 1e-9 * scale:
                                cur = 0 if turns[k_turn] > 0 else r.lanes - 1
                                k_turn += 1
                        cur = min(cur, r.lanes - 1)
                        offs.append((cur + 0.5) * r.lane_w)
                    pts, turns_, cap = self._offset_line(route, offs)
                    name = f'lane_{base}' + (f'_{lane + 1}' if len(starts) > 1 else '')
                    entry: dict[str, Any] = {'kind': 'lane', 'points': [_pt(p) for p in pts]}
                    if turns_:
                        entry['corner_radius'] = _r(min(self.corner_radius, cap), 2)
                    paths[name] = entry
                    self.lane_paths.append(name)
                # Bike paths: straight on and right turns, where every road has a bike lane.
                if all(r.bike_w > 0 for _, _, r in route) and all(x < 0 for x in turns):
                    offs = [r.lanes * r.lane_w + 0.5 * r.bike_w for _, _, r in route]
                    pts, turns_, cap = self._offset_line(route, offs)
                    entry = {'kind': 'bike', 'points': [_pt(p) for p in pts]}
                    if turns_:
                        entry['corner_radius'] = _r(min(0.6 * self.corner_radius, cap), 2)
                    paths[f'bike_{base}'] = entry
        return paths

    # -- surfaces, sidewalks, crossings ---------------------------------------------------
    def _strips(self, road: _Road, lateral: float, half_w: float, clear: float,
                min_len: float) -> list[tuple[float, float]]:
        """Free intervals along ``road`` at ``lateral`` for a strip of half width ``half_w``:
        outside every other road's carriageway widened by ``clear``."""
        t = np.arange(0.0, road.length, 0.2)
        t = np.append(t, road.length)
        free = np.ones(len(t), dtype=bool)
        for off in (lateral - half_w, lateral, lateral + half_w):
            pts = road.a[None] + t[:, None] * road.u[None] + off * _left(road.u)[None]
            for rect in self._others(road, clear):
                free &= ~rect.contains(pts)
        return _runs(free, t, min_len)

    def _surfaces_and_walks(self, colors: Mapping[str, list[float]],
                            paths: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        surf: list[dict[str, Any]] = []

        def strip(kind: str, road: _Road, lateral: float, width: float, t0: float, t1: float,
                  color: list[float]) -> None:
            # The renderer extends each segment by half its width at both ends: shorten first.
            a, b = t0 + 0.5 * width, t1 - 0.5 * width
            if b - a > 0.05:
                surf.append({'kind': kind, 'points': [_pt(road.point(a, lateral)),
                                                      _pt(road.point(b, lateral))],
                             'width': _r(width), 'color': list(color)})

        for r in self.roads:
            surf.append({'kind': 'road', 'points': [_pt(r.a), _pt(r.b)],
                         'width': _r(2.0 * r.hw), 'color': list(colors['road'])})
        for r in self.roads:
            if r.bike_w > 0:
                for side in (1.0, -1.0):
                    lat = side * (r.lanes * r.lane_w + 0.5 * r.bike_w)
                    for t0, t1 in self._strips(r, lat, 0.5 * r.bike_w, 0.0, 2.0):
                        strip('marking', r, lat, r.bike_w, t0, t1, colors['bike_lane'])
            for t0, t1 in self._strips(r, 0.0, 0.1, 1.0, 2.0):
                strip('marking', r, 0.0, 0.15, t0, t1, colors['marking'])
            for lane in range(1, r.lanes):
                for side in (1.0, -1.0):
                    lat = side * lane * r.lane_w
                    for t0, t1 in self._strips(r, lat, 0.1, 1.0, 2.0):
                        strip('marking', r, lat, 0.12, t0, t1, colors['divider'])
        n_walk = 0
        for r in self.roads:
            sw = r.sidewalk_w
            for side in (1.0, -1.0):
                lat = side * (r.hw + 0.5 * sw)
                for t0, t1 in self._strips(r, lat, 0.5 * sw, 0.0, 1.0):
                    strip('sidewalk', r, lat, sw, t0, t1, colors['sidewalk'])
                    if t1 - t0 >= 10.0:
                        a, b = r.point(t0 + 0.5, lat), r.point(t1 - 0.5, lat)
                        if self.rng_misc.random() < 0.5:
                            a, b = b, a
                        paths[f'walk_{n_walk}'] = {'kind': 'sidewalk',
                                                   'points': [_pt(a), _pt(b)]}
                        n_walk += 1
        self._crossings(surf, paths, colors)
        return surf

    def _arms(self) -> list[tuple[np.ndarray, np.ndarray, _Road]]:
        """(junction, outward direction, road) of every arm that leads to a map edge."""
        arms = []
        for j in self.junctions:
            jid = next(i for i, v in enumerate(self.verts) if np.linalg.norm(v - j) < 1e-6)
            for k, r in self.adj[jid]:
                if k in self.ends:
                    u = self.verts[k] - j
                    arms.append((j, u / np.linalg.norm(u), r))
        return arms

    def _crossings(self, surf: list[dict[str, Any]], paths: dict[str, dict[str, Any]],
                   colors: Mapping[str, list[float]]) -> None:
        cw = self._u(self.rng_misc, self.s['roads']['crossing_width_m'])
        found: list[tuple[np.ndarray, np.ndarray, _Road, float]] = []   # (j, u, road, t)
        if not self.junctions:
            r = self.roads[0]
            t_c = float((self.centre - r.a) @ r.u) + self._u(self.rng_misc, (-8.0, 8.0))
            found.append((r.point(t_c), r.u, r, 0.0))
        for j, u, r in self._arms():
            # First distance from the junction where both sidewalks are clear of other roads.
            others = self._others(r, 0.0)
            n = _left(u)
            t = np.arange(0.0, 40.0, 0.2)
            blocked = np.zeros(len(t), dtype=bool)
            for lat in (r.hw, r.hw + 0.5 * r.sidewalk_w, r.hw + r.sidewalk_w):
                for sgn in (1.0, -1.0):
                    pts = j[None] + t[:, None] * u[None] + sgn * lat * n[None]
                    for rect in others:
                        blocked |= rect.contains(pts)
            last = np.nonzero(blocked)[0]
            t_clear = float(t[last[-1]] + 0.2) if len(last) else 0.0
            found.append((j, u, r, t_clear + 0.5 * cw + 0.3))
        ring: list[tuple[float, list[np.ndarray]]] = []
        for k, (j, u, r, t_c) in enumerate(found):
            n = _left(u)
            mid = j + t_c * u
            half = r.hw - 0.5 * cw
            surf.append({'kind': 'crossing', 'points': [_pt(mid - half * n), _pt(mid + half * n)],
                         'width': _r(cw), 'color': list(colors['crossing'])})
            s_off = r.hw + 0.5 * r.sidewalk_w
            p_right, p_left = mid - s_off * n, mid + s_off * n
            a, b = (p_right, p_left) if self.rng_misc.random() < 0.5 else (p_left, p_right)
            name = f'cross_{_compass(u)}' if self.junctions else 'cross_mid'
            paths[name] = {'kind': 'crossing', 'points': [_pt(a), _pt(b)]}
            ring.append((math.atan2(u[1], u[0]), [p_right, p_left, u, s_off]))  # type: ignore
        # A pedestrian loop over every crossing of a single junction (like default.yaml's).
        if len(self.junctions) == 1 and len(ring) >= 3:
            ring.sort(key=lambda e: e[0])
            pts: list[np.ndarray] = []
            for k, (ang, (p_r, p_l, u, s_off)) in enumerate(ring):
                pts += [p_r, p_l]
                ang2, (p_r2, _p_l2, u2, _s2) = ring[(k + 1) % len(ring)]
                gap = (ang2 - ang) % (2.0 * math.pi)
                if gap < math.radians(170.0):
                    x = _intersect(p_l, u, p_r2, u2)
                    if x is not None:
                        pts.append(x)
            pts_r = [_pt(p) for p in pts]
            if all(math.dist(a, b) > 0.05 for a, b in zip(pts_r, pts_r[1:] + pts_r[:1])):
                paths['crossing_loop'] = {'kind': 'crossing', 'points': pts_r, 'closed': True,
                                          'corner_radius': 1.0}

    # -- RSUs -----------------------------------------------------------------------------
    def _rsus(self) -> list[dict[str, Any]]:
        cfg, rng = self.s['rsus'], self.rng_rsu
        n = self._i(rng, cfg['count'])
        lo, hi = cfg['distance_m']
        out: list[dict[str, Any]] = []
        placed: list[np.ndarray] = []
        half_vfov = 0.5 * float(self.s['camera']['fov_deg'])
        for _ in range(n):
            h = self._u(rng, cfg['height_m'])
            pitch = self._u(rng, cfg['pitch_deg'])
            # The junction centre must be in view, 5 degrees inside the image's lower edge:
            # atan(h / d) <= pitch + half_vfov - 5 bounds the distance from below.
            steep = math.radians(min(89.0, pitch + half_vfov - 5.0))
            d_view = h / math.tan(steep) if steep > 0 else math.inf
            spot = None
            for widen in range(9):        # roads too wide for distance_m: widen by 1 m steps
                for _try in range(200):
                    ang = float(rng.uniform(0.0, 2.0 * math.pi))
                    d = float(rng.uniform(lo, hi + widen))
                    p = self.centre + d * _unit(ang)
                    if d >= d_view and self._rsu_ok(p, placed, ang):
                        spot = p
                        break
                if spot is not None:
                    break
            if spot is None:
                raise _Infeasible('no roadside spot for an RSU')
            placed.append(spot)
            look = self.centre - spot
            yaw = math.degrees(math.atan2(look[1], look[0])) + float(
                rng.uniform(-cfg['yaw_jitter_deg'], cfg['yaw_jitter_deg']))
            yaw = (yaw + 180.0) % 360.0 - 180.0
            out.append({'kind': 'rsu', 'position': _pt(spot), 'yaw_deg': _r(yaw, 2),
                        '_height': h, '_pitch': pitch})
        return out

    def _rsu_ok(self, p: np.ndarray, placed: list[np.ndarray], ang: float) -> bool:
        cfg = self.s['rsus']
        if np.any(np.abs(p) > self.half - 1.0):
            return False
        roadside = False
        for r in self.roads:
            if r.rect(r.hw + 0.5).contains(p[None])[0]:
                return False          # on the carriageway
            if r.rect(r.hw + r.sidewalk_w + cfg['roadside_m']).contains(p[None])[0]:
                roadside = True
        if not roadside:
            return False
        for q in placed:
            if np.linalg.norm(p - q) < cfg['min_spacing_m']:
                return False
            a = math.atan2(*(q - self.centre)[::-1])
            if abs((ang - a + math.pi) % (2.0 * math.pi) - math.pi) < math.radians(40.0):
                return False          # look at the junction from different sides
        return True

    # -- buildings ------------------------------------------------------------------------
    def _buildings(self, rsu_spots: list[np.ndarray],
                   color_range: Sequence[Sequence[float]]) -> list[dict[str, Any]]:
        cfg, rng = self.s['buildings'], self.rng_bld
        target = self._i(rng, cfg['count'])
        corridors = [r.rect(r.hw + r.sidewalk_w + 0.5) for r in self.roads]
        lengths = np.array([r.length for r in self.roads])
        placed: list[_Rect] = []
        out: list[dict[str, Any]] = []
        for _ in range(60 * max(target, 1)):
            if len(out) >= target:
                break
            r = self.roads[int(rng.choice(len(self.roads), p=lengths / lengths.sum()))]
            side = 1.0 if rng.random() < 0.5 else -1.0
            near = [float((j - r.a) @ r.u) for j in self.junctions] or [
                float((self.centre - r.a) @ r.u)]
            if rng.random() < cfg['near_junction_fraction']:
                t = near[int(rng.integers(len(near)))] + float(rng.uniform(-30.0, 30.0))
            else:
                t = float(rng.uniform(0.0, r.length))
            front, depth = self._u(rng, cfg['frontage_m']), self._u(rng, cfg['depth_m'])
            height, setback = self._u(rng, cfg['height_m']), self._u(rng, cfg['setback_m'])
            along_x = abs(r.u[0]) >= abs(r.u[1])
            sx, sy = (front, depth) if along_x else (depth, front)
            n = side * _left(r.u)
            support = 0.5 * (abs(n[0]) * sx + abs(n[1]) * sy)
            c = r.point(t) + n * (r.hw + r.sidewalk_w + setback + support)
            box = _aabb(c, sx, sy)
            if np.any(np.abs(c) + 0.5 * np.array([sx, sy]) > self.half - 0.5):
                continue
            if any(box.overlaps(cor) for cor in corridors):
                continue
            gap = 0.5 * cfg['spacing_m']
            grown = _aabb(c, sx + 2 * gap, sy + 2 * gap)
            if any(grown.overlaps(_Rect(b.c, b.u, b.half_len + gap, b.half_w + gap))
                   for b in placed):
                continue
            if any(_aabb(c, sx + 3.0, sy + 3.0).contains(q[None])[0] for q in rsu_spots):
                continue
            placed.append(box)
            out.append({'name': f'bldg{len(out):02d}', 'center': _pt(c),
                        'size': [_r(sx), _r(sy), _r(height)],
                        'color': self._color(rng, color_range)})
        if len(out) < self.s['buildings']['count'][0]:
            raise _Infeasible(f'placed {len(out)} of {target} buildings')
        return out

    # -- vehicles, ids, objects -----------------------------------------------------------
    def _vehicles(self, paths: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
        cfg, rng = self.s['vehicles'], self.rng_veh
        n = self._i(rng, cfg['count'])
        out: list[dict[str, Any]] = []
        starts: list[np.ndarray] = []
        lanes = sorted(self.lane_paths)
        for _ in range(n):
            for _try in range(30):
                name = lanes[int(rng.integers(len(lanes)))]
                start = self._u(rng, cfg['start_m'])
                xy = _along(paths[name]['points'], start)
                if all(np.linalg.norm(xy - q) >= 12.0 for q in starts):
                    break
            starts.append(xy)
            out.append({'kind': 'vehicle', 'path': name,
                        'speed_mps': _r(self._u(rng, cfg['speed_mps']), 2),
                        'start_m': _r(start, 2),
                        '_dh': float(rng.uniform(-cfg['height_jitter_m'], cfg['height_jitter_m'])),
                        '_dp': float(rng.uniform(-cfg['pitch_jitter_deg'],
                                                 cfg['pitch_jitter_deg']))})
        return out

    def _ids(self, devices: list[dict[str, Any]]) -> None:
        rng = self.rng_ids

        def letters() -> str:
            n = int(rng.integers(1, 4))
            return ''.join(_LETTERS[int(i)] for i in rng.integers(26, size=n))

        veh_styles = ('veh_{n}', 'car_{l}', 'unit{n}', 'ego{n}', 'dev{n}', 'v{n}_{l}')
        rsu_styles = ('rsu_{c}', 'pole_{c}', 'unit{n}', 'cam{n}', 'dev{n}', 'rsu{n}')
        style = {'vehicle': veh_styles[int(rng.integers(len(veh_styles)))],
                 'rsu': rsu_styles[int(rng.integers(len(rsu_styles)))]}
        counter = int(rng.integers(0, 10))
        used: set[str] = set()
        for d in devices:
            comp = _compass(np.array(d['position']) - self.centre) if d['kind'] == 'rsu' else ''
            ident = style[d['kind']].format(n=counter, l=letters(), c=comp)
            counter += int(rng.integers(1, 4))
            while ident in used:                    # e.g. two RSUs in the same compass sector
                ident = f'{ident}_{counter}'
                counter += 1
            used.add(ident)
            d['id'] = ident

    def _mix(self, paths: Mapping[str, dict[str, Any]]) -> dict[str, int]:
        cfg, rng = self.s['objects'], self.rng_obj
        total = self._i(rng, cfg['count'])
        kinds = {p['kind'] for p in paths.values()}
        classes = self.s['classes']
        names = [c for c in OBJECT_CLASSES if c in classes]
        w = np.array([cfg['class_weights'][c] if any(k in kinds for k in classes[c]['paths'])
                      else 0.0 for c in names])
        if total == 0 or w.sum() <= 0:
            return {c: 0 for c in names}
        counts = rng.multinomial(total, w / w.sum())
        return {c: int(k) for c, k in zip(names, counts)}

    # -- assemble -------------------------------------------------------------------------
    def build(self, name: str) -> dict[str, Any]:
        s = self.s
        self._layout()
        self._graph()
        rs, rng = s['roads'], self.rng_layout
        colors = {k: self._color(rng, rs[f'{k}_color'])
                  for k in ('road', 'sidewalk', 'crossing', 'marking', 'divider', 'bike_lane')}
        ground_color = self._color(rng, s['ground']['color'])
        paths = self._paths()
        surfaces = self._surfaces_and_walks(colors, paths)
        rsus = self._rsus()
        buildings = self._buildings([np.array(r['position']) for r in rsus],
                                    s['buildings']['color'])
        vehicles = self._vehicles(paths)
        devices = rsus + vehicles
        order = self.rng_ids.permutation(len(devices))
        devices = [devices[int(i)] for i in order]
        self._ids(devices)
        mounts = s['mounts']
        out_devices = []
        for d in devices:
            base = mounts[d['kind']]
            if d['kind'] == 'rsu':
                h = d.pop('_height')
                drop = float(base['camera']['height_m']) - float(base['radar']['height_m'])
                mount = {'camera': {'height_m': _r(h), 'pitch_deg': _r(d.pop('_pitch'), 2)},
                         'radar': {'height_m': _r(max(0.3, h - drop))}}
                out_devices.append({'id': d['id'], 'kind': 'rsu', 'position': d['position'],
                                    'yaw_deg': d['yaw_deg'], 'mount': mount})
            else:
                cam = base['camera']
                mount = {'camera': {'height_m': _r(float(cam['height_m']) + d.pop('_dh')),
                                    'pitch_deg': _r(float(cam['pitch_deg']) + d.pop('_dp'), 2)}}
                out_devices.append({'id': d['id'], 'kind': 'vehicle', 'path': d['path'],
                                    'speed_mps': d['speed_mps'], 'start_m': d['start_m'],
                                    'mount': mount})
        lit, lr = s['lighting'], self.rng_light
        sun = [_r(self._u(lr, (lo, hi))) for lo, hi in zip(*lit['sun_dir'])]
        if math.hypot(*sun) < 1e-3:
            sun = [0.0, 0.0, -1.0]
        out: dict[str, Any] = {
            'name': name,
            'rate_hz': s['rate_hz'],
            'world': {
                'ground': {'size': list(s['ground']['size']), 'color': ground_color},
                'surfaces': surfaces,
                'buildings': buildings,
                'paths': paths,
            },
            'camera': copy.deepcopy(s['camera']),
            'mounts': copy.deepcopy(s['mounts']),
        }
        if 'radar' in s:
            out['radar'] = copy.deepcopy(s['radar'])
        out['classes'] = copy.deepcopy(s['classes'])
        out['devices'] = out_devices
        out['objects'] = {'mix': self._mix(paths)}
        out['lighting'] = {'ambient': self._color(lr, lit['ambient']),
                           'background': self._color(lr, lit['background']),
                           'shadows': lit['shadows'], 'sun_dir': sun,
                           'sun_intensity': _r(self._u(lr, lit['sun_intensity']), 2)}
        return out


def _along(points: Sequence[Sequence[float]], s: float) -> np.ndarray:
    """The point at arc length ``s`` along a polyline (corners not rounded), clamped."""
    pts = np.asarray(points, dtype=np.float64)
    for a, b in zip(pts[:-1], pts[1:]):
        seg = float(np.linalg.norm(b - a))
        if s <= seg:
            return a + (b - a) * (s / seg)
        s -= seg
    return pts[-1]
