"""Multi-view RF-visual dataset: deterministic shard writer, manifest, card, reader.

Layout of a dataset folder::

    manifest.json        format version, scenario (normalised), seeds, devices (intrinsics and
                         extrinsics), classes, radar config, shards with sha256 -- deterministic
    DATASET_CARD.md      what it is, how it was generated, fields, class counts, visibility
    timing.json          wall time and throughput (the one file that differs between runs)
    shard_00000.npz ...  the frames, ``shard_size`` per shard, one seed per shard

A shard is a zip of ``.npy`` members (``np.load`` reads it) written with fixed zip timestamps and
attributes, so the same scenario and seed give byte-identical shards (numpy's own ``savez``
stamps the current time). Members, for N frames, M object slots, K devices::

    time_s          (N,)        float64   simulation time
    step            (N,)        int64     step index within the seed's run
    device_pose     (N, K, 4)   float64   base_link x, y, z, yaw (world frame)
    image.<dev>     (N, H, W, 3) uint8    RGB from device <dev>
    rf.<dev>        (N, R, C, S, 2) float16  radar cube I/Q divided by rf.noise_std(radar):
                                         R rx antennas, C chirps, S samples; receiver noise
                                         has unit complex power; volts = value * rf_scale_volts
    object_id       (N, M)      int32     persistent id (changes when an object respawns)
    class_id        (N, M)      int8      index into CLASS_NAMES
    position        (N, M, 3)   float32   box centre, world frame (m)
    velocity        (N, M, 3)   float32   world frame (m/s)
    yaw             (N, M)      float32   heading (rad)
    size            (N, M, 3)   float32   length, width, height (m)
    valid           (N, M)      bool      slot holds an object
    visible_camera  (N, M, K)   bool      object visible to device k's camera
    in_rf_range     (N, M, K)   bool      object within device k's radar range and FOV

Each device's raw data lives in its own members (``image.<dev>``, ``rf.<dev>``), so
:meth:`DisacDataset.device_view` reads one device's raw sensor data and never another's; the
reader records every member it opens in ``accessed_members`` for audits.
"""
from __future__ import annotations

from collections import Counter
import hashlib
import io
import json
import math
import os
from pathlib import Path
import platform
import time
from typing import Any
from typing import Callable
from typing import Iterable
from typing import Sequence
import zipfile

import numpy as np

from disac_ros import __version__
from disac_ros.core import rf
from disac_ros.core.errors import DatasetError
from disac_ros.core.scenario import Scenario
from disac_ros.core.types import CLASS_IDS
from disac_ros.core.types import CLASS_NAMES
from disac_ros.core.types import OBJECT_CLASSES
from disac_ros.core.types import WorldFrame

FORMAT_NAME = 'disac-dataset'
FORMAT_VERSION = 1
MANIFEST = 'manifest.json'
CARD = 'DATASET_CARD.md'
TIMING = 'timing.json'
SHARD_PATTERN = 'shard_{:05d}.npz'
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_F16_MAX = float(np.finfo(np.float16).max)

FIELD_DOCS: dict[str, str] = {
    'time_s': '(N,) float64 simulation time in seconds',
    'step': '(N,) int64 step index within the run of its seed',
    'device_pose': '(N, K, 4) float64 device base_link x, y, z, yaw in the world frame',
    'image.<dev>': '(N, H, W, 3) uint8 RGB image of device <dev>',
    'rf.<dev>': ('(N, rx, chirps, samples, 2) float16 radar cube I/Q divided by rf_scale_volts '
                 '(the receiver noise std), so noise has unit complex power'),
    'object_id': '(N, M) int32 object id (a respawned object gets a new id)',
    'class_id': f'(N, M) int8 index into classes {list(CLASS_NAMES)}',
    'position': '(N, M, 3) float32 box centre in the world frame, metres',
    'velocity': '(N, M, 3) float32 velocity in the world frame, m/s',
    'yaw': '(N, M) float32 heading about +z, radians',
    'size': '(N, M, 3) float32 length, width, height, metres',
    'valid': '(N, M) bool slot holds an object',
    'visible_camera': '(N, M, K) bool object visible to the camera of device k (not occluded)',
    'in_rf_range': '(N, M, K) bool object within the radar range and field of view of device k',
}


