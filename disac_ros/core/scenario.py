"""Scenario YAML -> validated, frozen dataclasses (the simulated world's whole description).

A scenario is data, not code: a new street layout, device set or object mix is a new YAML file.
Validation is strict: an unknown key, a missing field, a wrong type or an out-of-range value
raises :class:`~disac_ros.core.errors.ScenarioError` naming the dotted field, e.g.
``objects.mix.bus: unknown class 'bus'; expected one of car, truck, pedestrian, cyclist``.

Top-level layout (see ``config/scenarios/default.yaml`` for a commented example)::

    name: str
    rate_hz: float > 0                    # simulation / sensor rate
    world:
      ground: {size: [x, y], color: [r, g, b]}
      surfaces: [{kind: road|sidewalk|crossing|marking, points: [[x, y], ...], width, color?}]
      buildings: [{name, center: [x, y], size: [sx, sy, sz], color}]   # axis-aligned, occlude
      paths: {name: {kind: lane|sidewalk|crossing|bike, points: [[x, y], ...],
                     closed?: bool, corner_radius?: m}}
    camera: {width, height, fov_deg (vertical), near_m, far_m, max_range_m, min_object_px}
    mounts: {vehicle|rsu: {camera: {forward_m, height_m, pitch_deg, yaw_deg?},
                           radar: {forward_m, height_m}}}
    radar: {...}                           # RadarConfig.from_dict (rf_config.py)
    classes: {car|truck|pedestrian|cyclist: {speed_mps: [min, max], paths: [kind, ...],
                                            size?: [l, w, h], speed_wobble?: 0..1}}
    devices: [{id, kind: vehicle, path, speed_mps, start_m?, mount?} |
              {id, kind: rsu, position: [x, y], yaw_deg, mount?}]
      # mount?: {camera?: {forward_m?, height_m?, pitch_deg?, yaw_deg?},
      #          radar?: {forward_m?, height_m?}}  -- this device's own sensor placement; every
      #          missing field falls back to mounts.<kind> (Scenario.mount_of resolves it)
    objects: {mix?: {class: count}, list?: [{class, path, speed_mps, start_m?}]}
    lighting?: {ambient: [r, g, b], background: [r, g, b], shadows: bool,
                sun_dir: [x, y, z], sun_intensity: float}

Coordinates follow REP 103 (x east, y north, z up, metres; yaw counter-clockwise from +x).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
import math
from pathlib import Path
import re
from typing import Any
from typing import Mapping
from typing import Sequence

import yaml

from disac_ros.core.errors import ScenarioError
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.types import OBJECT_CLASSES

DEVICE_KINDS: tuple[str, ...] = ('vehicle', 'rsu')
PATH_KINDS: tuple[str, ...] = ('lane', 'sidewalk', 'crossing', 'bike')
SURFACE_KINDS: tuple[str, ...] = ('road', 'sidewalk', 'crossing', 'marking')

# Default body sizes (length, width, height) in metres; a scenario may override them per class.
DEFAULT_CLASS_SIZES: dict[str, tuple[float, float, float]] = {
    'car': (4.4, 1.8, 1.5),
    'truck': (8.0, 2.5, 3.4),
    'pedestrian': (0.5, 0.5, 1.75),
    'cyclist': (1.8, 0.6, 1.75),
}

_DEVICE_ID_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')

Vec2 = tuple[float, float]
Vec3 = tuple[float, float, float]


# ----------------------------------------------------------------------------------------------
# Dataclasses
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Surface:
    """A flat painted strip (road, sidewalk, crossing) drawn along a polyline; visual only."""

    kind: str
    points: tuple[Vec2, ...]
    width: float
    color: Vec3


@dataclass(frozen=True)
class Building:
    """An axis-aligned box standing on the ground; blocks cameras and attenuates RF."""

    name: str
    center: Vec2
    size: Vec3
    color: Vec3

    @property
    def box_min(self) -> Vec3:
        """Lower corner (x, y, z)."""
        return (self.center[0] - 0.5 * self.size[0], self.center[1] - 0.5 * self.size[1], 0.0)

    @property
    def box_max(self) -> Vec3:
        """Upper corner (x, y, z)."""
        return (self.center[0] + 0.5 * self.size[0], self.center[1] + 0.5 * self.size[1],
                self.size[2])


@dataclass(frozen=True)
class PathSpec:
    """A named polyline that objects or vehicle devices follow."""

    name: str
    kind: str
    points: tuple[Vec2, ...]
    closed: bool = False
    corner_radius: float = 0.0


@dataclass(frozen=True)
class WorldSpec:
    """The static map: ground, painted surfaces, occluding buildings, motion paths."""

    ground_size: Vec2
    ground_color: Vec3
    surfaces: tuple[Surface, ...]
    buildings: tuple[Building, ...]
    paths: dict[str, PathSpec]


@dataclass(frozen=True)
class CameraSpec:
    """Pinhole camera shared by all devices; ``fov_deg`` is the vertical field of view."""

    width: int = 128
    height: int = 128
    fov_deg: float = 60.0
    near_m: float = 0.1
    far_m: float = 150.0          # render clip distance
    max_range_m: float = 60.0     # beyond this an object is not labelled visible
    min_object_px: float = 3.0    # projected height below this is not labelled visible


@dataclass(frozen=True)
class CameraMount:
    """Camera placement in a device's base_link (x forward, z up); pitch > 0 looks down.

    ``yaw_deg`` turns the camera about the body z axis (counter-clockwise, 0 = looking along
    body x); the camera stays ``forward_m`` ahead of the base along body x either way.
    """

    forward_m: float
    height_m: float
    pitch_deg: float
    yaw_deg: float = 0.0


@dataclass(frozen=True)
class RadarMount:
    """Radar placement in a device's base_link; the radar boresight is the body x axis."""

    forward_m: float
    height_m: float


