"""Inference wrappers for the running system: the device side and the aggregator side (ROS-free).

This module is the ONE place in the ROS layer that knows the layout of a trained model folder
(written by ``disac-train``, see :mod:`disac_ros.core.training`)::

    MODEL/model.json                               devices, shipped_decoder, ...
    MODEL/recipe.json                              the training recipe (channel, aggregator_xy)
    MODEL/stage1/<modalities>/<device>/checkpoint  'detector' (LocalDetector: RVFN + head),
                                                   'encoder' (SemanticEncoder), proxies
    MODEL/decoders/<modalities>/<kind>/checkpoint  'decoder' (MLPDecoder, LLMDecoder, or
                                                   DeviceDecoders: one per device)
    MODEL/stage2/<modalities>_<aggregator>/checkpoint  'aggregator' (TRAM)

Loading goes through the training package's own loaders, so a layout change there is picked up
here. Every failure (missing folder, corrupt file, wrong device) raises :class:`ModelError`
(a :class:`~disac_ros.core.errors.DisacError`) naming the path.

* :class:`DevicePipeline`: image (H, W, 3) uint8 + RF cube (rx, chirp, sample) complex ->
  RVFN fused feature -> semantic encoder -> power-normalised symbols (L, 2), batched over frames.
* :class:`AggregatorPipeline`: groups of received packets (symbols after the link, SNR, distance,
  device pose) -> the shipped decoder (each device's own, a shared MLP, or the LLM when
  configured) -> TRAM -> world-frame
  detections (:class:`~disac_ros.core.tracking.Detection`) plus TRAM's per-device aggregation
  weights. Every packet of every group goes through the decoder in ONE batch and every group
  through TRAM in one batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
import json
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from disac_ros.core.detection_fusion import fuse_detections, FusionConfig
from disac_ros.core.errors import ConfigError, DisacError, ModelError  # noqa: F401 - re-exported
from disac_ros.core.models.channel import snr_db_from_distance
from disac_ros.core.models.device_decoders import decoder_slots, run_decoder
from disac_ros.core.models.config import ChannelConfig
from disac_ros.core.rf import radar_features
from disac_ros.core.rf_config import RadarConfig
from disac_ros.core.sensor_adapt import (CameraModel, default_sensors, resample_image,
                                         resampled_radar_features, sensors_of_model_json,
                                         SensorSpec)
from disac_ros.core.tracking import NUM_CLASSES, Detection
from disac_ros.core.training.recipes import DECODER_KINDS

MODEL_ENV = 'DISAC_MODEL_DIR'
DEFAULT_MODEL_NAME = 'default'
DECODER_CHOICES = ('shipped',) + DECODER_KINDS


def set_torch_threads(threads: int) -> None:
    """Limit torch's intra-op threads (nodes share few cores; 1 is the default in nodes)."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError('threads', f'must be an integer >= 1, got {threads!r}')
    torch.set_num_threads(threads)


def find_model_dir(path: str | os.PathLike[str] = '') -> Path:
    """The model folder: ``path`` if given, else ``$DISAC_MODEL_DIR``, else ``models/default`` of
    the installed share directory (via AMENT_PREFIX_PATH) or of the source tree."""
    if str(path):
        return Path(path).expanduser()
    if os.environ.get(MODEL_ENV):
        return Path(os.environ[MODEL_ENV]).expanduser()
    for prefix in filter(None, os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep)):
        cand = Path(prefix) / 'share' / 'disac_ros' / 'models' / DEFAULT_MODEL_NAME
        if (cand / 'model.json').is_file():
            return cand
    return Path(__file__).resolve().parents[2] / 'models' / DEFAULT_MODEL_NAME


# Input limits of a device (beyond them a frame is refused, not processed).
MIN_IMAGE_SIDE, MAX_IMAGE_SIDE = 16, 2048
MAX_RF_ELEMENTS = 1 << 22