# ----------------------------------------------------------------------------------------------
# Deterministic shard files
# ----------------------------------------------------------------------------------------------
def write_shard(path: str | Path, arrays: Sequence[tuple[str, np.ndarray]],
                compresslevel: int = 1) -> str:
    """
    Write ``arrays`` as a deterministic npz (zip of .npy members); return its sha256 hex.

    Members are written in the given order with a fixed timestamp and permissions, so equal
    arrays give equal bytes. The file appears atomically (written to a temp name, then renamed).
    """
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp')
    with zipfile.ZipFile(tmp, 'w', compression=zipfile.ZIP_DEFLATED,
                         compresslevel=compresslevel) as zf:
        for name, arr in arrays:
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f'{name}.npy', date_time=_ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue(), compresslevel=compresslevel)
    os.replace(tmp, path)
    return sha256_file(path)


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# Writer
# ----------------------------------------------------------------------------------------------
class _Stats:
    """Class counts and visibility statistics accumulated while writing (for the card)."""

    def __init__(self, device_ids: Sequence[str]):
        self.device_ids = list(device_ids)
        self.class_counts: Counter[str] = Counter()
        self.object_frames = 0
        self.visible = np.zeros(len(device_ids), dtype=np.int64)
        self.in_rf = np.zeros(len(device_ids), dtype=np.int64)
        self.any_camera = 0
        self.any_rf = 0
        self.rf_clipped = 0

    def add(self, class_id: np.ndarray, valid: np.ndarray, vis: np.ndarray,
            in_rf: np.ndarray) -> None:
        for cid in class_id[valid]:
            self.class_counts[CLASS_NAMES[int(cid)]] += 1
        self.object_frames += int(valid.sum())
        self.visible += vis[valid].sum(axis=0)
        self.in_rf += in_rf[valid].sum(axis=0)
        self.any_camera += int(vis[valid].any(axis=-1).sum())
        self.any_rf += int(in_rf[valid].any(axis=-1).sum())

    def to_dict(self) -> dict[str, Any]:
        n = max(self.object_frames, 1)
        return {
            'object_frames': self.object_frames,
            'class_counts': {c: int(self.class_counts.get(c, 0)) for c in OBJECT_CLASSES},
            'visible_camera_fraction': {d: round(float(v) / n, 4)
                                        for d, v in zip(self.device_ids, self.visible)},
            'in_rf_range_fraction': {d: round(float(v) / n, 4)
                                     for d, v in zip(self.device_ids, self.in_rf)},
            'visible_to_any_camera_fraction': round(self.any_camera / n, 4),
            'in_any_rf_range_fraction': round(self.any_rf / n, 4),
            'rf_values_clipped_to_float16': self.rf_clipped,
        }