@dataclass(frozen=True)
class MountSpec:
    """Sensor placement for one device kind."""

    camera: CameraMount
    radar: RadarMount


@dataclass(frozen=True)
class ClassSpec:
    """Motion and size of one object class."""

    name: str
    speed_mps: tuple[float, float]
    path_kinds: tuple[str, ...]
    size: Vec3
    speed_wobble: float = 0.1     # relative amplitude of a slow speed oscillation (0 = constant)


@dataclass(frozen=True)
class DeviceSpec:
    """A sensing device: a vehicle driving a path or a roadside unit (RSU) on a pole."""

    id: str
    kind: str
    path: str | None = None
    speed_mps: float = 0.0
    start_m: float = 0.0
    position: Vec2 | None = None
    yaw_deg: float = 0.0
    # This device's own sensor placement (fully resolved against mounts.<kind>); None = the
    # kind's shared mount. Read it through Scenario.mount_of.
    mount: MountSpec | None = None


@dataclass(frozen=True)
class ObjectSpec:
    """One explicitly placed object."""

    class_name: str
    path: str
    speed_mps: float
    start_m: float = 0.0


@dataclass(frozen=True)
class ObjectsSpec:
    """Objects to spawn: an explicit list and/or random counts per class (``mix``)."""

    mix: dict[str, int]
    explicit: tuple[ObjectSpec, ...]


@dataclass(frozen=True)
class LightingSpec:
    """Render lighting: ambient and background colour, one directional sun light."""

    ambient: Vec3 = (0.35, 0.35, 0.35)
    background: Vec3 = (0.55, 0.7, 0.9)
    shadows: bool = False
    sun_dir: Vec3 = (-0.4, -0.3, -1.0)
    sun_intensity: float = 4.0