def image_size_problem(height: int, width: int) -> str:
    """Why a device refuses an image of this size ('' when it takes it): 0x0 crashes the CNN,
    4000x4000 costs seconds and gigabytes."""
    if MIN_IMAGE_SIDE <= height <= MAX_IMAGE_SIDE and MIN_IMAGE_SIDE <= width <= MAX_IMAGE_SIDE:
        return ''
    return f'{width}x{height} pixels; each side must be in {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}'

@dataclass(frozen=True)
class ModelInfo:
    """What ``model.json`` and ``recipe.json`` say about a model folder."""

    root: Path
    devices: tuple[str, ...]          # device ids the models were trained for (TRAM slot order)
    shipped_decoder: str
    recipe: Any                       # training Recipe; None when this version cannot parse it
    channel: ChannelConfig            # the channel model the decoder was trained with
    aggregator_xy: tuple[float, float]  # the receiver position the models were trained with
    device_agnostic: bool = False     # one shared network for any device id (and any K)
    # The camera and radar the networks were trained with; devices resample theirs to these.
    sensors: SensorSpec = field(default_factory=default_sensors)


def read_model_info(model_dir: str | os.PathLike[str]) -> ModelInfo:
    """Parse ``model.json`` + ``recipe.json``; ModelError names the missing/corrupt file."""
    from disac_ros.core.training.recipes import Recipe
    root = Path(model_dir)
    if not root.is_dir():
        raise ModelError(f'{root}: model folder does not exist (train one with disac-train, or set '
                         f'the model_dir parameter / ${MODEL_ENV})')
    data: dict[str, Any] = {}
    for name in ('model.json', 'recipe.json'):
        p = root / name
        try:
            data[name] = json.loads(p.read_text())
        except FileNotFoundError:
            raise ModelError(f'{p}: missing; not a disac-train model folder') from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelError(f'{p}: unreadable ({exc})') from None
    model = data['model.json']
    devices = model.get('devices')
    if not isinstance(devices, list) or not devices or not all(isinstance(d, str) for d in devices):
        raise ModelError(f'{root / "model.json"}: "devices" must be a non-empty list of device ids')
    raw = data['recipe.json']
    try:
        recipe = Recipe.from_dict(raw)
    except ConfigError:
        # A recipe written by another version of disac-train: the MLP path only needs the
        # channel and the receiver position, read directly below; an LLM decoder needs the recipe.
        recipe = None
    try:
        channel = recipe.channel if recipe is not None else ChannelConfig.from_dict(raw.get('channel', {}))
        xy = tuple(float(v) for v in raw.get('aggregator_xy', (0.0, 0.0)))
    except (ConfigError, TypeError, ValueError) as exc:
        raise ModelError(f'{root / "recipe.json"}: {exc}') from None
    if len(xy) != 2:
        raise ModelError(f'{root / "recipe.json"}: aggregator_xy must be [x, y], got {xy}')
    try:
        sensors = sensors_of_model_json(
            model, recipe.rvfn.camera_hfov_deg if recipe is not None else 60.0)
    except ConfigError as exc:
        raise ModelError(f'{root / "model.json"}: {exc}') from None
    return ModelInfo(root=root, devices=tuple(devices), shipped_decoder=str(model.get('shipped_decoder', 'mlp')),
                     recipe=recipe, channel=channel, aggregator_xy=xy,  # type: ignore[arg-type]
                     device_agnostic=bool(model.get('device_agnostic', False)), sensors=sensors)