class DatasetWriter:
    """
    Accumulates frames of one seed at a time and writes shards of ``shard_size`` frames.

    Call :meth:`begin_seed` before the frames of each seed, :meth:`add` per frame and
    :meth:`finish` once; ``finish`` writes the manifest and the dataset card.
    """

    def __init__(self, out_dir: str | Path, scenario: Scenario, device_info: list[dict[str, Any]],
                 num_object_slots: int, shard_size: int = 50, split: str | None = None,
                 renderer: str = 'genesis', command: str | None = None, frame_stride: int = 1):
        if shard_size < 1:
            raise ValueError(f'shard_size: must be >= 1, got {shard_size}')
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.scenario = scenario
        self.device_info = device_info
        self.device_ids = [d['id'] for d in device_info]
        self.m = num_object_slots
        self.shard_size = shard_size
        self.split = split
        self.renderer = renderer
        self.command = command
        self.frame_stride = int(frame_stride)
        self.rf_scale = rf.noise_std(scenario.radar)
        self.shards: list[dict[str, Any]] = []
        self.seeds: list[int] = []
        self.frames = 0
        self.stats = _Stats(self.device_ids)
        self._buf: list[WorldFrame] = []
        self._seed: int | None = None

    def begin_seed(self, seed: int) -> None:
        """Start the frames of a new seed (flushes the previous seed's partial shard)."""
        self._flush()
        self._seed = int(seed)
        self.seeds.append(int(seed))

    def add(self, frame: WorldFrame) -> None:
        """Buffer one frame; a full buffer becomes a shard."""
        if self._seed is None:
            raise RuntimeError('begin_seed() must be called before add()')
        if [d.device_id for d in frame.devices] != self.device_ids:
            raise ValueError('frame devices do not match the dataset devices')
        if len(frame.objects) != self.m:
            raise ValueError(f'frame has {len(frame.objects)} objects, expected {self.m}')
        self._buf.append(frame)
        if len(self._buf) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buf:
            return
        frames, self._buf = self._buf, []
        n, m, k = len(frames), self.m, len(self.device_ids)
        arrays: list[tuple[str, np.ndarray]] = [
            ('time_s', np.array([f.time_s for f in frames], dtype=np.float64)),
            ('step', np.array([f.step for f in frames], dtype=np.int64)),
            ('device_pose', np.array([[d.pose.as_array() for d in f.devices] for f in frames],
                                     dtype=np.float64).reshape(n, k, 4)),
        ]
        for j, dev in enumerate(self.device_ids):
            arrays.append((f'image.{dev}', np.stack([f.devices[j].image for f in frames])))
        for j, dev in enumerate(self.device_ids):
            cube = np.stack([f.devices[j].rf for f in frames]) / self.rf_scale
            iq = np.stack([cube.real, cube.imag], axis=-1)
            over = np.abs(iq) > _F16_MAX
            self.stats.rf_clipped += int(over.sum())
            arrays.append((f'rf.{dev}', np.clip(iq, -_F16_MAX, _F16_MAX).astype(np.float16)))
        obj_id = np.zeros((n, m), dtype=np.int32)
        cls = np.zeros((n, m), dtype=np.int8)
        pos = np.zeros((n, m, 3), dtype=np.float32)
        vel = np.zeros((n, m, 3), dtype=np.float32)
        yaw = np.zeros((n, m), dtype=np.float32)
        size = np.zeros((n, m, 3), dtype=np.float32)
        valid = np.zeros((n, m), dtype=bool)
        vis = np.zeros((n, m, k), dtype=bool)
        in_rf = np.zeros((n, m, k), dtype=bool)
        for i, f in enumerate(frames):
            for s, o in enumerate(f.objects):
                obj_id[i, s] = o.object_id
                cls[i, s] = CLASS_IDS[o.class_name]
                pos[i, s], vel[i, s], yaw[i, s], size[i, s] = o.position, o.velocity, o.yaw, o.size
                valid[i, s] = True
                vis[i, s] = [o.visible_camera.get(d, False) for d in self.device_ids]
                in_rf[i, s] = [o.in_rf_range.get(d, False) for d in self.device_ids]
        arrays += [('object_id', obj_id), ('class_id', cls), ('position', pos), ('velocity', vel),
                   ('yaw', yaw), ('size', size), ('valid', valid), ('visible_camera', vis),
                   ('in_rf_range', in_rf)]
        self.stats.add(cls, valid, vis, in_rf)
        name = SHARD_PATTERN.format(len(self.shards))
        digest = write_shard(self.out / name, arrays)
        self.shards.append({'file': name, 'frames': n, 'first_frame': self.frames,
                            'seed': self._seed, 'sha256': digest,
                            'bytes': (self.out / name).stat().st_size})
        self.frames += n

    def manifest(self) -> dict[str, Any]:
        """The manifest dictionary (deterministic: no wall-clock values)."""
        sc = self.scenario
        cfg = sc.radar
        return {
            'format': FORMAT_NAME,
            'format_version': FORMAT_VERSION,
            'generator': {'package': 'disac_ros', 'version': __version__,
                          'numpy': np.__version__, 'renderer': self.renderer,
                          'genesis': _genesis_version() if self.renderer == 'genesis' else None},
            'scenario_name': sc.name,
            'scenario': sc.to_dict(),
            'split': self.split,
            'seeds': list(self.seeds),
            'frames': self.frames,
            'rate_hz': sc.rate_hz,
            'frame_stride': self.frame_stride,
            'devices': self.device_info,
            'classes': list(CLASS_NAMES),
            'object_slots': self.m,
            'image': {'width': sc.camera.width, 'height': sc.camera.height, 'channels': 3,
                      'dtype': 'uint8'},
            'rf': {'shape': [cfg.num_rx, cfg.num_chirps, cfg.num_samples, 2], 'dtype': 'float16',
                   'layout': 'rx, chirps, samples, (I, Q)',
                   'scale_volts': self.rf_scale,
                   'note': 'value * scale_volts = IF voltage; noise has unit complex power'},
            'radar': cfg.to_dict(),
            'fields': FIELD_DOCS,
            'shards': list(self.shards),
            'stats': self.stats.to_dict(),
        }

    def finish(self) -> dict[str, Any]:
        """Flush, then write manifest.json and DATASET_CARD.md; return the manifest."""
        self._flush()
        if not self.frames:
            raise DatasetError('no frames were written')
        man = self.manifest()
        _write_text(self.out / MANIFEST, json.dumps(man, indent=2, sort_keys=True) + '\n')
        _write_text(self.out / CARD, dataset_card(man, self.command))
        return man


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(text, encoding='utf-8')
    os.replace(tmp, path)