@dataclass(frozen=True)
class Scenario:
    """A fully validated scenario. ``to_dict`` returns the normalised mapping (defaults filled)."""

    name: str
    rate_hz: float
    world: WorldSpec
    camera: CameraSpec
    mounts: dict[str, MountSpec]
    radar: RadarConfig
    classes: dict[str, ClassSpec]
    devices: tuple[DeviceSpec, ...]
    objects: ObjectsSpec
    lighting: LightingSpec
    source: str | None = None

    @property
    def device_ids(self) -> list[str]:
        """Device ids in scenario order."""
        return [d.id for d in self.devices]

    @property
    def dt(self) -> float:
        """Step length in seconds."""
        return 1.0 / self.rate_hz

    def device(self, device_id: str) -> DeviceSpec:
        """The spec of one device (KeyError naming the known ids when unknown)."""
        for d in self.devices:
            if d.id == device_id:
                return d
        raise KeyError(f'unknown device {device_id!r}; known: {self.device_ids}')

    def mount_of(self, device: str | DeviceSpec) -> MountSpec:
        """Sensor mount of a device (id or spec): its own ``mount`` or its kind's default."""
        d = self.device(device) if isinstance(device, str) else device
        return d.mount if d.mount is not None else self.mounts[d.kind]

    def to_dict(self) -> dict[str, Any]:
        """Return the normalised scenario as plain YAML/JSON types (parse_scenario round-trips)."""
        w = self.world
        return {
            'name': self.name,
            'rate_hz': self.rate_hz,
            'world': {
                'ground': {'size': list(w.ground_size), 'color': list(w.ground_color)},
                'surfaces': [{'kind': s.kind, 'points': [list(p) for p in s.points],
                              'width': s.width, 'color': list(s.color)} for s in w.surfaces],
                'buildings': [{'name': b.name, 'center': list(b.center), 'size': list(b.size),
                               'color': list(b.color)} for b in w.buildings],
                'paths': {n: {'kind': p.kind, 'points': [list(q) for q in p.points],
                              'closed': p.closed, 'corner_radius': p.corner_radius}
                          for n, p in w.paths.items()},
            },
            'camera': {k: getattr(self.camera, k) for k in CameraSpec.__dataclass_fields__},
            'mounts': {k: _mount_to_dict(m, with_yaw=m.camera.yaw_deg != 0.0)
                       for k, m in self.mounts.items()},
            'radar': self.radar.to_dict(),
            'classes': {n: {'speed_mps': list(c.speed_mps), 'paths': list(c.path_kinds),
                            'size': list(c.size), 'speed_wobble': c.speed_wobble}
                        for n, c in self.classes.items()},
            'devices': [_device_to_dict(d) for d in self.devices],
            'objects': {'mix': dict(self.objects.mix),
                        'list': [{'class': o.class_name, 'path': o.path,
                                  'speed_mps': o.speed_mps, 'start_m': o.start_m}
                                 for o in self.objects.explicit]},
            'lighting': {'ambient': list(self.lighting.ambient),
                         'background': list(self.lighting.background),
                         'shadows': self.lighting.shadows,
                         'sun_dir': list(self.lighting.sun_dir),
                         'sun_intensity': self.lighting.sun_intensity},
        }


def _mount_to_dict(m: MountSpec, with_yaw: bool) -> dict[str, Any]:
    # A kind mount omits a zero camera yaw, so scenarios written before yaw existed normalise to
    # exactly the mapping they always did (manifests are compared byte for byte).
    cam: dict[str, Any] = {'forward_m': m.camera.forward_m, 'height_m': m.camera.height_m,
                           'pitch_deg': m.camera.pitch_deg}
    if with_yaw:
        cam['yaw_deg'] = m.camera.yaw_deg
    return {'camera': cam, 'radar': {'forward_m': m.radar.forward_m,
                                     'height_m': m.radar.height_m}}


def _device_to_dict(d: DeviceSpec) -> dict[str, Any]:
    if d.kind == 'vehicle':
        out = {'id': d.id, 'kind': d.kind, 'path': d.path, 'speed_mps': d.speed_mps,
               'start_m': d.start_m}
    else:
        assert d.position is not None
        out = {'id': d.id, 'kind': d.kind, 'position': list(d.position), 'yaw_deg': d.yaw_deg}
    if d.mount is not None:       # omitted when None: older scenarios' mappings stay unchanged
        out['mount'] = _mount_to_dict(d.mount, with_yaw=True)
    return out