def _load(what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a training-package loader; turn any failure into a ModelError naming ``what``."""
    try:
        return fn(*args, **kwargs)
    except DisacError as exc:
        raise ModelError(f'{what}: {exc}') from None
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        raise ModelError(f'{what}: {type(exc).__name__}: {exc}') from None


def radar_config_for(cube_shape: Sequence[int]) -> RadarConfig:
    """A RadarConfig whose array sizes match a (rx, chirp, sample) cube: all that the feature
    maps need (they are normalised by their own noise floor)."""
    if len(cube_shape) != 3 or any(int(s) < 1 for s in cube_shape):
        raise ConfigError('rf.shape', f'expected (rx, chirp, sample), got {tuple(cube_shape)}')
    rx, chirps, samples = (int(s) for s in cube_shape)
    return RadarConfig(num_rx=rx, num_chirps=chirps, num_samples=samples)


@dataclass
class DeviceOutput:
    """Device-side result for a batch of frames."""

    symbols: np.ndarray      # (B, L, 2) float32, mean |x|^2 = 1 per frame
    feature: np.ndarray      # (B, F) float32 fused semantic feature (never transmitted)


class DevicePipeline:
    """RVFN + semantic encoder of one device, from a model folder (see the module docstring)."""

    def __init__(self, model_dir: str | os.PathLike[str], device_id: str, *, threads: int = 1,
                 modalities: str = 'both', model_device_id: str = '',
                 adapt_sensors: bool = True) -> None:
        """Load the device's stage-1 models; ``model_device_id`` uses another device's weights."""
        from disac_ros.core.training.stage1 import load_device_models, stage1_dir
        set_torch_threads(threads)
        self.info = read_model_info(model_dir)
        self.device_id = device_id
        self.weights_of = model_device_id or device_id
        if self.info.device_agnostic:
            self.weights_of = self.info.devices[0]    # one shared network serves every id
        if self.weights_of not in self.info.devices:
            raise ModelError(f'{self.info.root}: no stage-1 models for device {self.weights_of!r} '
                             f'(has {list(self.info.devices)}); set model_device_id to one of them')
        folder = stage1_dir(self.info.root, modalities, self.weights_of)
        models = _load(str(folder), load_device_models, self.info.root, modalities, self.weights_of)
        try:
            self.rvfn = models['detector'].rvfn.eval()
            self.encoder = models['encoder'].eval()
        except KeyError as exc:
            raise ModelError(f'{folder}: checkpoint lacks model {exc}') from None
        self.modalities = modalities
        self.num_symbols = int(self.encoder.config.num_symbols)
        self.feature_dim = int(self.encoder.config.feature_dim)
        self._radar: dict[tuple[int, ...], RadarConfig] = {}
        # Resample each device's camera and radar to the model's (sensor_adapt.py); False feeds
        # them as they are (what every version before this one did).
        self.adapt_sensors = bool(adapt_sensors)

    def rf_features(self, cube: np.ndarray, radar: RadarConfig | None = None) -> np.ndarray:
        """Complex cube (rx, chirp, sample) of a radar with waveform ``radar`` -> network input
        on the model's radar axes (``info.sensors.radar``), float32 (2, chirps, samples).
        Without ``radar`` the cube's shape with the default timing is assumed."""
        c = np.asarray(cube)
        if not np.iscomplexobj(c) or c.ndim != 3:
            raise ConfigError('rf', f'expected a complex (rx, chirp, sample) cube, got {c.dtype} {c.shape}')
        if c.shape[1] < 2 or c.shape[2] < 4 or c.size > MAX_RF_ELEMENTS:
            raise ConfigError('rf', f'cube {c.shape}: need >= 2 chirps, >= 4 samples and at most '
                                    f'{MAX_RF_ELEMENTS} values')
        if not np.all(np.isfinite(c)):
            raise ConfigError('rf', 'cube has NaN or infinite values')
        if radar is None:
            radar = self._radar.get(c.shape)
            if radar is None:
                radar = self._radar[c.shape] = radar_config_for(c.shape)
        if not self.adapt_sensors:
            return radar_features(c, radar)
        return resampled_radar_features(c, radar, self.info.sensors.radar)

    def image_input(self, image: np.ndarray, camera: CameraModel | None = None) -> np.ndarray:
        """(H, W, 3) uint8 of a camera ``camera`` -> the model's camera (``info.sensors.camera``);
        without ``camera`` (intrinsics unknown) the image is used as it is."""
        if camera is None or not self.adapt_sensors:
            return image
        return resample_image(image, camera, self.info.sensors.camera)

    def warm_up(self, image_hw: tuple[int, int] = (128, 128),
                cube_shape: Sequence[int] | None = None) -> float:
        """Run once on blank inputs so the first real frame does not pay torch's first-call
        costs (allocations, kernel selection); returns the seconds spent. Defaults: the default
        scenario's camera and radar sizes."""
        t0 = time.perf_counter()
        rc = RadarConfig()
        shape = tuple(cube_shape) if cube_shape else (rc.num_rx, rc.num_chirps, rc.num_samples)
        self.run([np.zeros((*image_hw, 3), np.uint8)], [np.full(shape, 1e-3 + 0j, np.complex64)])
        return time.perf_counter() - t0

    @torch.no_grad()
    def run(self, images: Sequence[np.ndarray], cubes: Sequence[np.ndarray],
            cameras: Sequence[CameraModel | None] | None = None,
            radars: Sequence[RadarConfig | None] | None = None) -> DeviceOutput:
        """Encode a batch of (image, cube) pairs; ``cameras`` / ``radars`` (one per pair, or
        None) are the sensors that took them, resampled to the model's (``image_input``,
        ``rf_features``)."""
        if len(images) != len(cubes) or not images:
            raise ConfigError('batch', f'need as many images as cubes (>= 1), got {len(images)} / {len(cubes)}')
        cams = list(cameras) if cameras is not None else [None] * len(images)
        rads = list(radars) if radars is not None else [None] * len(cubes)
        if len(cams) != len(images) or len(rads) != len(cubes):
            raise ConfigError('batch', f'need one camera and one radar model per pair, got '
                                       f'{len(cams)} / {len(rads)} for {len(images)}')
        imgs = []
        for i, im in enumerate(images):
            a = np.asarray(im)
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
                raise ConfigError(f'image[{i}]', f'expected (H, W, 3) uint8, got {a.dtype} {a.shape}')
            problem = image_size_problem(a.shape[0], a.shape[1])
            if problem:
                raise ConfigError(f'image[{i}]', problem)
            imgs.append(self.image_input(a, cams[i]))
        if len({a.shape for a in imgs}) > 1:
            raise ConfigError('image', f'one batch needs one image size, got {sorted({a.shape for a in imgs})}')
        img = (torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0).contiguous()
        rf = torch.from_numpy(np.stack([self.rf_features(c, r) for c, r in zip(cubes, rads)]))
        fused = self.rvfn(img, rf).feature
        symbols = self.encoder(fused)
        return DeviceOutput(symbols=symbols.numpy().astype(np.float32), feature=fused.numpy())


@dataclass(frozen=True)
class ReceivedPacket:
    """One device's packet as the aggregator has it (after the link)."""

    device_id: str
    symbols: np.ndarray            # (L, 2) received samples
    snr_db: float                  # NaN: unknown (derived from the distance)
    distance_m: float              # NaN: unknown (derived from the pose)
    pose_xyyaw: tuple[float, float, float]


@dataclass
class AggregateResult:
    """Aggregator output for one group."""

    detections: list[Detection]
    device_ids: list[str]          # devices of the group, in TRAM slot order
    weights: list[float]           # TRAM aggregation weight per device (parallel to device_ids)
    snr_db: list[float]            # SNR used per device
    distance_m: list[float]        # distance used per device


def merged_detections(score: np.ndarray, real_probs: np.ndarray, position: np.ndarray,
                      velocity: np.ndarray, threshold: float, fusion: FusionConfig,
                      devices: Sequence[str] | frozenset[str],
                      source: np.ndarray | None = None) -> list[Detection]:
    """Per-query reports (score (Q,), real-class probabilities (Q, C), positions and velocities
    (Q, 2)) merged by ``fusion`` into the tracker's detections.

    ``devices`` are the group's devices; with ``source`` ((Q,) index into the ordered
    ``devices`` of each query) every detection names the devices that reported it, else all.
    """
    fused = fuse_detections(score, real_probs, position, velocity, threshold, fusion, source)
    present = frozenset(devices)
    order = list(devices)
    kept: list[Detection] = []
    for q in range(len(fused)):
        dist = np.zeros(NUM_CLASSES)
        dist[1:1 + fused.class_probs.shape[1]] = fused.class_probs[q]
        reporters = (frozenset(order[i] for i in fused.sources[q]) if fused.sources else present)
        kept.append(Detection(position=fused.position[q], class_probabilities=dist,
                              velocity=fused.velocity[q], confidence=float(fused.score[q]),
                              devices=reporters, present_devices=present))
    return kept


class AggregatorPipeline:
    """Shipped decoder + TRAM over groups of received packets (see the module docstring)."""

    def __init__(self, model_dir: str | os.PathLike[str], *, threads: int = 1, decoder: str = 'shipped',
                 aggregator: str = 'tram', modalities: str = 'both', score_threshold: float = 0.5,
                 fusion: FusionConfig | None = None, llm_source: str = '',
                 slot_of: dict[str, str] | None = None,
                 class_weights: Sequence[float] | None = None,
                 class_thresholds: Sequence[float] | None = None, max_cells_per_device: int = 0,
                 max_fused_cells: int = 0) -> None:
        """
        Load the decoder and TRAM.

        :param decoder: 'shipped' (model.json's choice), 'device' (each device's own stage-1
            decoder), 'mlp', 'llm' or 'llm_no_channel_tokens'.
        :param score_threshold: keep a query when its best real-class probability is >= this.
        :param fusion: how the reports of one object by several devices (or cells) are merged
            (:mod:`detection_fusion`; default: weighted clusters within 2.5 m).
        :param llm_source: override the recipe's LLM source for an LLM decoder ('' = recipe).
        :param slot_of: device id -> model device id whose TRAM slot it uses (default: itself).
        :param class_weights: per real class weights on the detections' class distributions
            (:mod:`detection_fusion`); None = the aggregator's fitted calibration, if any
            (``stage2/.../calibration.json``, the fit for the number of devices in each group),
            () = none; given values apply to every group.
        :param class_thresholds: per real class detection thresholds replacing
            ``score_threshold``; None = the fitted calibration's, if any, () = none.
        :param max_cells_per_device: TRAM fuses only this many cells of each device, the likeliest
            to hold an object (0 = all; see ``TRAM.max_cells_per_device``).
        :param max_fused_cells: a budget of cells TRAM fuses over all the group's devices, each
            device its likeliest ``max_fused_cells // K`` (0 = none; ``TRAM.max_fused_cells``).
        """
        from disac_ros.core.training.decoder import decoder_dir, load_decoder
        from disac_ros.core.training.calibration import load_calibration
        from disac_ros.core.training.stage2 import load_aggregator, stage2_dir
        set_torch_threads(threads)
        if decoder not in DECODER_CHOICES:
            raise ConfigError('decoder', f'expected one of {", ".join(DECODER_CHOICES)}, got {decoder!r}')
        self.info = read_model_info(model_dir)
        self.decoder_kind = self.info.shipped_decoder if decoder == 'shipped' else decoder
        recipe = self.info.recipe
        if self.decoder_kind not in ('mlp', 'device') and recipe is None:
            raise ModelError(f'{self.info.root / "recipe.json"}: cannot be parsed by this version; '
                             f'the {self.decoder_kind} decoder needs it (use decoder:=mlp)')
        if llm_source and recipe is not None:
            recipe = replace(recipe, llm=llm_source)
        dfolder = decoder_dir(self.info.root, modalities, self.decoder_kind) / 'checkpoint'
        self.decoder = _load(str(dfolder), load_decoder, self.info.root, modalities, self.decoder_kind,
                             recipe).eval()
        afolder = stage2_dir(self.info.root, modalities, aggregator) / 'checkpoint'
        self.tram = _load(str(afolder), load_aggregator, self.info.root, modalities, aggregator).eval()
        if max_cells_per_device < 0:
            raise ConfigError('max_cells_per_device', f'must be >= 0, got {max_cells_per_device}')
        if max_fused_cells < 0:
            raise ConfigError('max_fused_cells', f'must be >= 0, got {max_fused_cells}')
        # A device-frame TRAM's queries are each device slot's cells, slot after slot (group
        # order; padded slots never score), so each query has a source device; other
        # aggregators' queries belong to no one device.
        self._queries_by_device = bool(getattr(getattr(self.tram, 'config', None),
                                               'detect_in_device_frame', False))
        if hasattr(self.tram, 'max_cells_per_device'):
            self.tram.max_cells_per_device = int(max_cells_per_device)
            self.tram.max_fused_cells = int(max_fused_cells)
        self.channel_config = self.info.channel
        self._fitted = _load(str(afolder.parent), load_calibration, afolder.parent)
        self.retune(score_threshold, fusion or FusionConfig(), class_weights, class_thresholds)
        self.slot_of = dict(slot_of or {})
        self.num_symbols = int(self.decoder.config.num_symbols)
        if getattr(self.decoder, 'routes_by_device', False):
            missing = [d for d in self.info.devices if d not in self.decoder.config.devices]
            if missing:
                raise ModelError(f'{dfolder}: no decoder for model device(s) {missing}')

    def retune(self, score_threshold: float, fusion: FusionConfig,
               class_weights: Sequence[float] | None = None,
               class_thresholds: Sequence[float] | None = None) -> None:
        """Change the detection settings (same meaning as the constructor's) from the next group
        on, e.g. after a ``ros2 param set``; ConfigError, and nothing changed, when one is bad."""
        if not (0.0 < score_threshold <= 1.0):
            raise ConfigError('score_threshold', f'must be in (0, 1], got {score_threshold!r}')
        for name, values in (('class_weights', class_weights), ('class_thresholds', class_thresholds)):
            if values is not None and len(values) not in (0, NUM_CLASSES - 1):
                raise ConfigError(name, f'need {NUM_CLASSES - 1} values (one per real class) or '
                                        f'none, got {list(values)}')
        calibration = self._fitted.overridden(class_weights, class_thresholds)   # ConfigError if bad
        self.score_threshold = float(score_threshold)
        self.calibration = calibration
        self._base_fusion = fusion
        self._fusion_by_devices: dict[int, FusionConfig] = {}
        # the configuration with every model device present (logged, shown in diagnostics)
        self.fusion = self.fusion_for(4 if self.info.device_agnostic else len(self.info.devices))

    def fusion_for(self, num_devices: int) -> FusionConfig:
        """The merging and per-class settings for a group of ``num_devices`` devices."""
        if num_devices not in self._fusion_by_devices:
            self._fusion_by_devices[num_devices] = self.calibration.fusion(self._base_fusion,
                                                                           num_devices)
        return self._fusion_by_devices[num_devices]

    def slot(self, device_id: str) -> int:
        """TRAM device-id slot of a device; ModelError when the model has none for it."""
        if self.info.device_agnostic:
            return 0     # no per-id parameters: every device is the same to TRAM
        model_dev = self.slot_of.get(device_id, device_id)
        try:
            return self.info.devices.index(model_dev)
        except ValueError:
            raise ModelError(f'{self.info.root}: device {device_id!r} has no TRAM slot (model devices '
                             f'{list(self.info.devices)}); map it with slot_of') from None

    def warm_up(self) -> float:
        """Decode and fuse one blank group of every model device once (first-call costs off
        the first real frame); returns the seconds spent."""
        t0 = time.perf_counter()
        blank = np.zeros((self.num_symbols, 2), np.float32)
        blank[:, 0] = 1.0
        self.run([[ReceivedPacket(d, blank, 10.0, 100.0, (0.0, 0.0, 0.0))
                   for d in self.info.devices]])
        return time.perf_counter() - t0

    def link_side_info(self, p: ReceivedPacket) -> tuple[float, float]:
        """(snr_db, distance_m), filling unknowns: distance from the pose and the trained receiver
        position, SNR from the path-loss model."""
        dist = p.distance_m
        if not math.isfinite(dist) or dist <= 0:
            ax, ay = self.info.aggregator_xy
            dist = max(math.hypot(p.pose_xyyaw[0] - ax, p.pose_xyyaw[1] - ay),
                       self.channel_config.min_distance_m)
        snr = p.snr_db
        if not math.isfinite(snr):
            snr = float(snr_db_from_distance(dist, self.channel_config))
        return float(snr), float(dist)

    @torch.no_grad()
    def run(self, groups: Sequence[Sequence[ReceivedPacket]]) -> list[AggregateResult]:
        """Decode and fuse a batch of groups (each: packets of distinct devices, >= 1)."""
        if not groups:
            return []
        flat: list[ReceivedPacket] = []
        for gi, g in enumerate(groups):
            if not g:
                raise ConfigError(f'groups[{gi}]', 'empty group')
            ids = [p.device_id for p in g]
            if len(set(ids)) != len(ids):
                raise ConfigError(f'groups[{gi}]', f'duplicate devices {ids}')
            flat.extend(sorted(g, key=lambda p: (self.slot(p.device_id), p.device_id)))
        for p in flat:
            s = np.asarray(p.symbols)
            if s.shape != (self.num_symbols, 2) or not np.all(np.isfinite(s)):
                raise ConfigError(f'{p.device_id}.symbols', f'expected finite ({self.num_symbols}, 2), '
                                                            f'got {s.shape}')
        side = [self.link_side_info(p) for p in flat]
        y = torch.from_numpy(np.stack([np.asarray(p.symbols, dtype=np.float32) for p in flat]))
        snr = torch.tensor([s for s, _ in side], dtype=torch.float32)
        dist = torch.tensor([d for _, d in side], dtype=torch.float32)
        dec_slots = decoder_slots(self.decoder,
                                  [self.slot_of.get(p.device_id, p.device_id) for p in flat])
        fhat = run_decoder(self.decoder, y, snr, dist, dec_slots).float()  # (N, F), one batch
        b = len(groups)
        k = max(len(g) for g in groups)
        f = fhat.shape[1]
        feats = torch.zeros(b, k, f)
        present = torch.zeros(b, k, dtype=torch.bool)
        pose = torch.zeros(b, k, 3)
        link = torch.zeros(b, k, 2)
        link[..., 1] = 100.0
        slots = torch.zeros(b, k, dtype=torch.long)
        n = 0
        for gi, g in enumerate(groups):
            for j in range(len(g)):
                p = flat[n]
                feats[gi, j] = fhat[n]
                present[gi, j] = True
                pose[gi, j] = torch.tensor(p.pose_xyyaw, dtype=torch.float32)
                link[gi, j] = torch.tensor(side[n])
                slots[gi, j] = self.slot(p.device_id)
                n += 1
        out = self.tram(feats, present, pose, link, slots)
        probs = out.prediction.logits.float().softmax(-1).numpy()          # (B, Q, C)
        pos = out.prediction.position.float().numpy()
        vel = out.prediction.velocity.float().numpy()
        weights = out.weights.float().numpy()
        results = []
        n = 0
        for gi, g in enumerate(groups):
            members = flat[n:n + len(g)]
            results.append(AggregateResult(
                detections=self._detections(probs[gi], pos[gi], vel[gi], [p.device_id for p in members],
                                            probs.shape[1] // k),
                device_ids=[p.device_id for p in members],
                weights=[float(w) for w in weights[gi, :len(g)]],
                snr_db=[s for s, _ in side[n:n + len(g)]],
                distance_m=[d for _, d in side[n:n + len(g)]]))
            n += len(g)
        return results

    def _detections(self, probs: np.ndarray, pos: np.ndarray, vel: np.ndarray,
                    devices: list[str], queries_per_device: int) -> list[Detection]:
        real = probs[:, 1:NUM_CLASSES]
        source = np.arange(real.shape[0]) // queries_per_device if self._queries_by_device else None
        return merged_detections(real.max(-1), real, pos, vel, self.score_threshold,
                                 self.fusion_for(len(devices)), devices, source)