def _genesis_version() -> str | None:
    try:
        from importlib.metadata import version
        return version('genesis-world')
    except Exception:  # noqa: BLE001 - metadata lookup is informational only
        return None


def dataset_card(man: dict[str, Any], command: str | None = None) -> str:
    """A short Markdown card describing a dataset (from its manifest)."""
    st = man['stats']
    cam = man['image']
    stride = int(man.get('frame_stride', 1))     # datasets written before the option: 1
    lines = [
        f'# Dataset card: {man["scenario_name"]}'
        + (f' ({man["split"]} split)' if man.get('split') else ''),
        '',
        'Synthetic multi-view RF-visual dataset for LLM-DiSAC (distributed camera + radar '
        'sensing). Images are rendered with Genesis; radar cubes are synthesised in numpy from '
        'the scene geometry (point scatterers with class-dependent RCS and micro-Doppler, '
        'occlusion attenuates RF but blinds cameras). Generated by `disac_ros` '
        f'{man["generator"]["version"]} (format {man["format"]} v{man["format_version"]}).',
        '',
        '## Contents',
        '',
        f'- frames: {man["frames"]}, one every {stride} simulation step(s) of '
        f'{1.0 / man["rate_hz"]:g} s, seeds {man["seeds"]}, {len(man["shards"])} shard(s)',
        f'- devices ({len(man["devices"])}): '
        + ', '.join(f'{d["id"]} ({d["kind"]})' for d in man['devices']),
        f'- camera: {cam["width"]}x{cam["height"]} RGB, vertical FOV '
        f'{man["scenario"]["camera"]["fov_deg"]} deg',
        f'- radar cube per device: {man["rf"]["shape"]} float16 (rx, chirps, samples, I/Q), '
        f'scaled by 1/{man["rf"]["scale_volts"]:.4g} V (noise std)',
        f'- object slots per frame: {man["object_slots"]}; classes {man["classes"][1:]}',
        '',
        '## How it was generated',
        '',
        '```',
        command or '(command not recorded)',
        '```',
        '',
        'The same scenario and seed reproduce every shard byte for byte (sha256 in '
        '`manifest.json`; check with `disac-dataset verify DIR`). Train, val and test splits '
        'come from different seeds.',
        '',
        '## Fields (per shard, N frames, M object slots, K devices)',
        '',
        '| member | description |',
        '|---|---|',
    ]
    lines += [f'| `{k}` | {v} |' for k, v in man['fields'].items()]
    lines += [
        '',
        '## Statistics',
        '',
        '| class | object-frames |',
        '|---|---|',
    ]
    lines += [f'| {c} | {n} |' for c, n in st['class_counts'].items()]
    lines += [
        '',
        '| device | visible to camera | in RF range |',
        '|---|---|---|',
    ]
    lines += [f'| {d} | {st["visible_camera_fraction"][d]:.1%} '
              f'| {st["in_rf_range_fraction"][d]:.1%} |' for d in st['visible_camera_fraction']]
    lines += [
        '',
        f'Objects seen by at least one camera: {st["visible_to_any_camera_fraction"]:.1%} of '
        f'object-frames; in at least one radar\'s range: {st["in_any_rf_range_fraction"]:.1%}. '
        'The gap between one device and all devices is what multi-device fusion can recover.',
        '',
        f'RF values clipped to the float16 range: {st["rf_values_clipped_to_float16"]}.',
        '',
    ]
    return '\n'.join(lines)