# ----------------------------------------------------------------------------------------------
# Validation helpers: every check names the dotted field.
# ----------------------------------------------------------------------------------------------
_MISSING = object()


class _Ctx:
    """Carries the source file name so every error message can say where it came from."""

    def __init__(self, source: str | None):
        self.source = source

    def err(self, field: str, problem: str) -> ScenarioError:
        return ScenarioError(field, problem, self.source)

    def mapping(self, value: Any, field: str, known: Sequence[str] | None = None,
                required: Sequence[str] = ()) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.err(field, f'expected a mapping, got {type(value).__name__}')
        if known is not None:
            for key in value:
                if key not in known:
                    raise self.err(_join(field, str(key)),
                                   f'unknown key; expected one of {", ".join(known)}')
        for key in required:
            if key not in value:
                raise self.err(_join(field, key), 'missing required field')
        return value

    def get(self, m: Mapping[str, Any], key: str, field: str, default: Any = _MISSING) -> Any:
        if key in m:
            return m[key]
        if default is _MISSING:
            raise self.err(_join(field, key), 'missing required field')
        return default

    def number(self, value: Any, field: str, *, positive: bool = False,
               non_negative: bool = False, lo: float | None = None,
               hi: float | None = None) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.err(field, f'expected a number, got {type(value).__name__} {value!r}')
        v = float(value)
        if not math.isfinite(v):
            raise self.err(field, f'must be finite, got {value!r}')
        if positive and v <= 0:
            raise self.err(field, f'must be > 0, got {value!r}')
        if non_negative and v < 0:
            raise self.err(field, f'must be >= 0, got {value!r}')
        if lo is not None and v < lo:
            raise self.err(field, f'must be >= {lo}, got {value!r}')
        if hi is not None and v > hi:
            raise self.err(field, f'must be <= {hi}, got {value!r}')
        return v

    def integer(self, value: Any, field: str, *, lo: int = 0) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.err(field, f'expected an integer, got {type(value).__name__} {value!r}')
        if value < lo:
            raise self.err(field, f'must be >= {lo}, got {value!r}')
        return int(value)

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.err(field, f'expected a non-empty string, got {value!r}')
        return value

    def boolean(self, value: Any, field: str) -> bool:
        if not isinstance(value, bool):
            raise self.err(field, f'expected true or false, got {value!r}')
        return value

    def choice(self, value: Any, field: str, choices: Sequence[str], what: str) -> str:
        if value not in choices:
            raise self.err(field,
                           f'unknown {what} {value!r}; expected one of {", ".join(choices)}')
        return str(value)

    def vec(self, value: Any, field: str, n: int, **num_kw: Any) -> tuple[float, ...]:
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise self.err(field, f'expected a list of {n} numbers, got {value!r}')
        return tuple(self.number(v, f'{field}[{i}]', **num_kw) for i, v in enumerate(value))

    def color(self, value: Any, field: str) -> Vec3:
        c = self.vec(value, field, 3, lo=0.0, hi=1.0)
        return (c[0], c[1], c[2])

    def polyline(self, value: Any, field: str, min_points: int = 2) -> tuple[Vec2, ...]:
        if not isinstance(value, (list, tuple)) or len(value) < min_points:
            raise self.err(field, f'expected a list of at least {min_points} [x, y] points')
        pts = tuple(self.vec(p, f'{field}[{i}]', 2) for i, p in enumerate(value))
        for i in range(1, len(pts)):
            if math.dist(pts[i], pts[i - 1]) < 1e-6:
                raise self.err(f'{field}[{i}]', 'repeats the previous point')
        return tuple((p[0], p[1]) for p in pts)

    def seq(self, value: Any, field: str) -> Sequence[Any]:
        if not isinstance(value, (list, tuple)):
            raise self.err(field, f'expected a list, got {type(value).__name__}')
        return value


def _join(prefix: str, key: str) -> str:
    return f'{prefix}.{key}' if prefix else key


# ----------------------------------------------------------------------------------------------
# Section parsers
# ----------------------------------------------------------------------------------------------
def _parse_world(c: _Ctx, raw: Any) -> WorldSpec:
    f = 'world'
    m = c.mapping(raw, f, known=('ground', 'surfaces', 'buildings', 'paths'),
                  required=('ground', 'buildings', 'paths'))
    g = c.mapping(m['ground'], 'world.ground', known=('size', 'color'), required=('size',))
    size = c.vec(g['size'], 'world.ground.size', 2, positive=True)
    ground_color = c.color(g.get('color', [0.32, 0.36, 0.30]), 'world.ground.color')
    surfaces = []
    for i, s in enumerate(c.seq(m.get('surfaces', []), 'world.surfaces')):
        sf = f'world.surfaces[{i}]'
        sm = c.mapping(s, sf, known=('kind', 'points', 'width', 'color'),
                       required=('kind', 'points', 'width'))
        kind = c.choice(sm['kind'], f'{sf}.kind', SURFACE_KINDS, 'surface kind')
        default_color = {'road': [0.18, 0.18, 0.19], 'sidewalk': [0.62, 0.6, 0.56],
                         'crossing': [0.8, 0.8, 0.78], 'marking': [0.95, 0.9, 0.3]}[kind]
        surfaces.append(Surface(kind, c.polyline(sm['points'], f'{sf}.points'),
                                c.number(sm['width'], f'{sf}.width', positive=True),
                                c.color(sm.get('color', default_color), f'{sf}.color')))
    buildings = []
    names: set[str] = set()
    for i, b in enumerate(c.seq(m['buildings'], 'world.buildings')):
        bf = f'world.buildings[{i}]'
        bm = c.mapping(b, bf, known=('name', 'center', 'size', 'color'),
                       required=('center', 'size'))
        name = c.string(bm.get('name', f'building{i}'), f'{bf}.name')
        if name in names:
            raise c.err(f'{bf}.name', f'duplicate building name {name!r}')
        names.add(name)
        center = c.vec(bm['center'], f'{bf}.center', 2)
        bsize = c.vec(bm['size'], f'{bf}.size', 3, positive=True)
        buildings.append(Building(name, (center[0], center[1]), (bsize[0], bsize[1], bsize[2]),
                                  c.color(bm.get('color', [0.7, 0.66, 0.6]), f'{bf}.color')))
    pm = c.mapping(m['paths'], 'world.paths')
    if not pm:
        raise c.err('world.paths', 'at least one path is required')
    paths = {}
    for name, p in pm.items():
        pf = f'world.paths.{name}'
        pmap = c.mapping(p, pf, known=('kind', 'points', 'closed', 'corner_radius'),
                         required=('kind', 'points'))
        closed = c.boolean(pmap.get('closed', False), f'{pf}.closed')
        paths[str(name)] = PathSpec(
            str(name), c.choice(pmap['kind'], f'{pf}.kind', PATH_KINDS, 'path kind'),
            c.polyline(pmap['points'], f'{pf}.points', 3 if closed else 2), closed,
            c.number(pmap.get('corner_radius', 0.0), f'{pf}.corner_radius', non_negative=True))
    return WorldSpec((size[0], size[1]), ground_color, tuple(surfaces), tuple(buildings), paths)


def _parse_camera(c: _Ctx, raw: Any) -> CameraSpec:
    known = tuple(CameraSpec.__dataclass_fields__)
    m = c.mapping(raw, 'camera', known=known, required=('width', 'height', 'fov_deg'))
    d = CameraSpec()
    cam = CameraSpec(
        width=c.integer(m['width'], 'camera.width', lo=8),
        height=c.integer(m['height'], 'camera.height', lo=8),
        fov_deg=c.number(m['fov_deg'], 'camera.fov_deg', positive=True, hi=170.0),
        near_m=c.number(m.get('near_m', d.near_m), 'camera.near_m', positive=True),
        far_m=c.number(m.get('far_m', d.far_m), 'camera.far_m', positive=True),
        max_range_m=c.number(m.get('max_range_m', d.max_range_m), 'camera.max_range_m',
                             positive=True),
        min_object_px=c.number(m.get('min_object_px', d.min_object_px), 'camera.min_object_px',
                               non_negative=True))
    if cam.far_m <= cam.near_m:
        raise c.err('camera.far_m', f'must be > camera.near_m ({cam.near_m}), got {cam.far_m}')
    return cam