def device_info(world: Any) -> list[dict[str, Any]]:
    """Per-device metadata for the manifest: kind, intrinsics, sensor extrinsics."""
    out = []
    kinds = {d.id: d.kind for d in world.scenario.devices}
    for dev in world.device_ids:
        ext = world.sensor_extrinsics(dev)
        out.append({
            'id': dev, 'kind': kinds[dev],
            'camera_intrinsics': [[float(v) for v in row] for row in world.camera_intrinsics(dev)],
            'extrinsics': {name: {'xyz': [float(v) for v in xyz],
                                  'quat_xyzw': [float(v) for v in q]}
                           for name, (xyz, q) in ext.items()},
        })
    return out


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
def generate(world: Any, out_dir: str | Path, seeds: Sequence[int], frames_per_seed: int,
             shard_size: int = 50, split: str | None = None, command: str | None = None,
             on_frame: Callable[[], None] | None = None, frame_stride: int = 1) -> dict[str, Any]:
    """
    Run ``world`` for each seed (``world.reset(seed)``) and write a dataset folder.

    ``frame_stride`` N keeps every N-th simulation step (the world advances in between without
    sensing), so ``frames_per_seed`` frames span N times as much of each run: short runs from
    t = 0 only ever show the vehicles near their start positions and the traffic as it was
    spawned, which the fleet leaves behind after a few seconds.

    Returns the manifest plus a ``timing`` entry (also written to ``timing.json``).
    """
    if frames_per_seed < 1:
        raise ValueError(f'frames: must be >= 1, got {frames_per_seed}')
    if frame_stride < 1:
        raise ValueError(f'frame_stride: must be >= 1, got {frame_stride}')
    writer = DatasetWriter(out_dir, world.scenario, device_info(world), world.num_object_slots,
                           shard_size=shard_size, split=split, renderer=world.renderer_name,
                           command=command, frame_stride=frame_stride)
    t0 = time.perf_counter()
    for seed in seeds:
        world.reset(seed)
        writer.begin_seed(seed)
        for i in range(frames_per_seed):
            if i:
                world.skip(frame_stride - 1)
            writer.add(world.step())
            if on_frame is not None:
                on_frame()
    man = writer.finish()
    wall = time.perf_counter() - t0
    timing = {'frames': writer.frames, 'devices': len(writer.device_ids),
              'wall_time_s': round(wall, 3),
              'frames_per_s': round(writer.frames / wall, 3) if wall > 0 else math.inf,
              'host': platform.node(), 'created_utc': time.strftime('%Y-%m-%dT%H:%M:%SZ',
                                                                   time.gmtime())}
    _write_text(Path(out_dir) / TIMING, json.dumps(timing, indent=2, sort_keys=True) + '\n')
    return {**man, 'timing': timing}


# ----------------------------------------------------------------------------------------------
# Reader
# ----------------------------------------------------------------------------------------------
_LABEL_KEYS = ('object_id', 'class_id', 'position', 'velocity', 'yaw', 'size', 'valid')