_CAMERA_MOUNT_KEYS = ('forward_m', 'height_m', 'pitch_deg', 'yaw_deg')
_RADAR_MOUNT_KEYS = ('forward_m', 'height_m')


def _parse_mount(c: _Ctx, raw: Any, f: str, base: MountSpec | None) -> MountSpec:
    """One mount at field ``f``; with ``base`` every field is optional and falls back to it."""
    parts = ('camera', 'radar')
    km = c.mapping(raw, f, known=parts, required=() if base else parts)
    cm = c.mapping(km.get('camera', {}), f'{f}.camera', known=_CAMERA_MOUNT_KEYS,
                   required=() if base else _CAMERA_MOUNT_KEYS[:3])
    rm = c.mapping(km.get('radar', {}), f'{f}.radar', known=_RADAR_MOUNT_KEYS,
                   required=() if base else _RADAR_MOUNT_KEYS)

    def val(m: Mapping[str, Any], part: str, key: str) -> Any:
        if key in m or base is None:
            return m.get(key, 0.0)            # yaw_deg is the only optional key without a base
        return getattr(getattr(base, part), key)

    return MountSpec(
        CameraMount(c.number(val(cm, 'camera', 'forward_m'), f'{f}.camera.forward_m'),
                    c.number(val(cm, 'camera', 'height_m'), f'{f}.camera.height_m',
                             positive=True),
                    c.number(val(cm, 'camera', 'pitch_deg'), f'{f}.camera.pitch_deg',
                             lo=-80.0, hi=80.0),
                    c.number(val(cm, 'camera', 'yaw_deg'), f'{f}.camera.yaw_deg',
                             lo=-180.0, hi=180.0)),
        RadarMount(c.number(val(rm, 'radar', 'forward_m'), f'{f}.radar.forward_m'),
                   c.number(val(rm, 'radar', 'height_m'), f'{f}.radar.height_m',
                            positive=True)))


def _parse_mounts(c: _Ctx, raw: Any) -> dict[str, MountSpec]:
    m = c.mapping(raw, 'mounts', known=DEVICE_KINDS, required=DEVICE_KINDS)
    return {kind: _parse_mount(c, m[kind], f'mounts.{kind}', None) for kind in DEVICE_KINDS}


def _parse_classes(c: _Ctx, raw: Any) -> dict[str, ClassSpec]:
    m = c.mapping(raw, 'classes')
    out = {}
    for name, spec in m.items():
        f = f'classes.{name}'
        c.choice(name, f, OBJECT_CLASSES, 'class')
        sm = c.mapping(spec, f, known=('speed_mps', 'paths', 'size', 'speed_wobble'),
                       required=('speed_mps', 'paths'))
        lo, hi = c.vec(sm['speed_mps'], f'{f}.speed_mps', 2, positive=True)
        if hi < lo:
            raise c.err(f'{f}.speed_mps', f'expected [min, max] with min <= max, got {[lo, hi]}')
        kinds = c.seq(sm['paths'], f'{f}.paths')
        if not kinds:
            raise c.err(f'{f}.paths', 'at least one path kind is required')
        kinds_t = tuple(c.choice(k, f'{f}.paths[{i}]', PATH_KINDS, 'path kind')
                        for i, k in enumerate(kinds))
        size = c.vec(sm.get('size', list(DEFAULT_CLASS_SIZES[name])), f'{f}.size', 3,
                     positive=True)
        out[name] = ClassSpec(name, (lo, hi), kinds_t, (size[0], size[1], size[2]),
                              c.number(sm.get('speed_wobble', 0.1), f'{f}.speed_wobble',
                                       lo=0.0, hi=0.9))
    return out