class DisacDataset:
    """
    Read a dataset folder: ``len(ds)``, ``ds.frame(i)`` (all devices), ``ds.device_view(dev)``.

    Shards are opened lazily and one shard's members are cached. ``accessed_members`` records
    every member read (e.g. ``'image.dev0'``), to audit what a consumer touched.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise DatasetError(f'{self.root}: no {MANIFEST}; not a dataset folder')
        try:
            self.manifest: dict[str, Any] = json.loads(path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as e:
            raise DatasetError(f'{path}: unreadable manifest: {e}') from None
        if self.manifest.get('format') != FORMAT_NAME:
            raise DatasetError(f'{path}: not a {FORMAT_NAME} manifest')
        if self.manifest.get('format_version') != FORMAT_VERSION:
            raise DatasetError(f'{path}: format_version {self.manifest.get("format_version")} '
                               f'is not supported (expected {FORMAT_VERSION})')
        self.device_ids: list[str] = [d['id'] for d in self.manifest['devices']]
        self.classes: list[str] = list(self.manifest['classes'])
        self._starts = np.array([s['first_frame'] for s in self.manifest['shards']],
                                dtype=np.int64)
        self.accessed_members: set[str] = set()
        self._cache_shard: int | None = None
        self._cache: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.manifest['frames'])

    def _locate(self, i: int) -> tuple[int, int]:
        if not -len(self) <= i < len(self):
            raise IndexError(f'frame {i} out of range for {len(self)} frames')
        i %= len(self)
        s = int(np.searchsorted(self._starts, i, side='right') - 1)
        return s, i - int(self._starts[s])

    def _member(self, shard: int, key: str) -> np.ndarray:
        if self._cache_shard != shard:
            self._cache_shard, self._cache = shard, {}
        if key not in self._cache:
            info = self.manifest['shards'][shard]
            path = self.root / info['file']
            try:
                with np.load(path, allow_pickle=False) as z:
                    self._cache[key] = z[key]
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
                raise DatasetError(f'{path}: cannot read member {key!r}: {e}') from None
            self.accessed_members.add(key)
        return self._cache[key]

    def _labels(self, s: int, j: int) -> dict[str, np.ndarray]:
        return {k: self._member(s, k)[j] for k in _LABEL_KEYS}

    def frame(self, i: int) -> dict[str, Any]:
        """
        Frame ``i`` with every device: ``images`` (K, H, W, 3) uint8, ``rf`` (K, R, C, S, 2)
        float16, ``device_pose`` (K, 4), labels (M, ...), ``visible_camera``/``in_rf_range``
        (M, K), ``time_s``, ``step``, ``seed``.
        """
        s, j = self._locate(i)
        out: dict[str, Any] = {
            'time_s': float(self._member(s, 'time_s')[j]),
            'step': int(self._member(s, 'step')[j]),
            'seed': int(self.manifest['shards'][s]['seed']),
            'device_ids': list(self.device_ids),
            'images': np.stack([self._member(s, f'image.{d}')[j] for d in self.device_ids]),
            'rf': np.stack([self._member(s, f'rf.{d}')[j] for d in self.device_ids]),
            'device_pose': self._member(s, 'device_pose')[j],
            'visible_camera': self._member(s, 'visible_camera')[j],
            'in_rf_range': self._member(s, 'in_rf_range')[j],
        }
        out.update(self._labels(s, j))
        return out

    def labels(self, i: int) -> dict[str, Any]:
        """
        Ground truth of frame ``i`` without any raw sensor data: the object labels (M, ...),
        ``visible_camera`` / ``in_rf_range`` (M, K), ``device_pose`` (K, 4), ``time_s``.
        """
        s, j = self._locate(i)
        out: dict[str, Any] = {
            'time_s': float(self._member(s, 'time_s')[j]),
            'device_pose': self._member(s, 'device_pose')[j],
            'visible_camera': self._member(s, 'visible_camera')[j],
            'in_rf_range': self._member(s, 'in_rf_range')[j],
        }
        out.update(self._labels(s, j))
        return out

    def device_view(self, device_id: str) -> 'DeviceView':
        """A view that exposes only ``device_id``'s own image and RF (plus the labels)."""
        if device_id not in self.device_ids:
            raise KeyError(f'unknown device {device_id!r}; known: {self.device_ids}')
        return DeviceView(self, device_id)

    def iter_frames(self) -> Iterable[dict[str, Any]]:
        """All frames in order."""
        for i in range(len(self)):
            yield self.frame(i)