def _parse_devices(c: _Ctx, raw: Any, paths: Mapping[str, PathSpec],
                   mounts: Mapping[str, MountSpec]) -> tuple[DeviceSpec, ...]:
    seq = c.seq(raw, 'devices')
    if not seq:
        raise c.err('devices', 'at least one device is required')
    out = []
    ids: set[str] = set()
    for i, d in enumerate(seq):
        f = f'devices[{i}]'
        dm = c.mapping(d, f, required=('id', 'kind'))
        dev_id = c.string(dm['id'], f'{f}.id')
        if not _DEVICE_ID_RE.match(dev_id):
            raise c.err(f'{f}.id', f'{dev_id!r} is not a valid id: use a letter then letters, '
                                   'digits or underscores (it becomes a ROS namespace)')
        if dev_id in ids:
            raise c.err(f'{f}.id', f'duplicate device id {dev_id!r}')
        ids.add(dev_id)
        kind = c.choice(dm['kind'], f'{f}.kind', DEVICE_KINDS, 'device kind')
        mount = (_parse_mount(c, dm['mount'], f'{f}.mount', mounts[kind]) if 'mount' in dm
                 else None)
        if kind == 'vehicle':
            c.mapping(dm, f, known=('id', 'kind', 'path', 'speed_mps', 'start_m', 'mount'),
                      required=('path', 'speed_mps'))
            path = c.string(dm['path'], f'{f}.path')
            if path not in paths:
                raise c.err(f'{f}.path', f'unknown path {path!r}; known: {", ".join(paths)}')
            out.append(DeviceSpec(dev_id, kind, path=path,
                                  speed_mps=c.number(dm['speed_mps'], f'{f}.speed_mps',
                                                     positive=True),
                                  start_m=c.number(dm.get('start_m', 0.0), f'{f}.start_m',
                                                   non_negative=True),
                                  mount=mount))
        else:
            c.mapping(dm, f, known=('id', 'kind', 'position', 'yaw_deg', 'mount'),
                      required=('position', 'yaw_deg'))
            pos = c.vec(dm['position'], f'{f}.position', 2)
            out.append(DeviceSpec(dev_id, kind, position=(pos[0], pos[1]),
                                  yaw_deg=c.number(dm['yaw_deg'], f'{f}.yaw_deg'),
                                  mount=mount))
    return tuple(out)


def _parse_objects(c: _Ctx, raw: Any, classes: Mapping[str, ClassSpec],
                   paths: Mapping[str, PathSpec]) -> ObjectsSpec:
    m = c.mapping(raw, 'objects', known=('mix', 'list'))
    if 'mix' not in m and 'list' not in m:
        raise c.err('objects.mix', 'missing required field (give objects.mix and/or objects.list)')
    mix: dict[str, int] = {}
    for name, count in c.mapping(m.get('mix', {}), 'objects.mix').items():
        f = f'objects.mix.{name}'
        c.choice(name, f, OBJECT_CLASSES, 'class')
        if name not in classes:
            raise c.err(f, f'class {name!r} has no entry under classes')
        n = c.integer(count, f, lo=0)
        if n and not any(p.kind in classes[name].path_kinds for p in paths.values()):
            raise c.err(f'classes.{name}.paths',
                        f'no path in world.paths has a kind in {list(classes[name].path_kinds)}')
        mix[str(name)] = n
    explicit = []
    for i, o in enumerate(c.seq(m.get('list', []), 'objects.list')):
        f = f'objects.list[{i}]'
        om = c.mapping(o, f, known=('class', 'path', 'speed_mps', 'start_m'),
                       required=('class', 'path', 'speed_mps'))
        cls = c.choice(om['class'], f'{f}.class', OBJECT_CLASSES, 'class')
        if cls not in classes:
            raise c.err(f'{f}.class', f'class {cls!r} has no entry under classes')
        path = c.string(om['path'], f'{f}.path')
        if path not in paths:
            raise c.err(f'{f}.path', f'unknown path {path!r}; known: {", ".join(paths)}')
        explicit.append(ObjectSpec(cls, path, c.number(om['speed_mps'], f'{f}.speed_mps',
                                                       positive=True),
                                   c.number(om.get('start_m', 0.0), f'{f}.start_m',
                                            non_negative=True)))
    return ObjectsSpec(mix, tuple(explicit))