class DeviceView:
    """
    One device's slice of a dataset: what that device may train on in stage 1.

    ``frame(i)`` returns ``image`` (H, W, 3), ``rf`` (R, C, S, 2), ``pose`` (4,), the object
    labels (M, ...), and ``visible_camera`` / ``in_rf_range`` (M,) for this device only. It reads
    only this device's ``image.<dev>`` and ``rf.<dev>`` members.
    """

    def __init__(self, dataset: DisacDataset, device_id: str):
        self.dataset = dataset
        self.device_id = device_id
        self.index = dataset.device_ids.index(device_id)

    def __len__(self) -> int:
        return len(self.dataset)

    def frame(self, i: int) -> dict[str, Any]:
        """This device's observation and labels at frame ``i``."""
        ds, k = self.dataset, self.index
        s, j = ds._locate(i)
        out: dict[str, Any] = {
            'device_id': self.device_id,
            'time_s': float(ds._member(s, 'time_s')[j]),
            'image': ds._member(s, f'image.{self.device_id}')[j],
            'rf': ds._member(s, f'rf.{self.device_id}')[j],
            'pose': ds._member(s, 'device_pose')[j, k],
            'visible_camera': ds._member(s, 'visible_camera')[j, :, k],
            'in_rf_range': ds._member(s, 'in_rf_range')[j, :, k],
        }
        out.update(ds._labels(s, j))
        return out


def verify(root: str | Path) -> list[str]:
    """Check a dataset folder against its manifest; return a list of problems (empty = OK)."""
    ds = DisacDataset(root)
    problems = []
    total = 0
    for sh in ds.manifest['shards']:
        path = ds.root / sh['file']
        if not path.is_file():
            problems.append(f'{sh["file"]}: missing')
            continue
        digest = sha256_file(path)
        if digest != sh['sha256']:
            problems.append(f'{sh["file"]}: sha256 {digest} != manifest {sh["sha256"]}')
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                n = len(z['time_s'])
                missing = [f'{p}.{d}' for p in ('image', 'rf') for d in ds.device_ids
                           if f'{p}.{d}' not in z.files]
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            problems.append(f'{sh["file"]}: unreadable: {e}')
            continue
        if n != sh['frames']:
            problems.append(f'{sh["file"]}: {n} frames, manifest says {sh["frames"]}')
        if missing:
            problems.append(f'{sh["file"]}: missing members {missing}')
        total += sh['frames']
    if total != ds.manifest['frames'] and not problems:
        problems.append(f'shards hold {total} frames, manifest says {ds.manifest["frames"]}')
    return problems


def summary(root: str | Path) -> str:
    """A short human-readable summary of a dataset folder."""
    ds = DisacDataset(root)
    m = ds.manifest
    st = m['stats']
    size = sum(sh['bytes'] for sh in m['shards'])
    lines = [
        f'{ds.root}: {m["format"]} v{m["format_version"]}, scenario {m["scenario_name"]!r}'
        + (f', split {m["split"]}' if m.get('split') else ''),
        f'  frames {m["frames"]} in {len(m["shards"])} shard(s), {size / 1e6:.1f} MB, '
        f'seeds {m["seeds"]}',
        '  devices ' + ', '.join(f'{d["id"]}({d["kind"]})' for d in m['devices'])
        + f'; image {m["image"]["width"]}x{m["image"]["height"]}; rf {m["rf"]["shape"]}',
        f'  object slots {m["object_slots"]}; class object-frames {st["class_counts"]}',
        f'  visible to any camera {st["visible_to_any_camera_fraction"]:.1%}, '
        f'in any RF range {st["in_any_rf_range_fraction"]:.1%}',
    ]
    timing = ds.root / TIMING
    if timing.is_file():
        t = json.loads(timing.read_text(encoding='utf-8'))
        lines.append(f'  generated in {t["wall_time_s"]} s ({t["frames_per_s"]} frames/s)')
    return '\n'.join(lines)