def _parse_lighting(c: _Ctx, raw: Any) -> LightingSpec:
    d = LightingSpec()
    m = c.mapping(raw, 'lighting',
                  known=('ambient', 'background', 'shadows', 'sun_dir', 'sun_intensity'))
    sun = c.vec(m.get('sun_dir', list(d.sun_dir)), 'lighting.sun_dir', 3)
    if math.hypot(*sun) < 1e-6:
        raise c.err('lighting.sun_dir', 'must not be the zero vector')
    return LightingSpec(
        ambient=c.color(m.get('ambient', list(d.ambient)), 'lighting.ambient'),
        background=c.color(m.get('background', list(d.background)), 'lighting.background'),
        shadows=c.boolean(m.get('shadows', d.shadows), 'lighting.shadows'),
        sun_dir=(sun[0], sun[1], sun[2]),
        sun_intensity=c.number(m.get('sun_intensity', d.sun_intensity), 'lighting.sun_intensity',
                               non_negative=True))


_TOP_KEYS = ('name', 'rate_hz', 'world', 'camera', 'mounts', 'radar', 'classes', 'devices',
             'objects', 'lighting')
_TOP_REQUIRED = ('name', 'rate_hz', 'world', 'camera', 'mounts', 'classes', 'devices', 'objects')


def parse_scenario(data: Any, num_devices: int | None = None,
                   source: str | None = None) -> Scenario:
    """
    Validate a scenario mapping (as loaded from YAML) and return a frozen :class:`Scenario`.

    ``num_devices`` keeps only the first K devices (all when None).

    Raises
    ------
        ScenarioError: naming the dotted field of the first problem found.

    """
    c = _Ctx(source)
    m = c.mapping(data, '', known=_TOP_KEYS, required=_TOP_REQUIRED)
    name = c.string(m['name'], 'name')
    rate = c.number(m['rate_hz'], 'rate_hz', positive=True)
    world = _parse_world(c, m['world'])
    camera = _parse_camera(c, m['camera'])
    mounts = _parse_mounts(c, m['mounts'])
    radar_raw = m.get('radar', {})
    try:
        radar = RadarConfig.from_dict(radar_raw if radar_raw is not None else {}, where='radar')
    except ScenarioError as e:
        raise ScenarioError(e.field, e.problem, source) from None
    classes = _parse_classes(c, m['classes'])
    devices = _parse_devices(c, m['devices'], world.paths, mounts)
    if num_devices is not None:
        if isinstance(num_devices, bool) or not isinstance(num_devices, int) or not (
                1 <= num_devices <= len(devices)):
            raise c.err('num_devices', f'must be an integer in [1, {len(devices)}] '
                                       f'(the scenario defines {len(devices)} devices), '
                                       f'got {num_devices!r}')
        devices = devices[:num_devices]
    objects = _parse_objects(c, m['objects'], classes, world.paths)
    lighting = _parse_lighting(c, m.get('lighting', {}) or {})
    return Scenario(name, rate, world, camera, mounts, radar, classes, devices, objects,
                    lighting, source)


def load_scenario(path: str | Path, num_devices: int | None = None) -> Scenario:
    """
    Read and validate a scenario YAML file.

    Raises
    ------
        ScenarioError: for an unreadable file, malformed YAML or any invalid field.

    """
    p = Path(path)
    try:
        text = p.read_text(encoding='utf-8')
    except OSError as e:
        raise ScenarioError('<file>', f'cannot read scenario: {e}', str(p)) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ScenarioError('<yaml>', f'malformed YAML: {e}', str(p)) from None
    return parse_scenario(copy.deepcopy(data), num_devices=num_devices, source=str(p))
